"""AdEMAMix (specs/ademamix.py) against pytorch_optimizer.AdEMAMix 4.1.0, element by element.

20 steps of a small MLP (tests/reference_training.py), float32 and float64, every option of
the reference, two param groups, checkpoint resume, and the arguments both refuse.
"""

import pytest
import torch
from pytorch_optimizer import AdEMAMix as Reference
from pytorch_optimizer.base.exception import NegativeLRError

import optforge
import optforge.torch  # noqa: F401  (the torch dialect is a subpackage imported on its own)
from tests.reference_training import (
    assert_close_each_step,
    resume_is_bit_exact,
    train,
    train_optim_dialect,
)

STEPS = 20
DTYPES = [torch.float32, torch.float64]

CASES = [
    {},
    {"lr": 1e-2, "betas": (0.8, 0.99, 0.999), "alpha": 2.0, "eps": 1e-6},
    {"lr": 1e-2, "weight_decay": 0.1},  # coupled: added to the gradient
    {"lr": 1e-2, "weight_decay": 0.1, "weight_decouple": True},
    {"lr": 1e-2, "weight_decay": 0.1, "weight_decouple": True, "fixed_decay": True},
    {"lr": 1e-2, "weight_decay": 0.1, "fixed_decay": True},  # fixed_decay alone: coupled
    {"lr": 1e-2, "maximize": True},
    {"lr": 1e-2, "t_alpha_beta3": 8},  # warm-up ends within the run
    {"lr": 1e-2, "t_alpha_beta3": 100.0, "betas": (0.9, 0.99, 0.995), "weight_decay": 0.05},
    {"lr": 1e-2, "alpha": 0.0, "t_alpha_beta3": 5},
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kwargs", CASES, ids=[str(i) for i in range(len(CASES))])
def test_torch_dialect_matches_the_reference(kwargs, dtype):
    ours, _, _ = train(lambda p: optforge.torch.AdEMAMix(p, **kwargs), dtype, STEPS)
    theirs, _, _ = train(lambda p: Reference(p, **kwargs), dtype, STEPS)
    assert_close_each_step(ours, theirs, dtype)
    # The run moved the parameters: the comparison above compares something.
    assert not torch.allclose(ours[-1][0], theirs[0][0]) or kwargs.get("lr") == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kwargs", [CASES[0], CASES[3], CASES[7]], ids=["plain", "decoupled", "warm-up"])
def test_optim_dialect_matches_the_reference(kwargs, dtype):
    ours = train_optim_dialect(lambda p: optforge.optim.AdEMAMix(p, **kwargs), dtype, STEPS)
    theirs, _, _ = train(lambda p: Reference(p, **kwargs), dtype, STEPS)
    assert_close_each_step(ours, theirs, dtype)


SPLIT = {"lr": 3e-2, "betas": (0.85, 0.99, 0.999), "weight_decay": 0.2, "alpha": 3.0, "t_alpha_beta3": 6}


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_param_groups_with_their_own_hyperparameters(dtype):
    def make(cls):
        return lambda p: cls(p, lr=1e-2, weight_decay=0.01, weight_decouple=True)

    ours, _, _ = train(make(optforge.torch.AdEMAMix), dtype, STEPS, SPLIT)
    theirs, _, _ = train(make(Reference), dtype, STEPS, SPLIT)
    assert_close_each_step(ours, theirs, dtype)
    optim = train_optim_dialect(make(optforge.optim.AdEMAMix), dtype, STEPS, SPLIT)
    assert_close_each_step(optim, theirs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_checkpoint_resume_is_bit_exact(dtype):
    resume_is_bit_exact(lambda p: optforge.torch.AdEMAMix(p, lr=1e-2, t_alpha_beta3=15), dtype)
    resume_is_bit_exact(lambda p: optforge.torch.AdEMAMix(p, weight_decay=0.1), dtype, split=SPLIT)


def test_state_dict_has_the_references_state_names():
    ours, _, opt = train(lambda p: optforge.torch.AdEMAMix(p), torch.float32, 1)
    _, _, ref = train(lambda p: Reference(p), torch.float32, 1)
    for a, b in zip(opt.state_dict()["state"].values(), ref.state_dict()["state"].values()):
        assert set(b) <= set(a) == set(b) | {"step"}  # torch's per-parameter step besides
        assert all(a[k].shape == b[k].shape for k in b)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"betas": (1.0, 0.999, 0.9999)},
        {"betas": (0.9, -0.1, 0.9999)},
        {"betas": (0.9, 0.999, 1.5)},
        {"alpha": -1.0},
        {"t_alpha_beta3": -5},
        {"weight_decay": -0.1},
        {"eps": -1e-8},
    ],
)
def test_invalid_arguments_are_value_errors_as_in_the_reference(kwargs):
    params = [torch.nn.Parameter(torch.ones(3))]
    with pytest.raises(ValueError):
        Reference(params, **kwargs)
    with pytest.raises(ValueError):
        optforge.torch.AdEMAMix(params, **kwargs)
    with pytest.raises(ValueError):
        optforge.optim.AdEMAMix([optforge.Parameter(torch.ones(3).numpy(), "w")], **kwargs)


