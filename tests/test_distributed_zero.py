"""optforge.torch under torch.distributed: ZeroRedundancyOptimizer, DDP and plain data parallel.

Two real gloo ranks (tests/distributed_harness.py), started once for the whole
module: one spawn runs every check for every class and writes what it saw;
the tests compare that with single-process runs made here, in the parent.

* ZeRO (`ZeroRedundancyOptimizer(..., optimizer_class=optforge.torch.X)`) gives
  each rank whole parameters, so each rank's local optforge optimizer steps whole
  tensors (Lamb's norms, Adafactor's factors are per tensor, as unsharded):
  10 steps match the unsharded optimizer on one process (1e-6), and torch.optim's
  class of the same name (its usual tolerance).
* `consolidate_state_dict(to=0)` on rank 0 gives the single-process state dict;
  a new model and ZeRO that load it (ZeRO assigns `optim.state[p]` itself, not
  through the local `load_state_dict`) continue bit for bit as the run that was
  not interrupted; a single-process optimizer loads it too.
* ZeRO's `add_param_group` in the middle of training, and
  `parameters_as_bucket_view=True`.
* DDP, DDP with ZeRO, and all_reduce by hand: each rank steps on half of the
  batch; the ranks agree exactly and match one process on the whole batch (1e-6).

The single-process runs happen before the spawn: they compile the kernels into
Numba's cache, so the ranks load them instead of compiling them at once. Then,
in one process, what ZeRO's load does to its local optimizer (``state[p] = {...}``),
and the harness itself: a rank that raises, ranks that hang past the bound.
"""

import copy
import inspect
import os
import time
from typing import NamedTuple

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.distributed.optim import ZeroRedundancyOptimizer  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

import optforge.torch as ot  # noqa: E402
from tests.distributed_harness import RankFailed, run_ranks  # noqa: E402
from tests.modes import has_modes  # noqa: E402

WORLD = 2
STEPS = 10
RESUME_AT = 5  # the checkpoint is taken after this many steps
ADD_AT = 3  # add_param_group after this many steps
BATCH = 12  # each rank gets BATCH // WORLD samples under data parallelism
FIRST = ["AdamW", "Lamb", "Adafactor", "SGD"]
# A class with modes (ScheduleFreeAdamW) is left out: ZeroRedundancyOptimizer builds its inner
# optimizer itself and forwards no train()/eval() (its user calls `zero.optim.train()`), so
# the harness's steps would be refused; it is not checked under ZeRO here.
# Muon steps 2-D parameters only (as torch.optim.Muon): these models have biases and a 3-D weight.
MATRICES_ONLY = ["Muon"]
# Prodigy's D estimate sums over every parameter of the optimizer: under ZeRO each rank's
# optimizer holds its own whole tensors and estimates from those (as prodigyopt's does without
# fsdp_in_use), so a ZeRO run is not the one-process run; tests/test_prodigy.py checks it.
GLOBAL_SUMS = ["Prodigy"]
CLASSES = FIRST + [
    name
    for name in ot.__all__
    if name not in FIRST + MATRICES_ONLY + GLOBAL_SUMS
    and name != "TorchOptimizer"
    and not has_modes(getattr(ot, name))
]
KWARGS = {
    "AdamW": {"lr": 1e-2, "weight_decay": 0.1},
    "Lamb": {"lr": 1e-2, "weight_decay": 0.01},
    "Adafactor": {"lr": 1e-2},
    "SGD": {"lr": 0.05, "momentum": 0.9},
}  # the others: their defaults
DATA_PARALLEL = ["AdamW", "Lamb"]
MODELS = ["mlp", "odd"]


class Case(NamedTuple):
    """A ZeRO run: the class, the model, its dtype and optforge's precision options."""

    name: str
    model: str
    dtype: torch.dtype = torch.float32
    options: tuple = ()  # (keyword, value) pairs

    @property
    def label(self) -> str:
        dtype = [] if self.dtype is torch.float32 else [str(self.dtype).removeprefix("torch.")]
        return "-".join([self.name, self.model, *dtype, *(f"{k}={v}" for k, v in self.options)])

    def optimizer(self, params):
        return getattr(ot, self.name)(params, **kwargs_of(self.name), **dict(self.options))


ZERO_CASES = [Case(name, model) for name in CLASSES for model in MODELS] + [
    # 16-bit parameters with float32 master copies, and 16-bit state of float32 parameters
    Case("AdamW", "mlp", torch.bfloat16, (("master_weights", True),)),
    Case("Adam", "odd", options=(("state_dtype", "bfloat16"),)),
]
TORCH_CASES = [
    c for c in ZERO_CASES if hasattr(torch.optim, c.name) and c.dtype is torch.float32 and not c.options
]
CLOSE = dict(atol=1e-6, rtol=0.0)
TORCH_TOL = dict(atol=1e-5, rtol=2e-5)  # tests/test_torch_dialect.py's, float32
SPAWN_TIMEOUT_S = 240  # a bound, not the expected time (about 10 s with a warm Numba cache)


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


