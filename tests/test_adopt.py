"""ADOPT and StableAdamW against pytorch_optimizer 4.1.0 (the `[test]` extra pins it).

Each case trains a small MLP (two Linear layers of odd sizes, four tensors) on a fixed
synthetic regression task for 20 steps with the reference and with optforge's class
(`optforge.torch`, and `optforge.optim` over the same gradients), and compares every
parameter after every step and the final state element by element: float32 within
1e-5 + 2e-5 relative, float64 within 1e-9. Then: two param groups with different
hyperparameters, checkpoint resume bit for bit, and the arguments both refuse.
"""

import copy
import math

import numpy as np
import pytest

import optforge

torch = pytest.importorskip("torch")
po = pytest.importorskip("pytorch_optimizer")

import optforge.torch  # noqa: E402

STEPS = 20
TOL = {torch.float32: dict(atol=1e-5, rtol=2e-5), torch.float64: dict(atol=1e-9, rtol=0)}
X = torch.randn(24, 7, generator=torch.Generator().manual_seed(1))
Y = torch.randn(24, 3, generator=torch.Generator().manual_seed(2))


def clip_half(step):
    """A clipping bound that binds from the second step on (ADOPT's default is step**0.25)."""
    return 0.5


ADOPT_CASES = [
    {},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "weight_decouple": True},
    {"weight_decay": 0.1, "weight_decouple": True, "fixed_decay": True},
    {"weight_decay": 0.1, "fixed_decay": True},  # fixed_decay alone changes nothing
    {"clip_lambda": None},
    {"clip_lambda": clip_half, "betas": (0.8, 0.99), "eps": 1e-3},
    {"maximize": True, "weight_decay": 0.05},
    {"foreach": False},
]
# The RMS clip binds (RMS > 1) in most tensor-steps of these runs: 75 of 80 with the defaults.
STABLE_CASES = [
    {},
    {"weight_decay": 0.0},
    {"weight_decay": 0.1, "weight_decouple": False},
    {"kahan_sum": False, "betas": (0.8, 0.95), "eps": 1e-6},
    {"maximize": True},
    {"eps": 0.1},  # eps^2 floors v in the RMS, eps the denominator (the clip binds less often)
]
CASES = [("ADOPT", kw) for kw in ADOPT_CASES] + [("StableAdamW", kw) for kw in STABLE_CASES]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CASES)]
STATE = ("exp_avg", "exp_avg_sq")


def model(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.Tanh(), torch.nn.Linear(13, 3)).to(dtype)


def backward(net, dtype, step=0):
    """The loss's gradients; the targets move a little each step, so the gradients vary."""
    net.zero_grad()
    loss = torch.nn.functional.mse_loss(net(X.to(dtype)), (Y * (1 + 0.05 * step)).to(dtype))
    loss.backward()


def train(make, dtype, steps=STEPS, net=None, opt=None, start=0):
    """Each step's parameters (copies) of `steps` steps of `make(params)` (or `opt` on `net`)."""
    net = net if net is not None else model(dtype)
    opt = opt if opt is not None else make(net.parameters())
    trajectory = []
    for step in range(start, start + steps):
        backward(net, dtype, step)
        opt.step()
        trajectory.append([p.detach().clone() for p in net.parameters()])
    return trajectory, net, opt


def reference(name):
    return getattr(po, name)


def ours(name, dialect="torch"):
    return getattr(getattr(optforge, dialect), name)


def assert_close(a, b, dtype, what):
    for i, (x, y) in enumerate(zip(a, b)):
        torch.testing.assert_close(y, x, **TOL[dtype], msg=lambda m: f"{what}, tensor {i}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name, kwargs", CASES, ids=IDS)
