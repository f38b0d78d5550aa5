"""Documentation generated from the specs: current, complete, and its code runs."""

import math
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import optforge
import optforge.generated.nn
import optforge.generated.optim
import optforge.torch
from optforge.compiler import build, docs
from optforge.compiler.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CLASSES = [("nn", name) for name in optforge.generated.nn.__all__]
CLASSES += [("optim", name) for name in optforge.generated.optim.__all__]
CLASSES += [("torch", name) for name in optforge.torch.__all__ if name != "TorchOptimizer"]
# An alias (Export.aliases: AdamWScheduleFree) is documented on its class's page.
CLASSES = [(d, name) for d, name in CLASSES if getattr(getattr(optforge, d), name).__name__ == name]


def code_blocks(text: str, after: str = "") -> list[str]:
    text = text[text.index(after) :] if after else text
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _shown(default) -> str:
    """A default as the pages print it: a function (a callable hyperparameter's) by its name,
    an infinite float as the source that writes it (`math.inf`)."""
    if isinstance(default, float) and math.isinf(default):
        return "math.inf" if default > 0 else "-math.inf"
    return default.__name__ if isinstance(default, types.FunctionType) else repr(default)


def test_docs_are_current():
    assert docs.stale_pages(docs.docs_files(build.load_specs()), DOCS) == []
    assert main(["docs", "--check"]) == 0


def test_check_fails_on_a_stale_page(tmp_path, capsys):
    files = docs.docs_files(build.load_specs())
    docs.write_pages(files, tmp_path)
    (tmp_path / "optimizers" / "nn.Adam.md").write_text("# Adam\n")
    assert main(["docs", "--check", "--out", str(tmp_path)]) == 1
    assert "changed: optimizers/nn.Adam.md" in capsys.readouterr().out


@pytest.mark.parametrize("dialect, name", CLASSES)
def test_every_class_has_a_complete_page(dialect, name):
    text = (DOCS / "optimizers" / f"{dialect}.{name}.md").read_text()
    assert f"\n# {name}\n" in text
    cls = getattr(getattr(optforge, dialect), name)
    import inspect

    for arg in list(inspect.signature(cls).parameters.values())[1:]:
        default = "required" if arg.default is inspect.Parameter.empty else f"`{_shown(arg.default)}`"
        assert re.search(rf"\| `{arg.name}` \| [^|]+ \| {re.escape(default)} \|", text), arg.name
        assert f"`{arg.name}` :" not in text  # (the numpy-style form belongs to the docstring)
    assert "\\begin{aligned}" in text and "\\leftarrow" in text
    exceptions = text[text.index("## Exceptions") : text.index("## State")]
    for line in cls.__doc__.split("Raises")[1].splitlines():
        if line.strip() in ("TypeError", "ValueError", "KeyError", "RuntimeError", "IndexError"):
            assert f"| `{line.strip()}` |" in exceptions


@pytest.mark.parametrize("dialect, name", CLASSES)
def test_docstring_states_every_argument_with_its_default(dialect, name):
    import inspect

    cls = getattr(getattr(optforge, dialect), name)
    for arg in list(inspect.signature(cls).parameters.values())[1:]:
        assert re.search(rf"\n    {arg.name} : ", cls.__doc__), arg.name
        if arg.default is not inspect.Parameter.empty:
            assert f"default {_shown(arg.default)}" in cls.__doc__
    assert "Raises\n    ------" in cls.__doc__


