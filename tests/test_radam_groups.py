"""optforge.optim.RAdam's param_groups: per-group lr, betas, eps and weight decay, one step counter."""

import numpy as np

import optforge
from optforge.optim import RAdam


def radam_reference(w, grads, lrs, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """float32 port of mindspore-semantics.md 4.3 (bit-exact against MindSpore there)."""
    f = np.float32
    w = w.astype(f)
    m, v = np.zeros_like(w), np.zeros_like(w)
    b1, b2, e, wd = f(betas[0]), f(betas[1]), f(eps), f(weight_decay)
    for k, g in enumerate(grads):
        t, lr = k + 1, f(lrs[k])
        if wd != 0:
            g = w * wd + g
        m = m * b1 + g * (f(1) - b1)
        v = v * b2 + (g * g) * (f(1) - b2)
        bc1, bc2 = f(1) - b1 ** f(t), f(1) - b2 ** f(t)
        rho_inf = f(2) / (f(1) - b2) - f(1)
        rho_t = rho_inf - f(2 * t) * (b2 ** f(t)) / bc2
        mh = m / bc1
        if rho_t > 5:
            rect = np.sqrt(
                (rho_t - f(4)) * (rho_t - f(2)) * rho_inf / ((rho_inf - f(4)) * (rho_inf - f(2)) * rho_t)
            )
            w = w - mh * lr * (np.sqrt(bc2) / (np.sqrt(v) + e)) * rect
        else:
            w = w - mh * lr
    return w


def test_groups_override_lr_betas_eps_and_weight_decay(rng):
    a = optforge.Parameter(rng.standard_normal((3, 4)).astype(np.float32), "a")
    b = optforge.Parameter(rng.standard_normal(7).astype(np.float32), "b")
    a0, b0 = a.asnumpy(), b.asnumpy()
    opt = RAdam(
        [{"params": [a], "lr": 0.05, "betas": (0.8, 0.9), "eps": 1e-4}, {"params": [b], "weight_decay": 0.1}],
        lr=0.01,
    )
    assert opt.param_groups[1]["betas"] == (0.9, 0.999) and opt.param_groups[0]["weight_decay"] == 0.0
    grads = [
        (rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(7).astype(np.float32))
        for _ in range(12)
    ]
    for g in grads:
        opt(g)
    np.testing.assert_allclose(
        a.data,
        radam_reference(a0, [g[0] for g in grads], [0.05] * 12, (0.8, 0.9), 1e-4),
        atol=1e-5,
        rtol=2e-5,
    )
    np.testing.assert_allclose(
        b.data,
        radam_reference(b0, [g[1] for g in grads], [0.01] * 12, weight_decay=0.1),
        atol=1e-5,
        rtol=2e-5,
    )


def test_a_learning_rate_set_in_param_groups_is_used_at_the_next_step(rng):
    w = optforge.Parameter(np.zeros(4, np.float32), "w")
    opt = RAdam([w], lr=0.1)
    g = np.ones(4, np.float32)
    opt((g,))
    opt.param_groups[0]["lr"] = 0.5
    opt((g,))
    np.testing.assert_allclose(w.data, -(0.1 + 0.5), rtol=1e-6)  # unrectified: lr * m_hat = lr
    assert opt.global_step == 2