def test_torch_class_matches_pytorch_optimizer_every_step(name, kwargs, dtype):
    expected, ref_net, ref_opt = train(lambda p: reference(name)(p, **kwargs), dtype)
    got, net, opt = train(lambda p: ours(name)(p, **kwargs), dtype)
    for step, (a, b) in enumerate(zip(expected, got), 1):
        assert_close(a, b, dtype, f"step {step}")
    for p, q in zip(ref_net.parameters(), net.parameters()):
        for key in STATE:
            torch.testing.assert_close(opt.state[q][key], ref_opt.state[p][key], **TOL[dtype])
        assert float(opt.state[q]["step"]) == STEPS


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name, kwargs", CASES, ids=IDS)
def test_optim_class_matches_pytorch_optimizer_every_step(name, kwargs, dtype):
    kwargs = {k: v for k, v in kwargs.items() if k != "foreach"}  # a torch.optim switch only
    expected, _, _ = train(lambda p: reference(name)(p, **kwargs), dtype)
    net = model(dtype)
    arrays = [p.detach().numpy().copy() for p in net.parameters()]
    params = [optforge.Parameter(a, f"p{i}") for i, a in enumerate(arrays)]
    for p, param in zip(net.parameters(), params):
        p.data = torch.from_numpy(param.data)  # the torch model computes on optforge's arrays
    opt = ours(name, "optim")(params, **kwargs)
    for step in range(STEPS):
        backward(net, dtype, step)
        opt(tuple(p.grad.numpy() for p in net.parameters()))
        assert_close(expected[step], [torch.from_numpy(p.data) for p in params], dtype, f"step {step + 1}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(
    "name, groups",
    [
        (
            "ADOPT",
            [{"lr": 3e-3, "betas": (0.8, 0.99), "weight_decay": 0.1}, {"eps": 1e-4}],
        ),
        (
            "StableAdamW",
            [{"lr": 3e-3, "betas": (0.8, 0.9), "weight_decay": 0.0}, {"eps": 1e-5, "weight_decay": 0.2}],
        ),
    ],
)
def test_two_param_groups_with_their_own_hyperparameters(name, groups, dtype):
    def make(cls):
        def build(params):
            params = list(params)
            return cls([{"params": params[:2], **groups[0]}, {"params": params[2:], **groups[1]}], lr=1e-2)

        return build

    expected, _, _ = train(make(reference(name)), dtype)
    got, _, _ = train(make(ours(name)), dtype)
    for step, (a, b) in enumerate(zip(expected, got), 1):
        assert_close(a, b, dtype, f"step {step}")


@pytest.mark.parametrize("name, kwargs", CASES, ids=IDS)
def test_checkpoint_resume_is_bit_exact(name, kwargs):
    dtype = torch.float32
    straight, _, _ = train(lambda p: ours(name)(p, **kwargs), dtype)

    _, net, opt = train(lambda p: ours(name)(p, **kwargs), dtype, steps=10)
    saved = copy.deepcopy(opt.state_dict())
    weights = [p.detach().clone() for p in net.parameters()]
    del opt, net

    fresh = model(dtype)
    with torch.no_grad():
        for p, w in zip(fresh.parameters(), weights):
            p.copy_(w)
    resumed = ours(name)(fresh.parameters(), **kwargs)
    resumed.load_state_dict(saved)
    rest, _, _ = train(None, dtype, steps=10, net=fresh, opt=resumed, start=10)
    for a, b in zip(straight[10:], rest):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


@pytest.mark.parametrize("name", ["ADOPT", "StableAdamW"])
def test_optim_checkpoint_resume_is_bit_exact(name, tmp_path):
    rng = np.random.default_rng(3)
    shapes = [(13, 7), (13,), (3, 13), (3,)]
    grads = [tuple(rng.standard_normal(s).astype(np.float32) for s in shapes) for _ in range(20)]
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]

    def make():
        return ours(name, "optim")([optforge.Parameter(a.copy(), f"p{i}") for i, a in enumerate(start)])

    straight = make()
    for g in grads:
        straight(g)
    first = make()
    for g in grads[:10]:
        first(g)
    np.savez(tmp_path / "ckpt.npz", **first.state_dict())
    resumed = make()
    for p, q in zip(resumed.parameters, first.parameters):
        p.data[...] = q.data
    resumed.load_state_dict(np.load(tmp_path / "ckpt.npz"))
    for g in grads[10:]:
        resumed(g)
    for p, q in zip(straight.parameters, resumed.parameters):
        np.testing.assert_array_equal(p.data, q.data)
    for key in STATE:
        for a, b in zip(getattr(straight, key), getattr(resumed, key)):
            np.testing.assert_array_equal(a, b)


# -- the arguments -------------------------------------------------------------------------


def parameters():
    return list(model(torch.float32).parameters())


# Refused by both, with the same exception type.
BAD = [
    ({"betas": (1.0, 0.999)}, ValueError),
    ({"betas": (0.9, -0.1)}, ValueError),
    ({"weight_decay": -0.1}, ValueError),
    ({"eps": -1e-8}, ValueError),
]