@pytest.mark.parametrize("dialect, name", CLASSES)
def test_page_example_runs(dialect, name, capsys):
    text = (DOCS / "optimizers" / f"{dialect}.{name}.md").read_text()
    (example,) = code_blocks(text, after="## Example")
    exec(compile(example, f"{dialect}.{name} example", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.count("[") >= 2  # the 2x3 weights


def test_guide_spec_compiles_to_the_code_the_guide_shows(tmp_path, monkeypatch):
    text = (DOCS / "guide" / "add-an-optimizer.md").read_text()
    blocks = code_blocks(text)
    spec_source = next(b for b in blocks if "SPEC = Spec(" in b)
    path = tmp_path / "lion.py"
    path.write_text(spec_source)
    namespace = {"__file__": str(path), "__name__": "lion"}
    exec(compile(spec_source, str(path), "exec"), namespace)
    files = build.build_files([namespace["SPEC"]])
    host_excerpt = next(b for b in blocks if b.startswith("def scalars"))
    kernel_excerpt = next(b for b in blocks if "for elem in range" in b)
    assert host_excerpt in files["host/lion.py"]
    assert kernel_excerpt in files["cpu/lion.py"]
    # Section 3's commands print those same files.
    (commands,) = re.findall(r"```bash\n(.*?)```", text[text.index("## 3. Build") :], re.S)[:1]
    for line, part in zip(commands.strip().splitlines(), ("cpu", "host")):
        args = line.split("#")[0].split()[1:]
        assert args[:2] == ["show", "lion.py"]
        monkeypatch.chdir(tmp_path)
        shown = subprocess.run(
            [str(Path(sys.executable).with_name("optforge")), *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout == files[f"{part}/lion.py"]

    # Install the generated modules beside the real ones and run the guide's usage.
    import optforge.generated.cpu
    import optforge.generated.host
    import optforge.generated.optim

    for folder in ("host", "cpu", "optim"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "lion.py").write_text(files[f"{folder}/lion.py"])
        package = sys.modules[f"optforge.generated.{folder}"]
        monkeypatch.setattr(package, "__path__", [*package.__path__, str(tmp_path / folder)])
    from optforge.generated.optim.lion import Lion

    monkeypatch.setattr(optforge.optim, "Lion", Lion, raising=False)
    usage = next(b for b in blocks if "optforge.optim.Lion(" in b)
    scope = {}
    exec(usage, scope)
    # w(1 - lr*wd) - lr*sign(c): c = 0.1*g, sign(0) = 0
    expected = np.float32(1 - 1e-4) - 1e-3 * np.sign([0.5, -0.5, 0.0, 2.0])
    np.testing.assert_allclose(scope["w"].data, expected, rtol=1e-6)
    for name in (
        "lion",
        "optforge.generated.host.lion",
        "optforge.generated.cpu.lion",
        "optforge.generated.optim.lion",
    ):
        sys.modules.pop(name, None)


def test_guide_fragments_block_composes_the_spec_it_describes(tmp_path):
    """Section 2's fragments: the block builds, its g_eff and w_decayed come first, in the order
    the text says, and the table names every public fragment."""
    import sympy as sp

    from optforge.compiler import fragments as F
    from optforge.compiler.spec import g, lr, w, weight_decay

    text = (DOCS / "guide" / "add-an-optimizer.md").read_text()
    section = text[text.index("### Fragments") : text.index("### Reductions")]
    (block,) = code_blocks(section)
    namespace = {"__file__": str(tmp_path / "lion_max.py"), "__name__": "lion_max"}
    exec(compile(block, namespace["__file__"], "exec"), namespace)
    spec = namespace["SPEC"]
    assert [(r.target, r.expr) for r in spec.rules[:2]] == [
        (F.g_eff, sp.Piecewise((-g, F.maximize_flag), (g, True))),
        (F.w_decayed, w * (1 - lr * weight_decay)),
    ]
    assert spec.decay == "decoupled" and [f.name for f in spec.flags] == ["maximize"]
    assert "def lion_max(F, S=None):" in build.build_files([spec])["cpu/lion_max.py"]
    public = [
        name
        for name, value in vars(F).items()
        if callable(value) and getattr(value, "__module__", "") == F.__name__
    ]
    for name in {n for n in public if not n.startswith("_")} - {"Fragment", "Decay", "compose", "lookahead"}:
        assert f"| `{name}(" in section, name


def test_guide_own_project_section_runs(tmp_path, monkeypatch):
    """Section 6 of the guide: compile_spec on the guide's spec, then its shell commands."""
    text = (DOCS / "guide" / "add-an-optimizer.md").read_text()
    spec_source = next(b for b in code_blocks(text) if "SPEC = Spec(" in b)
    (tmp_path / "lion.py").write_text(spec_source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPTFORGE_CACHE_DIR", str(tmp_path / "cache"))
    (usage,) = code_blocks(text, after="## 6. In your own project")
    scope = {}
    exec(usage, scope)
    expected = np.float32(1 - 1e-4) - 1e-3 * np.sign([0.5, -0.5, 0.0, 2.0])
    np.testing.assert_allclose(scope["w"].data, expected, rtol=1e-6)

    (commands,) = re.findall(r"```bash\n(.*?)```", text[text.index("## 6. In your own project") :], re.S)
    optforge_cli = Path(sys.executable).with_name("optforge")
    for line in commands.strip().splitlines():
        command = line.split("#")[0].split()
        if command[0] == "optforge":
            command[0] = str(optforge_cli)
        elif command[:3] == ["python", "-m", "pytest"]:
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *command[3:]]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        # The skeleton's test runs and fails until its reference is written; the rest succeed.
        assert result.returncode == (1 if "pytest" in line else 0), (line, result.stdout, result.stderr)
    assert (tmp_path / "my_optimizers" / "optim" / "lion.py").exists()
    assert (tmp_path / "docs" / "optimizers" / "optim.Qhadam.md").exists()
