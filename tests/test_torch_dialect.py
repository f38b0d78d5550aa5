"""optforge.torch: torch.optim.Optimizer subclasses generated from the specs.

Each class against torch.optim 2.13 over 20 steps of training a small MLP (or,
where torch has no such optimizer, against a float64 NumPy loop of the paper's
algorithm), closures, schedulers, torch-layout state dicts both ways, bit-exact
resumes, zero-copy stepping and the checks that refuse a step before it
changes anything.
"""

import copy
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import optforge.torch as ot  # noqa: E402
from tests.modes import ready  # noqa: E402
from tests.references.lamb import lamb_trajectory  # noqa: E402
from tests.test_catalogue_papers import adabelief, adan, lion  # noqa: E402

STEPS = 20
CASES = {
    "Adam": [{}, {"amsgrad": True, "weight_decay": 0.1}, {"maximize": True, "lr": 1e-4}],
    "AdamW": [{}, {"amsgrad": True, "betas": (0.8, 0.95)}],
    "RAdam": [{}, {"weight_decay": 0.1}],
    "NAdam": [{}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "decoupled_weight_decay": True}],
    "Adagrad": [{}, {"lr_decay": 0.01, "weight_decay": 0.1, "initial_accumulator_value": 0.1}],
    "SGD": [
        {"lr": 0.05},
        {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
        {"lr": 0.05, "momentum": 0.9, "dampening": 0.1},
        {"lr": 0.001, "momentum": 0.5, "maximize": True},
    ],
    "RMSprop": [{}, {"momentum": 0.5, "centered": True, "lr": 1e-3}, {"weight_decay": 0.1, "alpha": 0.9}],
    "Adamax": [{}, {"weight_decay": 0.1}],
    "Adadelta": [{}, {"weight_decay": 0.1, "rho": 0.8}],
    "Rprop": [{}, {"etas": (0.3, 1.5), "step_sizes": (1e-4, 1.0)}],
    # The MLP's weights are matrices (factored), its biases vectors.
    "Adafactor": [{}, {"lr": 0.05, "weight_decay": 0.1}, {"maximize": True, "eps": (1e-20, 1e-2), "d": 2.0}],
}
PARAMS = [(name, kwargs) for name, cases in CASES.items() for kwargs in cases]
TOL = {torch.float32: dict(atol=1e-5, rtol=2e-5), torch.float64: dict(atol=1e-9, rtol=1e-6)}
# The RAdam spec computes rho_t and the rectification in float32, as MindSpore does (see its notes);
# torch does it in float64, so float64 parameters differ by about 1e-7.
LOOSER = {"RAdam": {torch.float64: dict(atol=1e-6, rtol=1e-4)}}


def mlp(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.Tanh(), torch.nn.Linear(13, 3)).to(dtype)
    x, y = torch.randn(33, 7, dtype=dtype), torch.randn(33, 3, dtype=dtype)
    return model, x, y


def train(model, x, y, opt, steps, scheduler=None):
    losses = []
    for _ in range(steps):

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        losses.append(opt.step(closure).item())
        if scheduler is not None:
            scheduler.step()
    return losses


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_close(actual, expected, dtype, name=""):
    tolerance = LOOSER.get(name, {}).get(dtype, TOL[dtype])
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name, kwargs", PARAMS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(PARAMS)])
def test_trains_an_mlp_like_torch_optim(name, kwargs, dtype):
    reference, x, y = mlp(dtype)
    ours = copy.deepcopy(reference)
    expected = train(reference, x, y, getattr(torch.optim, name)(reference.parameters(), **kwargs), STEPS)
    opt = getattr(ot, name)(ours.parameters(), **kwargs)
    assert isinstance(opt, torch.optim.Optimizer)
    losses = train(ours, x, y, opt, STEPS)
    assert_close(weights(ours), weights(reference), dtype, name)
    np.testing.assert_allclose(losses, expected, rtol=1e-5)


