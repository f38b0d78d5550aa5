"""The static HTML site: MkDocs over docs/, with math rendered by KaTeX, offline.

KaTeX comes from the npm registry at build time into build/katex (nothing of
it is committed) and is served from the site itself: the pages load no CDN,
since the machines we build on, and many users' clusters, have no internet.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

KATEX = "katex@0.16.22"


def katex_assets(root: Path) -> Path:
    """The KaTeX dist folder, installed with npm into build/katex on first use."""
    prefix = root / "build" / "katex"
    dist = prefix / "node_modules" / "katex" / "dist"
    if not (dist / "katex.min.js").exists():
        if shutil.which("npm") is None:
            raise FileNotFoundError("building the site needs npm (for KaTeX): install Node.js")
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--silent", KATEX],
            check=True,
        )
    return dist


def build_site(root: Path, out: Path) -> int:
    dist = katex_assets(root)
    target = root / "docs" / "assets" / "katex"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for name in ("katex.min.js", "katex.min.css"):
        shutil.copy2(dist / name, target / name)
    shutil.copytree(dist / "fonts", target / "fonts")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's banner about MkDocs 2
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=root,
        env=env,
    )
    if result.returncode == 0:
        print(f"optforge: site written to {out} (open {out / 'index.html'})")
    return result.returncode
