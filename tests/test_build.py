"""generated/ is what specs/ give, byte for byte, and the CLI says so."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from optforge.compiler import build, render
from optforge.compiler.cli import main


def test_generated_folder_is_current(built_files):
    problems = build.stale_files(built_files, build.generated_dir())
    assert not problems, "generated/ is stale; run `optforge build`:\n" + "\n".join(problems)


def test_building_twice_gives_the_same_bytes(built_files):
    assert build.build_files(build.load_specs()) == built_files


@pytest.fixture
def only_adam(monkeypatch):
    """`optforge build` on the built-in Adam alone: the CLI's check and write paths are the same
    for one spec as for all, at a fraction of a full build's cost."""
    load_specs = build.load_specs
    monkeypatch.setattr(
        build, "load_specs", lambda names=None: load_specs(["adam"] if names is None else names)
    )


def test_check_fails_on_a_changed_missing_or_extra_file(only_adam, tmp_path, capsys):
    assert main(["build", "--out", str(tmp_path)]) == 0
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("*/adam.py")) == [
        f"{folder}/adam.py" for folder in ("cpu", "cuda", "host", "nn")
    ]
    assert main(["build", "--check", "--out", str(tmp_path)]) == 0
    path = tmp_path / "cpu" / "adam.py"
    edited = bytearray(path.read_bytes())
    edited[-2] ^= 1  # one bit of one byte
    path.write_bytes(bytes(edited))
    capsys.readouterr()
    assert main(["build", "--check", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().out.splitlines() == ["changed: cpu/adam.py"]
    (tmp_path / "nn" / "adam.py").unlink()
    (tmp_path / "cpu" / "stray.py").write_text("")
    assert main(["build", "--check", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "changed: cpu/adam.py" in out and "missing: nn/adam.py" in out and "extra: cpu/stray.py" in out
    assert main(["build", "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "cpu" / "stray.py").exists()
    assert main(["build", "--check", "--out", str(tmp_path)]) == 0


def test_show_prints_the_generated_kernel(capsys):
    assert main(["show", "adam"]) == 0
    out = capsys.readouterr().out
    assert "def adam(F, S=None):" in out and "numba.prange" in out
    assert main(["show", "Adam", "--part", "host"]) == 0
    assert "s2 = -lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)" in capsys.readouterr().out
    assert main(["show", "adafactor", "--part", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "def adafactor_factored_pass1(F, S=None):" in out and "def pass1(" in out
    assert main(["show", "adafactor", "--part", "torch"]) == 0
    assert "class Adafactor(TorchOptimizer):" in capsys.readouterr().out
    assert main(["show", "adafactor", "--part", "nn"]) == 2  # no nn export


def test_generated_code_is_lint_clean():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--isolated",
            "--select",
            "E,F,W",
            # Formatted at 100 columns; identifiers naming a variant and its host-side
            # branches (sgd_nesterov__maximize__t_eq_1_and_momentum_gt_0_f32) cannot break.
            "--line-length",
            "120",
            str(build.generated_dir()),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_console_script_runs():
    result = subprocess.run(["optforge", "build", "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hand_written_code_is_lint_clean_and_formatted():
    root = build.generated_dir().parent
    folders = [str(root / f) for f in ("optforge", "compiler", "specs", "tests", "benchmarks")]
    check = subprocess.run(
        [sys.executable, "-m", "ruff", "check", *folders], capture_output=True, text=True, cwd=root
    )
    assert check.returncode == 0, check.stdout
    fmt = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", *folders],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert fmt.returncode == 0, fmt.stdout


def test_one_ruff_process_formats_a_whole_build(monkeypatch):
    calls = []
    run = render.subprocess.run
    monkeypatch.setattr(render.subprocess, "run", lambda *a, **k: calls.append(a) or run(*a, **k))
    files = build.build_files(build.load_specs(["adam", "sgd"]))
    assert len(calls) == 1 and len(files) > 10


def test_every_file_is_formatted_whatever_its_folder_is_called():
    # A folder walk would skip build/ and venv/ (ruff's default excludes): each path is named.
    ugly = "x  =  [1,2]\n"
    files = render.format_python_files({"build/a.py": ugly, "venv/b.py": ugly, "c.py": ugly})
    assert files == {"build/a.py": "x = [1, 2]\n", "venv/b.py": "x = [1, 2]\n", "c.py": "x = [1, 2]\n"}


def test_code_ruff_cannot_parse_is_refused_naming_its_file():
    with pytest.raises(RuntimeError, match=r"cpu/bad\.py"):
        render.format_python_files({"cpu/good.py": "x = 1\n", "cpu/bad.py": "def f(:\n"})


def test_each_xdist_worker_has_a_numba_cache_of_its_own():
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        pytest.skip("runs under pytest-xdist (-n logical, see the README)")
    import numba

    assert Path(numba.config.CACHE_DIR).parts[-2:] == (".numba-cache", worker)
