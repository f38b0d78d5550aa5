"""MARS (specs/mars.py, mars_type="adamw") against pytorch_optimizer.MARS 4.1.0, element by element.

20 steps of a small MLP with a matrix, a 3-D tensor and two vectors (tests/reference_training.py):
the MARS path for the first two, the 1-D AdamW path (lr_1d, betas_1d, weight_decay_1d) for the
vectors unless optimize_1d; float32 and float64, every option of mars_type="adamw", two param
groups, checkpoint resume, and the arguments refused.
"""

import pytest
import torch
from pytorch_optimizer import MARS as Reference
from pytorch_optimizer.base.exception import NegativeLRError

import optforge
import optforge.torch  # noqa: F401  (the torch dialect is a subpackage imported on its own)
from tests.reference_training import (
    Model,
    assert_close_each_step,
    data,
    resume_is_bit_exact,
    train,
    train_optim_dialect,
)

STEPS = 20
DTYPES = [torch.float32, torch.float64]

CASES = [
    {},
    {"lr": 1e-2, "betas": (0.9, 0.95), "gamma": 0.05, "eps": 1e-6},
    {"lr": 1e-2, "gamma": 1.0},  # the corrected gradient's norm exceeds 1: it is clipped
    {"lr": 1e-2, "optimize_1d": True},
    {"lr": 1e-2, "weight_decay": 0.1},
    {"lr": 1e-2, "weight_decay": 0.1, "weight_decay_1d": 0.0, "fixed_decay": True},
    {"lr": 1e-2, "weight_decay": 0.1, "weight_decouple": False},  # coupled: into last_grad only
    {"lr": 1e-2, "weight_decay": 0.1, "weight_decouple": False, "optimize_1d": True},
    {"lr": 1e-2, "ams_bound": True},
    {"lr": 1e-2, "ams_bound": True, "optimize_1d": True, "gamma": 1.0},
    {"lr": 1e-2, "maximize": True},
    {"lr": 1e-2, "lr_1d": 2e-2, "betas_1d": (0.8, 0.9), "weight_decay_1d": 0.05},
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kwargs", CASES, ids=[str(i) for i in range(len(CASES))])
def test_torch_dialect_matches_the_reference(kwargs, dtype):
    ours, _, _ = train(lambda p: optforge.torch.MARS(p, **kwargs), dtype, STEPS)
    theirs, _, _ = train(lambda p: Reference(p, **kwargs), dtype, STEPS)
    assert_close_each_step(ours, theirs, dtype)


def test_the_clipping_case_clips():
    """Case 2's corrected gradient of the first step, (1 + gamma*beta1/(1 - beta1)) g, has a
    norm above 1 for both matrices (so its division by the norm is compared), the default's not."""
    model = Model(torch.float64)
    x, y = data(torch.float64)
    torch.nn.functional.mse_loss(model(x), y).backward()
    for p in (model.first.weight, model.cube):
        assert (1 + 1.0 * 0.95 / 0.05) * p.grad.norm() > 1 > (1 + 0.025 * 0.95 / 0.05) * p.grad.norm()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kwargs", [CASES[0], CASES[6], CASES[9]], ids=["plain", "coupled", "ams-1d"])
def test_optim_dialect_matches_the_reference(kwargs, dtype):
    ours = train_optim_dialect(lambda p: optforge.optim.MARS(p, **kwargs), dtype, STEPS)
    theirs, _, _ = train(lambda p: Reference(p, **kwargs), dtype, STEPS)
    assert_close_each_step(ours, theirs, dtype)


# The vectors' group has its own lr: their step is that lr times the constructor's lr_1d/lr.
SPLIT = (
    {"lr": 2e-2, "betas": (0.9, 0.98), "gamma": 0.05, "weight_decay": 0.05},
    {"lr": 5e-3, "betas_1d": (0.85, 0.9), "weight_decay_1d": 0.02},
)


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_param_groups_with_their_own_hyperparameters(dtype):
    def make(cls):
        return lambda p: cls(p, lr=1e-2, lr_1d=4e-3)

    ours, _, _ = train(make(optforge.torch.MARS), dtype, STEPS, SPLIT)
    theirs, _, ref = train(make(Reference), dtype, STEPS, SPLIT)
    assert_close_each_step(ours, theirs, dtype)
    assert ref.param_groups[1]["lr_1d_factor"] == 4e-3 / 1e-2
    optim = train_optim_dialect(make(optforge.optim.MARS), dtype, STEPS, SPLIT)
    assert_close_each_step(optim, theirs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_checkpoint_resume_is_bit_exact(dtype):
    resume_is_bit_exact(lambda p: optforge.torch.MARS(p, lr=1e-2, gamma=1.0, ams_bound=True), dtype)
    resume_is_bit_exact(lambda p: optforge.torch.MARS(p, weight_decouple=False, weight_decay=0.1), dtype)
    resume_is_bit_exact(lambda p: optforge.torch.MARS(p, lr_1d=1e-2), dtype, split=SPLIT)


@pytest.mark.parametrize("ams_bound", [False, True])
def test_state_dict_has_the_references_state_names_and_group_keys(ams_bound):
    _, _, opt = train(lambda p: optforge.torch.MARS(p, ams_bound=ams_bound), torch.float32, 1)
    _, _, ref = train(lambda p: Reference(p, ams_bound=ams_bound), torch.float32, 1)
    for a, b in zip(opt.state_dict()["state"].values(), ref.state_dict()["state"].values()):
        assert set(a) == set(b) | {"step"}  # torch's per-parameter step besides
        assert all(a[k].shape == b[k].shape for k in b)
    ours_group, ref_group = opt.param_groups[0], ref.param_groups[0]
    for key in ("lr", "lr_1d", "lr_1d_factor", "betas", "betas_1d", "gamma", "mars_type", "cautious"):
        assert ours_group[key] == ref_group[key], key


@pytest.mark.parametrize(
    "kwargs",
    [
        {"betas": (1.0, 0.99)},
        {"betas_1d": (0.9, -0.5)},
        {"gamma": -0.1},
        {"weight_decay": -0.1},
        {"weight_decay_1d": -0.1},
        {"eps": -1e-8},
        {"mars_type": "sgd"},
    ],
)
def test_invalid_arguments_are_value_errors_as_in_the_reference(kwargs):
    params = [torch.nn.Parameter(torch.ones(3))]
    with pytest.raises(ValueError):
        Reference(params, **kwargs)
    with pytest.raises(ValueError):
        optforge.torch.MARS(params, **kwargs)
    with pytest.raises(ValueError):
        optforge.optim.MARS([optforge.Parameter(torch.ones(3).numpy(), "w")], **kwargs)


@pytest.mark.parametrize("kwargs", [{"lr": -1.0}, {"lr_1d": -1.0}])
def test_a_negative_learning_rate_is_refused(kwargs):
    params = [torch.nn.Parameter(torch.ones(3))]
    with pytest.raises(NegativeLRError):  # pytorch_optimizer's own, not a ValueError
        Reference(params, **kwargs)
    with pytest.raises(ValueError):
        optforge.torch.MARS(params, **kwargs)


@pytest.mark.parametrize("kwargs", [{"mars_type": "lion"}, {"mars_type": "shampoo"}, {"cautious": True}])
def test_what_is_not_compiled_is_refused_clearly(kwargs):
    name, value = next(iter(kwargs.items()))
    params = [torch.nn.Parameter(torch.ones(3))]
    Reference(params, **kwargs)  # the reference has them
    with pytest.raises(NotImplementedError, match=f"{name}={value!r} is not supported"):
        optforge.torch.MARS(params, **kwargs)
    with pytest.raises(NotImplementedError, match=f"{name}={value!r} is not supported"):
        optforge.optim.MARS([optforge.Parameter(torch.ones(3).numpy(), "w")], **kwargs)
    # A param group asking for them is refused too, and the optimizer keeps its groups.
    opt = optforge.torch.MARS(params)
    with pytest.raises(NotImplementedError):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], **kwargs})
    assert len(opt.param_groups) == 1
    w = optforge.Parameter(torch.ones(3).numpy(), "w")
    optim = optforge.optim.MARS([w])
    optim.param_groups[0][name] = value
    with pytest.raises(NotImplementedError):
        optim((torch.ones(3).numpy(),))
    assert (w.data == 1).all()


def test_a_step_refused_changes_nothing():
    p = torch.nn.Parameter(torch.ones(4, 3))
    opt = optforge.torch.MARS([p], lr=0.1)
    p.grad = torch.full((4, 3), 0.5)
    opt.step()
    before = (p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()})
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError):
        opt.step()
    assert torch.equal(p, before[0])
    assert all(torch.equal(v, before[1][k]) for k, v in opt.state[p].items())