def test_a_negative_lr_is_refused_and_nothing_changes():
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(NegativeLRError):  # pytorch_optimizer's own, not a ValueError
        Reference([p], lr=-1.0)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        optforge.torch.AdEMAMix([p], lr=-1.0)
    # A step with a negative lr set afterwards is refused before anything changes.
    opt = optforge.torch.AdEMAMix([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    before = (p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()})
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError):
        opt.step()
    assert torch.equal(p, before[0])
    assert all(torch.equal(v, before[1][k]) for k, v in opt.state[p].items())


def test_alpha_and_beta3_schedules_are_the_references():
    from optforge.generated.host import ademamix as host

    for t in (1, 3, 10, 11, 50):
        for warm in (None, 10, 37.5):
            hypers = (0.9, 0.999, 0.9999, 1e-8, 5.0, -1 if warm is None else warm)
            alpha_t = host.scalars(t, 1e-3, *hypers)[-1]
            assert alpha_t == pytest.approx(Reference.schedule_alpha(warm, t, 5.0), rel=1e-15)
            s = host.scalars(t, 1e-3, *hypers)
            assert 1 - s[4] == pytest.approx(Reference.schedule_beta3(warm, t, 0.9, 0.9999), rel=1e-15)


def test_the_warm_up_off_never_computes_its_logarithms():
    """beta1 = 0 is allowed; with no warm-up its log is never taken (the host code keeps the
    schedule's branches apart), as in the reference."""
    ours, _, _ = train(lambda p: optforge.torch.AdEMAMix(p, betas=(0.0, 0.999, 0.9)), torch.float64, 3)
    theirs, _, _ = train(lambda p: Reference(p, betas=(0.0, 0.999, 0.9)), torch.float64, 3)
    assert_close_each_step(ours, theirs, torch.float64)


def test_a_warm_up_of_zero_steps_is_refused_at_the_step():
    p = torch.nn.Parameter(torch.ones(3))
    ref = Reference([p], t_alpha_beta3=0)
    p.grad = torch.ones(3)
    with pytest.raises(ZeroDivisionError):
        ref.step()
    q = torch.nn.Parameter(torch.ones(3))
    opt = optforge.torch.AdEMAMix([q], t_alpha_beta3=0)
    q.grad = torch.ones(3)
    with pytest.raises(ValueError, match="cannot be computed"):
        opt.step()
    assert torch.equal(q, torch.ones(3))
    assert all(not v.any() for v in opt.state[q].values())  # the state as made, step 0


@pytest.mark.parametrize("name", ["cautious", "stable_adamw"])
def test_the_options_read_from_kwargs_are_refused_clearly(name):
    params = [torch.nn.Parameter(torch.ones(3))]
    Reference(params, **{name: True})  # the reference reads them from its **kwargs
    with pytest.raises(NotImplementedError, match=f"{name}=True is not supported"):
        optforge.torch.AdEMAMix(params, **{name: True})
    with pytest.raises(NotImplementedError, match=f"{name}=True is not supported"):
        optforge.optim.AdEMAMix([optforge.Parameter(torch.ones(3).numpy(), "w")], **{name: True})
    opt = optforge.torch.AdEMAMix(params, **{name: False})
    with pytest.raises(NotImplementedError):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], name: True})
    assert len(opt.param_groups) == 1
