"""An independent NumPy implementation of LAMB as the issue and MindSpore's Ascend kernels state it:
decoupled weight decay inside the update, trust ratio ||w|| / ||update||, 1 when either norm
is 0, no clipping, t from 1."""

import numpy as np


def lamb_trajectory(
    w0, grads, lrs, *, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0, centralize=False, dtype=np.float64
):
    w = np.array(w0, dtype=np.float64)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    out = []
    for k, g in enumerate(grads):
        t = k + 1
        g = np.array(g, dtype=np.float64)
        if centralize and g.ndim >= 2:
            g = g - g.mean(axis=tuple(range(1, g.ndim)), keepdims=True)
        wd = weight_decay(k) if callable(weight_decay) else weight_decay
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        update = (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + eps) + wd * w
        w_norm, u_norm = np.linalg.norm(w), np.linalg.norm(update)
        ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
        w = w - ratio * lrs[k] * update
        out.append(w.astype(dtype))
    return out