def lr_of(name: str) -> float:
    return kwargs_of(name).get("lr", inspect.signature(getattr(ot, name)).parameters["lr"].default)


def groups(module: nn.Module, name: str, model: str) -> list:
    """`mlp`: one group; `odd`: a second group, of the last bias alone at half the lr (ZeRO
    gives one rank an empty group)."""
    params = list(module.parameters())
    if model == "mlp":
        return params
    return [{"params": params[:-1]}, {"params": params[-1:], "lr": lr_of(name) / 2}]


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


def zero(params, name: str, **options) -> ZeroRedundancyOptimizer:
    """ZeRO over optforge.torch.`name` (`options`: ZeRO's, and optforge's for the class)."""
    opt = ZeroRedundancyOptimizer(params, optimizer_class=getattr(ot, name), **options, **kwargs_of(name))
    assert type(opt.optim) is getattr(ot, name)
    return opt


# -- what each rank runs --


def _zero_resumed(rank: int, case: Case, out_dir: str) -> dict:
    """10 ZeRO steps, with a checkpoint after 5; a new model and ZeRO resumed from it."""
    name, model = case.name, case.model
    module, (x, y) = build(model, case.dtype), batch(model, dtype=case.dtype)
    opt = zero(groups(module, name, model), name, **dict(case.options))
    train(module, opt, x, y, RESUME_AT)
    opt.consolidate_state_dict(to=0)
    path = os.path.join(out_dir, f"checkpoint-{case.label}.pt")
    if rank == 0:
        torch.save({"model": module.state_dict(), "optim": opt.state_dict()}, path)
    dist.barrier()
    train(module, opt, x, y, STEPS - RESUME_AT)  # not interrupted
    checkpoint = torch.load(path)
    resumed = build(model, case.dtype)
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt = zero(groups(resumed, name, model), name, **dict(case.options))
    resumed_opt.load_state_dict(checkpoint["optim"])
    train(resumed, resumed_opt, x, y, STEPS - RESUME_AT)
    states = []
    for o in (opt, resumed_opt):
        o.consolidate_state_dict(to=0)
        states.append(copy.deepcopy(o.state_dict()["state"]) if rank == 0 else None)
    return {"zero": weights(module), "resumed": weights(resumed), "states": states}


def _zero_added(name: str) -> list:
    """ZeRO over the first layer; the second added as a group (half the lr) after 3 steps."""
    module, (x, y) = build("mlp"), batch("mlp")
    opt = zero(module[0].parameters(), name)
    train(module, opt, x, y, ADD_AT)
    opt.add_param_group({"params": module[2].parameters(), "lr": lr_of(name) / 2})
    train(module, opt, x, y, STEPS - ADD_AT)
    return weights(module)


def _bucket_view(name: str) -> list:
    """ZeRO with `parameters_as_bucket_view=True`: it moves each parameter into one flat tensor
    per rank (its constructor, before the first step), and broadcasts those."""
    module, (x, y) = build("mlp"), batch("mlp")
    opt = zero(module.parameters(), name, parameters_as_bucket_view=True)
    train(module, opt, x, y, STEPS)
    return weights(module)


def _bucket_view_moved(name: str) -> str:
    """With `parameters_as_bucket_view=True`, ZeRO's add_param_group after a step builds new
    buckets: the parameters' memory moves, and optforge refuses the next step (nothing is
    changed; torch.optim, which reads each tensor anew, follows)."""
    module, (x, y) = build("mlp"), batch("mlp")
    opt = zero(module[0].parameters(), name, parameters_as_bucket_view=True)
    train(module, opt, x, y, ADD_AT)
    before = weights(module)
    opt.add_param_group({"params": module[2].parameters()})
    try:
        train(module, opt, x, y, 1)
    except RuntimeError as error:
        assert_equal(weights(module), before, "after the refused step")
        return str(error)
    return "stepped"


def _data_parallel(rank: int, name: str) -> dict:
    """Half of the batch per rank: DDP, DDP with ZeRO, all_reduce by hand."""
    x, y = batch("mlp", rank)
    results = {}
    for how in ("ddp", "ddp_zero", "all_reduce"):
        module = build("mlp")
        if how == "all_reduce":
            opt = getattr(ot, name)(module.parameters(), **kwargs_of(name))
        else:
            module = DistributedDataParallel(module)
            if how == "ddp":
                opt = getattr(ot, name)(module.parameters(), **kwargs_of(name))
            else:
                opt = zero(module.parameters(), name)
        train(module, opt, x, y, STEPS, reduce=how == "all_reduce")
        results[how] = weights(module)
    return results


