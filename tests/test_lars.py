"""nn.LARS around Momentum and SGD: MindSpore's LARSUpdate example, a float64 reference over
12 steps (weight decay, loss scale, the filter, clipping, groups), and its checks.

MindSpore 2.10 has no CPU kernel for LARSUpdate, so there is no recording; the reference is
the operator's documented formula (and its Ascend kernel's clip to [0, 1])."""

import numpy as np
import pytest

import optforge
from optforge.nn import LARS, SGD, Momentum

SHAPES = {"dense.weight": (3, 4), "dense.bias": (5,), "conv.weight": (2, 3, 2)}


def lars_reference(w0, grads, lr, momentum, wd, loss_scale, eps, coef, use_clip, lars_names):
    """Momentum behind LARS, every value in float64."""
    w = {n: v.astype(np.float64) for n, v in w0.items()}
    accum = {n: np.zeros_like(v) for n, v in w.items()}
    for step_grads in grads:
        for n in w:
            g = step_grads[n].astype(np.float64) / loss_scale
            if n in lars_names:
                decay = 0.0 if "beta" in n or "gamma" in n else wd
                w_norm, g_norm = np.linalg.norm(w[n]), np.linalg.norm(g)
                coeff = coef * w_norm / (g_norm + decay * w_norm + eps)
                if use_clip:
                    coeff = min(max(coeff / lr, 0.0), 1.0)
                g = coeff * (g + decay * w[n])
            accum[n] = momentum * accum[n] + g
            w[n] = w[n] - lr * accum[n]
    return w


def inputs(dtype, seed=7):
    rng = np.random.default_rng(seed)
    w0 = {n: rng.standard_normal(s).astype(dtype) for n, s in SHAPES.items()}
    grads = [{n: (rng.standard_normal(s) * 0.5).astype(dtype) for n, s in SHAPES.items()} for _ in range(12)]
    return w0, grads


