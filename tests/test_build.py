"""generated/ is what specs/ give, byte for byte, and the CLI says so."""

import subprocess
import sys

import pytest

from optforge.compiler import build
from optforge.compiler.cli import main


@pytest.fixture(scope="module")
def files():
    return build.build_files(build.load_specs())


def test_generated_folder_is_current(files):
    problems = build.stale_files(files, build.generated_dir())
    assert not problems, "generated/ is stale; run `optforge build`:\n" + "\n".join(problems)


def test_building_twice_gives_the_same_bytes(files):
    assert build.build_files(build.load_specs()) == files


def test_check_fails_on_a_changed_missing_or_extra_file(files, tmp_path, capsys):
    build.write_files(files, tmp_path)
    assert main(["build", "--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "cpu" / "adam.py").write_text("# edited by hand\n")
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
    assert "def adam(F):" in out and "numba.prange" in out
    assert main(["show", "Adam", "--part", "host"]) == 0
    assert "s2 = -lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)" in capsys.readouterr().out
    assert main(["show", "adafactor", "--part", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "def adafactor_factored_pass1(F):" in out and "def pass1(" in out
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