def _worker(rank: int, world_size: int, out_dir: str) -> None:
    results = {}
    runs = [(f"resumed/{case.label}", _zero_resumed, (rank, case, out_dir)) for case in ZERO_CASES]
    runs += [(f"added/{name}", _zero_added, (name,)) for name in CLASSES]
    runs += [(f"parallel/{name}", _data_parallel, (rank, name)) for name in DATA_PARALLEL]
    runs += [("bucket_view/AdamW", _bucket_view, ("AdamW",))]
    runs += [("bucket_view_moved/AdamW", _bucket_view_moved, ("AdamW",))]
    for key, run, args in runs:
        try:
            results[key] = run(*args)
        except Exception as error:  # which run, in the traceback the parent shows
            raise RuntimeError(f"rank {rank}: {key}") from error
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


# -- the single-process runs, and the spawn --


def _single(case: Case) -> dict:
    module, (x, y) = build(case.model, case.dtype), batch(case.model, dtype=case.dtype)
    opt = case.optimizer(groups(module, case.name, case.model))
    train(module, opt, x, y, RESUME_AT)
    at_resume = {"model": copy.deepcopy(module.state_dict()), "optim": copy.deepcopy(opt.state_dict())}
    train(module, opt, x, y, STEPS - RESUME_AT)
    return {"weights": weights(module), "at_resume": at_resume}


def _single_added(name: str) -> list:
    module, (x, y) = build("mlp"), batch("mlp")
    opt = getattr(ot, name)(module[0].parameters(), **kwargs_of(name))
    train(module, opt, x, y, ADD_AT)
    opt.add_param_group({"params": module[2].parameters(), "lr": lr_of(name) / 2})
    train(module, opt, x, y, STEPS - ADD_AT)
    return weights(module)


def _torch_optim(case: Case) -> list:
    module, (x, y) = build(case.model), batch(case.model)
    opt = getattr(torch.optim, case.name)(groups(module, case.name, case.model), **kwargs_of(case.name))
    train(module, opt, x, y, STEPS)
    return weights(module)


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


@pytest.fixture(scope="module")
def single():
    return {
        "runs": {case: _single(case) for case in ZERO_CASES},
        "added": {name: _single_added(name) for name in CLASSES},
        "torch": {case: _torch_optim(case) for case in TORCH_CASES},
    }


@pytest.fixture(scope="module")
def ranks(single, tmp_path_factory):
    """Each rank's results, and rank 0's checkpoints (`single` first: the Numba cache is warm)."""
    out_dir = tmp_path_factory.mktemp("zero")
    seconds = run_ranks(WORLD, _worker, str(out_dir), timeout_s=SPAWN_TIMEOUT_S)
    print(f"{WORLD} ranks: {seconds:.1f} s")
    results = [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD)]
    checkpoints = {case: torch.load(out_dir / f"checkpoint-{case.label}.pt") for case in ZERO_CASES}
    return results, checkpoints


def assert_close(actual: list, expected: list, **tolerance) -> None:
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a, e, **(tolerance or CLOSE), msg=lambda m, i=i: f"parameter {i}: {m}")


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


def assert_same_on_every_rank(results: list, key: str, sub: str | None = None) -> list:
    values = [r[key] if sub is None else r[key][sub] for r in results]
    for rank, value in enumerate(values[1:], 1):
        assert_equal(value, values[0], f"{key} {sub or ''}: rank {rank} against rank 0")
    return values[0]


# -- the tests --


LABELS = [case.label for case in ZERO_CASES]


@pytest.mark.parametrize("case", ZERO_CASES, ids=LABELS)
def test_zero_matches_one_process(ranks, single, case):
    results, _ = ranks
    zero_weights = assert_same_on_every_rank(results, f"resumed/{case.label}", "zero")
    assert_close(zero_weights, single["runs"][case]["weights"])
    initial = weights(build(case.model, case.dtype))
    assert not all(torch.equal(w, p) for w, p in zip(zero_weights, initial)), "nothing stepped"


@pytest.mark.parametrize("case", TORCH_CASES, ids=[case.label for case in TORCH_CASES])
def test_zero_matches_torch_optim(ranks, single, case):
    results, _ = ranks
    assert_close(results[0][f"resumed/{case.label}"]["zero"], single["torch"][case], **TORCH_TOL)


