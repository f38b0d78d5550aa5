"""optforge.torch under torch.distributed: ZeroRedundancyOptimizer, DDP and plain data parallel.

Here, in one process, what ZeRO's load does to its local optimizer: it assigns
``optim.state[p] = {...}`` for each of its rank's parameters, not through the
local `load_state_dict`, and steps.
"""

import copy

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

import optforge.torch as ot  # noqa: E402

WORLD = 2
STEPS = 10
RESUME_AT = 5  # the checkpoint is taken after this many steps
BATCH = 12  # each rank gets BATCH // WORLD samples under data parallelism
FIRST = ["AdamW", "Lamb", "Adafactor", "SGD"]
CLASSES = FIRST + [name for name in ot.__all__ if name not in FIRST and name != "TorchOptimizer"]
KWARGS = {
    "AdamW": {"lr": 1e-2, "weight_decay": 0.1},
    "Lamb": {"lr": 1e-2, "weight_decay": 0.01},
    "Adafactor": {"lr": 1e-2},
    "SGD": {"lr": 0.05, "momentum": 0.9},
}  # the others: their defaults


# -- the runs, the same in the parent and in the ranks --


def build(model: str, dtype=torch.float32) -> nn.Module:
    """`mlp`: Linear(5, 7), Tanh, Linear(7, 3); `odd`: a 3-d weight (Conv1d), a (1, 12) and a
    (5, 1) matrix, a bias of one element."""
    torch.manual_seed(0)
    if model == "mlp":
        return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)
    odd = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(12, 1), nn.Linear(1, 5))
    return odd.to(dtype)


def batch(model: str, rank: int | None = None, dtype=torch.float32):
    """The fixed data: all of it, or rank `rank`'s half."""
    generator = torch.Generator().manual_seed(1)
    shape, out = ((5,), 3) if model == "mlp" else ((2, 6), 5)
    x, y = torch.randn(BATCH, *shape, generator=generator), torch.randn(BATCH, out, generator=generator)
    x, y = x.to(dtype), y.to(dtype)
    if rank is None:
        return x, y
    share = BATCH // WORLD
    return x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]


def kwargs_of(name: str) -> dict:
    return KWARGS.get(name, {})


def train(module: nn.Module, opt, x, y, steps: int, reduce=False) -> None:
    for _ in range(steps):
        module.zero_grad()
        nn.functional.mse_loss(module(x), y).backward()
        if reduce:  # data parallel by hand: the mean of the ranks' gradients
            for p in module.parameters():
                dist.all_reduce(p.grad)
                p.grad /= WORLD
        opt.step()


def weights(module: nn.Module) -> list:
    return [p.detach().clone() for p in module.parameters()]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread for torch and Numba in this process too, as in the ranks: these tensors are
    tiny, and on a busy machine a pool of threads per step costs more than the step (10x)."""
    import numba

    saved = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield
    torch.set_num_threads(saved[0])
    numba.set_num_threads(saved[1])


def assert_equal(actual: list, expected: list, what: str) -> None:
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert torch.equal(a, e), f"{what}: parameter {i} differs by {(a - e).abs().max().item()}"


def assert_same_state(actual: dict, expected: dict) -> None:
    """The same `state_dict()["state"]`, bit for bit."""
    assert sorted(actual) == sorted(expected)
    for index, state in expected.items():
        assert sorted(actual[index]) == sorted(state), f"parameter {index}"
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(actual[index][key]), torch.as_tensor(value)), (index, key)


# -- ZeRO's way of loading, in one process --


@pytest.mark.parametrize("used", [False, True], ids=["new", "used"])
@pytest.mark.parametrize("name", CLASSES)
def test_state_assigned_per_parameter_is_what_steps(name, used):
    """ZeroRedundancyOptimizer.load_state_dict assigns ``optim.state[p] = {...}`` for each of
    its rank's parameters and then steps: a new optimizer, or one with state of its own, takes
    the assigned state (its `state_dict()` shows it before a step) and steps from it."""
    module, (x, y) = build("mlp"), batch("mlp")
    opt = getattr(ot, name)(module.parameters(), **kwargs_of(name))
    train(module, opt, x, y, RESUME_AT)
    saved, saved_model = copy.deepcopy(opt.state_dict()), copy.deepcopy(module.state_dict())
    train(module, opt, x, y, STEPS - RESUME_AT)

    other = build("mlp")
    other_opt = getattr(ot, name)(other.parameters(), **kwargs_of(name))
    if used:
        train(other, other_opt, x, y, 2)
    other.load_state_dict(saved_model)
    params = list(other.parameters())
    for index, state in saved["state"].items():
        other_opt.state[params[index]] = copy.deepcopy(state)
    assert_same_state(other_opt.state_dict()["state"], saved["state"])
    train(other, other_opt, x, y, STEPS - RESUME_AT)
    assert_equal(weights(other), weights(module), "stepped from the assigned state")
    assert_same_state(other_opt.state_dict()["state"], opt.state_dict()["state"])


def test_reading_the_state_of_a_parameter_without_state_changes_nothing():
    """``state[p]`` of a parameter torch keeps nothing for (SGD without momentum) makes an
    empty dict: that is no new state, and the engines stay as they are."""
    module, (x, y) = build("mlp"), batch("mlp")
    opt = ot.SGD(module.parameters(), lr=0.1)
    train(module, opt, x, y, 1)
    engine = opt._cohorts[0].engine
    assert all(opt.state[p] == {} for p in module.parameters())
    train(module, opt, x, y, 1)
    assert opt._cohorts[0].engine is engine