@pytest.mark.parametrize("name", ["ADOPT", "StableAdamW"])
@pytest.mark.parametrize("kwargs, error", BAD, ids=[str(k) for k, _ in BAD])
def test_invalid_arguments_raise_what_the_reference_raises(name, kwargs, error):
    with pytest.raises(error):
        reference(name)(parameters(), **kwargs)
    with pytest.raises(error):
        ours(name)(parameters(), **kwargs)
    with pytest.raises(error):
        ours(name, "optim")([optforge.Parameter(np.zeros(3, np.float32), "p")], **kwargs)


@pytest.mark.parametrize("name", ["ADOPT", "StableAdamW"])
def test_a_negative_lr_is_refused_as_a_value_error(name):
    # pytorch_optimizer raises its NegativeLRError, which derives from Exception only; optforge
    # raises torch's ValueError (its own classes cannot raise pytorch_optimizer's type).
    with pytest.raises(po.base.exception.NegativeLRError):
        reference(name)(parameters(), lr=-1e-3)
    assert not issubclass(po.base.exception.NegativeLRError, ValueError)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        ours(name)(parameters(), lr=-1e-3)


@pytest.mark.parametrize("name", ["ADOPT", "StableAdamW"])
def test_an_invalid_param_group_leaves_the_optimizer_unchanged(name):
    # torch.optim (and so pytorch_optimizer) checks no values in add_param_group; optforge refuses
    # a group whose flag differs from the optimizer's (one kernel variant) or that sets an option
    # the class does not have, before anything changes.
    params = parameters()
    opt = ours(name)(params[:2], lr=1e-2)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="weight_decouple"):
        opt.add_param_group({"params": params[2:], "weight_decouple": not opt.defaults["weight_decouple"]})
    with pytest.raises(ValueError, match="momentum"):
        opt.add_param_group({"params": params[2:], "momentum": 0.9})
    assert len(opt.param_groups) == 1
    assert opt.state_dict() == before
    # The optim dialect checks a group's values as the constructor's arguments.
    arrays = [optforge.Parameter(np.zeros(3, np.float32), f"p{i}") for i in range(2)]
    with pytest.raises(ValueError):
        ours(name, "optim")([{"params": arrays[:1]}, {"params": arrays[1:], "betas": (0.9, 1.5)}])


def test_adopt_clip_lambda_must_be_callable_or_none():
    with pytest.raises(TypeError, match="clip_lambda"):
        optforge.torch.ADOPT(parameters(), clip_lambda=0.25)
    with pytest.raises(TypeError, match="clip_lambda"):
        optforge.optim.ADOPT([optforge.Parameter(np.zeros(3), "p")], clip_lambda="step**0.25")
    # pytorch_optimizer takes anything and fails at its second step, with parameters half changed.
    ref = po.ADOPT(parameters(), clip_lambda=0.25)
    assert ref.clip_lambda == 0.25


def test_adopt_clip_lambda_is_an_attribute_called_with_the_step():
    calls = []

    def bound(step):
        calls.append(step)
        return math.pow(step, 0.25)

    opt = optforge.torch.ADOPT(parameters(), clip_lambda=bound)
    assert opt.clip_lambda is bound
    assert "clip_lambda" not in opt.param_groups[0]  # not a group option: state dicts save and load
    net = model(torch.float32)
    opt = optforge.torch.ADOPT(net.parameters(), clip_lambda=bound)
    for step in range(4):
        backward(net, torch.float32, step)
        opt.step()
    assert calls == [2, 3, 4]  # the first step does not normalise, so it does not clip
    torch.save(opt.state_dict(), __import__("io").BytesIO())  # nothing unpicklable in it
    opt.clip_lambda = None  # changed between steps, as pytorch_optimizer's attribute can be
    backward(net, torch.float32, 4)
    opt.step()
    assert calls == [2, 3, 4]


def test_adopt_with_its_default_clip_lambda_pickles():
    # The default is a module-level function (pytorch_optimizer's is a lambda, which does not).
    import pickle

    opt = optforge.torch.ADOPT(parameters())
    copied = pickle.loads(pickle.dumps(opt))
    assert copied.clip_lambda is opt.clip_lambda
    assert opt.clip_lambda(81) == math.pow(81, 0.25)


