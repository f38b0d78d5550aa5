"""`optforge`: build generated/ from specs/, check it, show what a spec compiles to."""

from __future__ import annotations

import argparse
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
    build_cmd.add_argument("--out", type=Path, help="folder to write (default: the installed generated/)")

    show = commands.add_parser("show", help="print what a spec compiles to")
    show.add_argument("name", help="spec name, e.g. adam")
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

    site = commands.add_parser("site", help="build the static HTML site (MkDocs, math rendered offline)")
    site.add_argument("--out", type=Path, help="site folder (default: site/ beside docs/)")

    new = commands.add_parser("new", help="write a spec skeleton and its test skeleton")
    new.add_argument("name", help="module name of the new spec, e.g. lion")
    new.add_argument("--title", help="class name (default: the name in CamelCase)")

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
    files = build.build_files(build.load_specs())
    root = args.out or build.generated_dir()
    return _check_or_write(args, files, root, build.stale_files, build.write_files, "files", "optforge build")


def _docs(args) -> int:
    from optforge.compiler import docs

    files = docs.docs_files(build.load_specs())
    root = args.out or build.generated_dir().parent / "docs"
    return _check_or_write(
        args, files, root, docs.stale_pages, docs.write_pages, "generated pages", "optforge docs"
    )


def _site(args) -> int:
    from optforge.compiler import site

    root = build.generated_dir().parent
    if _docs(argparse.Namespace(check=False, out=None)) != 0:
        return 1
    return site.build_site(root, args.out or root / "site")


def _new(args) -> int:
    from optforge.compiler.render import environment

    name = args.name.lower()
    if not name.isidentifier():
        print(f"optforge: '{args.name}' is not a valid module name", file=sys.stderr)
        return 2
    title = args.title or "".join(part.capitalize() for part in name.split("_"))
    root = build.generated_dir().parent
    targets = {
        root / "specs" / f"{name}.py": "new_spec.py.j2",
        root / "tests" / f"test_{name}.py": "new_test.py.j2",
    }
    for path in targets:
        if path.exists():
            print(f"optforge: {path} exists; not overwriting it", file=sys.stderr)
            return 1
    for path, template in targets.items():
        path.write_text(environment.get_template(template).render(name=name, title=title))
        print(f"wrote {path}")
    print(f'next: fill in the spec, add "{name}" to ALL in specs/__init__.py, run `optforge build`')
    return 0


def _show(args) -> int:
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
