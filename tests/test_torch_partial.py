"""optforge.torch with gradients for only some parameters, and copies of an optimizer.

A step where some parameters that stepped before have no gradient (a frozen
layer, an unrouted mixture-of-experts expert) steps the others, as torch.optim
does, each parameter keeping its own step count: the cohort of tensors that
shared a step count splits, and cohorts whose counts meet again merge. Checked
against torch.optim (and, for Lamb, a float64 loop of the paper's algorithm)
step by step, with per-parameter steps, state dicts taken mid-run and loaded
both ways, lr schedulers, refused steps, and the full-group path building
nothing. Then `copy.deepcopy`, pickle and `torch.save` of the optimizer object
for every class: the copy steps its own parameters, bit for bit like the
original, which it leaves alone.
"""

import copy
import io
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import optforge.torch as ot  # noqa: E402
from tests.modes import ready  # noqa: E402
from tests.references.lamb import lamb_trajectory  # noqa: E402

TOL = {torch.float32: dict(atol=1e-5, rtol=2e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}
# The RAdam spec computes rho_t and the rectification in float32, as MindSpore does (README,
# tests/test_torch_dialect.py): float64 parameters differ from torch's by about 1e-7.
# torch's NAdam keeps its mu_product in float32 (torch's scalar dtype) for float64 parameters
# too: relative differences of about 1e-7, from the first step.
LOOSER = {
    ("RAdam", torch.float64): dict(atol=1e-6, rtol=1e-4),
    ("NAdam", torch.float64): dict(atol=1e-8, rtol=1e-6),
}
KWARGS = {
    "Adam": {"lr": 0.05, "weight_decay": 0.1},
    "AdamW": {"lr": 0.05, "amsgrad": True},
    "SGD": {"lr": 0.05, "momentum": 0.9, "dampening": 0.1},
    "RMSprop": {"lr": 0.01, "momentum": 0.5, "centered": True},
    "Adafactor": {"lr": 0.05, "weight_decay": 0.1},
    "NAdam": {"lr": 0.05, "weight_decay": 0.1},
    "RAdam": {"lr": 0.01},
}
NAMES = list(KWARGS)
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
# Experts of a mixture: matrices (Adafactor factors them), vectors, a stack of matrices.
SHAPES = [(4, 3), (5,), (4, 3), (2, 3, 2), (6,), (1, 4)]
STEPS = 10


def tolerance(name, dtype):
    return LOOSER.get((name, dtype), TOL[dtype])


def experts(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [torch.tensor(rng.standard_normal(s), dtype=dtype, requires_grad=True) for s in SHAPES]


def routing(steps=STEPS, seed=1):
    """Each step's gradients and which experts get one: a random subset (sometimes none,
    sometimes all), the same for every optimizer."""
    rng = np.random.default_rng(seed)
    masks = rng.random((steps, len(SHAPES))) < 0.55
    masks[2] = True  # a step where every expert has a gradient, after splits
    masks[4] = False  # and one where none has
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(steps)]
    return masks, grads


def groups(params, name):
    """Two param groups, the second with its own lr: cohorts cross groups."""
    lr = KWARGS.get(name, {}).get("lr", 0.01)
    return [{"params": params[:3]}, {"params": params[3:], "lr": lr / 2}]


def set_grads(params, mask, grads):
    for p, has, g in zip(params, mask, grads):
        p.grad = torch.tensor(g, dtype=p.dtype) if has else None


def torch_steps(opt, params):
    """Each parameter's step as torch.optim's state shows it (None: no state yet)."""
    return [float(opt.state[p]["step"]) if "step" in opt.state.get(p, {}) else None for p in params]


def assert_params_close(actual, expected, name, dtype, what=""):
    for i, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a, e, **tolerance(name, dtype), msg=lambda m: f"{what} param {i}: {m}")


def cohorts(opt):
    return [(list(c.engine.members), c.engine.global_step) for c in opt._cohorts]


def assert_one_cohort_per_step(opt, params):
    """After every step: one cohort per distinct step count, ascending, holding exactly the
    parameters with that count (and every parameter that has state)."""
    steps = [c.engine.global_step for c in opt._cohorts]
    assert steps == sorted(set(steps)), steps
    for cohort in opt._cohorts:  # torch's SGD keeps no step in its state: optforge's count, then
        assert {float(opt._steps[i]) for i in cohort.engine.members} == {cohort.engine.global_step}
    members = sorted(i for c in opt._cohorts for i in c.engine.members)
    assert members == [i for i, p in enumerate(params) if p in opt.state]


