"""optforge.nn.Lamb: the documented formula, per-tensor trust ratios from generated reductions."""

import numpy as np
import pytest

import optforge
from optforge.nn import Lamb
from tests.conftest import MS_TOL, W0, golden_grad
from tests.references.lamb import lamb_trajectory
from tests.test_adam_semantics import STEPS, assert_trajectories, make_grads, make_params, run


def test_matches_the_reference_ascend_numbers():
    """mindspore-semantics.md 10.3 (derived from the Ascend kernels: no clip, norm of the update)."""
    p = optforge.Parameter(W0.astype(np.float32), "w")
    opt = Lamb([p], learning_rate=0.1, weight_decay=0.01)
    history = []
    for step in range(1, 6):
        opt((golden_grad(step),))
        history.append(p.asnumpy())
    np.testing.assert_allclose(history[0], [0.3635213, -0.8628417, 1.362162, -1.861483, 0.2496605], **MS_TOL)
    np.testing.assert_allclose(history[4], [-0.2668669, -1.034122, 1.254352, -1.969629, -0.3666835], **MS_TOL)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(learning_rate=0.01),
        dict(learning_rate=0.02, weight_decay=0.05),
        dict(learning_rate=0.01, beta1=0.8, beta2=0.95, eps=1e-4, weight_decay=0.01),
    ],
    ids=["defaults", "weight_decay", "betas_eps"],
)
def test_matches_reference_over_twelve_steps(kwargs, dtype, rng):
    params = make_params(rng, dtype)
    initial = [p.asnumpy() for p in params]
    grads = make_grads(rng, params)
    history = run(Lamb(params, **kwargs), grads)
    ref = dict(kwargs)
    lr = ref.pop("learning_rate")
    expected = [
        lamb_trajectory(w0, [g[i] for g in grads], [lr] * STEPS, dtype=dtype, **ref)
        for i, w0 in enumerate(initial)
    ]
    assert_trajectories(history, expected, dtype)


def test_trust_ratio_is_per_tensor(rng):
    """Two tensors of very different norms get different ratios: scaling one tensor's
    weights changes only that tensor's step."""
    a = optforge.Parameter(rng.standard_normal(100).astype(np.float64), "a")
    b = optforge.Parameter(rng.standard_normal(50).astype(np.float64) * 100, "b")
    ga, gb = rng.standard_normal(100), rng.standard_normal(50)
    opt = Lamb([a, b], learning_rate=0.01)
    a0, b0 = a.asnumpy(), b.asnumpy()
    opt((ga, gb))
    np.testing.assert_allclose(a.data, lamb_trajectory(a0, [ga], [0.01])[0], rtol=1e-12)
    np.testing.assert_allclose(b.data, lamb_trajectory(b0, [gb], [0.01])[0], rtol=1e-12)


def test_zero_weights_or_zero_update_give_trust_ratio_one():
    w = optforge.Parameter(np.zeros(6), "w")  # ||w|| = 0
    u = optforge.Parameter(np.ones(4), "u")  # zero gradient and no decay: ||update|| = 0
    opt = Lamb([w, u], learning_rate=0.1)
    g = np.array([1.0, -1.0, 2.0, 0.5, 0.0, -3.0])
    opt((g, np.zeros(4)))
    np.testing.assert_allclose(w.data, lamb_trajectory(np.zeros(6), [g], [0.1])[0], rtol=1e-12)
    np.testing.assert_array_equal(u.data, np.ones(4))


def test_dynamic_lr_groups_and_the_beta_gamma_rule(rng):
    a = make_params(rng, np.float32, [(4, 3), (3,)], ["dense.weight", "bn.gamma"])
    b = make_params(rng, np.float32, [(5,)], ["out.weight"])
    initial = [p.asnumpy() for p in a + b]
    opt = Lamb(
        [{"params": a, "weight_decay": 0.1}, {"params": b, "lr": 0.005}],
        learning_rate=[0.01 * 0.9**k for k in range(STEPS)],
    )
    grads = make_grads(rng, opt.parameters)
    history = run(opt, grads)
    lrs = [0.01 * 0.9**k for k in range(STEPS)]
    settings = [(lrs, 0.1), (lrs, 0.1), ([0.005] * STEPS, 0.0)]  # grouped: gamma decays too
    for i, (w0, (lr, wd)) in enumerate(zip(initial, settings)):
        expected = lamb_trajectory(w0, [g[i] for g in grads], lr, weight_decay=wd, dtype=np.float32)
        assert_trajectories([history[i]], [expected], np.float32)

    c = make_params(rng, np.float32, [(3,), (3,)], ["x.weight", "x.gamma"])
    c0 = [p.asnumpy() for p in c]
    grads = make_grads(rng, c)
    history = run(Lamb(c, learning_rate=0.01, weight_decay=0.3), grads)
    for i, wd in enumerate([0.3, 0.0]):  # without groups gamma is not decayed
        expected = lamb_trajectory(
            c0[i], [g[i] for g in grads], [0.01] * STEPS, weight_decay=wd, dtype=np.float32
        )
        assert_trajectories([history[i]], [expected], np.float32)


def test_grad_centralization_keeps_decay_decoupled(rng):
    params = make_params(rng, np.float64, [(4, 16), (5,)])
    initial = [p.asnumpy() for p in params]
    grads = make_grads(rng, params)
    opt = Lamb([{"params": params, "grad_centralization": True, "weight_decay": 0.1}], learning_rate=0.01)
    history = run(opt, grads)
    expected = [
        lamb_trajectory(w0, [g[i] for g in grads], [0.01] * STEPS, weight_decay=0.1, centralize=True)
        for i, w0 in enumerate(initial)
    ]
    assert_trajectories(history, expected, np.float64)


def test_norms_come_from_the_generated_reduction_stage():
    """The kernel module has the reduction stage; the wrapper computes no norm."""
    import inspect

    from optforge.generated.cpu import lamb
    from optforge.runtime import nn_optimizer, optimizer

    stage1, finalize, _ = lamb.VARIANTS[()].branches[()].stages["float32"]
    assert "partials" in inspect.getsource(stage1.py_func)
    assert "math.sqrt(sums[tensor, 0])" in inspect.getsource(finalize.py_func)
    for module in (nn_optimizer, optimizer):
        assert "linalg.norm" not in inspect.getsource(module)


def test_a_step_is_deterministic(rng):
    def final():
        p = optforge.Parameter(np.linspace(-1, 1, 300_001, dtype=np.float32), "w")
        opt = Lamb([p], learning_rate=0.01, weight_decay=0.01)
        g = np.cos(np.arange(300_001, dtype=np.float32))
        for _ in range(3):
            opt((g,))
        return p.asnumpy()

    np.testing.assert_array_equal(final(), final())


def test_learning_rate_is_required_and_loss_scale_is_not_an_argument():
    p = optforge.Parameter(np.ones(3, np.float32), "w")
    with pytest.raises(TypeError, match="learning_rate"):
        Lamb([p])
    with pytest.raises(TypeError, match="loss_scale"):
        Lamb([p], learning_rate=0.1, loss_scale=2.0)
