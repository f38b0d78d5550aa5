"""ScheduleFreeAdamW (specs/schedulefree.py) against schedulefree.AdamWScheduleFree 1.4.1.

20 steps of a small MLP in float32 and float64, with each option of the reference (warmup,
r, weight_lr_power, weight decay, foreach either way), two param groups with different
hyperparameters, eval()/train() in the middle and at the end (the parameters are then the
reference's x), the step-level state in the groups after every step, bit-exact resumes
(the step state included), state dicts moved between the reference and optforge both
ways, and the refusals: step() outside train mode and arguments out of their domains.
Both dialects: optforge.torch (torch tensors) and optforge.optim (optforge Parameters
over the same memory as a torch model's).
"""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
schedulefree = pytest.importorskip("schedulefree")
import optforge  # noqa: E402
import optforge.torch as ot  # noqa: E402

STEPS = 20
TOL = {torch.float32: dict(atol=1e-5, rtol=2e-5), torch.float64: dict(atol=1e-9, rtol=0)}
GROUP_KEYS = ("k", "scheduled_lr", "lr_max", "weight_sum", "train_mode")
CASES = [
    {"lr": 0.01},
    {"lr": 0.02, "warmup_steps": 6},
    {"lr": 0.01, "r": 0.75, "weight_lr_power": 1.0},
    {"lr": 0.01, "weight_decay": 0.05, "betas": (0.8, 0.99), "eps": 1e-6},
    {"lr": 0.01, "warmup_steps": 4, "r": 1.0, "weight_lr_power": 0.0, "weight_decay": 0.1},
    {"lr": 0.01, "foreach": False, "warmup_steps": 3},
]


def mlp(dtype, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.Tanh(), torch.nn.Linear(13, 3)).to(dtype)
    x, y = torch.randn(33, 7, dtype=dtype), torch.randn(33, 3, dtype=dtype)
    return model, x, y


def backward(model, x, y):
    for p in model.parameters():
        p.grad = None
    torch.nn.functional.mse_loss(model(x), y).backward()


def groups_of(model, case):
    """Two param groups (the first layer, the second) with different hyperparameters."""
    first, second = list(model[0].parameters()), list(model[2].parameters())
    return [
        {"params": first, **case},
        {"params": second, "lr": 0.03, "betas": (0.95, 0.9), "warmup_steps": 2},
    ]


def trajectory(make, dtype, steps=STEPS, switch_at=(7,), grouped=False, case=None):
    """Train with optimizer `make(params)`; returns the parameters after every step, the groups'
    step state after every step, and the parameters after the final eval() (x)."""
    model, x, y = mlp(dtype)
    opt = make(groups_of(model, case) if grouped else model.parameters())
    opt.train()
    params, groups = [], []
    for step in range(steps):
        backward(model, x, y)
        opt.step()
        params.append([p.detach().clone() for p in model.parameters()])
        groups.append([{k: g[k] for k in GROUP_KEYS} for g in opt.param_groups])
        if step in switch_at:  # evaluate at x in the middle, then back to y
            opt.eval()
            params.append([p.detach().clone() for p in model.parameters()])
            opt.train()
    opt.eval()
    final = [p.detach().clone() for p in model.parameters()]
    return params, groups, final, opt


def assert_close(ours, theirs, dtype):
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, **TOL[dtype])


