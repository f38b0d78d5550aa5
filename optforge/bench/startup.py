"""Start-up cost: a new process imports optforge and takes its first Adam step.

Measured in fresh subprocesses with their own Numba cache folder: first with the
folder empty (every kernel the step needs is compiled), then again with the
folder the first run filled (the kernels load from Numba's cache).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Run in the child: the time from interpreter start-up to the end of the first step.
CHILD = """
import time
start = time.perf_counter()
import numpy as np
import optforge
imported = time.perf_counter()
w = optforge.Parameter(np.zeros(1000, np.float32), "w")
opt = optforge.nn.Adam([w], learning_rate=1e-3)
opt((np.ones(1000, np.float32),))
done = time.perf_counter()
print(imported - start, done - start)
"""


def measure_startup() -> dict:
    """{'cold_s', 'warm_s', 'import_s'}: the first step in a new process, without and with a cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}

        def child() -> tuple[float, float]:
            out = subprocess.run(
                [sys.executable, "-c", CHILD],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            )
            imported, first_step = map(float, out.stdout.split())
            return imported, first_step

        _, cold = child()
        imported, warm = child()
    return {"cold_s": cold, "warm_s": warm, "import_s": imported}


def run_startup(out_dir: Path) -> dict:
    result = measure_startup()
    print(
        f"import optforge: {result['import_s']:.2f} s; first Adam step in a new process, "
        f"cache warm: {result['warm_s']:.2f} s, cache empty (compiling): {result['cold_s']:.2f} s"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "startup.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out_dir / 'startup.json'}")
    return result
