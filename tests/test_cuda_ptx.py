"""Every generated CUDA kernel compiles to PTX for sm_90 with the real Numba CUDA compiler.

The simulator runs kernels as Python; this proves the same source compiles for a GPU
(NVVM from the CUDA 12 wheels; no GPU needed). It also checks the typed printing at the
bottom: a float32 kernel without a reduction does no float64 arithmetic at all.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba.cuda")


def nvvm_available() -> bool:
    code = "from numba.cuda.cudadrv.nvvm import NVVM; NVVM()"
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def compiled():
    if not nvvm_available():
        pytest.skip("NVVM not found (install the `cuda` extra: numba-cuda[cu12])")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    script = Path(__file__).with_name("ptx_check.py")
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=1200
    )
    return result


def test_every_cuda_kernel_compiles_for_sm90(compiled):
    assert compiled.returncode == 0, compiled.stdout[-3000:] + compiled.stderr[-3000:]
    lines = compiled.stdout.splitlines()
    assert len(lines) >= 40 and all(line.startswith("OK ") for line in lines)


def test_float32_kernels_without_reductions_do_no_float64_arithmetic(compiled):
    for line in compiled.stdout.splitlines():
        _, name, ops = line.split()
        count = int(ops.split("=")[1])
        # Kernels that sum (norms, RMS, row/column/matrix means) do so in float64, on purpose.
        summing = ("stage1", "finalize", "lines", "pass1", "pass2")
        if "_f32" in name and not any(part in name for part in summing):
            # A factored pass 3 reads its matrix's mean as the float64 sum over the matrix's rows
            # divided by their count (added up over the ranks of a split matrix): one division per
            # chunk, none per element.
            allowed = 1 if "factored_pass3" in name else 0
            assert count <= allowed, line
