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
            "2000",
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
    assert next(r for r in rows if r["optimizer"] == "optforge Adam")["bytes"] == 28 * 2000
    # Adafactor on a 2 x 1000 matrix: the factored kernels, 24 bytes per element
    assert next(r for r in rows if r["optimizer"] == "optforge Adafactor")["bytes"] == 24 * 2000


def test_bytes_per_element_come_from_the_compiled_stages():
    from optforge.bench.traffic import bytes_per_element

    assert bytes_per_element("adam") == 28  # reads w g m v, writes w m v
    assert bytes_per_element("adam", flags={"use_amsgrad": True}) == 36
    assert bytes_per_element("lamb") == 24 + 16  # stage 1: w g m v in, m v out; stage 2: m v w in, w out
    assert bytes_per_element("adam", dtype="float64") == 56
    # SGD's later steps read the buffer its first step only writes: the most traffic is counted
    assert bytes_per_element("sgd") == 20
    # Adafactor: a matrix reads w and g, then g, then g and w, and writes w (its per-row and
    # per-column state is not per element); a vector keeps a full variance, in two stages
    assert bytes_per_element("adafactor", flags={"factored": True}) == 24
    assert bytes_per_element("adafactor") == 16 + 16


def test_write_only_stores_are_counted_apart():
    from optforge.bench.traffic import accesses

    assert accesses("asgd", branch=(True,)) == (2, 1, 1)  # mu == 1: ax = w, never read
    assert accesses("asgd", branch=(False,)) == (3, 2, 0)


def test_optforge_bench_writes_json_table_and_plot(tmp_path):
    """`optforge bench` end to end at a tiny size (its numbers are not checked: no timing asserts)."""
    from optforge.compiler.cli import main

    assert (
        main(["bench", "adam", "rprop", "--sizes", "5000", "--repeat", "1", "--out-dir", str(tmp_path)]) == 0
    )
    result = json.loads((tmp_path / "cpu-adam-rprop-t1.json").read_text())
    contenders = {(r["optimizer"], r["contender"]) for r in result["rows"]}
    assert {("adam", "optforge"), ("adam", "same-traffic limit"), ("rprop", "optforge")} <= contenders
    assert ("adam", "torch fused") in contenders  # torch is a test dependency
    adam = next(r for r in result["rows"] if r["optimizer"] == "adam" and r["contender"] == "optforge")
    assert adam["speedup_of_optforge"] == 1.0 and adam["GB/s"] > 0
    table = (tmp_path / "cpu-adam-rprop-t1.txt").read_text()
    assert "same-traffic limit" in table
    if "deepspeed is not installed" not in " ".join(result["notes"]):
        assert ("adam", "DeepSpeed CPUAdam") in contenders
    pytest.importorskip("matplotlib")
    assert (tmp_path / "cpu-adam-rprop-t1.png").read_bytes()[:4] == b"\x89PNG"


def test_optforge_bench_refuses_unknown_names(capsys):
    from optforge.compiler.cli import main

    assert main(["bench", "adamm"]) == 2
    assert "unknown optimizers ['adamm']" in capsys.readouterr().err


def test_startup_is_measured_in_new_processes():
    from optforge.bench.startup import measure_startup

    result = measure_startup()
    assert set(result) == {"cold_s", "warm_s", "import_s"}
    assert all(v > 0 for v in result.values())


def test_every_optimizer_torch_lacks_is_timed_against_its_reference_package():
    import numpy as np

    from optforge.bench import cpu as bench

    lacking = {spec for spec in bench.OPTFORGE if spec not in bench.TORCH}
    lacking -= {"lamb", "proximal_adagrad"}  # MindSpore's; no reference package implements their nn forms
    assert lacking <= set(bench.REFERENCES), lacking - set(bench.REFERENCES)
    notes = set()
    steps, per_element = bench.contenders("lion", [1000, 37], np.random.default_rng(0), notes)
    assert not notes
    assert {"Lion foreach (pytorch_optimizer)", "Lion single-tensor (pytorch_optimizer)"} <= set(steps)
    assert per_element == 20  # w g m in, w m out: 5 x 4 bytes
    for step in steps.values():
        step()


def test_a_spec_of_matrices_is_timed_on_the_variant_it_was_built_with():
    """Muon's default (nesterov=True) is not its all-False variant: the same-traffic limit
    counts the kernel the optimizer runs, and torch's Muon (no foreach) is one row."""
    import numpy as np

    from optforge.bench import cpu as bench

    notes = set()
    sizes = bench.tensor_sizes("muon", [40 * 40])
    steps, per_element = bench.contenders("muon", sizes, np.random.default_rng(0), notes)
    assert not notes
    assert set(steps) == {"optforge", "same-traffic limit", "torch"}
    assert bench.kernel_flags("muon", bench.OPTFORGE["muon"]([_matrix()]))["nesterov"] is True
    assert per_element > 0
    for step in steps.values():
        step()


def _matrix():
    import numpy as np

    import optforge

    return optforge.Parameter(np.ones((4, 4), np.float32), "w")
