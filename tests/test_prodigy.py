"""Prodigy (specs/prodigy.py) against prodigyopt.Prodigy 1.1.2, and the group sums it needs.

20 steps of a small MLP in float32 and float64 with each option of the reference (weight
decay decoupled and coupled, bias correction, safeguard warm-up, growth rate, beta3, d_coef,
beta1 = 0), the D estimate (`d`, `d_max`, `d_numerator`, `k`) after every step, two param
groups whose sums are one, bit-exact resumes, the reference's early return when no gradient
has been seen, and the refusals. Both dialects: optforge.torch and optforge.optim (optforge
Parameters over the same memory as a torch model's). The group sums run as one extra phase:
one call of each stage per step for all the tensors of a batch.
"""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
prodigyopt = pytest.importorskip("prodigyopt")
import optforge  # noqa: E402
import optforge.torch as ot  # noqa: E402

STEPS = 20
TOL = {torch.float32: dict(atol=1e-5, rtol=2e-5), torch.float64: dict(atol=1e-9, rtol=0)}
GROUP_KEYS = ("d", "d_max", "d_numerator", "k")
CASES = [
    {},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "decouple": False},
    {"use_bias_correction": True, "betas": (0.8, 0.99)},
    {"safeguard_warmup": True, "growth_rate": 1.02},
    {"beta3": 0.9, "d_coef": 2.0, "eps": 1e-6, "d0": 1e-5},
    {"betas": (0.0, 0.99), "weight_decay": 0.05},
]


def mlp(dtype, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.Tanh(), torch.nn.Linear(13, 3)).to(dtype)
    x, y = torch.randn(33, 7, dtype=dtype), torch.randn(33, 3, dtype=dtype)
    return model, x, y


def backward(model, x, y, scale=1.0):
    for p in model.parameters():
        p.grad = None
    (scale * torch.nn.functional.mse_loss(model(x), y)).backward()


def trajectory(make, dtype, steps=STEPS, grouped=None, scale=1.0):
    """Train with optimizer `make(params)`: the parameters and the groups' D estimate after
    every step."""
    model, x, y = mlp(dtype)
    params = model.parameters()
    if grouped is not None:
        params = [
            {"params": list(model[0].parameters()), **grouped[0]},
            {"params": list(model[2].parameters()), **grouped[1]},
        ]
    opt = make(params)
    snapshots, groups = [], []
    for _ in range(steps):
        backward(model, x, y, scale)
        opt.step()
        snapshots.append([p.detach().clone() for p in model.parameters()])
        groups.append([{k: group[k] for k in GROUP_KEYS} for group in opt.param_groups])
    return snapshots, groups, opt


def assert_close(ours, theirs, dtype):
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, **TOL[dtype])


def assert_d(ours, theirs, dtype):
    """The D estimate step by step: float32 sums in the reference, float64 ones here."""
    rtol = 1e-5 if dtype == torch.float32 else 1e-9
    for a, b in zip(ours, theirs):
        assert a["k"] == b["k"]
        for key in ("d", "d_max", "d_numerator"):
            assert a[key] == pytest.approx(b[key], rel=rtol, abs=1e-300), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "defaults"
)
def test_torch_dialect_matches_reference(case, dtype):
    # beta1 = 0 steps by g/sqrt(v) with no momentum: a float32 trajectory is chaotic in the
    # rounding of the reference's float32 dot products (which no kernel can reproduce), so
    # float32 is held to the tolerance over its first steps; float64 over all 20.
    steps = 5 if case.get("betas", (0.9,))[0] == 0 and dtype == torch.float32 else STEPS
    ours = trajectory(lambda p: ot.Prodigy(p, **case), dtype, steps)
    theirs = trajectory(lambda p: prodigyopt.Prodigy(p, **case), dtype, steps)
    for a, b in zip(ours[0], theirs[0]):
        assert_close(a, b, dtype)
    for a, b in zip(ours[1], theirs[1]):
        assert_d(a, b, dtype)
    assert ours[1][-1][0]["d"] > 1e-4 or case.get("safeguard_warmup")  # d has grown


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_two_param_groups_share_one_estimate(dtype):
    """The reference sums over every group, and keeps one d in all of them."""
    groups = ({"weight_decay": 0.1, "eps": 1e-7}, {"weight_decay": 0.0})
    ours = trajectory(lambda p: ot.Prodigy(p), dtype, grouped=groups)
    theirs = trajectory(lambda p: prodigyopt.Prodigy(p), dtype, grouped=groups)
    for a, b in zip(ours[0], theirs[0]):
        assert_close(a, b, dtype)
    for a, b in zip(ours[1], theirs[1]):
        assert_d(a, b, dtype)
        assert a[0] == a[1]  # one estimate


