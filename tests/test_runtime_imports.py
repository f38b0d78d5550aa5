"""The run-time path imports numpy and numba only: sympy and jinja2 are build tools."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import optforge

    p = optforge.Parameter(np.ones(10, np.float32), "w")
    opt = optforge.nn.Adam([p], learning_rate=0.1, use_nesterov=True)
    opt((np.full(10, 0.5, np.float32),))
    assert abs(p.data[0] - 0.81) < 1e-5, p.data  # Nesterov: 0.1 * 1.9 on the first step
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("sympy", "jinja2", "optforge.compiler"))
    leaked += sorted(m for m in sys.modules if m.startswith(("optforge.compiler", "optforge.specs")))
    leaked += sorted(m for m in sys.modules if m.split(".")[0] == "torch")  # only optforge.torch needs it
    optforge.optim.Adam([optforge.Parameter(np.ones(3), "v")])
    leaked += sorted(m for m in sys.modules if m.split(".")[0] == "torch")
    print("LEAKED", leaked)
    """
)


def test_stepping_adam_does_not_import_sympy_jinja2_the_compiler_or_torch():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "LEAKED []" in result.stdout, result.stdout


def test_only_the_optforge_namespace_is_installed():
    """No bare `compiler`, `generated` or `specs` package next to `optforge`."""
    import importlib.util

    for name in ("compiler", "generated", "specs"):
        spec = importlib.util.find_spec(name)
        assert spec is None or "site-packages" not in str(spec.origin), spec


def test_the_wheel_holds_every_module_under_the_optforge_namespace(tmp_path):
    """A regular (non-editable) install gets all code, templates and generated modules."""
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(root)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("optforge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n.split("/")[0] for n in names} == {"optforge", wheel.name.split("-py3")[0] + ".dist-info"}
    folders = {
        "optforge": "optforge",
        "compiler": "optforge/compiler",
        "specs": "optforge/specs",
        "generated": "optforge/generated",
    }
    for folder, package in folders.items():
        for path in (root / folder).rglob("*"):
            if path.suffix in (".py", ".j2") and "__pycache__" not in path.parts:
                assert f"{package}/{path.relative_to(root / folder).as_posix()}" in names, path


def test_top_level_re_exports_the_seed_optimizers():
    import optforge

    assert optforge.Adam is optforge.nn.Adam
    assert optforge.AdamOffload is optforge.nn.AdamOffload
    assert optforge.Lamb is optforge.nn.Lamb
    assert optforge.ProximalAdagrad is optforge.nn.ProximalAdagrad
    assert optforge.RAdam is optforge.optim.RAdam
    assert {"Parameter", "RowTensor", "nn", "optim"} <= set(dir(optforge))
