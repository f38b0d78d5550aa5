"""The benchmark scripts run (on the CUDA simulator, tiny sizes): ready for a GPU run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("numba.cuda")


def test_gpu_benchmark_runs_end_to_end(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu.py"),
            "--sizes",
            "64",
            "--repeat",
            "1",
            "--out",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())["rows"]
    names = {r["optimizer"] for r in rows}
    assert {"optforge Adam", "optforge RAdam", "optforge Lamb", "optforge AdamOffload"} <= names
    assert next(r for r in rows if r["optimizer"] == "optforge Adam")["bytes"] == 28 * 64


def test_bytes_per_element_come_from_the_compiled_stages():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from traffic import bytes_per_element

    assert bytes_per_element("adam") == 28  # reads w g m v, writes w m v
    assert bytes_per_element("adam", flags={"use_amsgrad": True}) == 36
    assert bytes_per_element("lamb") == 24 + 16  # stage 1: w g m v in, m v out; stage 2: m v w in, w out
    assert bytes_per_element("adam", dtype="float64") == 56