def save_and_load(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def mlp(dtype=torch.float32, seed=0, bias=True):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 7, bias=bias), torch.nn.Tanh(), torch.nn.Linear(7, 3, bias=bias)
    ).to(dtype)
    x, y = torch.randn(11, 5, dtype=dtype), torch.randn(11, 3, dtype=dtype)
    return model, x, y


def backward(model, x, y):
    torch.nn.functional.mse_loss(model(x), y).backward()


# -- against torch.optim --


@DTYPES
@pytest.mark.parametrize("name", NAMES)
def test_a_layer_frozen_mid_run_then_unfrozen_steps_like_torch_optim(name, dtype):
    """Layer 0 has gradients for 3 steps, none for 4 (its cohort splits off and waits), then
    gradients again for 3: two cohorts at different steps step together."""
    reference, x, y = mlp(dtype)
    model = copy.deepcopy(reference)
    theirs = getattr(torch.optim, name)(reference.parameters(), **KWARGS[name])
    ours = getattr(ot, name)(model.parameters(), **KWARGS[name])
    for step in range(STEPS):
        frozen = 3 <= step < 7
        for m, opt in ((reference, theirs), (model, ours)):
            opt.zero_grad()
            m[0].requires_grad_(not frozen)
            backward(m, x, y)
            opt.step()
        assert_params_close(
            list(model.parameters()), list(reference.parameters()), name, dtype, f"step {step}"
        )
        if name != "SGD":  # torch's SGD keeps no step
            assert torch_steps(ours, list(model.parameters())) == torch_steps(
                theirs, list(reference.parameters())
            )
        assert_one_cohort_per_step(ours, list(model.parameters()))
    assert cohorts(ours) == [([0, 1], 6), ([2, 3], 10)]


@DTYPES
@pytest.mark.parametrize("name", NAMES)
def test_experts_with_random_gradients_step_like_torch_optim(name, dtype):
    masks, grads = routing()
    theirs_params, ours_params = experts(dtype), experts(dtype)
    theirs = getattr(torch.optim, name)(groups(theirs_params, name), **KWARGS[name])
    ours = getattr(ot, name)(groups(ours_params, name), **KWARGS[name])
    for step, (mask, g) in enumerate(zip(masks, grads)):
        set_grads(theirs_params, mask, g)
        set_grads(ours_params, mask, g)
        theirs.step()
        ours.step()
        assert_params_close(ours_params, theirs_params, name, dtype, f"step {step}")
        if name != "SGD":
            assert torch_steps(ours, ours_params) == torch_steps(theirs, theirs_params)
        assert_one_cohort_per_step(ours, ours_params)
    counts = masks.sum(axis=0)
    # One cohort per distinct step count, ascending; members in parameter order.
    expected = [([i for i in range(len(SHAPES)) if counts[i] == c], int(c)) for c in sorted(set(counts)) if c]
    assert cohorts(ours) == expected


@DTYPES
def test_lamb_with_random_gradients_matches_the_papers_algorithm_per_tensor(dtype):
    """Lamb's trust ratio is a per-tensor reduction: each tensor follows its own trajectory
    over the steps it had a gradient, counted from 1."""
    masks, grads = routing()
    params = experts(dtype)
    w0 = [p.detach().double().numpy().copy() for p in params]
    opt = ot.Lamb(params, lr=0.01, weight_decay=0.01)
    for mask, g in zip(masks, grads):
        set_grads(params, mask, g)
        opt.step()
    for i, p in enumerate(params):
        own = [g[i] for mask, g in zip(masks, grads) if mask[i]]
        expected = lamb_trajectory(w0[i], own, [0.01] * len(own), eps=1e-6, weight_decay=0.01)[-1]
        np.testing.assert_allclose(p.detach().double().numpy(), expected, **TOL[dtype])
        assert float(opt.state[p]["step"]) == len(own)


