"""`optforge new NAME`: the skeletons compile, and the test runs and fails usefully."""

import importlib.util
import subprocess
import sys

from optforge.compiler import build
from optforge.compiler.cli import main


def test_new_writes_a_spec_that_compiles_and_a_test_that_fails_usefully(tmp_path, monkeypatch):
    root = tmp_path / "project"
    (root / "specs").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "generated").mkdir()
    monkeypatch.setattr(build, "generated_dir", lambda: root / "generated")
    assert main(["new", "my_rule"]) == 0
    assert main(["new", "my_rule"]) == 1  # never overwrites

    module_spec = importlib.util.spec_from_file_location("my_rule", root / "specs" / "my_rule.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    files = build.build_files([module.SPEC])
    assert "def my_rule(F, S=None):" in files["cpu/my_rule.py"]
    assert "class MyRule(" in files["optim/my_rule.py"]

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(root / "tests" / "test_my_rule.py"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1  # runs, and fails until the spec is registered and the reference written
    assert 'add "my_rule" to ALL in specs/__init__.py' in result.stdout