def test_adopt_first_step_only_starts_the_second_moment():
    net = model(torch.float64)
    before = [p.detach().clone() for p in net.parameters()]
    opt = optforge.torch.ADOPT(net.parameters(), weight_decay=0.1)
    backward(net, torch.float64)
    grads = [p.grad.clone() for p in net.parameters()]
    opt.step()
    for p, b, g in zip(net.parameters(), before, grads):
        assert torch.equal(p.detach(), b)
        assert torch.equal(opt.state[p]["exp_avg"], torch.zeros_like(b))
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], (g + 0.1 * b) ** 2, atol=1e-15, rtol=1e-14)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stable_adamw_kahan_sum_refuses_16_bit_parameters(dtype):
    net = model(torch.float32).to(dtype)
    with pytest.raises(ValueError, match="kahan_sum=True is not implemented"):
        optforge.torch.StableAdamW(net.parameters())
    opt = optforge.torch.StableAdamW(list(model(torch.float32).parameters()))
    with pytest.raises(ValueError, match="kahan_sum=True"):
        opt.add_param_group({"params": list(net.parameters())})
    assert len(opt.param_groups) == 1
    # kahan_sum=False steps them (in float32 arithmetic, rounded once to the 16-bit parameter).
    opt = optforge.torch.StableAdamW(net.parameters(), kahan_sum=False)
    before = [p.detach().clone() for p in net.parameters()]
    net.zero_grad()
    torch.nn.functional.mse_loss(net(X.to(dtype)).float(), Y).backward()
    opt.step()
    assert any(not torch.equal(p.detach(), b) for p, b in zip(net.parameters(), before))


def test_stable_adamw_optim_kahan_sum_refuses_16_bit_parameters():
    half = optforge.Parameter(np.zeros(5, np.float16), "h")
    with pytest.raises(ValueError, match="kahan_sum=True is not implemented for float16"):
        optforge.optim.StableAdamW([half])
    optforge.optim.StableAdamW([half], kahan_sum=False)((np.ones(5, np.float16),))
    assert np.all(half.data < 0)


@pytest.mark.parametrize("name", ["ADOPT", "StableAdamW"])
def test_signature_matches_the_reference(name):
    import inspect

    ref = inspect.signature(reference(name)).parameters
    got = inspect.signature(ours(name)).parameters
    names = [n for n in ref if n != "kwargs"]
    assert [n for n in got if n in ref] == names
    for n in names:
        if n == "clip_lambda":
            assert got[n].default(16) == ref[n].default(16)
            continue
        assert got[n].default == ref[n].default, n


@pytest.mark.parametrize("name", ["ADOPT", "StableAdamW"])
def test_state_dict_moves_to_the_reference_and_back(name):
    """pytorch_optimizer keeps its step count in the param group (group["step"]), optforge per
    parameter, as torch does: our state dict writes both, and a state without a step takes its
    group's, so a run moves mid-way from either class to the other and continues the same."""
    dtype = torch.float64
    straight, _, _ = train(lambda p: reference(name)(p), dtype)

    _, net, opt = train(lambda p: ours(name)(p), dtype, steps=10)
    sd = copy.deepcopy(opt.state_dict())
    assert all(set(s) == {"step", *STATE} for s in sd["state"].values())
    assert [g["step"] for g in sd["param_groups"]] == [10] == [g["step"] for g in opt.param_groups]
    ref = reference(name)(net.parameters())
    ref.load_state_dict(sd)
    rest, _, _ = train(None, dtype, steps=10, net=net, opt=ref, start=10)
    for a, b in zip(straight[10:], rest):
        assert_close(a, b, dtype, "continued by pytorch_optimizer")

    _, net, ref = train(lambda p: reference(name)(p), dtype, steps=10)
    sd = copy.deepcopy(ref.state_dict())
    assert all("step" not in s for s in sd["state"].values())
    opt = ours(name)(net.parameters())
    opt.load_state_dict(sd)
    assert all(float(opt.state[p]["step"]) == 10 for p in net.parameters())
    assert opt.param_groups[0]["step"] == 10  # the reference's group count, kept as it keeps it
    rest, _, _ = train(None, dtype, steps=10, net=net, opt=opt, start=10)
    for a, b in zip(straight[10:], rest):
        assert_close(a, b, dtype, "continued by optforge")
    assert opt.state_dict()["param_groups"][0]["step"] == 20
