"""FSDP2 (`fully_shard`) with optforge.torch: each rank steps its shard, per-tensor sums are
added up over the ranks, and the result is the single-process run's.

Real process groups: gloo on 127.0.0.1, 2 and 4 ranks, each run bounded in time
(tests/distributed_harness.py). One run per world size does every check, since each
rank's start (torch and numba imports) costs seconds.

The model's matrices split their rows unevenly over the ranks (7 rows over 4 ranks
is 2, 2, 2, 1; 3 rows is 1, 1, 1, 0: a rank with no row of a matrix still updates
Adafactor's column factor, from every rank's sums). Its stack of matrices (3, 4, 5)
splits whole matrices. The biases are vectors.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from optforge.bench.fsdp import CountAllReduce
from tests.distributed_harness import run_ranks

STEPS = 10
# label: (class, keywords): elementwise specs, and two with per-tensor reductions.
OPTIMIZERS = {
    "AdamW": ("AdamW", {"lr": 1e-2, "weight_decay": 0.1}),
    "Lamb": ("Lamb", {"lr": 1e-2, "weight_decay": 0.1}),
    "Adafactor": ("Adafactor", {"lr": 1e-2, "weight_decay": 0.01}),
    "SGD": ("SGD", {"lr": 1e-2, "momentum": 0.9}),
    "AdamW bf16 state": ("AdamW", {"lr": 1e-2, "state_dtype": "bfloat16"}),
}
REDUCES = {"Lamb", "Adafactor"}
# all-reduces per step: Lamb's two norms in one; Adafactor's matrices need three rounds (column
# sums, then the sums over the new row factor, then the update's RMS: each needs the last).
COLLECTIVES = {"AdamW": 0, "SGD": 0, "Lamb": 1, "Adafactor": 3, "AdamW bf16 state": 0}


class Stack(torch.nn.Module):
    """A layer with a stack of matrices: Adafactor factors each (3, 4, 5) matrix."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(3, 4, 5) * 0.3)

    def forward(self, x):  # x: (batch, 5) -> (batch, 2)
        return torch.tanh(torch.einsum("bj,mij->bmi", x, self.weight)).mean(dim=1)[:, :2]


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(5, 7),
        torch.nn.Tanh(),
        torch.nn.Linear(7, 3),
        torch.nn.Tanh(),
        torch.nn.Linear(3, 5),
        Stack(),
    )


def batches(steps: int = STEPS):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 5, generator=g), torch.randn(8, 2, generator=g)) for _ in range(steps)]


def train(m, opt, data) -> None:
    for x, y in data:
        opt.zero_grad()
        ((m(x) - y) ** 2).mean().backward()
        opt.step()


def sharded(world: int):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    m = model()
    for layer in m:
        if any(True for _ in layer.parameters()):
            fully_shard(layer, mesh=mesh)
    fully_shard(m, mesh=mesh)
    return m