def test_lars_update_matches_mindspore_documented_example():
    """The example of mindspore.ops.LARSUpdate: weight decay 0, learning rate 1."""
    w = optforge.Parameter(np.array([[0.5, 0.8, 0.2], [0.6, 0.4, 0.2]]), "w")
    g = np.array([[0.4, 0.4, 0.5], [0.2, 0.4, 0.3]])
    before = w.data.copy()
    LARS(SGD([w], learning_rate=1.0))((g,))
    expected = [[0.0005265, 0.0005265, 0.00065813], [0.00026325, 0.0005265, 0.00039488]]
    np.testing.assert_allclose(before - w.data, expected, rtol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("use_clip", [False, True])
@pytest.mark.parametrize("wd, loss_scale", [(0.0, 1.0), (0.01, 4.0)])
def test_lars_momentum_matches_float64_reference(dtype, use_clip, wd, loss_scale):
    w0, grads = inputs(dtype)
    params = [optforge.Parameter(w0[n].copy(), n) for n in SHAPES]
    lr, eps, coef = 0.5, 1e-5, 0.01
    inner = Momentum(params, learning_rate=lr, momentum=0.9, weight_decay=wd, loss_scale=loss_scale)
    opt = LARS(inner, epsilon=eps, coefficient=coef, use_clip=use_clip)
    assert opt.lars_flag == (True, False, True)  # the default filter skips biases
    for step in grads:
        assert opt(tuple(step[p.name] for p in params)) is True
    expected = lars_reference(
        w0, grads, lr, 0.9, wd, loss_scale, eps, coef, use_clip, {"dense.weight", "conv.weight"}
    )
    tol = dict(atol=1e-5, rtol=2e-5) if dtype == np.float32 else dict(atol=1e-12, rtol=1e-12)
    for p in params:
        np.testing.assert_allclose(p.data, expected[p.name], **tol, err_msg=p.name)
    assert opt.global_step == 12


def test_lars_filter_and_groups_with_their_own_learning_rates():
    w0, grads = inputs(np.float64, seed=8)
    params = [optforge.Parameter(w0[n].copy(), n) for n in SHAPES]
    groups = [{"params": params[:1], "lr": 0.2}, {"params": params[1:], "weight_decay": 0.05}]
    inner = Momentum(groups, learning_rate=0.1, momentum=0.5)
    opt = LARS(inner, coefficient=0.02, use_clip=True, lars_filter=lambda p: p.name != "conv.weight")
    for step in grads[:5]:
        opt(tuple(step[p.name] for p in params))
    # Each group's reference alone (groups do not interact).
    common = dict(momentum=0.5, loss_scale=1.0, eps=1e-5, coef=0.02, use_clip=True)
    dense = {"dense.weight": w0["dense.weight"]}
    first = lars_reference(dense, grads[:5], 0.2, wd=0.0, lars_names={"dense.weight"}, **common)
    rest = {n: w0[n] for n in ("dense.bias", "conv.weight")}
    second = lars_reference(rest, grads[:5], 0.1, wd=0.05, lars_names={"dense.bias"}, **common)
    np.testing.assert_allclose(params[0].data, first["dense.weight"], rtol=1e-12)
    np.testing.assert_allclose(params[1].data, second["dense.bias"], rtol=1e-12)
    # conv.weight is filtered out: no LARS and, as in MindSpore, no weight decay either.
    plain = lars_reference(
        {"conv.weight": w0["conv.weight"]}, grads[:5], 0.1, wd=0.0, lars_names=set(), **common
    )
    np.testing.assert_allclose(params[2].data, plain["conv.weight"], rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs, kind, message",
    [
        (dict(epsilon=0), TypeError, "the type of 'epsilon' should be 'float'"),
        (dict(coefficient=1), TypeError, "the type of 'coefficient' should be 'float'"),
        (dict(use_clip=1), TypeError, "the type of 'use_clip' should be 'bool'"),
    ],
)
def test_lars_argument_checks(kwargs, kind, message):
    inner = Momentum([optforge.Parameter(np.ones(3), "w")], learning_rate=0.1, momentum=0.9)
    with pytest.raises(kind, match=message):
        LARS(inner, **kwargs)


def test_lars_wraps_only_nn_optimizers():
    with pytest.raises(TypeError, match="optimizer"):
        LARS(object())


def test_lars_clip_refuses_group_and_dynamic_learning_rates():
    params = [optforge.Parameter(np.ones(3), "a"), optforge.Parameter(np.ones(2), "b")]
    groups = [{"params": params[:1], "lr": [0.1, 0.05]}, {"params": params[1:]}]
    inner = Momentum(groups, learning_rate=[0.1, 0.2], momentum=0.9)
    with pytest.raises(ValueError, match="cannot both be true"):
        LARS(inner, use_clip=True)
    LARS(Momentum(groups, learning_rate=[0.1, 0.2], momentum=0.9))  # without clipping it is fine


@pytest.mark.parametrize(
    "bad, kind",
    [
        (lambda g: g[:2], ValueError),
        (lambda g: (g[0], g[1], g[2].reshape(-1)), ValueError),
        (lambda g: (g[0], g[1].astype(np.float32), g[2]), TypeError),
    ],
)
def test_refused_lars_step_changes_nothing(bad, kind):
    w0, grads = inputs(np.float64)
    params = [optforge.Parameter(w0[n].copy(), n) for n in SHAPES]
    opt = LARS(Momentum(params, learning_rate=0.1, momentum=0.9, weight_decay=0.01))
    opt(tuple(grads[0][p.name] for p in params))
    before = [p.data.copy() for p in params] + [m.copy() for m in opt.optimizer.moments]
    with pytest.raises(kind):
        opt(bad(tuple(grads[1][p.name] for p in params)))
    after = [p.data for p in params] + list(opt.optimizer.moments)
    for x, y in zip(before, after):
        np.testing.assert_array_equal(x, y)
    assert opt.global_step == 1