@pytest.mark.parametrize("name", [*NAMES, "Lamb"])
def test_a_state_dict_taken_mid_run_resumes_in_optforge_and_in_torch_optim(name):
    """5 steps of random routing, a state dict (through torch.save) into a fresh optforge
    optimizer and into torch.optim, and torch.optim's into optforge, 5 more steps each:
    optforge resumes bit for bit with the same cohorts, the others within tolerance of a
    torch.optim run that never stopped."""
    kwargs = KWARGS.get(name, {"lr": 0.01})
    masks, grads = routing()
    straight_params, resumed_params = experts(torch.float32), experts(torch.float32)
    straight = getattr(ot, name)(groups(straight_params, name), **kwargs)
    first = getattr(ot, name)(groups(resumed_params, name), **kwargs)
    for mask, g in zip(masks[:5], grads[:5]):
        for params, opt in ((straight_params, straight), (resumed_params, first)):
            set_grads(params, mask, g)
            opt.step()
    saved = save_and_load(first.state_dict())
    resumed = getattr(ot, name)(groups(resumed_params, name), **kwargs)
    resumed.load_state_dict(saved)
    if name != "SGD":  # torch's (and so optforge's) SGD saves no step: all come back at step 1,
        assert cohorts(resumed) == cohorts(first)  # which SGD's arithmetic cannot tell from later
    runs = [(straight_params, straight), (resumed_params, resumed)]
    if name != "Lamb":
        reference_params, torch_params = experts(torch.float32), experts(torch.float32)
        reference = getattr(torch.optim, name)(groups(reference_params, name), **kwargs)
        for mask, g in zip(masks[:5], grads[:5]):
            set_grads(reference_params, mask, g)
            reference.step()
        with torch.no_grad():
            for p, q in zip(torch_params, resumed_params):
                p.copy_(q)
        theirs = getattr(torch.optim, name)(groups(torch_params, name), **kwargs)
        theirs.load_state_dict(save_and_load(first.state_dict()))
        # and the other way: torch.optim's state dict, per-parameter steps, into optforge
        from_torch_params = experts(torch.float32)
        with torch.no_grad():
            for p, q in zip(from_torch_params, reference_params):
                p.copy_(q)
        from_torch = getattr(ot, name)(groups(from_torch_params, name), **kwargs)
        from_torch.load_state_dict(save_and_load(reference.state_dict()))
        if name != "SGD":  # torch's SGD keeps no step: its parameters come back at step 1
            assert cohorts(from_torch) == cohorts(first)
        runs += [(reference_params, reference), (torch_params, theirs), (from_torch_params, from_torch)]
    for mask, g in zip(masks[5:], grads[5:]):
        for params, opt in runs:
            set_grads(params, mask, g)
            opt.step()
    for a, b in zip(resumed_params, straight_params):
        assert torch.equal(a, b)
    if name != "SGD":  # (SGD's counts restart at 1 on loading: the same bits, other counts)
        assert cohorts(resumed) == cohorts(straight)
    if name != "Lamb":
        assert_params_close(straight_params, reference_params, name, torch.float32)
        assert_params_close(torch_params, reference_params, name, torch.float32)
        assert_params_close(from_torch_params, reference_params, name, torch.float32)
        if name != "SGD":
            assert torch_steps(resumed, resumed_params) == torch_steps(theirs, torch_params)


def test_lr_schedulers_drive_split_cohorts_and_late_experts_start_from_the_current_lr():
    """Rprop's step sizes start at the lr of the step an expert first gets a gradient."""
    masks, grads = routing()
    masks[:3, 4:] = False  # the last experts start late, after the lr has changed
    for name, make in (
        ("Rprop", lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5)),
        ("Adam", lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.8)),
    ):
        theirs_params, ours_params = experts(torch.float32), experts(torch.float32)
        theirs = getattr(torch.optim, name)(groups(theirs_params, name), lr=0.05)
        ours = getattr(ot, name)(groups(ours_params, name), lr=0.05)
        schedules = [make(theirs), make(ours)]
        for step, (mask, g) in enumerate(zip(masks, grads)):
            set_grads(theirs_params, mask, g)
            set_grads(ours_params, mask, g)
            theirs.step()
            ours.step()
            for schedule in schedules:
                schedule.step()
            assert_params_close(ours_params, theirs_params, name, torch.float32, f"{name} step {step}")
        assert ours.param_groups[1]["lr"] == theirs.param_groups[1]["lr"]


# -- the cohorts' memory --


