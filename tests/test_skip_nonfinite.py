"""skip_nonfinite=True: a step with a NaN or an infinity in any gradient changes nothing and is
counted; by default the step is taken and the NaN propagates, as in MindSpore."""

import numpy as np
import pytest

import optforge

SHAPES = [(3, 4), (7,), (2, 3, 2)]
SEEDS = {
    "nn.Adam": lambda ps, **kw: optforge.nn.Adam(ps, learning_rate=0.01, **kw),
    "nn.AdamOffload": lambda ps, **kw: optforge.nn.AdamOffload(ps, learning_rate=0.01, **kw),
    "nn.Lamb": lambda ps, **kw: optforge.nn.Lamb(ps, learning_rate=0.01, **kw),
    "nn.ProximalAdagrad": lambda ps, **kw: optforge.nn.ProximalAdagrad(ps, l1=0.01, **kw),
    "optim.RAdam": lambda ps, **kw: optforge.optim.RAdam(ps, lr=0.01, **kw),
    "optim.SGD": lambda ps, **kw: optforge.optim.SGD(ps, lr=0.01, momentum=0.9, **kw),
}


def parameters(dtype=np.float32):
    rng = np.random.default_rng(0)
    return [optforge.Parameter(rng.standard_normal(s).astype(dtype), f"p{i}") for i, s in enumerate(SHAPES)]


def gradients(n, dtype=np.float32):
    rng = np.random.default_rng(1)
    return [tuple((rng.standard_normal(s) * 0.1).astype(dtype) for s in SHAPES) for _ in range(n)]


def snapshot(opt):
    return [p.data.copy() for p in opt.parameters] + [
        a.copy() for arrays in opt.state.values() for a in arrays
    ]


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", sorted(SEEDS))
def test_a_nonfinite_step_is_skipped_counted_and_harmless(name, bad_value):
    make = SEEDS[name]
    grads = gradients(4)
    reference = make(parameters())
    for g in grads:
        reference(g)

    opt = make(parameters(), skip_nonfinite=True)
    for g in grads[:2]:
        assert opt(g) is True
    before = snapshot(opt)
    bad = [g.copy() for g in grads[2]]
    bad[2].reshape(-1)[5] = bad_value
    assert opt(tuple(bad)) is False
    assert opt.skipped_steps == 1 and opt.global_step == 2
    for x, y in zip(before, snapshot(opt)):
        np.testing.assert_array_equal(x, y)
    for g in grads[2:]:
        assert opt(g) is True
    for x, y in zip(snapshot(reference), snapshot(opt)):
        np.testing.assert_array_equal(x, y)


def test_by_default_a_nan_gradient_propagates_as_in_mindspore():
    opt = optforge.nn.Adam(parameters(), learning_rate=0.01)
    bad = [g.copy() for g in gradients(1)[0]]
    bad[0][0, 0] = np.nan
    assert opt(tuple(bad)) is True
    assert np.isnan(opt.parameters[0].data[0, 0]) and opt.global_step == 1
    assert np.isfinite(opt.parameters[1].data).all()


def test_row_sparse_gradients_are_checked_too():
    w = optforge.Parameter(np.ones((5, 3), np.float32), "embedding")
    opt = optforge.nn.Adam([w], learning_rate=0.01, skip_nonfinite=True)
    values = np.ones((2, 3), np.float32)
    values[1, 2] = np.nan
    assert opt((optforge.RowTensor(np.array([0, 3]), values, (5, 3)),)) is False
    np.testing.assert_array_equal(w.data, 1.0)
    assert opt.skipped_steps == 1


@pytest.mark.parametrize("make", [optforge.nn.Adam, optforge.optim.Adam])
def test_skip_nonfinite_must_be_a_bool(make):
    with pytest.raises(TypeError, match="the type of 'skip_nonfinite' should be 'bool'"):
        make(parameters(), skip_nonfinite=1)


def test_device_gradients_are_checked_on_the_device():
    cuda = pytest.importorskip("numba.cuda")
    from optforge.runtime.cuda import device_all_finite

    x = np.linspace(-1, 1, 1000).astype(np.float32)
    assert device_all_finite(cuda.to_device(x))
    x[777] = np.inf
    assert not device_all_finite(cuda.to_device(x))
