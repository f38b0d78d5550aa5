"""Templates to formatted source text."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).parent / "templates"
LINE_LENGTH = 100

environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)
environment.filters["add_suffix"] = lambda text, suffix: f"{text}{suffix}"
environment.filters["pyrepr"] = repr
environment.filters["format_len"] = lambda name: f"len({name})"


def render(template: str, **context) -> str:
    """Render `template` and format the result as Python source."""
    return format_python(environment.get_template(template).render(**context))


def format_python(source: str) -> str:
    """`ruff format` with fixed settings, so every machine gives the same bytes."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "format",
            "--isolated",
            f"--line-length={LINE_LENGTH}",
            "--target-version=py310",
            "-",
        ],
        input=source,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"ruff could not format generated code:\n{result.stderr}\n{source}")
    return result.stdout