def test_one_group_alone_differs_from_the_pair():
    """Guards the sum over all groups: the first group's tensors alone give another d."""
    model, x, y = mlp(torch.float64)
    both = ot.Prodigy(model.parameters())
    alone_model = copy.deepcopy(model)
    alone = ot.Prodigy(list(alone_model[0].parameters()))
    for m, o in ((model, both), (alone_model, alone)):
        for _ in range(3):
            backward(m, x, y)
            o.step()
    assert both.param_groups[0]["d"] != alone.param_groups[0]["d"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_resume_is_bit_exact(dtype):
    case = {"weight_decay": 0.05, "use_bias_correction": True}
    model, x, y = mlp(dtype)
    twin = copy.deepcopy(model)
    a = ot.Prodigy(model.parameters(), **case)
    for _ in range(10):
        backward(model, x, y)
        a.step()
    saved = copy.deepcopy(a.state_dict())
    assert saved["param_groups"][0]["k"] == 10 and saved["param_groups"][0]["d"] > 1e-6
    for p, q in zip(twin.parameters(), model.parameters()):
        p.data.copy_(q.data)
    b = ot.Prodigy(twin.parameters(), **case)
    b.load_state_dict(saved)
    for m, o in ((model, a), (twin, b)):
        for _ in range(10):
            backward(m, x, y)
            o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    assert a.param_groups[0]["d"] == b.param_groups[0]["d"]


@pytest.mark.parametrize("direction", ["reference->optforge", "optforge->reference"])
def test_state_dicts_move_between_the_reference_and_optforge(direction):
    """The reference's state dict (its group keys d, d_max, d_numerator, k; its states exp_avg,
    exp_avg_sq and the flattened s and p0) loads into optforge's and back, and the run goes on
    as an uninterrupted one."""
    make = {"reference": prodigyopt.Prodigy, "optforge": ot.Prodigy}
    first, second = direction.split("->")
    model, x, y = mlp(torch.float64)
    twin, whole = copy.deepcopy(model), copy.deepcopy(model)
    a = make[first](model.parameters(), weight_decay=0.05)
    uninterrupted = prodigyopt.Prodigy(whole.parameters(), weight_decay=0.05)
    for _ in range(6):
        for m, o in ((model, a), (whole, uninterrupted)):
            backward(m, x, y)
            o.step()
    saved = copy.deepcopy(a.state_dict())
    assert tuple(saved["state"][0]["s"].shape) == (13 * 7,)  # as the reference keeps it
    for p, q in zip(twin.parameters(), model.parameters()):
        p.data.copy_(q.data)
    b = make[second](twin.parameters(), weight_decay=0.05)
    b.load_state_dict(saved)
    for m, o in ((twin, b), (whole, uninterrupted)):
        for _ in range(6):
            backward(m, x, y)
            o.step()
    assert_close(list(twin.parameters()), list(whole.parameters()), torch.float64)
    assert b.param_groups[0]["d"] == pytest.approx(uninterrupted.param_groups[0]["d"], rel=1e-9)


def test_zero_gradients_change_the_moments_only():
    """With no gradient yet the reference returns before the D estimate and the parameter
    step: d, k and the parameters stay, as they do here."""
    model, x, y = mlp(torch.float32)
    twin = copy.deepcopy(model)
    ours, theirs = (
        ot.Prodigy(model.parameters(), weight_decay=0.1),
        prodigyopt.Prodigy(twin.parameters(), weight_decay=0.1),
    )
    for m, o in ((model, ours), (twin, theirs)):
        backward(m, x, y, scale=0.0)
        o.step()
    assert [g["k"] for g in ours.param_groups] == [0] and ours.param_groups[0]["d"] == 1e-6
    before = [p.detach().clone() for p in twin.parameters()]
    assert_close(list(model.parameters()), before, torch.float32)
    for m, o in ((model, ours), (twin, theirs)):  # and the next step is the reference's
        backward(m, x, y)
        o.step()
    assert_close(list(model.parameters()), list(twin.parameters()), torch.float32)
    assert ours.param_groups[0]["k"] == theirs.param_groups[0]["k"] == 1


def test_the_group_sums_run_as_one_extra_phase_in_one_call():
    """Stage 1 (moments and both sums), the finalize and stage 2 each run once per step for
    all four tensors: no call per tensor."""
    import importlib

    module = importlib.import_module("optforge.generated.cpu.prodigy")
    branch = next(iter(module.VARIANTS[(True, False)].branches.values()))
    assert branch.plan.combine == ("", "group", "")
    assert branch.plan.group_sums == (0, 1) and branch.plan.sum_values == len(module.SUM_OUTPUTS)
    model, x, y = mlp(torch.float32)
    opt = ot.Prodigy(model.parameters())
    backward(model, x, y)
    opt.step()  # compiles and binds
    calls = []
    import optforge.runtime.launch as launch

    real = launch.combine

    def counting(kind, chunks, scratch):
        calls.append((kind, int(chunks.tensor.max()) + 1))
        return real(kind, chunks, scratch)

    launch.combine = counting
    try:
        backward(model, x, y)
        opt.step()
    finally:
        launch.combine = real
    assert calls == [("sums", 4)]  # one round, over every tensor of the batch (4 of them)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"d0": 0.0}, ValueError, "Invalid d0 value: 0.0"),
        ({"eps": 0.0}, ValueError, "Invalid epsilon value: 0.0"),
        ({"betas": (1.0, 0.999)}, ValueError, "Invalid beta parameter at index 0: 1.0"),
        ({"betas": (0.9, -0.1)}, ValueError, "Invalid beta parameter at index 1: -0.1"),
        ({"slice_p": 11}, ValueError, "slice_p"),
        ({"use_bias_correction": 1}, TypeError, "use_bias_correction"),
        ({"decouple": "yes"}, TypeError, "decouple"),
    ],
)
def test_invalid_arguments_are_refused(kwargs, error, match):
    model, _, _ = mlp(torch.float32)
    with pytest.raises(error, match=match):
        ot.Prodigy(model.parameters(), **kwargs)