def fsdp_worker(rank: int, world: int, out: str) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    import optforge.distributed
    import optforge.torch as ot

    results = {}
    for name, (cls, kwargs) in OPTIMIZERS.items():
        m = sharded(world)
        opt = getattr(ot, cls)(m.parameters(), **kwargs)
        data = batches()
        train(m, opt, data[:1])
        with CountAllReduce() as counter:  # the optimizer's steps only
            x, y = data[1]
            opt.zero_grad()
            ((m(x) - y) ** 2).mean().backward()
            before = counter.calls
            opt.step()
            results[f"{name}/collectives"] = counter.calls - before
        train(m, opt, data[2:])
        for key, p in m.named_parameters():
            results[f"{name}/{key}"] = p.full_tensor().detach().clone()
        # A replicated state (a 2-D matrix's column factor) holds the same bits on every rank.
        for p in m.parameters():
            for key, value in opt.state[p].items():
                if hasattr(value, "placements") and value.placements[0].is_replicate():
                    gathered = [torch.empty_like(value.to_local()) for _ in range(world)]
                    dist.all_gather(gathered, value.to_local().contiguous())
                    assert all(torch.equal(gathered[0], other) for other in gathered), key

    # Without adding the sums up over the ranks, the reductions are the shards' own: wrong.
    real = optforge.distributed.torch_all_reduce
    optforge.distributed.torch_all_reduce = lambda group=None: lambda values: None
    try:
        for name in REDUCES:
            cls, kwargs = OPTIMIZERS[name]
            m = sharded(world)
            opt = getattr(ot, cls)(m.parameters(), **kwargs)
            train(m, opt, batches())
            for key, p in m.named_parameters():
                results[f"unreduced {name}/{key}"] = p.full_tensor().detach().clone()
    finally:
        optforge.distributed.torch_all_reduce = real

    # DCP: save after 5 steps, load into a fresh model and optimizer, 5 more: bit-exact.
    data = batches()
    for name in ("AdamW", "Lamb", "Adafactor", "AdamW bf16 state"):
        cls, kwargs = OPTIMIZERS[name]
        m = sharded(world)
        opt = getattr(ot, cls)(m.parameters(), **kwargs)
        train(m, opt, data[:5])
        model_sd, optim_sd = get_state_dict(m, opt)
        path = os.path.join(out, f"dcp-{name}".replace(" ", "-"))
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
        train(m, opt, data[5:])
        fresh = sharded(world)
        fresh_opt = getattr(ot, cls)(fresh.parameters(), **kwargs)
        model_sd, optim_sd = get_state_dict(fresh, fresh_opt)
        loaded = {"model": model_sd, "optim": optim_sd}
        dcp.load(loaded, checkpoint_id=path)
        set_state_dict(fresh, fresh_opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
        train(fresh, fresh_opt, data[5:])
        for (key, a), b in zip(m.named_parameters(), fresh.parameters()):
            results[f"resumed {name}/{key}"] = bool(torch.equal(a.to_local(), b.to_local()))
        # dcp.load alone, as torch.optim allows: it writes into the state tensors (step too).
        again = sharded(world)
        again_opt = getattr(ot, cls)(again.parameters(), **kwargs)
        model_sd, optim_sd = get_state_dict(again, again_opt)
        dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
        train(again, again_opt, data[5:])
        for (key, a), b in zip(m.named_parameters(), again.parameters()):
            results[f"resumed in place {name}/{key}"] = bool(torch.equal(a.to_local(), b.to_local()))
    # The NumPy dialects over the same process group: each rank its rows, the sums all-reduced
    # through torch.distributed (gloo) by optforge.distributed.torch_all_reduce.
    import optforge.nn
    import optforge.optim

    rng = np.random.default_rng(4)
    wholes = [rng.standard_normal(s).astype(np.float32) for s in [(7, 5), (3, 4), (4, 3, 6), (9,), (2,)]]
    grads = [[rng.standard_normal(w.shape).astype(np.float32) for w in wholes] for _ in range(5)]
    for make in (
        lambda ps: optforge.optim.Adafactor(ps, lr=1e-2, weight_decay=0.01),
        lambda ps: optforge.nn.Lamb(ps, learning_rate=1e-2, weight_decay=0.1),
    ):
        whole = [optforge.Parameter(w.copy(), f"p{i}") for i, w in enumerate(wholes)]
        rows = [np.array_split(np.arange(w.shape[0]), world)[rank] for w in wholes]
        mine = [
            optforge.Parameter(np.ascontiguousarray(w[r]), f"p{i}", split=w.shape)
            for i, (w, r) in enumerate(zip(wholes, rows))
        ]
        one, opt = make(whole), make(mine)
        opt.all_reduce = optforge.distributed.torch_all_reduce()
        for step in grads:
            one(tuple(step))
            opt(tuple(np.ascontiguousarray(g[r]) for g, r in zip(step, rows)))
        for w, p, r in zip(whole, mine, rows):
            np.testing.assert_allclose(p.data, w.data[r], rtol=1e-6, atol=1e-6)

    # skip_nonfinite: a NaN in one rank's shard of a gradient skips the step on every rank.
    for name in ("AdamW", "Lamb"):
        cls, kwargs = OPTIMIZERS[name]
        m = sharded(world)
        opt = getattr(ot, cls)(m.parameters(), **kwargs, skip_nonfinite=True)
        train(m, opt, data[:1])
        x, y = data[1]
        opt.zero_grad()
        ((m(x) - y) ** 2).mean().backward()
        if rank == world - 1:
            next(iter(m.parameters())).grad.to_local().view(-1)[-1:] = float("nan")
        before = [p.to_local().clone() for p in m.parameters()]
        opt.step()
        assert opt.skipped_steps == 1, (rank, name)
        assert all(torch.equal(b, p.to_local()) for b, p in zip(before, m.parameters())), (rank, name)

    # torch.optim's sharded state dicts: torch's AdamW hands over to ours mid-run, and ours to
    # torch's, through get_optimizer_state_dict / set_optimizer_state_dict.
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    kwargs = OPTIMIZERS["AdamW"][1]
    for first, then in ((torch.optim.AdamW, ot.AdamW), (ot.AdamW, torch.optim.AdamW)):
        m = sharded(world)
        opt = first(m.parameters(), **kwargs)
        train(m, opt, data[:5])
        handed = then(m.parameters(), **kwargs)
        set_optimizer_state_dict(m, handed, get_optimizer_state_dict(m, opt))
        train(m, handed, data[5:])
        for key, p in m.named_parameters():
            results[f"handed {first.__module__}/{key}"] = p.full_tensor().detach().clone()
    if rank == 0:
        torch.save(results, os.path.join(out, "results.pt"))


def single_process() -> dict:
    import optforge.torch as ot

    results = {}
    for name, (cls, kwargs) in OPTIMIZERS.items():
        m = model()
        train(m, getattr(ot, cls)(m.parameters(), **kwargs), batches())
        for key, p in m.named_parameters():
            results[f"{name}/{key}"] = p.detach().clone()
    return results


@pytest.fixture(scope="module")
def reference() -> dict:
    return single_process()


@pytest.mark.parametrize("world", [2, 4])
def test_fully_shard_matches_one_process(world, tmp_path, reference):
    run_ranks(world, fsdp_worker, str(tmp_path), timeout_s=240)
    results = torch.load(tmp_path / "results.pt")
    for name in OPTIMIZERS:
        for key, expected in ((k, v) for k, v in reference.items() if k.startswith(f"{name}/")):
            got = results[key]
            assert got.shape == expected.shape, key
            err = (got - expected).abs().max().item()
            assert err <= 1e-6, f"{world} ranks, {key}: {err}"
        assert results[f"{name}/collectives"] == COLLECTIVES[name], name
    # The check that catches a lost all-reduce: without it, Lamb and Adafactor are wrong.
    for name in REDUCES:
        errors = [
            (results[f"unreduced {key}"] - value).abs().max().item()
            for key, value in reference.items()
            if key.startswith(f"{name}/")
        ]
        assert max(errors) > 1e-4, name
    resumed = {k: v for k, v in results.items() if k.startswith("resumed")}
    assert resumed and all(resumed.values()), resumed
    # Handed over between torch.optim's AdamW and ours mid-run: the run of either alone.
    for key, expected in ((k, v) for k, v in reference.items() if k.startswith("AdamW/")):
        for first in ("torch.optim.adamw", "optforge.generated.torch.adamw"):
            np.testing.assert_allclose(
                results[f"handed {first}/{key[6:]}"].numpy(), expected.numpy(), rtol=2e-5, atol=1e-6
            )


def test_single_process_reference_is_torch_optim(reference):
    """The single-process run is torch.optim's, where torch has the optimizer (AdamW, SGD,
    Adafactor), so the sharded runs match torch's too."""
    for name in ("AdamW", "SGD", "Adafactor"):
        m = model()
        train(m, getattr(torch.optim, name)(m.parameters(), **OPTIMIZERS[name][1]), batches())
        for key, p in m.named_parameters():
            np.testing.assert_allclose(
                p.detach().numpy(), reference[f"{name}/{key}"].numpy(), rtol=2e-5, atol=1e-6, err_msg=key
            )
