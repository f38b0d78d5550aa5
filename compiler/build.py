"""Build `generated/` from `specs/`, or check that it is current.

Building is a pure function from the specs to a mapping of relative path
to file text; writing and checking compare that mapping with the folder,
so `optforge build --check` fails exactly when a rebuild would change a byte.
"""

from __future__ import annotations

import ast
import importlib
import json
import sys
from pathlib import Path

from optforge.compiler.backends.cpu import render_cpu_module, render_host_module
from optforge.compiler.backends.cuda import render_cuda_module
from optforge.compiler.lower import lower
from optforge.compiler.render import format_python_files
from optforge.compiler.spec import Spec
from optforge.compiler.wrappers import render_class_module, render_dialect_init

PACKAGE_DOCS = {
    "": "Compiler output, committed: do not edit; `optforge build` rewrites it from specs/.",
    "host": "Step-level scalars, computed once per step on the host in float64.",
    "cpu": "Fused Numba CPU kernels.",
    "cuda": "Fused Numba CUDA kernels (import them only with numba-cuda installed).",
}
DIALECTS = ("nn", "optim", "torch")
PACKAGE = "optforge.generated"  # the package of the built-in specs' modules


def load_specs(names: list[str] | None = None) -> list[Spec]:
    specs_package = importlib.import_module("optforge.specs")
    names = list(specs_package.ALL) if names is None else names
    return [importlib.import_module(f"optforge.specs.{name}").SPEC for name in names]


def defines_spec(path: Path) -> bool:
    """Does the file assign SPEC at its top level? Read, not run: a training script or a
    setup.py beside the specs is never executed."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (SyntaxError, UnicodeDecodeError):
        return False
    targets = [
        target
        for node in tree.body
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
    ]
    return any(isinstance(t, ast.Name) and t.id == "SPEC" for t in targets)


def load_spec_file(path: Path, module_name: str):
    """Run a spec file as a module of its own (`module_name`, not importable by name), with its
    folder on sys.path while it runs, so it may import a sibling module of the user's."""
    import importlib.util

    folder = str(Path(path).parent)
    before = set(sys.modules)
    sys.path.insert(0, folder)
    try:
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
        # The user's modules it imported are forgotten: an edit to one is seen by the next load.
        for name in set(sys.modules) - before:
            file = getattr(sys.modules[name], "__file__", None) or ""
            if Path(file).parent == Path(folder):
                del sys.modules[name]
    return module


def load_spec_files(folder: Path) -> list[Spec]:
    """The specs of a user's folder: every ``*.py`` file there that assigns SPEC at its top
    level (see `defines_spec`), in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no specs folder at {folder}")
    paths = [p for p in sorted(folder.glob("*.py")) if defines_spec(p)]
    if not paths:
        raise FileNotFoundError(f"no spec in {folder}: no .py file there assigns SPEC")
    return [load_spec_file(p, f"_optforge_user_spec_{p.stem}").SPEC for p in paths]


# A folder written for a user (`build --specs`, `docs --specs`) lists the files it holds here:
# only those are ever replaced or removed, and a folder without it that holds anything is refused.
OWNED = ".optforge-owned.json"


def _owned(root: Path) -> set[str] | None:
    path = root / OWNED
    return set(json.loads(path.read_text(encoding="utf-8"))["files"]) if path.exists() else None


def stale_owned(files: dict[str, str], root: Path) -> list[str]:
    """`stale_files` for a user's folder: the extras are the owned files no longer given."""
    problems = [
        f"{'missing' if not (root / rel).exists() else 'changed'}: {rel}"
        for rel, text in files.items()
        if not (root / rel).exists() or (root / rel).read_text(encoding="utf-8") != text
    ]
    return problems + [f"extra: {rel}" for rel in sorted((_owned(root) or set()) - set(files))]


def write_owned(files: dict[str, str], root: Path) -> list[str]:
    """Write `files` under a user's `root`, removing only owned files no longer given.

    A `root` that holds anything and was not written this way is refused (FileExistsError):
    the user's own files are never overwritten or removed."""
    owned = _owned(root)
    if owned is None and root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} is not empty and was not written by optforge; choose a new folder for --out "
            "(optforge replaces only what it wrote there)"
        )
    changed = stale_owned(files, root)
    for rel in sorted((owned or set()) - set(files)):
        (root / rel).unlink(missing_ok=True)
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
    (root / OWNED).write_text(json.dumps({"files": sorted(files)}, indent=1) + "\n", encoding="utf-8")
    return changed


def build_files(specs: list[Spec], package: str = PACKAGE) -> dict[str, str]:
    """Relative path under generated/ -> file text, for every file the specs give.

    `package` is the import name of the folder they are written to: the modules import
    each other (and the run-time imports the kernels) under it."""
    files = {
        f"{folder}/__init__.py" if folder else "__init__.py": f'"""{doc}"""\n'
        for folder, doc in PACKAGE_DOCS.items()
    }
    rendered: dict[str, str] = {}  # the templates' output, formatted together below
    exported: dict[str, list[tuple[str, str]]] = {d: [] for d in DIALECTS}
    for spec in specs:
        kernels = [kernel for variant in spec.variants() for kernel in lower(spec, variant)]
        rendered[f"host/{spec.name}.py"] = render_host_module(spec, kernels)
        rendered[f"cpu/{spec.name}.py"] = render_cpu_module(spec, kernels, package)
        rendered[f"cuda/{spec.name}.py"] = render_cuda_module(spec, kernels, package)
        for export in spec.exports:
            rendered[f"{export.dialect}/{spec.name}.py"] = render_class_module(spec, export, package)
            exported[export.dialect] += [(spec.name, name) for name in (export.class_name, *export.aliases)]
    for dialect, classes in exported.items():
        rendered[f"{dialect}/__init__.py"] = render_dialect_init(dialect, classes, package)
    files.update(format_python_files(rendered))
    return dict(sorted(files.items()))


def generated_dir() -> Path:
    import optforge.generated

    return Path(optforge.generated.__path__[0])


def _extras(files: dict[str, str], root: Path, owned: str) -> list[Path]:
    """Files matching the glob `owned` under `root` that `files` does not give."""
    return sorted(p for p in root.glob(owned) if p.relative_to(root).as_posix() not in files)


def stale_files(files: dict[str, str], root: Path, owned: str = "**/*.py") -> list[str]:
    """What differs between `files` and `root`: changed, missing, and extra files among `owned`."""
    problems = []
    for rel, text in files.items():
        path = root / rel
        if not path.exists():
            problems.append(f"missing: {rel}")
        elif path.read_text() != text:
            problems.append(f"changed: {rel}")
    problems += [f"extra: {p.relative_to(root).as_posix()}" for p in _extras(files, root, owned)]
    return problems


def write_files(files: dict[str, str], root: Path, owned: str = "**/*.py") -> list[str]:
    """Write `files` under `root`, remove the `owned` files nothing gives; return what changed."""
    changed = stale_files(files, root, owned)
    for path in _extras(files, root, owned):
        path.unlink()
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    return changed
