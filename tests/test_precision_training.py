"""Training quality under the precision policy: a small MLP on a fixed synthetic task.

300 steps of each optimizer from the same start on the same batches; the loss at the end
(the mean of the last 50 steps) with bfloat16 state must be within 2% of the float32-state
run's, with int8 blockwise state no more than 5% above it (see the test for below), and
with bfloat16 parameters and gradients rounded stochastically (no master copy) within 5%
of float32 parameters'. Gradients are computed in float32 from the parameters' values,
as a bfloat16 model's backward pass would hand them over (rounded to bfloat16).
"""

import ml_dtypes
import numpy as np
import pytest

import optforge
import optforge.optim
from optforge import Parameter

STEPS = 300
BF16 = ml_dtypes.bfloat16


def task(seed: int = 0):
    """Inputs, and targets from a fixed random teacher network with noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((256, 16)).astype(np.float32)
    teacher = rng.standard_normal((16, 4)).astype(np.float32)
    y = np.tanh(x @ teacher) + 0.05 * rng.standard_normal((256, 4)).astype(np.float32)
    start = {
        "w1": (rng.standard_normal((16, 32)) / 4).astype(np.float32),
        "b1": np.zeros(32, np.float32),
        "w2": (rng.standard_normal((32, 4)) / np.sqrt(32)).astype(np.float32),
        "b2": np.zeros(4, np.float32),
    }
    batches = [rng.choice(256, 64, replace=False) for _ in range(STEPS)]
    return x, y, start, batches


def loss_and_grads(values: dict, x, y):
    """Mean squared error of a one-hidden-layer tanh MLP, and its gradients, in float32."""
    w1, b1, w2, b2 = (values[k].astype(np.float32) for k in ("w1", "b1", "w2", "b2"))
    h = np.tanh(x @ w1 + b1)
    out = h @ w2 + b2
    diff = out - y
    loss = float(np.mean(diff**2))
    d_out = (2 / diff.size) * diff
    d_h = (d_out @ w2.T) * (1 - h**2)
    grads = {"w1": x.T @ d_h, "b1": d_h.sum(0), "w2": h.T @ d_out, "b2": d_out.sum(0)}
    return loss, grads


def train(make, dtype, **options) -> float:
    x, y, start, batches = task()
    params = {k: Parameter(v.astype(dtype), k) for k, v in start.items()}
    opt = make(list(params.values()), **options)
    losses = []
    for rows in batches:
        loss, grads = loss_and_grads({k: p.data for k, p in params.items()}, x[rows], y[rows])
        losses.append(loss)
        opt(tuple(grads[k].astype(dtype) for k in params))
    return float(np.mean(losses[-50:]))


OPTIMIZERS = {
    "Adam": lambda p, **o: optforge.optim.Adam(p, lr=1e-2, **o),
    "AdamW": lambda p, **o: optforge.optim.AdamW(p, lr=1e-2, weight_decay=1e-2, **o),
    "Lion": lambda p, **o: optforge.optim.Lion(p, lr=1e-3, **o),
    "RMSprop": lambda p, **o: optforge.optim.RMSprop(p, lr=1e-3, **o),
    "Adagrad": lambda p, **o: optforge.optim.Adagrad(p, lr=5e-2, **o),
    "Lamb": lambda p, **o: optforge.nn.Lamb(p, learning_rate=1e-2, **o),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_bfloat16_state_and_stochastically_rounded_bfloat16_parameters_train_as_well(name):
    make = OPTIMIZERS[name]
    exact = train(make, np.float32)
    start = train(lambda p: optforge.optim.SGD(p, lr=1e-12), np.float32)
    assert exact < 0.7 * start, f"{name} does not learn the task: {start:.4f} -> {exact:.4f}"
    half_state = train(make, np.float32, state_dtype="bfloat16")
    assert abs(half_state - exact) <= 0.02 * exact, (name, exact, half_state)
    half_params = train(make, BF16, stochastic_rounding=True, state_dtype="float32")
    assert abs(half_params - exact) <= 0.05 * exact, (name, exact, half_params)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_int8_state_trains_as_well(name):
    """int8 state ends at most 5% worse than float32 state. It may end better: a second moment
    read back from its block's codes is smaller where it is far below the block's largest
    value (down to 0 below 3.3e-7 of it), so those elements take larger steps, which this
    short run rewards: Adam, AdamW and Adagrad end 10-12% lower (Adam at 1.2x its lr: 29%
    lower). Lower or higher, it stays within 15%. bfloat16 parameters rounded stochastically
    with int8 state also stay within 15% (Lamb's ends 11% higher, the rest within 5% or lower)."""
    make = OPTIMIZERS[name]
    exact = train(make, np.float32)
    codes = train(make, np.float32, state_dtype="int8")
    assert codes <= 1.05 * exact and abs(codes - exact) <= 0.15 * exact, (name, exact, codes)
    both = train(make, BF16, stochastic_rounding=True, state_dtype="int8")
    assert abs(both - exact) <= 0.15 * exact, (name, exact, both)


def test_without_stochastic_rounding_bfloat16_parameters_lose_the_adam_run_s_small_updates():
    """What the 5% bound above guards: rounded to nearest, bfloat16 parameters end more than 5%
    worse (Adam's late updates are below half a spacing of most weights)."""
    make = OPTIMIZERS["Adam"]
    assert train(make, BF16, state_dtype="float32") > 1.05 * train(make, np.float32)
