"""Lion, AdaBelief and Adan (no torch.optim equivalent) against float64 NumPy loops written
from their papers' algorithms, over 12 steps, several tensors, float32 and float64."""

import numpy as np
import pytest

import optforge

STEPS = 12
SHAPES = [(7,), (3, 5)]


def lion(w, grads, lr, beta1=0.9, beta2=0.99, weight_decay=0.0):
    m = np.zeros_like(w)
    for g in grads:  # Chen et al. 2023, Algorithm 2
        c = beta1 * m + (1 - beta1) * g
        w = w - lr * (np.sign(c) + weight_decay * w)
        m = beta2 * m + (1 - beta2) * g
    return w


def adabelief(w, grads, lr, beta1=0.9, beta2=0.999, eps=1e-16, weight_decay=0.0):
    m, s = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, 1):  # Zhuang et al. 2020, Algorithm 2, with L2 decay
        g = g + weight_decay * w
        m = beta1 * m + (1 - beta1) * g
        s = beta2 * s + (1 - beta2) * (g - m) ** 2 + eps
        m_hat, s_hat = m / (1 - beta1**t), s / (1 - beta2**t)
        w = w - lr * m_hat / (np.sqrt(s_hat) + eps)
    return w


def adan(w, grads, lr, beta1=0.98, beta2=0.92, beta3=0.99, eps=1e-8, weight_decay=0.0):
    m, d, n = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    previous = None
    for t, g in enumerate(grads, 1):  # Xie et al. 2022, Algorithm 1 (as the authors' code)
        diff = np.zeros_like(g) if previous is None else g - previous
        m = beta1 * m + (1 - beta1) * g
        d = beta2 * d + (1 - beta2) * diff
        n = beta3 * n + (1 - beta3) * (g + beta2 * diff) ** 2
        update = (m / (1 - beta1**t) + beta2 * d / (1 - beta2**t)) / (np.sqrt(n / (1 - beta3**t)) + eps)
        w = (w - lr * update) / (1 + lr * weight_decay)
        previous = g
    return w


CASES = [
    ("Lion", lion, dict(lr=1e-3)),
    ("Lion", lion, dict(lr=1e-3, betas=(0.8, 0.95), weight_decay=0.5)),
    ("AdaBelief", adabelief, dict(lr=1e-2)),
    ("AdaBelief", adabelief, dict(lr=1e-2, betas=(0.8, 0.9), eps=1e-10, weight_decay=0.1)),
    ("Adan", adan, dict(lr=1e-2)),
    ("Adan", adan, dict(lr=1e-2, betas=(0.9, 0.9, 0.95), weight_decay=0.02)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, reference, kwargs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_matches_the_papers_algorithm(name, reference, kwargs, dtype):
    rng = np.random.default_rng(7)
    values = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(STEPS)]
    opt = getattr(optforge.optim, name)(
        [optforge.Parameter(v.copy(), f"p{i}") for i, v in enumerate(values)], **kwargs
    )
    for step_grads in grads:
        opt(tuple(step_grads))
    ref_kwargs = dict(kwargs)
    for key, names in (("betas", ("beta1", "beta2", "beta3")),):
        if key in ref_kwargs:
            ref_kwargs.update(zip(names, ref_kwargs.pop(key)))
    tol = dict(atol=1e-5, rtol=2e-5) if dtype == np.float32 else dict(atol=1e-12, rtol=1e-10)
    for i, (p, w0) in enumerate(zip(opt.parameters, values)):
        expected = reference(w0.astype(np.float64), [g[i].astype(np.float64) for g in grads], **ref_kwargs)
        np.testing.assert_allclose(p.data, expected, **tol, err_msg=f"{name} tensor {i}")
