"""Checkpoints for every class of the nn and optim dialects (the torch dialect's, in torch's
layout, are in test_torch_dialect.py): 5 steps, save (np.savez), load into a fresh
optimizer, 5 more steps equals 10 uninterrupted steps bit for bit; foreign state dicts refused."""

import pickle

import numpy as np
import pytest

import optforge
from optforge.compiler.build import load_specs
from tests.modes import stepping

SHAPES = [((3, 4), np.float32), ((5,), np.float32), ((2, 3, 2), np.float64)]
MODULES = {"nn": optforge.nn, "optim": optforge.optim}
CLASSES = [
    pytest.param(
        stepping(getattr(MODULES[e.dialect], e.class_name)), e.example, id=f"{e.dialect}.{e.class_name}"
    )
    for spec in load_specs()
    for e in spec.exports
    # a spec of matrices (Muon) takes none of the 1-D and 3-D SHAPES: tests/test_muon.py resumes it
    if e.dialect in MODULES and spec.tensor_rank is None
]


def parameters(seed=0):
    rng = np.random.default_rng(seed)
    return [optforge.Parameter(rng.standard_normal(s).astype(d), f"layer{i}.weight") for i, (s, d) in
            enumerate(SHAPES)]  # fmt: skip


def gradients(steps, seed=1):
    rng = np.random.default_rng(seed)
    return [tuple((rng.standard_normal(s) * 0.3).astype(d) for s, d in SHAPES) for _ in range(steps)]


def snapshot(opt):
    return [p.data.copy() for p in opt.parameters] + [
        a.copy() for arrays in opt.state.values() for a in arrays if a is not None
    ]


@pytest.mark.parametrize("cls, kwargs", CLASSES)
def test_resume_from_a_saved_checkpoint_is_bit_identical(cls, kwargs, tmp_path):
    grads = gradients(10)
    straight = cls(parameters(), **kwargs)
    for g in grads:
        straight(g)

    first = cls(parameters(), **kwargs)
    for g in grads[:5]:
        first(g)
    np.savez(tmp_path / "ckpt.npz", **first.state_dict())
    weights = [p.data.copy() for p in first.parameters]
    del first

    resumed_params = parameters()
    for p, w in zip(resumed_params, weights):
        p.data[...] = w
    resumed = cls(resumed_params, **kwargs)
    resumed.load_state_dict(np.load(tmp_path / "ckpt.npz"))
    assert resumed.global_step == 5
    for g in grads[5:]:
        resumed(g)
    for x, y in zip(snapshot(straight), snapshot(resumed)):
        np.testing.assert_array_equal(x, y)


def test_state_dict_is_plain_numpy_and_pickles():
    opt = optforge.nn.Adam(parameters(), learning_rate=0.01)
    opt(gradients(1)[0])
    sd = pickle.loads(pickle.dumps(opt.state_dict()))
    assert sd["optimizer"] == "optforge.generated.nn.adam.Adam" and sd["step"] == 1
    assert all(isinstance(v, (np.ndarray, str, int)) for v in sd.values())
    np.testing.assert_array_equal(sd["state/0/moment1"], opt.moment1[0])
    assert sd["state/0/moment1"] is not opt.moment1[0]  # a copy, not the live array


def test_optim_checkpoint_keeps_the_groups_learning_rates():
    opt = optforge.optim.Adam(parameters(), lr=0.01)
    scheduler = optforge.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for g in gradients(3):
        opt(g)
        scheduler.step()
    fresh = optforge.optim.Adam(parameters(), lr=0.01)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 0.01 * 0.5**3


@pytest.mark.parametrize(
    "make_other, message",
    [
        (lambda: optforge.nn.Momentum(parameters(), learning_rate=0.1, momentum=0.9), "is from .*Momentum"),
        (lambda: optforge.nn.Adam(parameters()[:2]), "holds 3 parameters, but this optimizer has 2"),
        (
            lambda: optforge.nn.Adam(
                [optforge.Parameter(np.zeros((4, 3), np.float32), "a"), *parameters()[1:]]
            ),
            r"parameter 0 .* is float32\[4, 3\], but the state dict's is float32\[3, 4\]",
        ),
        (
            lambda: optforge.nn.Adam([optforge.Parameter(np.zeros((3, 4)), "a"), *parameters()[1:]]),
            r"is float64\[3, 4\], but the state dict's is float32\[3, 4\]",
        ),
    ],
)
def test_a_foreign_state_dict_is_refused_and_changes_nothing(make_other, message):
    source = optforge.nn.Adam(parameters())
    source(gradients(1)[0])
    other = make_other()
    before = snapshot(other)
    with pytest.raises(ValueError, match=message):
        other.load_state_dict(source.state_dict())
    for x, y in zip(before, snapshot(other)):
        np.testing.assert_array_equal(x, y)
    assert other.global_step == 0


def test_a_state_dict_with_a_missing_state_is_refused():
    source = optforge.nn.Adam(parameters())
    sd = source.state_dict()
    del sd["state/2/moment2"]
    with pytest.raises(ValueError, match="has no 'state/2/moment2'"):
        optforge.nn.Adam(parameters()).load_state_dict(sd)


def test_lars_checkpoints_through_the_optimizer_it_wraps():
    grads = gradients(6)
    a = optforge.nn.LARS(optforge.nn.Momentum(parameters(), learning_rate=0.1, momentum=0.9))
    for g in grads:
        a(g)
    b = optforge.nn.LARS(optforge.nn.Momentum(parameters(), learning_rate=0.1, momentum=0.9))
    for g in grads[:3]:
        b(g)
    sd = b.state_dict()
    c_params = parameters()
    for p, q in zip(c_params, b.parameters):
        p.data[...] = q.data
    c = optforge.nn.LARS(optforge.nn.Momentum(c_params, learning_rate=0.1, momentum=0.9))
    c.load_state_dict(sd)
    for g in grads[3:]:
        c(g)
    for x, y in zip(snapshot(a.optimizer), snapshot(c.optimizer)):
        np.testing.assert_array_equal(x, y)


def test_an_optim_state_dict_missing_a_group_option_is_refused_before_copying():
    source = optforge.optim.Adam(parameters(), lr=0.01)
    source(gradients(1)[0])
    sd = source.state_dict()
    del sd["group/0/eps"]
    target = optforge.optim.Adam(parameters(), lr=0.01)
    with pytest.raises(ValueError, match="has no 'eps'"):
        target.load_state_dict(sd)
    assert target.global_step == 0 and not target.exp_avg[0].any()