def assert_groups(ours, theirs, dtype):
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys()
        assert a["k"] == b["k"] and type(a["k"]) is type(b["k"]) is int
        assert a["train_mode"] is b["train_mode"]
        for key in ("scheduled_lr", "lr_max", "weight_sum"):
            # Python floats in both: the same arithmetic in the same order.
            assert a[key] == b[key], key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_torch_dialect_matches_reference(case, dtype):
    ours = trajectory(lambda p: ot.ScheduleFreeAdamW(p, **case), dtype)
    theirs = trajectory(lambda p: schedulefree.AdamWScheduleFree(p, **case), dtype)
    for a, b in zip(ours[0], theirs[0]):
        assert_close(a, b, dtype)
    for a, b in zip(ours[1], theirs[1]):
        assert_groups(a, b, dtype)
    assert_close(ours[2], theirs[2], dtype)  # x, after eval()
    for p, q in zip(ours[3].state.values(), theirs[3].state.values()):
        assert sorted(p) == sorted(q) == ["exp_avg_sq", "z"]
        for key in p:
            torch.testing.assert_close(p[key], q[key], **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_two_param_groups(dtype):
    case = {"lr": 0.01, "weight_decay": 0.02, "r": 0.5}
    ours = trajectory(lambda p: ot.ScheduleFreeAdamW(p, lr=0.5), dtype, grouped=True, case=case)
    theirs = trajectory(lambda p: schedulefree.AdamWScheduleFree(p, lr=0.5), dtype, grouped=True, case=case)
    for a, b in zip(ours[0], theirs[0]):
        assert_close(a, b, dtype)
    for a, b in zip(ours[1], theirs[1]):
        assert_groups(a, b, dtype)
    assert_close(ours[2], theirs[2], dtype)
    # The groups really differ: their step state does.
    assert ours[1][0][0]["lr_max"] != ours[1][0][1]["lr_max"]


def test_alias_and_signature():
    import inspect

    assert ot.AdamWScheduleFree is ot.ScheduleFreeAdamW
    ours = inspect.signature(ot.ScheduleFreeAdamW).parameters
    theirs = inspect.signature(schedulefree.AdamWScheduleFree).parameters
    assert list(ours)[: len(theirs)] == list(theirs)
    for name, parameter in theirs.items():
        if name != "params":
            assert ours[name].default == parameter.default, name


def test_parameters_without_gradients_skip_but_the_group_steps():
    """A parameter without a gradient is skipped (no state until its first gradient), while
    its group's step state advances, as in the reference."""

    def run(cls):
        model, x, y = mlp(torch.float64)
        opt = cls(model.parameters(), lr=0.01, warmup_steps=3)
        opt.train()
        for step in range(8):
            backward(model, x, y)
            if step < 4:
                model[2].bias.grad = None
            opt.step()
        opt.eval()
        return [p.detach().clone() for p in model.parameters()], opt

    ours, ours_opt = run(ot.ScheduleFreeAdamW)
    theirs, theirs_opt = run(schedulefree.AdamWScheduleFree)
    assert_close(ours, theirs, torch.float64)
    assert ours_opt.param_groups[0]["k"] == theirs_opt.param_groups[0]["k"] == 8


def test_step_outside_train_mode_raises_and_changes_nothing():
    for cls in (ot.ScheduleFreeAdamW, schedulefree.AdamWScheduleFree):
        model, x, y = mlp(torch.float32)
        opt = cls(model.parameters())
        backward(model, x, y)
        before = [p.detach().clone() for p in model.parameters()]
        with pytest.raises(Exception, match="not in train mode") as raised:
            opt.step()
        assert type(raised.value) is Exception  # the reference's own type, not a subclass
        opt.train()
        opt.step()
        opt.eval()
        stepped = [p.detach().clone() for p in model.parameters()]
        groups = copy.deepcopy([{k: g[k] for k in GROUP_KEYS} for g in opt.param_groups])
        with pytest.raises(Exception, match="not in train mode"):
            opt.step()
        assert all(torch.equal(a, b) for a, b in zip(stepped, model.parameters()))
        assert [{k: g[k] for k in GROUP_KEYS} for g in opt.param_groups] == groups
        assert not all(torch.equal(a, b) for a, b in zip(before, stepped))


def test_train_and_eval_are_idempotent():
    model, x, y = mlp(torch.float64)
    opt = ot.ScheduleFreeAdamW(model.parameters(), lr=0.01)
    opt.train()
    opt.train()  # already in train mode: nothing moves
    for _ in range(3):
        backward(model, x, y)
        opt.step()
    y_values = [p.detach().clone() for p in model.parameters()]
    opt.train()
    assert all(torch.equal(a, b) for a, b in zip(y_values, model.parameters()))
    opt.eval()
    x_values = [p.detach().clone() for p in model.parameters()]
    opt.eval()
    assert all(torch.equal(a, b) for a, b in zip(x_values, model.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(x_values, y_values))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_resume_is_bit_exact(mode):
    """state_dict after 10 steps (in train or eval mode), loaded into a fresh optimizer over a
    copy of the model: 10 more steps give the same bits as the uninterrupted run."""
    kwargs = dict(lr=0.02, warmup_steps=5, r=0.5, weight_decay=0.01)
    model, x, y = mlp(torch.float32)
    opt = ot.ScheduleFreeAdamW(model.parameters(), **kwargs)
    opt.train()
    for _ in range(10):
        backward(model, x, y)
        opt.step()
    if mode == "eval":
        opt.eval()
    saved = copy.deepcopy(opt.state_dict())
    model2 = copy.deepcopy(model)
    opt2 = ot.ScheduleFreeAdamW(model2.parameters(), **kwargs)
    opt2.load_state_dict(saved)
    assert [{k: g[k] for k in GROUP_KEYS} for g in opt2.param_groups] == [
        {k: g[k] for k in GROUP_KEYS} for g in opt.param_groups
    ]
    for m, o in ((model, opt), (model2, opt2)):
        o.train()
        for _ in range(10):
            backward(m, x, y)
            o.step()
        o.eval()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    for p, q in zip(opt.state.values(), opt2.state.values()):
        assert all(torch.equal(p[key], q[key]) for key in p)
    assert opt.param_groups[0]["weight_sum"] == opt2.param_groups[0]["weight_sum"]


@pytest.mark.parametrize("direction", ["reference_to_optforge", "optforge_to_reference"])
def test_state_dicts_move_between_the_reference_and_optforge(direction):
    dtype = torch.float64
    kwargs = dict(lr=0.01, warmup_steps=4, weight_decay=0.02)
    first, second = (
        (schedulefree.AdamWScheduleFree, ot.ScheduleFreeAdamW)
        if direction == "reference_to_optforge"
        else (ot.ScheduleFreeAdamW, schedulefree.AdamWScheduleFree)
    )
    model, x, y = mlp(dtype)
    opt = first(model.parameters(), **kwargs)
    opt.train()
    for _ in range(6):
        backward(model, x, y)
        opt.step()
    opt.eval()  # the reference's advice: save in eval mode
    saved = copy.deepcopy(opt.state_dict())
    model2 = copy.deepcopy(model)
    opt2 = second(model2.parameters(), **kwargs)
    opt2.load_state_dict(saved)
    for m, o in ((model, opt), (model2, opt2)):
        o.train()
        for _ in range(6):
            backward(m, x, y)
            o.step()
        o.eval()
    assert_close(list(model2.parameters()), list(model.parameters()), dtype)
    assert_groups(
        [{k: g[k] for k in GROUP_KEYS} for g in opt2.param_groups],
        [{k: g[k] for k in GROUP_KEYS} for g in opt.param_groups],
        dtype,
    )


def test_a_state_dict_without_step_state_is_refused():
    model, x, y = mlp(torch.float32)
    opt = ot.ScheduleFreeAdamW(model.parameters())
    opt.train()
    backward(model, x, y)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    del saved["param_groups"][0]["weight_sum"]
    fresh = ot.ScheduleFreeAdamW(copy.deepcopy(model).parameters())
    with pytest.raises(ValueError, match="weight_sum"):
        fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["k"] == 0 and not fresh.state


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"lr": -1.0}, ValueError),
        ({"betas": (0.0, 0.999)}, ValueError),  # eval() would divide by beta1
        ({"betas": (1.0, 0.999)}, ValueError),
        ({"betas": (0.9, 1.5)}, ValueError),
        ({"eps": -1e-8}, ValueError),
        ({"weight_decay": -0.1}, ValueError),
        ({"warmup_steps": -1}, ValueError),
        ({"warmup_steps": "5"}, TypeError),
        ({"r": "x"}, TypeError),
        ({"weight_lr_power": None}, TypeError),
        ({"betas": 0.9}, TypeError),
    ],
)
def test_invalid_arguments_are_refused(kwargs, error):
    """The reference checks no argument (its lr=-1 or beta1=0 fail later, or silently); these
    values are refused in the constructor, before anything is made."""
    model, _, _ = mlp(torch.float32)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(error):
        ot.ScheduleFreeAdamW(model.parameters(), **kwargs)
    with pytest.raises(error):
        params = [optforge.Parameter(p.detach().numpy(), f"p{i}") for i, p in enumerate(model.parameters())]
        optforge.optim.ScheduleFreeAdamW(params, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_optim_dialect_takes_an_int_warmup():
    """optforge.optim's types are the spec's (warmup_steps an int); the torch dialect, like
    torch.optim, checks values, and takes warmup_steps=2.5 as the reference does."""
    model, x, y = mlp(torch.float64)
    params = [optforge.Parameter(p.detach().numpy(), f"p{i}") for i, p in enumerate(model.parameters())]
    with pytest.raises(TypeError, match="warmup_steps"):
        optforge.optim.ScheduleFreeAdamW(params, warmup_steps=2.5)
    ours = trajectory(lambda p: ot.ScheduleFreeAdamW(p, warmup_steps=2.5), torch.float64, steps=5)
    theirs = trajectory(lambda p: schedulefree.AdamWScheduleFree(p, warmup_steps=2.5), torch.float64, steps=5)
    assert_close(ours[2], theirs[2], torch.float64)


# -- optforge.optim: the same algorithm over optforge Parameters --


class OptimDriver:
    """optforge.optim.ScheduleFreeAdamW over Parameters viewing a torch model's memory, with
    the torch dialect's interface (step, train, eval, param_groups) for `trajectory`."""

    def __init__(self, params, **kwargs):
        groups = list(params)
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.tensors = [p for g in groups for p in g["params"]]
        count = iter(range(len(self.tensors)))
        self.opt = optforge.optim.ScheduleFreeAdamW(
            [
                {
                    **g,
                    "params": [
                        optforge.Parameter(p.detach().numpy(), f"p{next(count)}") for p in g["params"]
                    ],
                }
                for g in groups
            ],
            **{k: v for k, v in kwargs.items() if k != "foreach"},
        )
        assert all(
            np.shares_memory(p.data, t.detach().numpy()) for p, t in zip(self.opt.parameters, self.tensors)
        )
        self.param_groups = self.opt.param_groups

    def step(self):
        self.opt(tuple(t.grad.numpy() for t in self.tensors))

    def train(self):
        self.opt.train()

    def eval(self):
        self.opt.eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("grouped", [False, True])
def test_optim_dialect_matches_reference(dtype, grouped):
    case = {"lr": 0.01, "warmup_steps": 5, "r": 0.5, "weight_decay": 0.02}
    kwargs = {} if grouped else case
    ours = trajectory(lambda p: OptimDriver(p, **kwargs), dtype, grouped=grouped, case=case)
    theirs = trajectory(
        lambda p: schedulefree.AdamWScheduleFree(p, **kwargs), dtype, grouped=grouped, case=case
    )
    for a, b in zip(ours[0], theirs[0]):
        assert_close(a, b, dtype)
    for a, b in zip(ours[1], theirs[1]):
        assert_groups(a, b, dtype)
    assert_close(ours[2], theirs[2], dtype)


def test_optim_dialect_resume_is_bit_exact_and_refuses_steps_in_eval_mode():
    kwargs = dict(lr=0.02, warmup_steps=5, r=0.5)
    model, x, y = mlp(torch.float32)
    model2 = copy.deepcopy(model)
    a = OptimDriver(model.parameters(), **kwargs)
    a.train()
    for _ in range(10):
        backward(model, x, y)
        a.step()
    a.eval()
    saved = a.opt.state_dict()
    assert saved["group/0/k"] == 10 and saved["group/0/train_mode"] == 0
    b = OptimDriver(model2.parameters(), **kwargs)
    # model2 still holds the initial values: copy the eval-mode parameters in, then load.
    for p, q in zip(model2.parameters(), model.parameters()):
        p.data.copy_(q.data)
    b.opt.load_state_dict(saved)
    assert b.param_groups[0]["k"] == 10 and b.param_groups[0]["train_mode"] is False
    backward(model2, x, y)
    with pytest.raises(Exception, match="not in train mode"):
        b.step()
    for m, o in ((model, a), (model2, b)):
        o.train()
        for _ in range(10):
            backward(m, x, y)
            o.step()
        o.eval()
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    assert a.param_groups[0]["weight_sum"] == b.param_groups[0]["weight_sum"]