def _paper_lamb(w, grads, lr, **kw):
    return lamb_trajectory(w, grads, [lr] * len(grads), **kw)[-1]


PAPERS = [
    ("Lion", lion, {"lr": 1e-3, "weight_decay": 0.1}, {"beta1": 0.9, "beta2": 0.99, "weight_decay": 0.1}),
    ("Lamb", _paper_lamb, {"lr": 1e-2, "weight_decay": 0.01}, {"eps": 1e-6, "weight_decay": 0.01}),
    ("AdaBelief", adabelief, {"lr": 1e-2, "eps": 1e-16}, {"eps": 1e-16}),
    ("Adan", adan, {"lr": 1e-2, "weight_decay": 0.02}, {"weight_decay": 0.02}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name, reference, kwargs, ref_kwargs", PAPERS, ids=[p[0] for p in PAPERS])
def test_matches_the_papers_algorithm(name, reference, kwargs, ref_kwargs, dtype):
    """Optimizers torch lacks, over 20 steps of given gradients on tensors of odd shapes."""
    rng = np.random.default_rng(7)
    shapes = [(7,), (3, 5), (2, 1, 3)]
    params = [torch.tensor(rng.standard_normal(s), dtype=dtype, requires_grad=True) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(STEPS)]
    w0 = [p.detach().double().numpy().copy() for p in params]
    opt = getattr(ot, name)(params, **kwargs)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = torch.tensor(g, dtype=dtype)
        opt.step()
    for i, p in enumerate(params):
        expected = reference(w0[i], [step[i] for step in grads], kwargs["lr"], **ref_kwargs)
        np.testing.assert_allclose(p.detach().double().numpy(), expected, atol=1e-5, rtol=2e-5)


def test_an_lr_scheduler_drives_the_groups_lr_as_with_torch_optim():
    reference, x, y = mlp()
    ours = copy.deepcopy(reference)
    torch_opt = torch.optim.Adam(reference.parameters(), lr=0.05)
    our_opt = ot.Adam(ours.parameters(), lr=0.05)
    make = lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=STEPS)  # noqa: E731
    train(reference, x, y, torch_opt, STEPS, make(torch_opt))
    schedule = make(our_opt)
    train(ours, x, y, our_opt, STEPS, schedule)
    assert our_opt.param_groups[0]["lr"] == torch_opt.param_groups[0]["lr"]
    assert_close(weights(ours), weights(reference), torch.float32)


def test_param_groups_override_options_and_a_tensor_lr_is_read_each_step():
    reference, x, y = mlp()
    ours = copy.deepcopy(reference)

    def groups(model):
        first, second = model[0], model[2]
        return [
            {"params": first.parameters(), "lr": torch.tensor(0.01), "betas": (0.8, 0.9)},
            {"params": second.parameters(), "weight_decay": 0.1},
        ]

    train(reference, x, y, torch.optim.AdamW(groups(reference), lr=0.03), STEPS)
    train(ours, x, y, ot.AdamW(groups(ours), lr=0.03), STEPS)
    assert_close(weights(ours), weights(reference), torch.float32)


def test_steps_the_tensors_memory_in_place_and_state_views_the_kernels_arrays():
    model, x, y = mlp()
    pointers = [p.data_ptr() for p in model.parameters()]
    opt = ot.Adam(model.parameters(), lr=0.01)
    before = weights(model)
    train(model, x, y, opt, 2)
    assert [p.data_ptr() for p in model.parameters()] == pointers
    assert all(not torch.equal(a, b) for a, b in zip(weights(model), before))
    engine = opt._cohorts[0].engine
    for pos, p in enumerate(model.parameters()):
        state = opt.state[p]
        assert state["exp_avg"].data_ptr() == engine.state["exp_avg"][pos].ctypes.data
        assert float(state["step"]) == 2.0


@pytest.mark.parametrize(
    "name", ["Adam", "NAdam", "SGD", "RMSprop", "Adagrad", "RAdam", "Adadelta", "Rprop", "Adafactor"]
)
def test_state_dict_has_torch_optims_layout(name):
    kwargs = {"lr": 0.01, "momentum": 0.9} if name == "SGD" else {}
    model, x, y = mlp()
    theirs_model = copy.deepcopy(model)
    ours = getattr(ot, name)(model.parameters(), **kwargs)
    theirs = getattr(torch.optim, name)(theirs_model.parameters(), **kwargs)
    train(model, x, y, ours, 3)
    train(theirs_model, x, y, theirs, 3)
    sd, expected = ours.state_dict(), theirs.state_dict()
    assert sorted(sd["state"]) == sorted(expected["state"])
    for i, state in expected["state"].items():
        assert set(state) <= set(sd["state"][i]), (set(state), set(sd["state"][i]))
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(sd["state"][i][key].to(value.dtype), value, atol=1e-5, rtol=1e-4)
    assert [g["params"] for g in sd["param_groups"]] == [g["params"] for g in expected["param_groups"]]


def _save_and_load(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer)


CLASSES = [
    name
    for name, cls in vars(ot).items()
    if isinstance(cls, type)
    and issubclass(cls, ot.TorchOptimizer)
    and cls is not ot.TorchOptimizer
    # Muon steps 2-D parameters only (these models have biases): tests/test_muon.py resumes it
    and name != "Muon"
]


@pytest.mark.parametrize("name", CLASSES)
def test_five_steps_saved_and_loaded_then_five_more_equal_ten_bit_for_bit(name):
    kwargs = {"lr": 0.01, "momentum": 0.9} if name == "SGD" else {}
    straight, x, y = mlp()
    resumed = copy.deepcopy(straight)
    train(straight, x, y, ready(getattr(ot, name)(straight.parameters(), **kwargs)), 10)
    first = ready(getattr(ot, name)(resumed.parameters(), **kwargs))  # a class with modes: in train mode
    train(resumed, x, y, first, 5)
    saved = _save_and_load(first.state_dict())
    second = getattr(ot, name)(resumed.parameters(), **kwargs)
    second.load_state_dict(saved)
    # Loaded again, as ZeroRedundancyOptimizer's second resume does: torch's load leaves
    # `differentiable` in the defaults of classes without it, which must not be asked of the groups.
    second.load_state_dict(_save_and_load(second.state_dict()))
    train(resumed, x, y, second, 5)
    for a, b in zip(weights(resumed), weights(straight)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["Adam", "NAdam", "SGD", "RMSprop", "Adagrad", "Adafactor"])
def test_state_dicts_move_between_torch_optim_and_optforge(name):
    kwargs = {"lr": 0.01, "momentum": 0.9} if name == "SGD" else {"lr": 0.01}
    reference, x, y = mlp()
    train(reference, x, y, getattr(torch.optim, name)(reference.parameters(), **kwargs), 10)
    # torch.optim for 5 steps, then optforge for 5 more
    model = mlp()[0]
    theirs = getattr(torch.optim, name)(model.parameters(), **kwargs)
    train(model, x, y, theirs, 5)
    ours = getattr(ot, name)(model.parameters(), **kwargs)
    ours.load_state_dict(_save_and_load(theirs.state_dict()))
    train(model, x, y, ours, 5)
    assert_close(weights(model), weights(reference), torch.float32)
    # and back: optforge for 5 steps, then torch.optim for 5 more
    model = mlp()[0]
    ours = getattr(ot, name)(model.parameters(), **kwargs)
    train(model, x, y, ours, 5)
    theirs = getattr(torch.optim, name)(model.parameters(), **kwargs)
    theirs.load_state_dict(_save_and_load(ours.state_dict()))
    train(model, x, y, theirs, 5)
    assert_close(weights(model), weights(reference), torch.float32)


def test_parameters_without_gradients_are_skipped_and_late_ones_start_at_step_one():
    """A frozen layer never steps; a layer unfrozen later counts its steps from 1, as in torch."""
    reference, x, y = mlp()
    ours = copy.deepcopy(reference)
    results = []
    for model, cls in ((reference, torch.optim.Adam), (ours, ot.Adam)):
        model[0].requires_grad_(False)
        opt = cls(model.parameters(), lr=0.01)
        train(model, x, y, opt, 4)
        model[0].requires_grad_(True)
        train(model, x, y, opt, 4)
        results.append((weights(model), opt.state_dict()))
    assert_close(results[1][0], results[0][0], torch.float32)
    steps = {i: float(s["step"]) for i, s in results[1][1]["state"].items()}
    assert steps == {0: 4.0, 1: 4.0, 2: 8.0, 3: 8.0}
    assert len(opt._cohorts) == 2  # opt: the optforge one, the loop's last


def test_add_param_group_after_steps_starts_a_new_cohort():
    reference, x, y = mlp()
    ours = copy.deepcopy(reference)
    for model, cls in ((reference, torch.optim.SGD), (ours, ot.SGD)):
        opt = cls(model[2].parameters(), lr=0.05, momentum=0.9)
        model[0].requires_grad_(False)
        train(model, x, y, opt, 3)
        model[0].requires_grad_(True)
        opt.add_param_group({"params": model[0].parameters(), "lr": 0.01})
        train(model, x, y, opt, 3)
    assert_close(weights(ours), weights(reference), torch.float32)


def _snapshot(model, opt):
    return weights(model), copy.deepcopy({k: v for k, v in opt.state_dict().items()})


def _assert_unchanged(model, opt, snapshot):
    for a, b in zip(weights(model), snapshot[0]):
        assert torch.equal(a, b)
    after = opt.state_dict()
    for i, state in snapshot[1]["state"].items():
        for key, value in state.items():
            assert torch.equal(after["state"][i][key], value), key


def test_a_parameter_whose_memory_moved_is_refused_and_nothing_changes():
    model, x, y = mlp()
    opt = ot.Adam(model.parameters(), lr=0.01)
    train(model, x, y, opt, 2)
    model[2].bias.data = model[2].bias.data.clone()  # the optimizer's view now points elsewhere
    torch.nn.functional.mse_loss(model(x), y).backward()
    snapshot = _snapshot(model, opt)
    with pytest.raises(RuntimeError, match="memory moved"):
        opt.step()
    _assert_unchanged(model, opt, snapshot)


def test_skip_nonfinite_skips_the_whole_step():
    model, x, y = mlp()
    opt = ot.Adam(model.parameters(), lr=0.01, skip_nonfinite=True)
    train(model, x, y, opt, 2)
    torch.nn.functional.mse_loss(model(x), y).backward()
    model[2].weight.grad[0, 0] = float("nan")
    snapshot = _snapshot(model, opt)
    opt.step()
    _assert_unchanged(model, opt, snapshot)
    assert opt.skipped_steps == 1
    assert float(opt.state_dict()["state"][0]["step"]) == 2.0


def test_a_state_dict_of_another_optimizer_or_shape_is_refused_before_anything_changes():
    model, x, y = mlp()
    opt = ot.Adam(model.parameters(), lr=0.01)
    train(model, x, y, opt, 2)
    snapshot = _snapshot(model, opt)
    other, _, _ = mlp()
    sgd = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    train(other, x, y, sgd, 1)
    with pytest.raises(ValueError, match="is it a state dict of another optimizer"):
        opt.load_state_dict(sgd.state_dict())
    wide = torch.nn.Sequential(torch.nn.Linear(7, 14), torch.nn.Tanh(), torch.nn.Linear(14, 3))
    wide_opt = ot.Adam(wide.parameters())
    train(wide, x, y, wide_opt, 1)
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(wide_opt.state_dict())
    fewer = ot.Adam(model[2].parameters())
    with pytest.raises(ValueError, match="param groups"):
        opt.load_state_dict(fewer.state_dict())
    amsgrad = copy.deepcopy(opt.state_dict())
    amsgrad["param_groups"][0]["amsgrad"] = True
    with pytest.raises(ValueError, match="amsgrad"):
        opt.load_state_dict(amsgrad)
    _assert_unchanged(model, opt, snapshot)
    train(model, x, y, opt, 1)  # and it still steps


# torch.optim's own words (its classes' f-strings), so code that matches them keeps working.
BAD_ARGUMENTS = [
    ("Adam", {"lr": -1.0}, ValueError, "Invalid learning rate: -1.0"),
    ("Adam", {"weight_decay": -0.1}, ValueError, "Invalid weight_decay"),
    ("Adam", {"betas": (1.0, 0.999)}, ValueError, "Invalid beta parameter at index 0: 1.0"),
    ("Adam", {"betas": (0.9, -0.1)}, ValueError, "Invalid beta parameter at index 1: -0.1"),
    ("Adam", {"betas": (0.9,)}, ValueError, "2 numbers"),
    ("Adam", {"betas": 0.9}, TypeError, "tuple"),
    ("Adam", {"eps": "small"}, TypeError, "real number"),
    ("Adam", {"amsgrad": 1}, TypeError, "bool"),
    ("SGD", {"lr": 0.1, "nesterov": True}, ValueError, "[Nn]esterov"),
    ("RMSprop", {"alpha": -0.5}, ValueError, "Invalid alpha"),
    ("Adam", {"skip_nonfinite": "yes"}, TypeError, "skip_nonfinite"),
    ("Adafactor", {"beta2_decay": 0.5}, ValueError, "beta2_decay should be <= 0 but is: 0.5"),
    ("Adafactor", {"eps": (-1.0, 1e-3)}, ValueError, "epsilon1 should be >= 0 but is: -1.0"),
    ("Adafactor", {"eps": (None, "x")}, TypeError, r"real number"),
    ("Adafactor", {"d": 0.5}, ValueError, "Clipping threshold d should be >= 1 but is: 0.5"),
]


@pytest.mark.parametrize("name, kwargs, error, match", BAD_ARGUMENTS)
def test_invalid_arguments_raise_like_torch_optim(name, kwargs, error, match):
    with pytest.raises(error, match=match):
        getattr(ot, name)(mlp()[0].parameters(), **kwargs)


def test_parameters_the_kernels_cannot_step_are_refused():
    with pytest.raises(TypeError, match="float32, float64, bfloat16 or float16"):
        ot.Adam([torch.zeros(3, dtype=torch.complex64, requires_grad=True)])
    strided = torch.zeros(4, 6)[:, ::2].requires_grad_()
    with pytest.raises(ValueError, match="contiguous"):
        ot.Adam([strided])
    model = mlp()[0]
    opt = ot.Adam(model[0].parameters(), amsgrad=True)
    with pytest.raises(ValueError, match="amsgrad"):
        opt.add_param_group({"params": model[2].parameters(), "amsgrad": False})
    assert len(opt.param_groups) == 1


def test_sparse_gradients_are_refused():
    p = torch.zeros(4, 3, requires_grad=True)
    opt = ot.Adam([p])
    p.grad = torch.zeros(4, 3).to_sparse()
    with pytest.raises(TypeError, match="sparse"):
        opt.step()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_steps_cuda_tensors_in_place_like_torch_optim():
    reference, x, y = mlp()
    reference, x, y = reference.cuda(), x.cuda(), y.cuda()
    ours = copy.deepcopy(reference)
    train(reference, x, y, torch.optim.Adam(reference.parameters(), lr=0.01, weight_decay=0.1), STEPS)
    opt = ot.Adam(ours.parameters(), lr=0.01, weight_decay=0.1)
    train(ours, x, y, opt, STEPS)
    assert_close(weights(ours), weights(reference), torch.float32)
    assert opt.state_dict()["state"][0]["exp_avg"].is_cuda