def test_state_tensors_stay_the_kernels_arrays_through_splits_and_merges():
    masks, grads = routing()
    params = experts(torch.float32)
    opt = ot.Adam(params, lr=0.01)
    set_grads(params, [True] * len(SHAPES), grads[0])
    opt.step()
    held = {i: opt.state[p]["exp_avg"] for i, p in enumerate(params)}
    for mask, g in zip(masks, grads):
        set_grads(params, mask, g)
        opt.step()
    assert len(opt._cohorts) > 1
    for cohort in opt._cohorts:
        engine = cohort.engine
        for pos, i in enumerate(engine.members):
            assert opt.state[params[i]]["exp_avg"] is held[i]
            assert held[i].data_ptr() == engine.state["exp_avg"][pos].ctypes.data
            assert engine.parameters[pos].data.ctypes.data == params[i].data_ptr()
    assert not any(torch.equal(held[i], torch.zeros_like(held[i])) for i in held)


def test_a_full_group_step_builds_no_engine_and_keeps_its_cohorts(monkeypatch):
    """The full-group path: every cohort steps as it is; nothing is split, merged or built
    (a cohort merged at a partial step builds its tables at its first step, once)."""
    masks, grads = routing()
    params = experts(torch.float32)
    opt = ot.AdamW(params)
    for mask, g in zip(masks[:2], grads[:2]):  # two cohorts at different steps, one merged
        set_grads(params, mask, g)
        opt.step()
    set_grads(params, [True] * len(SHAPES), grads[3])
    opt.step()
    before = list(opt._cohorts)
    assert len(before) > 1
    built = []
    record = lambda *args: built.append(args)  # noqa: E731
    monkeypatch.setattr(type(opt), "_cohort_over", record)
    monkeypatch.setattr(type(opt), "_by_step", record)
    monkeypatch.setattr(type(opt)._ENGINE, "_allocate", record)
    for g in grads[4:7]:
        set_grads(params, [True] * len(SHAPES), g)
        opt.step()
    assert built == []
    assert opt._cohorts == before and all(a is b for a, b in zip(opt._cohorts, before))
    assert [c.engine.global_step for c in opt._cohorts] == [c + 3 for c in (2, 3)]


def _snapshot(params, opt):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict()), cohorts(opt)


def _assert_unchanged(params, opt, snapshot):
    for a, b in zip(params, snapshot[0]):
        assert torch.equal(a, b)
    after = opt.state_dict()
    assert sorted(after["state"]) == sorted(snapshot[1]["state"])
    for i, state in snapshot[1]["state"].items():
        assert set(after["state"][i]) == set(state)
        for key, value in state.items():
            assert torch.equal(after["state"][i][key], value), (i, key)
    assert cohorts(opt) == snapshot[2]


def _partial_run(**kwargs):
    """Adam over the experts after 3 steps of random routing: several cohorts."""
    masks, grads = routing()
    params = experts(torch.float32)
    opt = ot.Adam(groups(params, "Adam"), lr=0.01, **kwargs)
    for mask, g in zip(masks[:2], grads[:2]):
        set_grads(params, mask, g)
        opt.step()
    mask = [True, False, True, True, False, True]  # splits cohorts, starts a new one
    set_grads(params, mask, grads[2])
    return params, opt


def test_a_refused_step_that_would_split_cohorts_changes_nothing():
    params, opt = _partial_run()
    snapshot = _snapshot(params, opt)
    dense = params[3].grad
    params[3].grad = dense.to_sparse()  # torch itself refuses a gradient of another dtype or shape
    with pytest.raises(TypeError, match="sparse"):
        opt.step()
    _assert_unchanged(params, opt, snapshot)
    params[3].grad = dense
    opt.param_groups[1]["lr"] = float("nan")
    with pytest.raises(ValueError, match="learning rate"):
        opt.step()
    _assert_unchanged(params, opt, snapshot)
    opt.param_groups[1]["lr"] = 0.005
    for i in (0, 2):  # a stepped parameter's memory moved: in a cohort that splits, in a whole one
        memory = params[i].data
        params[i].data = memory.clone()
        with pytest.raises(RuntimeError, match=f"parameter {i}'s memory moved"):
            opt.step()
        _assert_unchanged(params, opt, snapshot)
        params[i].data = memory
    opt.step()  # and with all as it was, the step is taken
    assert cohorts(opt) != snapshot[2]


