"""The matrix functions a matrix stage calls (compiler/passes/matrix.py), once per tensor.

A matrix stage runs between two element stages: the one before stores each tensor's
argument into a scratch matrix (`Scratch.matrices`, float64, the tensors one after the
other at their offsets in `Scratch.matrix_shapes`), the function here overwrites that
matrix with its result, and the stage after reads it. The products are NumPy's (BLAS).
"""

from __future__ import annotations

import numpy as np

_F32 = np.float32


def matrix_view(scratch, index: int, tensor: int) -> np.ndarray:
    """Tensor `tensor`'s scratch matrix number `index`, shaped (rows, columns): a view."""
    offset, rows, cols = (int(x) for x in scratch.matrix_shapes[tensor])
    return scratch.matrices[index, offset : offset + rows * cols].reshape(rows, cols)


def _bf16(x) -> np.ndarray:
    """`x` rounded to bfloat16 (to nearest, ties to even, as torch's `.bfloat16()`), held as
    float32: the upper 16 bits of each float32 after adding half of the lower ones' unit
    (NaN kept NaN). No ml_dtypes needed."""
    x = np.array(x, _F32, ndmin=1)
    bits = x.view(np.uint32)
    rounded = (
        (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    ).view(_F32)
    return np.where(np.isnan(x), x, rounded)


def _fma(a, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """float32 `a*x + y` rounded once: in float64, where `a*x` of a float32 and a bfloat16 is
    exact (32 significant bits), then rounded to float32."""
    return (np.float64(a) * x.astype(np.float64) + y.astype(np.float64)).astype(_F32)


def newton_schulz(x: np.ndarray, a, b, c, steps, eps) -> None:
    """`x` (2-D, float64 holding float32 or float64 values) overwritten with its Newton-Schulz
    orthogonalisation, in torch.optim.Muon's arithmetic (`_zeropower_via_newtonschulz`):
    the matrix in bfloat16, transposed while it has more rows than columns, divided by its
    norm clamped to at least eps, then `steps` times A = X X^T, B = b A + c A A and
    X = a X + B X, each operation's result rounded to bfloat16. torch's bfloat16 matrix
    products and norm accumulate in float32; these are NumPy's float32 products and sums of
    the bfloat16 values. Bit for bit torch's for matrices up to about 16 on a side (the tests'
    sizes); on larger ones torch's bfloat16 CPU products now and then round differently, and
    an element of the result differs by a bfloat16 unit."""
    steps = int(steps)
    if steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    tall = x.shape[0] > x.shape[1]
    m = _bf16(x.T if tall else x)
    # torch: ortho_grad.div_(ortho_grad.norm().clamp(min=eps)), every value a bfloat16
    norm = _bf16(np.sqrt(np.sum(m * m, dtype=_F32)))[0]
    norm = max(norm, _bf16(eps)[0])
    m = _bf16(m / norm)
    a, b, c = _F32(a), _F32(b), _F32(c)
    for _ in range(steps):
        gram = _bf16(m @ m.T)
        # torch.addmm(gram, gram, gram, beta=b, alpha=c) on the CPU: the product accumulated in
        # float32, scaled by alpha and rounded, then fma(beta, gram, that), rounded to bfloat16
        update = _bf16(_fma(b, gram, c * (gram @ gram)))
        m = _bf16(_fma(a, m, update @ m))  # torch.addmm(m, update, m, beta=a)
    x[...] = m.T if tall else m