def test_signature_is_the_reference():
    import inspect

    ours = list(inspect.signature(ot.Prodigy).parameters.items())
    theirs = list(inspect.signature(prodigyopt.Prodigy).parameters.items())
    assert [(k, v.default) for k, v in ours[: len(theirs)]] == [(k, v.default) for k, v in theirs]
    ot.Prodigy(mlp(torch.float32)[0].parameters(), fsdp_in_use=True)  # accepted


# -- optforge.optim: the same algorithm over optforge Parameters --


class OptimDriver:
    """optforge.optim.Prodigy over Parameters viewing a torch model's memory."""

    def __init__(self, params, **kwargs):
        groups = list(params)
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.tensors = [p for group in groups for p in group["params"]]
        count = iter(range(len(self.tensors)))
        self.opt = optforge.optim.Prodigy(
            [
                {
                    **group,
                    "params": [
                        optforge.Parameter(p.detach().numpy(), f"p{next(count)}") for p in group["params"]
                    ],
                }
                for group in groups
            ],
            **kwargs,
        )
        self.param_groups = self.opt.param_groups

    def step(self):
        self.opt(tuple(t.grad.numpy() for t in self.tensors))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("grouped", [False, True])
def test_optim_dialect_matches_reference(dtype, grouped):
    case = {"weight_decay": 0.02, "use_bias_correction": True}
    groups = ({"weight_decay": 0.1}, {"eps": 1e-7}) if grouped else None
    ours = trajectory(lambda p: OptimDriver(p, **case), dtype, grouped=groups)
    theirs = trajectory(lambda p: prodigyopt.Prodigy(p, **case), dtype, grouped=groups)
    for a, b in zip(ours[0], theirs[0]):
        assert_close(a, b, dtype)
    for a, b in zip(ours[1], theirs[1]):
        assert_d(a, b, dtype)


