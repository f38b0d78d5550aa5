"""`optforge.compile_spec`: a spec file from anywhere, compiled into a per-user cache.

The generated modules of a spec outside optforge (a user's own optimizer) are written
to a cache folder, never into site-packages: `$OPTFORGE_CACHE_DIR` if set, else the
platform's user cache folder (`~/.cache/optforge` or `$XDG_CACHE_HOME/optforge` on
Linux, `~/Library/Caches/optforge` on macOS, `%LOCALAPPDATA%\\optforge\\Cache` on
Windows). Each compile is keyed by the spec file's bytes (and those of the other .py
files beside it, which it may import), optforge's version and the compiler's own
source, so an edit recompiles and an unchanged spec does not: a second
process finds the modules (and Numba's cache of their kernels beside them) and imports
them without SymPy or jinja2, which are imported only when a compile is needed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

CACHE_ENV = "OPTFORGE_CACHE_DIR"
MANIFEST = "optforge-spec.json"  # what a compiled folder holds: the spec's name and exports
_fingerprint: str | None = None


def cache_root() -> Path:
    """Where compiled specs go: `$OPTFORGE_CACHE_DIR`, else the platform's user cache folder."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser().resolve()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "optforge"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "optforge" / "Cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "optforge"


class CompiledSpec:
    """The classes of one compiled spec, one attribute per exported dialect.

    ``compiled.optim.QHAdam``, ``compiled.torch.QHAdam``, ``compiled.nn.X``: each
    dialect's module is imported on first use (``.torch`` imports torch).
    """

    def __init__(self, name: str, package: str, exports: dict[str, list[str]], folder: Path):
        self.name = name
        self.package = package  # the import name of its generated modules
        self.exports = exports  # dialect -> class names
        self.folder = folder

    def __getattr__(self, dialect: str) -> ModuleType:
        exports = self.__dict__.get("exports", {})
        if dialect not in exports:
            raise AttributeError(
                f"spec '{self.__dict__.get('name')}' exports no {dialect!r} dialect; it exports "
                f"{sorted(exports) or 'nothing'}"
            )
        return importlib.import_module(f"{self.package}.{dialect}")

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self.exports))

    def __repr__(self) -> str:
        classes = ", ".join(f"{d}.{c}" for d, names in self.exports.items() for c in names)
        return f"CompiledSpec({self.name!r}: {classes}; {self.folder})"


def compile_spec(source) -> CompiledSpec:
    """Compile the spec in `source` (a path to a ``.py`` file defining ``SPEC``, or such a
    module) and return its classes: ``compile_spec("qhadam.py").optim.QHAdam``.

    A spec is checked when it is compiled: a mistake is a SpecError naming the file and
    the rule. The result is cached (see the module's doc); the same file compiles once.
    """
    path = _source_path(source)
    digest = hashlib.sha256(b"\0".join([_version().encode(), _compiler_fingerprint().encode()]))
    # The spec's file, and the other .py files beside it, which it may import (its helpers):
    # editing any of them compiles anew.
    for file in [path, *sorted(p for p in path.parent.glob("*.py") if p != path)]:
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    key = digest.hexdigest()[:20]
    root = cache_root()
    folder_name = f"{_stem(path)}_{key}"
    package = f"optforge_spec_{folder_name}"
    folder = root / package
    if not (folder / MANIFEST).exists():
        _compile_into(root, package, path, source)
    manifest = json.loads((folder / MANIFEST).read_text())
    _import_package(package, folder)
    return CompiledSpec(manifest["name"], package, manifest["exports"], folder)


def _import_package(package: str, folder: Path) -> None:
    """Import the compiled folder under its package name, from that folder (not through
    sys.path, where another cache root may hold a folder of the same name)."""
    module = sys.modules.get(package)
    if module is not None and Path(module.__path__[0]) == folder:
        return
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]  # from another cache root: its classes keep working, new ones come from here
    spec = importlib.util.spec_from_file_location(
        package, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module
    spec.loader.exec_module(module)


def _source_path(source) -> Path:
    if isinstance(source, ModuleType):
        file = getattr(source, "__file__", None)
        if file is None or not hasattr(source, "SPEC"):
            raise TypeError(f"compile_spec: module {source.__name__!r} has no file or no SPEC")
        return Path(file).resolve()
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"compile_spec: no spec file at {path}")
        return path
    raise TypeError(f"compile_spec takes a spec file's path or its module, not {type(source).__name__}")


def _stem(path: Path) -> str:
    return re.sub(r"\W", "_", path.stem).lower() or "spec"


def _compile_into(root: Path, package: str, path: Path, source) -> None:
    """Build the spec into `root/package`: written in a temporary folder, then renamed, so a
    reader (another process) sees a complete folder or none."""
    try:
        from optforge.compiler import build
    except ImportError as error:  # pragma: no cover - sympy/jinja2 are dependencies
        raise ImportError(f"compiling a spec needs optforge's build dependencies: {error}") from None
    module = source if isinstance(source, ModuleType) else build.load_spec_file(path, f"{package}__spec")
    spec = getattr(module, "SPEC", None)
    if spec is None:
        raise ValueError(f"compile_spec: {path} defines no SPEC")
    files = build.build_files([spec], package=package)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{package}-", dir=root))
    try:
        build.write_files(files, staging)
        exports: dict[str, list[str]] = {}
        for export in spec.exports:
            exports.setdefault(export.dialect, []).append(export.class_name)
        manifest = {"name": spec.name, "exports": exports, "source": str(path)}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        try:
            os.replace(staging, root / package)
        except OSError:  # another process finished the same compile first: keep its folder
            if not (root / package / MANIFEST).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    importlib.invalidate_caches()


def _version() -> str:
    import optforge

    return optforge.__version__


def _compiler_fingerprint() -> str:
    """A digest of the compiler's sources (templates included), read as bytes: an optforge
    whose compiler changed without a new version still recompiles, and nothing is imported."""
    global _fingerprint
    if _fingerprint is None:
        location = importlib.util.find_spec("optforge.compiler").submodule_search_locations[0]
        digest = hashlib.sha256()
        for file in sorted(Path(location).rglob("*")):
            if file.suffix in (".py", ".j2") and "__pycache__" not in file.parts:
                digest.update(file.relative_to(location).as_posix().encode() + b"\0" + file.read_bytes())
        _fingerprint = digest.hexdigest()
    return _fingerprint
