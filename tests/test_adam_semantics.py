"""optforge.nn.Adam against the independent port, over 12 steps, for every flag,
argument form and group form, odd sizes, several tensors, float32 and float64."""

import numpy as np
import pytest

import optforge
from optforge.nn import ExponentialDecayLR, LearningRateSchedule
from tests.conftest import MS_TOL
from tests.references.mindspore_adam import adam_trajectory

STEPS = 12
# Odd sizes; the last spans three 65,536-element chunks of the chunk table.
SHAPES = [(7,), (3, 5), (2, 3, 4), (1,), (2 * 65536 + 3,)]
TOL = {np.float32: MS_TOL, np.float64: dict(atol=1e-12, rtol=1e-10)}


def make_params(rng, dtype, shapes=SHAPES, names=None):
    names = names or [f"layer{i}.weight" for i in range(len(shapes))]
    return [
        optforge.Parameter(rng.standard_normal(shape).astype(dtype), name)
        for shape, name in zip(shapes, names)
    ]


def make_grads(rng, params, steps=STEPS, scale=1.0):
    return [[(rng.standard_normal(p.shape) * scale).astype(p.dtype) for p in params] for _ in range(steps)]


def run(opt, grads):
    """Step `opt` through `grads`; return each parameter's trajectory."""
    history = [[] for _ in opt.parameters]
    for step_grads in grads:
        assert opt(tuple(step_grads)) is True
        for i, p in enumerate(opt.parameters):
            history[i].append(p.asnumpy())
    return history


def assert_trajectories(history, expected, dtype, what=""):
    for i, (got, want) in enumerate(zip(history, expected)):
        for step, (a, b) in enumerate(zip(got, want), 1):
            np.testing.assert_allclose(a, b, **TOL[dtype], err_msg=f"{what} tensor {i} step {step}")