@pytest.mark.parametrize("case", ZERO_CASES, ids=LABELS)
def test_zero_resume_from_consolidated_state_is_bit_exact(ranks, case):
    results, _ = ranks
    for rank, result in enumerate(results):
        entry = result[f"resumed/{case.label}"]
        assert_equal(entry["resumed"], entry["zero"], f"rank {rank}: resumed against not interrupted")
    # The state too (Lion's parameters would not show its momentum lost: the signs are the same).
    uninterrupted, resumed = results[0][f"resumed/{case.label}"]["states"]
    assert_same_state(resumed, uninterrupted)


@pytest.mark.parametrize("case", ZERO_CASES, ids=LABELS)
def test_consolidated_state_dict_is_the_one_process_state_dict(ranks, single, case):
    """Rank 0's consolidated `state_dict()`: the unsharded optimizer's (global indices, every
    state), which a single-process optimizer loads and continues from."""
    _, checkpoints = ranks
    saved = checkpoints[case]["optim"]
    expected = single["runs"][case]["at_resume"]["optim"]
    assert sorted(saved["state"]) == sorted(expected["state"])
    for index, state in expected["state"].items():
        assert sorted(saved["state"][index]) == sorted(state), f"parameter {index}"
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(saved["state"][index][key], value, **CLOSE)
                assert saved["state"][index][key].dtype == value.dtype, (index, key)
            else:
                assert saved["state"][index][key] == value, (index, key)
    # ZeRO makes each keyword its groups' default, optforge's options too: kept, as torch keeps a
    # key it does not know (a single-process optimizer loads them below).
    assert saved["param_groups"] == [{**group, **dict(case.options)} for group in expected["param_groups"]]

    module, (x, y) = build(case.model, case.dtype), batch(case.model, dtype=case.dtype)
    module.load_state_dict(checkpoints[case]["model"])
    opt = case.optimizer(groups(module, case.name, case.model))
    opt.load_state_dict(saved)
    train(module, opt, x, y, STEPS - RESUME_AT)
    assert_close(weights(module), single["runs"][case]["weights"])


@pytest.mark.parametrize("name", CLASSES)
def test_zero_add_param_group(ranks, single, name):
    results, _ = ranks
    assert_close(assert_same_on_every_rank(results, f"added/{name}"), single["added"][name])


def test_zero_parameters_as_bucket_view(ranks, single):
    results, _ = ranks
    assert_close(
        assert_same_on_every_rank(results, "bucket_view/AdamW"),
        single["runs"][Case("AdamW", "mlp")]["weights"],
    )


def test_zero_bucket_view_add_param_group_after_a_step_is_refused(ranks):
    """Not supported (README): the parameters ZeRO moves into new buckets are not followed."""
    results, _ = ranks
    for result in results:
        assert "memory moved" in result["bucket_view_moved/AdamW"]


@pytest.mark.parametrize("how", ["ddp", "ddp_zero", "all_reduce"])
@pytest.mark.parametrize("name", DATA_PARALLEL)
def test_data_parallel_matches_one_process_on_the_whole_batch(ranks, single, name, how):
    results, _ = ranks
    assert_close(
        assert_same_on_every_rank(results, f"parallel/{name}", how),
        single["runs"][Case(name, "mlp")]["weights"],
    )


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


# -- the harness: a rank that raises, ranks that hang --


def _started(rank: int, out_dir: str) -> None:
    with open(os.path.join(out_dir, f"started{rank}"), "w") as f:
        f.write(str(os.getpid()))


def _raising_worker(rank: int, world_size: int, out_dir: str) -> None:
    _started(rank, out_dir)
    if rank == 1:
        raise ValueError("rank 1 fails on purpose")
    time.sleep(600)  # not a collective: that would fail too once rank 1 is gone, and race it


def _hanging_worker(rank: int, world_size: int, out_dir: str) -> None:
    _started(rank, out_dir)
    time.sleep(600)


def _assert_ended(out_dir) -> None:
    for rank in range(WORLD):
        path = out_dir / f"started{rank}"
        if path.exists():
            pid = int(path.read_text())
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                pytest.fail(f"rank {rank} (pid {pid}) is still running")


def test_harness_reports_a_failing_rank_and_ends_the_others(tmp_path):
    start = time.monotonic()
    with pytest.raises(RankFailed, match="rank 1 fails on purpose"):
        run_ranks(WORLD, _raising_worker, str(tmp_path), timeout_s=60)
    assert time.monotonic() - start < 30  # rank 0 did not sleep its 600 s
    _assert_ended(tmp_path)


def test_harness_ends_ranks_that_run_past_the_timeout(tmp_path):
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="ran past 6"):
        run_ranks(WORLD, _hanging_worker, str(tmp_path), timeout_s=6)
    assert time.monotonic() - start < 20
    _assert_ended(tmp_path)
