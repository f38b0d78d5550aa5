"""An independent NumPy port of MindSpore 2.10's `nn.Adam` step, for one tensor.

Written from mindspore-semantics.md (sections 2.3-2.5 and 5), not from the
spec: the order of operations is MindSpore's (decay, centralise, unscale;
beta powers accumulated by multiplication; P.Adam / ApplyAdamWithAmsgradV2
arithmetic). With dtype=float32 it reproduces MindSpore's golden numbers to
about 1e-7; with float64 it is the float64 reference.
"""

from __future__ import annotations

import numpy as np


def adam_trajectory(
    w0,
    grads,
    lrs,
    *,
    beta1=0.9,
    beta2=0.999,
    eps=1e-8,
    weight_decay=0.0,
    loss_scale=1.0,
    use_nesterov=False,
    use_amsgrad=False,
    centralize=False,
    dtype=np.float32,
):
    """`w` after each step. `lrs[k]` and `weight_decay` (a number or a callable
    of k) are the values MindSpore uses at step k = 0, 1, ...; `grads` are the
    raw (loss-scaled) gradients."""
    f = np.dtype(dtype).type
    w = np.array(w0, dtype=dtype)
    m, v, vhat = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    b1, b2, e = f(beta1), f(beta2), f(eps)
    beta1_power, beta2_power = f(1), f(1)
    out = []
    for k, g in enumerate(grads):
        g = np.array(g, dtype=dtype)
        wd = weight_decay(k) if callable(weight_decay) else weight_decay
        if callable(weight_decay) or wd > 0:
            g = w * f(wd * loss_scale) + g
        if centralize and g.ndim >= 2:
            g = g - g.mean(axis=tuple(range(1, g.ndim)), keepdims=True)
        if loss_scale != 1.0:
            g = g * f(1.0 / loss_scale)
        lr = f(lrs[k])
        beta1_power = beta1_power * b1
        beta2_power = beta2_power * b2
        new_lr = lr * np.sqrt(f(1) - beta2_power) / (f(1) - beta1_power)
        m = m + (g - m) * (f(1) - b1)
        v = v + (g * g - v) * (f(1) - b2)
        if use_amsgrad:  # use_nesterov is ignored, as in MindSpore
            vhat = np.maximum(vhat, v)
            w = w - new_lr * m / (np.sqrt(vhat) + e)
        elif use_nesterov:
            w = w - new_lr * (m * b1 + (f(1) - b1) * g) / (np.sqrt(v) + e)
        else:
            w = w - new_lr * m / (np.sqrt(v) + e)
        out.append(w.copy())
    return out