CASES = {
    "defaults": dict(),
    "nesterov": dict(use_nesterov=True),
    "amsgrad": dict(use_amsgrad=True),
    "amsgrad_nesterov": dict(use_amsgrad=True, use_nesterov=True),
    "betas_eps": dict(beta1=0.5, beta2=0.8, eps=1e-3),
    "weight_decay": dict(weight_decay=0.05),
    "loss_scale": dict(loss_scale=128.0),
    "everything": dict(
        learning_rate=0.02,
        beta1=0.7,
        beta2=0.95,
        eps=1e-6,
        weight_decay=0.1,
        loss_scale=8.0,
        use_nesterov=True,
    ),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_adam_matches_reference_over_twelve_steps(case, dtype, rng):
    kwargs = dict(learning_rate=0.01) | CASES[case]
    params = make_params(rng, dtype)
    initial = [p.asnumpy() for p in params]
    grads = make_grads(rng, params, scale=kwargs.get("loss_scale", 1.0))
    history = run(optforge.nn.Adam(params, **kwargs), grads)

    ref_kwargs = dict(kwargs)
    lr = ref_kwargs.pop("learning_rate")
    expected = [
        adam_trajectory(w0, [g[i] for g in grads], [lr] * STEPS, dtype=dtype, **ref_kwargs)
        for i, w0 in enumerate(initial)
    ]
    assert_trajectories(history, expected, dtype, case)


@pytest.mark.parametrize(
    "learning_rate",
    [
        [0.1 / (k + 1) for k in range(STEPS)],
        np.linspace(0.05, 0.001, STEPS),
        tuple(0.01 * 0.9**k for k in range(STEPS)),
        ExponentialDecayLR(0.1, 0.5, 3),
    ],
    ids=["list", "ndarray", "tuple", "schedule"],
)
def test_dynamic_learning_rate_uses_index_zero_first(learning_rate, rng):
    lrs = [learning_rate(k) for k in range(STEPS)] if callable(learning_rate) else list(learning_rate)
    params = make_params(rng, np.float32)
    initial = [p.asnumpy() for p in params]
    grads = make_grads(rng, params)
    history = run(optforge.nn.Adam(params, learning_rate=learning_rate), grads)
    expected = [adam_trajectory(w0, [g[i] for g in grads], lrs) for i, w0 in enumerate(initial)]
    assert_trajectories(history, expected, np.float32)


def test_dynamic_learning_rate_past_its_end_raises_and_changes_nothing(rng):
    (p,) = make_params(rng, np.float32, shapes=[(5,)])
    opt = optforge.nn.Adam([p], learning_rate=[0.1, 0.2])
    g = np.ones(5, np.float32)
    opt((g,))
    opt((g,))
    before = (p.asnumpy(), opt.moment1[0].copy(), opt.moment2[0].copy())
    with pytest.raises(RuntimeError, match="no learning rate for step 3"):
        opt((g,))
    np.testing.assert_array_equal(p.data, before[0])
    np.testing.assert_array_equal(opt.moment1[0], before[1])
    np.testing.assert_array_equal(opt.moment2[0], before[2])
    assert opt.global_step == 2


def test_zero_d_array_learning_rate_is_a_constant(rng):
    params = make_params(rng, np.float32, shapes=[(9,)])
    initial = params[0].asnumpy()
    grads = make_grads(rng, params)
    history = run(optforge.nn.Adam(params, learning_rate=np.array(0.03)), grads)
    expected = adam_trajectory(initial, [g[0] for g in grads], [0.03] * STEPS)
    assert_trajectories(history, [expected], np.float32)


def test_dynamic_weight_decay_is_called_with_the_step_from_zero(rng):
    def wd(k):
        return 0.05 + 0.1 * k

    params = make_params(rng, np.float32, shapes=[(11,)])
    initial = params[0].asnumpy()
    grads = make_grads(rng, params)
    history = run(optforge.nn.Adam(params, learning_rate=0.01, weight_decay=wd), grads)
    expected = adam_trajectory(initial, [g[0] for g in grads], [0.01] * STEPS, weight_decay=wd)
    assert_trajectories(history, [expected], np.float32)


def test_without_groups_weight_decay_skips_beta_and_gamma_names(rng):
    names = ["dense.weight", "bn.gamma", "bn.beta", "x.beta_1", "alphabet"]
    shapes = [(4, 3), (3,), (3,), (2,), (5,)]
    params = make_params(rng, np.float32, shapes, names)
    initial = [p.asnumpy() for p in params]
    grads = make_grads(rng, params)
    history = run(optforge.nn.Adam(params, learning_rate=0.01, weight_decay=0.2), grads)
    decayed = {"dense.weight": True, "bn.gamma": False, "bn.beta": False, "x.beta_1": False, "alphabet": True}
    expected = [
        adam_trajectory(
            w0, [g[i] for g in grads], [0.01] * STEPS, weight_decay=0.2 if decayed[names[i]] else 0.0
        )
        for i, w0 in enumerate(initial)
    ]
    assert_trajectories(history, expected, np.float32)


def test_groups_have_their_own_lr_and_weight_decay_and_no_name_filter(rng):
    a = make_params(rng, np.float32, [(6,), (2, 5)], ["a.weight", "bn.gamma"])
    b = make_params(rng, np.float32, [(3, 3)], ["b.weight"])
    c = make_params(rng, np.float64, [(4,)], ["c.bias"])  # a second dtype in the default group
    initial = [p.asnumpy() for p in a + b + c]
    groups = [
        {"params": a, "lr": 0.05, "weight_decay": 0.3},
        {"params": b, "lr": [0.02] * 6 + [0.01] * 6},
        {"params": c},
    ]
    opt = optforge.nn.Adam(groups, learning_rate=[0.01] * STEPS, weight_decay=0.1)
    assert opt.parameters == tuple(a + b + c)
    grads = make_grads(rng, opt.parameters)
    history = run(opt, grads)
    settings = [
        ([0.05] * STEPS, 0.3, np.float32),
        ([0.05] * STEPS, 0.3, np.float32),  # bn.gamma decays in a group
        ([0.02] * 6 + [0.01] * 6, 0.1, np.float32),
        ([0.01] * STEPS, 0.1, np.float64),
    ]
    for i, (w0, (lrs, wd, dtype)) in enumerate(zip(initial, settings)):
        expected = adam_trajectory(w0, [g[i] for g in grads], lrs, weight_decay=wd, dtype=dtype)
        assert_trajectories([history[i]], [expected], np.float32, f"param {i}")


def test_order_params_sets_the_gradient_order(rng):
    a = make_params(rng, np.float32, [(5,)], ["a"])
    b = make_params(rng, np.float32, [(3,)], ["b"])
    opt = optforge.nn.Adam([{"params": a, "lr": 0.1}, {"params": b, "lr": 0.01}, {"order_params": b + a}])
    assert [p.name for p in opt.parameters] == ["b", "a"]
    wa, wb = a[0].asnumpy(), b[0].asnumpy()
    grads = make_grads(rng, opt.parameters)
    run(opt, grads)
    np.testing.assert_allclose(
        b[0].data, adam_trajectory(wb, [g[0] for g in grads], [0.01] * STEPS)[-1], **MS_TOL
    )
    np.testing.assert_allclose(
        a[0].data, adam_trajectory(wa, [g[1] for g in grads], [0.1] * STEPS)[-1], **MS_TOL
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grad_centralization_applies_to_ndim_two_and_up_in_groups_that_ask(dtype, rng):
    shapes = [(4, 16), (3, 2, 5), (7,)]
    params = make_params(rng, dtype, shapes)
    initial = [p.asnumpy() for p in params]
    groups = [{"params": params, "grad_centralization": True, "weight_decay": 0.1}]
    grads = make_grads(rng, params, scale=2.0)
    history = run(optforge.nn.Adam(groups, learning_rate=0.01, loss_scale=2.0), grads)
    expected = [
        adam_trajectory(
            w0,
            [g[i] for g in grads],
            [0.01] * STEPS,
            weight_decay=0.1,
            loss_scale=2.0,
            centralize=True,
            dtype=dtype,
        )
        for i, w0 in enumerate(initial)
    ]
    assert_trajectories(history, expected, dtype)
    # The centralized gradient of a 2-D parameter sums to zero along each row,
    # so without centralization the result must differ.
    plain = adam_trajectory(
        initial[0], [g[0] for g in grads], [0.01] * STEPS, weight_decay=0.1, loss_scale=2.0, dtype=dtype
    )
    assert not np.allclose(plain[-1], history[0][-1], rtol=1e-6, atol=1e-9)


def test_learning_rate_schedule_subclass(rng):
    class Halving(LearningRateSchedule):
        def construct(self, global_step):
            return 0.1 * 0.5**global_step

    params = make_params(rng, np.float32, [(3,)])
    w0 = params[0].asnumpy()
    grads = make_grads(rng, params, steps=4)
    history = run(optforge.nn.Adam(params, learning_rate=Halving()), grads)
    expected = adam_trajectory(w0, [g[0] for g in grads], [0.1, 0.05, 0.025, 0.0125])
    assert_trajectories(history, [expected], np.float32)


def test_parameters_are_updated_in_place_and_state_is_exposed(rng):
    data = rng.standard_normal((3, 4)).astype(np.float32)
    initial = data.copy()
    p = optforge.Parameter(data, "w")
    opt = optforge.nn.Adam([p], use_amsgrad=True)
    opt((np.ones((3, 4), np.float32),))
    assert p.data is data
    np.testing.assert_allclose(data, initial - 1e-3, rtol=1e-5)  # Adam's first step is lr*sign(g)
    assert opt.moment1[0].shape == (3, 4) and opt.vhat[0].shape == (3, 4)
    np.testing.assert_allclose(opt.moment1[0], 0.1, rtol=1e-6)
    assert optforge.Adam is optforge.nn.Adam


def test_reused_gradient_arrays_are_read_afresh_each_step(rng):
    """The step keeps the last gradients' typed list when the same arrays come back;
    values written into them in place between steps must still be seen."""
    shapes = [(5,), (3, 4)]
    a = make_params(rng, np.float32, shapes)
    b = [optforge.Parameter(p.asnumpy(), p.name) for p in a]
    reused = [np.zeros(s, np.float32) for s in shapes]
    opt_reused, opt_fresh = optforge.nn.Adam(a, learning_rate=0.01), optforge.nn.Adam(b, learning_rate=0.01)
    for _ in range(4):
        values = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        for buffer, v in zip(reused, values):
            buffer[...] = v
        opt_reused(tuple(reused))
        opt_fresh(tuple(v.copy() for v in values))
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p.data, q.data)