def test_skip_nonfinite_skips_a_partial_step_whole():
    params, opt = _partial_run(skip_nonfinite=True)
    snapshot = _snapshot(params, opt)
    params[5].grad[0, 1] = float("inf")
    opt.step()
    _assert_unchanged(params, opt, snapshot)
    assert opt.skipped_steps == 1
    params[5].grad[0, 1] = 0.5  # and the same step, finite, is taken
    opt.step()
    assert cohorts(opt) != snapshot[2]


# -- copies of the optimizer object --

ALL = [name for name in ot.__all__ if name != "TorchOptimizer"]
COPY_KWARGS = {"SGD": {"lr": 0.05, "momentum": 0.9}}
MATRICES = {"Muon"}  # 2-D parameters only: a model without biases, whose weights are dropped


def _with_parameters(model, params):
    """A copy of `model` whose parameters are `params` (the objects themselves)."""
    twin = copy.deepcopy(model)
    for key, param in zip([n for n, _ in model.named_parameters()], params):
        module, attr = key.rsplit(".", 1)
        setattr(twin.get_submodule(module), attr, param)
    return twin


COPIES = {
    "deepcopy": lambda model, opt: copy.deepcopy((model, opt)),
    "pickle": lambda model, opt: pickle.loads(pickle.dumps((model, opt))),
    # The optimizer object alone: its parameters become the copy's own.
    "torch.save": lambda model, opt: (
        lambda alone: (_with_parameters(model, [p for g in alone.param_groups for p in g["params"]]), alone)
    )(save_and_load(opt)),
}


def _train(model, opt, x, y, steps, drop=None):
    for _ in range(steps):
        opt.zero_grad()
        backward(model, x, y)
        if drop is not None:
            drop(model).grad = None
        opt.step()


def _assert_same(model_a, opt_a, model_b, opt_b):
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sorted(sa["state"]) == sorted(sb["state"])
    for i, state in sa["state"].items():
        assert set(state) == set(sb["state"][i])
        for key, value in state.items():
            assert torch.equal(value, sb["state"][i][key]), (i, key)
    assert cohorts(opt_a) == cohorts(opt_b)
    assert opt_a.skipped_steps == opt_b.skipped_steps


@pytest.mark.parametrize("how", list(COPIES))
@pytest.mark.parametrize("name", ALL)
def test_a_copy_steps_its_own_parameters_bit_for_bit_and_leaves_the_original_alone(name, how):
    model, x, y = mlp(bias=name not in MATRICES)
    part = "weight" if name in MATRICES else "bias"
    opt = ready(getattr(ot, name)(model.parameters(), skip_nonfinite=True, **COPY_KWARGS.get(name, {})))
    _train(model, opt, x, y, 2)
    _train(model, opt, x, y, 1, drop=lambda m: getattr(m[0], part))  # two cohorts
    opt.zero_grad()
    backward(model, x, y)
    model[2].weight.grad[0, 0] = float("nan")
    opt.step()  # skipped, and counted
    assert opt.skipped_steps == 1 and len(opt._cohorts) == 2
    copied_model, copied = COPIES[how](model, opt)
    # Every attribute travels, but those that torch's own optimizers lose in a copy.
    plain = torch.optim.SGD(model.parameters())
    torch_loses = set(vars(plain)) - set(vars(copy.deepcopy(plain)))
    assert type(copied) is type(opt) and set(vars(copied)) == set(vars(opt)) - torch_loses
    assert copied.skip_nonfinite and copied.skipped_steps == 1 and copied.hypers == opt.hypers
    own = [p for g in copied.param_groups for p in g["params"]]
    assert all(a is b for a, b in zip(own, copied_model.parameters()))
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(own, model.parameters()))
    _assert_same(copied_model, copied, model, opt)
    original = _snapshot(list(model.parameters()), opt)
    _train(copied_model, copied, x, y, 2, drop=lambda m: getattr(m[2], part))  # splits, then merges
    _train(copied_model, copied, x, y, 1)
    _assert_unchanged(list(model.parameters()), opt, original)
    _train(model, opt, x, y, 2, drop=lambda m: getattr(m[2], part))
    _train(model, opt, x, y, 1)
    _assert_same(copied_model, copied, model, opt)
