"""The optim-dialect classes against torch.optim 2.13 over 12 steps: every flag, weight decay,
several tensors of odd sizes, float32 and float64."""

import zlib

import numpy as np
import pytest

import optforge

torch = pytest.importorskip("torch")

STEPS = 12
SHAPES = [(7,), (3, 5), (2, 1, 3)]
CASES = {
    "Adam": [
        {},
        {"weight_decay": 0.1},
        {"amsgrad": True},
        {"maximize": True},
        {"betas": (0.8, 0.95), "eps": 1e-6},
    ],
    "AdamW": [{}, {"weight_decay": 0.1, "amsgrad": True}, {"maximize": True}],
    "Adamax": [{}, {"weight_decay": 0.1, "betas": (0.8, 0.9)}, {"maximize": True}],
    "Adagrad": [
        {},
        {"lr_decay": 0.01, "weight_decay": 0.1, "initial_accumulator_value": 0.1},
        {"maximize": True},
    ],
    "Adadelta": [{}, {"weight_decay": 0.1, "rho": 0.8}, {"maximize": True}],
    "RMSprop": [
        {},
        {"centered": True},
        {"momentum": 0.9},
        {"centered": True, "momentum": 0.9, "weight_decay": 0.1},
        {"maximize": True},
    ],
    "SGD": [
        {"lr": 0.01},
        {"lr": 0.01, "momentum": 0.9},
        {"lr": 0.01, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.1},
        {"lr": 0.01, "momentum": 0.9, "nesterov": True},
        {"lr": 0.01, "momentum": 0.5, "maximize": True},
    ],
    "NAdam": [
        {},
        {"weight_decay": 0.1},
        {"weight_decay": 0.1, "decoupled_weight_decay": True},
        {"maximize": True},
    ],
    "Rprop": [{}, {"etas": (0.3, 1.5), "step_sizes": (1e-4, 1.0)}, {"maximize": True}],
    "ASGD": [{}, {"weight_decay": 0.1, "lambd": 1e-2, "t0": 5.0}, {"maximize": True}],
}
PARAMS = [(name, kwargs) for name, cases in CASES.items() for kwargs in cases]
# float64 is looser than round-off because torch's ASGD keeps eta and mu as float32 tensors.
TOL = {np.float32: dict(atol=1e-5, rtol=2e-5), np.float64: dict(atol=1e-9, rtol=1e-6)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, kwargs", PARAMS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(PARAMS)])
def test_matches_torch_optim(name, kwargs, dtype):
    # a seed per case that is the same in every process (hash() of a str is salted per process)
    rng = np.random.default_rng(zlib.crc32(f"{name} {kwargs}".encode()))
    values = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    ours = getattr(optforge.optim, name)(
        [optforge.Parameter(v.copy(), f"p{i}") for i, v in enumerate(values)], **kwargs
    )
    tparams = [torch.tensor(v.copy(), requires_grad=True) for v in values]
    theirs = getattr(torch.optim, name)(tparams, **kwargs)
    for step in range(STEPS):
        grads = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
        ours(tuple(grads))
        for p, g in zip(tparams, grads):
            p.grad = torch.from_numpy(g.copy())
        theirs.step()
        for mine, reference in zip(ours.parameters, tparams):
            np.testing.assert_allclose(
                mine.data,
                reference.detach().numpy(),
                **TOL[dtype],
                err_msg=f"{name} {kwargs} step {step + 1}",
            )


def test_sgd_nesterov_constraint_is_checked():
    p = [optforge.Parameter(np.ones(3, np.float32), "w")]
    with pytest.raises(
        ValueError, match="For 'SGD', Nesterov momentum requires a momentum and zero dampening"
    ):
        optforge.optim.SGD(p, nesterov=True)
    with pytest.raises(ValueError, match="Nesterov momentum requires"):
        optforge.optim.SGD(p, momentum=0.9, dampening=0.1, nesterov=True)
    optforge.optim.SGD(p, momentum=0.9, nesterov=True)
