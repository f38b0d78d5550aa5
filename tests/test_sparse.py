"""Row-sparse gradients (RowTensor): ProximalAdagrad steps only the rows named, Adam every row."""

import numpy as np
import pytest

import optforge
from optforge import RowTensor
from tests.references.mindspore_adam import adam_trajectory


def proximal_rows_reference(w, accum, indices, values, lr, l1, l2, wd=0.0, loss_scale=1.0):
    """float64, row by row: MindSpore's decay per occurrence, unscale, sum duplicates,
    then the proximal rule on the touched rows only."""
    w, accum = w.astype(np.float64).copy(), accum.astype(np.float64).copy()
    values = values.astype(np.float64) / loss_scale + wd * w[indices]
    rows = np.unique(indices)
    for r in rows:
        g = values[indices == r].sum(axis=0)
        accum[r] += g * g
        step = lr / np.sqrt(accum[r])
        prox = w[r] - g * step
        if l1 > 0:
            w[r] = np.sign(prox) * np.maximum(np.abs(prox) - step * l1, 0) / (1 + l2 * step)
        else:
            w[r] = prox / (1 + l2 * step)
    return w, accum


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(l1=0.01, l2=0.02), dict(l1=0.05, weight_decay=0.1, loss_scale=4.0)],
    ids=["plain", "l1_l2", "decay_loss_scale"],
)
def test_proximal_adagrad_steps_only_the_named_rows(kwargs, dtype, rng):
    shape = (50, 7)
    p = optforge.Parameter(rng.standard_normal(shape).astype(dtype), "embedding")
    opt = optforge.nn.ProximalAdagrad([p], learning_rate=0.1, **kwargs)
    w, accum = p.asnumpy(), opt.accum[0].copy()
    args = dict(
        lr=0.1,
        l1=kwargs.get("l1", 0.0),
        l2=kwargs.get("l2", 0.0),
        wd=kwargs.get("weight_decay", 0.0),
        loss_scale=kwargs.get("loss_scale", 1.0),
    )
    for step in range(6):
        indices = rng.integers(0, shape[0], size=12)  # duplicates likely
        indices[:2] = [3, 3]  # and certain
        values = rng.standard_normal((12, 7)).astype(dtype)
        before = p.asnumpy()
        opt((RowTensor(indices, values, shape),))
        w, accum = proximal_rows_reference(w, accum, indices, values, **args)
        tol = dict(rtol=2e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(p.data, w, **tol, err_msg=f"step {step}")
        np.testing.assert_allclose(opt.accum[0], accum, **tol)
        untouched = np.setdiff1d(np.arange(shape[0]), indices)
        np.testing.assert_array_equal(p.data[untouched], before[untouched])  # bit-identical
        w, accum = p.asnumpy().astype(np.float64), opt.accum[0].astype(np.float64)


def test_sparse_and_dense_gradients_in_one_group(rng):
    emb = optforge.Parameter(rng.standard_normal((20, 4)).astype(np.float32), "emb")
    dense = optforge.Parameter(rng.standard_normal(9).astype(np.float32), "dense")
    opt = optforge.nn.ProximalAdagrad([emb, dense], learning_rate=0.1, l1=0.01)
    twin = optforge.nn.ProximalAdagrad(
        [optforge.Parameter(dense.asnumpy(), "dense")], learning_rate=0.1, l1=0.01
    )
    indices, values = np.array([1, 5, 1]), rng.standard_normal((3, 4)).astype(np.float32)
    g = rng.standard_normal(9).astype(np.float32)
    w, accum = proximal_rows_reference(emb.asnumpy(), opt.accum[0], indices, values, 0.1, 0.01, 0.0)
    opt((RowTensor(indices, values, (20, 4)), g))
    twin((g,))
    np.testing.assert_allclose(emb.data, w, rtol=2e-6, atol=1e-7)
    np.testing.assert_array_equal(dense.data, twin.parameters[0].data)


@pytest.mark.parametrize("bad", [[0, 20], [-1, 2]], ids=["past_the_end", "negative"])
def test_out_of_range_index_is_refused_before_anything_changes(bad, rng):
    emb = optforge.Parameter(rng.standard_normal((20, 4)).astype(np.float32), "emb")
    dense = optforge.Parameter(rng.standard_normal(9).astype(np.float32), "dense")
    opt = optforge.nn.ProximalAdagrad([dense, emb], learning_rate=0.1)
    arrays = (emb.data, dense.data, opt.accum[0], opt.accum[1])
    before = [a.copy() for a in arrays]
    with pytest.raises(ValueError, match=r"has row index (20|-1) outside \[0, 20\); the step was not taken"):
        opt((np.ones(9, np.float32), RowTensor(bad, np.ones((2, 4), np.float32), (20, 4))))
    for got, want in zip(arrays, before):
        np.testing.assert_array_equal(got, want)
    assert opt.global_step == 0


def test_row_tensor_of_the_wrong_shape_or_dtype(rng):
    emb = optforge.Parameter(np.ones((20, 4), np.float32), "emb")
    opt = optforge.nn.ProximalAdagrad([emb])
    with pytest.raises(ValueError, match=r"must have dense shape \(20, 4\)"):
        opt((RowTensor([1], np.ones((1, 4), np.float32), (21, 4)),))
    with pytest.raises(TypeError, match="must have dtype float32"):
        opt((RowTensor([1], np.ones((1, 4), np.float64), (20, 4)),))
    with pytest.raises(ValueError, match="'values' must have shape"):
        RowTensor([1, 2], np.ones((1, 4)), (20, 4))
    with pytest.raises(TypeError, match="'indices' must be a 1-D integer array"):
        RowTensor([1.5], np.ones((1, 4)), (20, 4))


@pytest.mark.parametrize("kwargs", [dict(), dict(weight_decay=0.1, loss_scale=2.0), dict(use_amsgrad=True)])
def test_adam_steps_every_row_with_the_summed_gradient(kwargs, rng):
    """Adam's moments decay in every row: the step equals a dense step whose gradient is
    zero outside the named rows (duplicates summed; decay added per occurrence, as MindSpore)."""
    shape = (30, 3)
    p = optforge.Parameter(rng.standard_normal(shape).astype(np.float32), "emb")
    opt = optforge.nn.Adam([p], learning_rate=0.01, **kwargs)
    w0 = p.asnumpy()
    wd, ls = kwargs.get("weight_decay", 0.0), kwargs.get("loss_scale", 1.0)
    effective, w = [], w0.astype(np.float64)
    for _ in range(5):
        indices = rng.integers(0, shape[0], size=8)
        values = rng.standard_normal((8, 3)).astype(np.float32)
        dense = np.zeros(shape)
        np.add.at(dense, indices, values / ls + wd * w[indices])
        effective.append(dense)
        opt((RowTensor(indices, values, shape),))
        w = p.asnumpy().astype(np.float64)
    expected = adam_trajectory(
        w0, effective, [0.01] * 5, use_amsgrad=kwargs.get("use_amsgrad", False), dtype=np.float64
    )
    np.testing.assert_allclose(p.data, expected[-1], rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (optforge.nn.Lamb, dict(learning_rate=0.1)),
        (optforge.nn.AdamOffload, dict()),
        (optforge.optim.RAdam, dict()),
    ],
)
def test_optimizers_without_a_sparse_rule_refuse_row_tensors(cls, kwargs):
    p = optforge.Parameter(np.ones((4, 2), np.float32), "w")
    opt = cls([p], **kwargs)
    with pytest.raises(TypeError, match=r"row-sparse gradients \(RowTensor\) are not supported"):
        opt((RowTensor([0], np.ones((1, 2), np.float32), (4, 2)),))
    np.testing.assert_array_equal(p.data, 1.0)
