"""`optforge`: build generated/ from specs/, check it, show what a spec compiles to."""

from __future__ import annotations

import argparse
import importlib.util
import keyword
import sys
from pathlib import Path

from optforge.compiler import build
from optforge.compiler.spec import SpecError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="optforge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    build_cmd = commands.add_parser("build", help="regenerate generated/ from specs/")
    build_cmd.add_argument(
        "--check", action="store_true", help="exit 1 if generated/ is stale; write nothing"
    )
    build_cmd.add_argument("--out", type=Path, help="folder to write (default: the checkout's generated/)")
    build_cmd.add_argument(
        "--specs",
        type=Path,
        help="your own specs: every .py file in this folder that defines SPEC (needs --out); "
        "the output is a package of its own that imports optforge's run-time only",
    )
    build_cmd.add_argument("--package", help="its import name (default: the name of the --out folder)")

    show = commands.add_parser("show", help="print what a spec compiles to")
    show.add_argument("name", help="a built-in spec's name (adam), or the path of your spec file (lion.py)")
    show.add_argument(
        "--part",
        choices=("cpu", "cuda", "host", "nn", "optim", "torch"),
        default="cpu",
        help="cpu: the Numba kernels (default); cuda: the CUDA kernels; host: step-level scalars; "
        "nn, optim, torch: the class in that dialect",
    )

    docs = commands.add_parser("docs", help="write docs/ (one page per optimizer class) from specs/")
    docs.add_argument("--check", action="store_true", help="exit 1 if docs/ is stale; write nothing")
    docs.add_argument("--out", type=Path, help="docs folder (default: docs/ beside generated/)")
    docs.add_argument("--specs", type=Path, help="your own specs' folder (needs --out)")

    site = commands.add_parser("site", help="build the static HTML site (MkDocs, math rendered offline)")
    site.add_argument("--out", type=Path, help="site folder (default: site/ beside docs/)")

    new = commands.add_parser("new", help="write a spec skeleton and its test skeleton")
    new.add_argument("name", help="module name of the new spec, e.g. lion")
    new.add_argument("--title", help="class name (default: the name in CamelCase)")
    new.add_argument(
        "--dir",
        type=Path,
        help="your project's folder for the spec and its test (default: the current folder; "
        "inside optforge's own checkout: its specs/ and tests/)",
    )

    bench = commands.add_parser(
        "bench", help="time optimizer steps against the bandwidth limit, torch.optim and DeepSpeed"
    )
    from optforge.bench import add_arguments

    add_arguments(bench)

    args = parser.parse_args(argv)
    commands_run = {
        "build": _build,
        "show": _show,
        "docs": _docs,
        "site": _site,
        "new": _new,
        "bench": _bench,
    }
    try:
        return commands_run[args.command](args)
    except SpecError as error:
        print(f"optforge: spec error: {error}", file=sys.stderr)
        return 2
    except (UsageError, FileNotFoundError, FileExistsError) as error:
        print(f"optforge: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        extra = EXTRAS.get((error.name or "").partition(".")[0])
        if extra is None:
            raise
        print(
            f"optforge: `optforge {args.command}` needs {error.name}: "
            f'python -m pip install "optforge[{extra}]"{CPU_TORCH if extra in ("torch", "bench") else ""}',
            file=sys.stderr,
        )
        return 2


# The package a command may miss -> the extra that brings it.
EXTRAS = {"torch": "torch", "mkdocs": "docs", "material": "docs", "matplotlib": "bench", "deepspeed": "bench"}
CPU_TORCH = " (on a CPU-only machine, `pip install torch==2.13.0` first: the CPU wheel)"


class UsageError(Exception):
    """A command that cannot run as asked: one line saying why and what to do instead."""


def in_checkout() -> bool:
    """Is this optforge a source checkout (specs/, tests/ beside generated/), not an install?"""
    root = build.generated_dir().parent
    return (root / "specs").is_dir() and (root / "tests").is_dir()


def _user_specs(args, command: str) -> list | None:
    """The specs of `--specs DIR` (which needs `--out`, not DIR itself nor a folder holding
    it), or None for optforge's own."""
    if args.specs is None:
        if not in_checkout() and (args.out is None or command == "docs"):
            raise UsageError(
                f"this optforge is installed, not a checkout: `optforge {command}` works on its own "
                f"specs only in a checkout; for yours run `optforge {command} --specs DIR --out DIR`"
            )
        return None
    if args.out is None:
        raise UsageError(f"`optforge {command} --specs` needs --out DIR (where to write)")
    specs, out = args.specs.resolve(), args.out.resolve()
    if specs == out or out in specs.parents:
        raise UsageError(f"--out {args.out} holds the specs folder; write the output to a folder of its own")
    return build.load_spec_files(args.specs)


def _bench(args) -> int:
    from optforge.bench.cpu import run_from_arguments

    return run_from_arguments(args)


def _check_or_write(args, files: dict[str, str], root: Path, stale, write, what: str, rebuild: str) -> int:
    """`--check`: list what differs and exit 1 if anything does; otherwise write."""
    if args.check:
        problems = stale(files, root)
        for line in problems:
            print(line)
        if problems:
            print(f"optforge: {root} is stale; run `{rebuild}`", file=sys.stderr)
            return 1
        print(f"optforge: {root} is current ({len(files)} {what})")
        return 0
    changed = write(files, root)
    for line in changed:
        print(line)
    print(f"optforge: wrote {root} ({len(files)} {what}, {len(changed)} changed)")
    return 0


def _build(args) -> int:
    specs = _user_specs(args, "build")
    if specs is None:
        files = build.build_files(build.load_specs())
        root = args.out or build.generated_dir()
        rebuild = "optforge build"
    else:
        package = args.package or args.out.resolve().name
        if not package.isidentifier() or keyword.iskeyword(package) or package == "optforge":
            raise UsageError(f"'{package}' cannot be the package's import name; pass --package NAME")
        files = build.build_files(specs, package=package)
        rebuild = f"optforge build --specs {args.specs} --out {args.out}"
        return _check_or_write(args, files, args.out, build.stale_owned, build.write_owned, "files", rebuild)
    return _check_or_write(args, files, root, build.stale_files, build.write_files, "files", rebuild)


def _docs(args) -> int:
    from optforge.compiler import docs

    specs = _user_specs(args, "docs")
    if specs is not None:
        files = docs.docs_files(specs, user=True)
        rebuild = f"optforge docs --specs {args.specs} --out {args.out}"
        return _check_or_write(args, files, args.out, build.stale_owned, build.write_owned, "pages", rebuild)
    files = docs.docs_files(build.load_specs())
    root = args.out or build.generated_dir().parent / "docs"
    return _check_or_write(
        args, files, root, docs.stale_pages, docs.write_pages, "generated pages", "optforge docs"
    )


def _site(args) -> int:
    from optforge.compiler import site

    root = build.generated_dir().parent
    if not in_checkout():
        raise UsageError(
            "this optforge is installed, not a checkout: `optforge site` builds the checkout's site; "
            "for your own specs' pages run `optforge docs --specs DIR --out DIR`"
        )
    if importlib.util.find_spec("mkdocs") is None:
        raise ModuleNotFoundError("No module named 'mkdocs'", name="mkdocs")
    if _docs(argparse.Namespace(check=False, out=None, specs=None)) != 0:
        return 1
    return site.build_site(root, args.out or root / "site")


def _new(args) -> int:
    from optforge.compiler.render import environment

    name = args.name.lower()
    if not name.isidentifier():
        print(f"optforge: '{args.name}' is not a valid module name", file=sys.stderr)
        return 2
    title = args.title or "".join(part.capitalize() for part in name.split("_"))
    own = args.dir is None and in_checkout()  # optforge's own checkout: specs/ and tests/
    if own:
        root = build.generated_dir().parent
        spec_path, test_path = root / "specs" / f"{name}.py", root / "tests" / f"test_{name}.py"
    else:
        folder = args.dir or Path.cwd()
        if not folder.is_dir():
            raise UsageError(f"{folder} is not a folder; create it or pass --dir FOLDER")
        spec_path, test_path = folder / f"{name}.py", folder / f"test_{name}.py"
    for path in (spec_path, test_path):
        if path.exists():
            print(f"optforge: {path} exists; not overwriting it", file=sys.stderr)
            return 1
    context = dict(name=name, title=title, own=own)
    texts = {  # both rendered before either is written: never a half-written pair
        spec_path: environment.get_template("new_spec.py.j2").render(**context),
        test_path: environment.get_template("new_test.py.j2").render(**context),
    }
    for path, text in texts.items():
        path.write_text(text)
        print(f"wrote {path}")
    if own:
        print(f'next: fill in the spec, add "{name}" to ALL in specs/__init__.py, run `optforge build`')
    else:
        print(f"next: fill in the spec and the test's reference, then `python -m pytest {test_path}`")
    return 0


def _show(args) -> int:
    if args.name.endswith(".py"):  # a user's spec file
        path = Path(args.name)
        if not path.is_file():
            raise FileNotFoundError(f"no spec file at {path}")
        spec = build.load_spec_file(path, f"_optforge_show_{path.stem}").SPEC
    else:
        (spec,) = build.load_specs([args.name.lower()])
    files = build.build_files([spec])
    rel = f"{args.part}/{spec.name}.py"
    if rel not in files:
        print(f"optforge: {spec.name} has no {args.part} output", file=sys.stderr)
        return 2
    sys.stdout.write(files[rel])
    return 0


if __name__ == "__main__":
    sys.exit(main())