def test_optim_dialect_resume_is_bit_exact():
    model, x, y = mlp(torch.float32)
    twin = copy.deepcopy(model)
    a = OptimDriver(model.parameters())
    for _ in range(8):
        backward(model, x, y)
        a.step()
    saved = a.opt.state_dict()
    assert saved["group/0/k"] == 8
    b = OptimDriver(twin.parameters())
    for p, q in zip(twin.parameters(), model.parameters()):
        p.data.copy_(q.data)
    b.opt.load_state_dict(saved)
    for m, o in ((model, a), (twin, b)):
        for _ in range(8):
            backward(m, x, y)
            o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_the_sums_do_not_depend_on_the_thread_count():
    """The totals are added per tensor in chunk order, then over the tensors in order: one
    thread or two give the same bits."""
    import numba

    runs = []
    saved = numba.get_num_threads()
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            ours = trajectory(lambda p: ot.Prodigy(p), torch.float32, steps=4)
            runs.append((np.array([g[0]["d"] for g in ours[1]]), ours[0][-1]))
    finally:
        numba.set_num_threads(saved)
    assert np.array_equal(runs[0][0], runs[1][0])
    for a, b in zip(runs[0][1], runs[1][1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parameters_with_different_step_counts_sum_together(dtype):
    """A parameter without a gradient at a step skips it (as the reference's does), and the
    cohorts of different step counts that follow step together: one D estimate over all of
    them, as the reference's."""

    def run(make):
        model, x, y = mlp(dtype)
        opt = make(model.parameters())
        groups = []
        for step in range(8):
            backward(model, x, y)
            if step in (0, 3):
                model[2].bias.grad = None
            if step == 5:
                model[0].weight.grad = None
            opt.step()
            groups.append([{k: g[k] for k in GROUP_KEYS} for g in opt.param_groups])
        return [p.detach().clone() for p in model.parameters()], groups, opt

    ours, theirs = (
        run(lambda p: ot.Prodigy(p, weight_decay=0.01)),
        run(lambda p: prodigyopt.Prodigy(p, weight_decay=0.01)),
    )
    assert len(ours[2]._cohorts) > 1  # the step counts differ
    assert_close(ours[0], theirs[0], dtype)
    for a, b in zip(ours[1], theirs[1]):
        assert_d(a, b, dtype)
    steps = [ours[2].state[p]["step"] for p in ours[2]._flat_params()]
    assert [int(s) for s in steps] == [
        theirs[2].state[p]["step"] for p in theirs[2].param_groups[0]["params"]
    ]


def _run_both(make_groups, steps=8, dtype=torch.float64, before_step=None, **kwargs):
    """The same training under optforge.torch.Prodigy and prodigyopt.Prodigy: the parameters
    and each group's D estimate after every step. `make_groups(model)` gives the param groups;
    `before_step(step, model, opt)` may drop gradients, add a group or set lrs."""
    runs = []
    for cls in (ot.Prodigy, prodigyopt.Prodigy):
        model, x, y = mlp(dtype)
        opt = cls(make_groups(model), **kwargs)
        groups = []
        for step in range(steps):
            backward(model, x, y)
            if before_step is not None:
                before_step(step, model, opt)
            opt.step()
            groups.append([{k: g[k] for k in ("d", "d_max", "d_numerator")} for g in opt.param_groups])
        runs.append(([p.detach().clone() for p in model.parameters()], groups, opt))
    return runs


def test_a_group_without_gradients_holds_the_estimate_too():
    """The reference keeps one d for the optimizer, in every group: a group whose parameters
    have no gradient at a step still gets it (and steps with it later)."""

    def drop(step, model, opt):
        if step == 2:
            for p in model[2].parameters():
                p.grad = None

    two = lambda m: [{"params": list(m[0].parameters())}, {"params": list(m[2].parameters())}]  # noqa: E731
    ours, theirs = _run_both(two, before_step=drop)
    assert_close(ours[0], theirs[0], torch.float64)
    for a, b in zip(ours[1], theirs[1]):
        assert a[0] == a[1]
        for key in a[0]:
            assert a[1][key] == pytest.approx(b[1][key], rel=1e-9)


def test_add_param_group_mid_training_shares_the_estimate():
    def add(step, model, opt):
        if step == 3:
            opt.add_param_group({"params": list(model[2].parameters())})

    ours, theirs = _run_both(lambda m: list(m[0].parameters()), before_step=add)
    assert_close(ours[0], theirs[0], torch.float64)
    for a, b in zip(ours[1][3:], theirs[1][3:]):
        assert a[1]["d"] == pytest.approx(b[1]["d"], rel=1e-9) and a[0]["d"] == a[1]["d"]


@pytest.mark.parametrize("schedule", ["warm-up from 0", "lr 0 mid-training", "a frozen group"])
def test_lr_zero_is_skipped_as_the_reference_skips_it(schedule):
    """A group at lr 0 updates no moment and adds nothing to the sums; with every lr at 0 the
    step changes nothing; the update uses the largest lr (dlr), as the reference's."""

    def lrs(step, model, opt):
        if schedule == "warm-up from 0":
            for g in opt.param_groups:
                g["lr"] = min(1.0, step / 3)
        elif schedule == "lr 0 mid-training":
            for g in opt.param_groups:
                g["lr"] = 0.0 if step in (3, 4) else 1.0
        elif step >= 2:
            opt.param_groups[1]["lr"] = 0.0

    two = lambda m: [{"params": list(m[0].parameters())}, {"params": list(m[2].parameters())}]  # noqa: E731
    ours, theirs = _run_both(two, before_step=lrs, weight_decay=0.05)
    assert_close(ours[0], theirs[0], torch.float64)
    for a, b in zip(ours[1], theirs[1]):
        assert a[0]["d"] == pytest.approx(b[0]["d"], rel=1e-9)
    for p, q in zip(
        ours[2]._flat_params(), theirs[2].param_groups[0]["params"] + theirs[2].param_groups[1]["params"]
    ):
        assert torch.allclose(ours[2].state[p]["exp_avg_sq"], theirs[2].state[q]["exp_avg_sq"], atol=1e-15)


def test_groups_with_different_nonzero_lrs_are_refused_as_the_reference_refuses_them():
    model, x, y = mlp(torch.float32)
    opt = ot.Prodigy(
        [{"params": list(model[0].parameters())}, {"params": list(model[2].parameters()), "lr": 0.5}]
    )
    backward(model, x, y)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="only supported for values of 0"):
        opt.step()
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    assert opt.param_groups[0]["k"] == 0


def test_a_reference_state_dict_with_beta1_zero_loads():
    """The reference keeps no exp_avg with beta1 = 0; the update never reads it here either."""
    model, x, y = mlp(torch.float64)
    twin, whole = copy.deepcopy(model), copy.deepcopy(model)
    theirs = prodigyopt.Prodigy(model.parameters(), betas=(0.0, 0.99))
    uninterrupted = prodigyopt.Prodigy(whole.parameters(), betas=(0.0, 0.99))
    for m, o in ((model, theirs), (whole, uninterrupted)):
        for _ in range(4):
            backward(m, x, y)
            o.step()
    assert "exp_avg" not in theirs.state_dict()["state"][0]
    for p, q in zip(twin.parameters(), model.parameters()):
        p.data.copy_(q.data)
    ours = ot.Prodigy(twin.parameters(), betas=(0.0, 0.99))
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    for m, o in ((twin, ours), (whole, uninterrupted)):
        for _ in range(4):
            backward(m, x, y)
            o.step()
    assert_close(list(twin.parameters()), list(whole.parameters()), torch.float64)
