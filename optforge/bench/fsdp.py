"""FSDP2 benchmark (`optforge bench --fsdp`): the optimizer step on a `fully_shard`ed model.

    optforge bench --fsdp                          # 2 gloo ranks, ~21M float32 parameters
    optforge bench --fsdp --ranks 2 --repeat 40 --out-dir benchmarks/results

Every rank is a process of one gloo group on 127.0.0.1 with one thread (torch, OMP,
Numba; optforge/bench/launch.py). The model is a stack of Linear layers (odd widths, so
the rows of each matrix split unevenly over the ranks), each layer and the whole model
`fully_shard`ed on a CPU device mesh. One forward and backward pass gives the gradients;
then every contender steps the same sharded parameters on those gradients, round by
round (interleaved, so drift in the machine's speed hits every contender alike), with a
barrier before each step so the ranks start it together. A step's time is the slowest
rank's (`opt.step()` only: no forward, backward or zero_grad); the figure is the median
over `repeat` steps after two warm-up steps. Contenders:

- torch.optim.AdamW(foreach=True): the baseline every ratio is taken against;
- torch.optim.AdamW(fused=True), torch.optim.Adafactor: where they fail on DTensors, the
  error is recorded in place of a time;
- optforge.torch.AdamW, Lamb and Adafactor;
- for AdamW and Lamb, the same-traffic limit (optforge/bench/traffic.py): a kernel that
  loads and stores as many arrays as the compiled step, with no arithmetic, over the
  rank's local elements; "of limit" is its time over the contender's.

During one step per contender `torch.distributed.all_reduce` is counted (calls and bytes
of the tensors handed to it), and so is every collective torch's CommDebugMode sees
(DTensor's own redistributions included). Writes fsdp-<N>ranks.json and .txt into the
output folder.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# The model's layer widths: Linear(1023, 2047), four Linear(2047, 2047), Linear(2047, 1021),
# 20,956,160 parameters in all (2,047 rows split 1,024 / 1,023 over 2 ranks).
WIDTHS = (1023, 2047, 2047, 2047, 2047, 2047, 1021)
BATCH = 16
LR, WEIGHT_DECAY = 1e-3, 0.01
BASELINE = "torch AdamW foreach"
# contender -> the spec whose same-traffic limit it is measured against
LIMITS = {"optforge.torch.AdamW": "adamw", "optforge.torch.Lamb": "lamb"}
ORDER = [
    BASELINE,
    "torch AdamW fused",
    "optforge.torch.AdamW",
    "optforge.torch.Lamb",
    "optforge.torch.Adafactor",
    "torch Adafactor",
]


def contenders() -> dict:
    """name -> (parameters -> optimizer), in the order of the table."""
    import torch

    import optforge.torch as ot

    return {
        BASELINE: lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=WEIGHT_DECAY, foreach=True),
        "torch AdamW fused": lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=WEIGHT_DECAY, fused=True),
        "optforge.torch.AdamW": lambda ps: ot.AdamW(ps, lr=LR, weight_decay=WEIGHT_DECAY),
        "optforge.torch.Lamb": lambda ps: ot.Lamb(ps, lr=LR, weight_decay=WEIGHT_DECAY),
        "optforge.torch.Adafactor": lambda ps: ot.Adafactor(ps, lr=LR, weight_decay=WEIGHT_DECAY),
        "torch Adafactor": lambda ps: torch.optim.Adafactor(ps, lr=LR, weight_decay=WEIGHT_DECAY),
    }


def build_model(widths):
    import torch

    torch.manual_seed(0)
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(torch.nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


def sharded_model(widths, world: int):
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    model = build_model(widths)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


class CountAllReduce:
    """Counts torch.distributed.all_reduce calls and the bytes of the tensors they sum (every
    collective optforge makes is one); tests/test_distributed_fsdp.py counts with it too."""

    def __init__(self):
        import torch.distributed as dist

        self.dist, self.real, self.calls, self.bytes = dist, dist.all_reduce, 0, 0

    def __enter__(self):
        def counted(tensor, *args, **kwargs):
            self.calls += 1
            self.bytes += tensor.numel() * tensor.element_size()
            return self.real(tensor, *args, **kwargs)

        self.dist.all_reduce = counted
        return self

    def __exit__(self, *exc):
        self.dist.all_reduce = self.real


def _error(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


def fsdp_worker(rank: int, world: int, out: str, widths: list, repeat: int) -> None:
    """One rank: shard the model, take one backward pass, then time every contender's step."""
    import numba
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor.debug import CommDebugMode

    from optforge.bench.traffic import accesses, same_traffic_step

    model = sharded_model(widths, world)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(BATCH, widths[0], generator=g), torch.randn(BATCH, widths[-1], generator=g)
    ((model(x) - y) ** 2).mean().backward()
    params = list(model.parameters())
    local = [p.to_local().numel() for p in params]

    steps, failures, counts = {}, {}, {}
    for name, make in contenders().items():
        try:
            opt = make(params)
            opt.step()  # the state is made, the kernels are compiled
            opt.step()
            with CountAllReduce() as counter, CommDebugMode() as comm:
                opt.step()
            counts[name] = {
                "all_reduces": counter.calls,
                "bytes_all_reduced": counter.bytes,
                "collectives": comm.get_total_counts(),
                "collectives_by_op": {str(op): n for op, n in comm.get_comm_counts().items()},
            }
            steps[name] = opt.step
        except Exception as error:  # noqa: BLE001  (recorded in the results, the others go on)
            failures[name] = _error(error)
        # Every rank fails alike (the same DTensor ops), so they stay in step; this checks it.
        failed = [None] * world
        dist.all_gather_object(failed, name in failures)
        if len(set(failed)) != 1:
            raise RuntimeError(f"{name} failed on ranks {[r for r, f in enumerate(failed) if f]} only")

    total = sum(local)
    moved = {}
    for name, spec in LIMITS.items():
        if name not in steps:
            continue
        loads, stores, write_only = accesses(spec)
        limit = f"same-traffic limit ({spec})"
        steps[limit] = same_traffic_step(loads, stores, write_only, total)
        steps[limit]()
        moved[name] = (loads + stores + write_only) * 4 * total

    times = {name: [] for name in steps}
    for _ in range(repeat):  # interleaved
        for name, step in steps.items():
            dist.barrier()
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    everyone = [None] * world
    dist.all_gather_object(everyone, {"times": times, "local": local, "bytes_moved": moved})
    if rank == 0:
        result = {
            "widths": list(widths),
            "repeat": repeat,
            "numba_threads": numba.get_num_threads(),
            "torch_threads": torch.get_num_threads(),
            "ranks": everyone,
            "failures": failures,
            "counts": counts,
        }
        Path(out, "fsdp-raw.json").write_text(json.dumps(result))


def summarize(raw: dict) -> list[dict]:
    """One row per contender: the median over steps of the slowest rank's time, ratios, counts."""
    ranks = raw["ranks"]
    medians = {}
    for name in ranks[0]["times"]:
        per_step = [max(r["times"][name][i] for r in ranks) for i in range(raw["repeat"])]
        medians[name] = (statistics.median(per_step), [statistics.median(r["times"][name]) for r in ranks])
    base = medians.get(BASELINE, (None,))[0]
    rows = []
    for name in ORDER:
        if name in raw["failures"]:
            rows.append({"contender": name, "failed": raw["failures"][name]})
            continue
        if name not in medians:
            continue
        seconds, per_rank = medians[name]
        row = {
            "contender": name,
            "ms": seconds * 1e3,
            "ms_per_rank": [s * 1e3 for s in per_rank],
            "ratio_to_torch_adamw_foreach": seconds / base if base else None,
            **raw["counts"][name],
        }
        if name in LIMITS:
            limit = medians[f"same-traffic limit ({LIMITS[name]})"][0]
            row["same_traffic_limit_ms"] = limit * 1e3
            row["fraction_of_limit"] = limit / seconds
            row["bytes_moved_per_rank"] = [r["bytes_moved"][name] for r in ranks]
        rows.append(row)
    return rows


def machine() -> dict:
    import numba
    import torch

    return {
        "processor": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numba": numba.__version__,
        "platform": platform.platform(),
        "load_average_before": list(os.getloadavg()),  # the machine may be shared: how busy it was
    }


def table(result: dict) -> str:
    m, model = result["machine"], result["model"]
    shards = " / ".join(f"{n:,}" for n in model["local_elements"])
    lines = [
        f"# {result['command']}",
        f"# {m['processor']}, {m['cores']} cores, {m['platform']}; python {m['python']}, "
        f"torch {m['torch']}, numba {m['numba']}; load average before: "
        + ", ".join(f"{x:.2f}" for x in m["load_average_before"]),
        f"# {result['ranks']} gloo ranks on 127.0.0.1, {result['threads_per_rank']} thread each "
        "(torch, OMP, Numba)",
        f"# model: {len(model['widths']) - 1} Linear layers {'-'.join(map(str, model['widths']))}, "
        f"{model['parameters']:,} float32 parameters in {model['tensors']} tensors, fully_shard per layer; "
        f"local elements per rank: {shards}",
        "# opt.step() only, on one backward pass's gradients; median over "
        f"{result['repeat']} steps of the slowest rank's time, contenders interleaved, a barrier before "
        "each step",
        "# ratio: ms/step over torch AdamW foreach's (below 1: faster)",
        "# all-reduces, bytes: torch.distributed.all_reduce calls in one step and the bytes they sum; "
        "collectives: all that torch's CommDebugMode counts",
        "# of limit: a kernel moving the same bytes over the rank's local elements with no arithmetic "
        "(optforge/bench/traffic.py), its time over the step's",
        "{:<26}{:>10}{:>12}{:>13}{:>8}{:>13}{:>10}{:>10}".format(
            "contender", "ms/step", "ratio", "all-reduces", "bytes", "collectives", "limit ms", "of limit"
        ),
    ]
    for r in result["rows"]:
        if "failed" in r:
            lines.append(f"{r['contender']:<26}{'failed':>10}   (below)")
            continue
        limit = (
            f"{r['same_traffic_limit_ms']:>10.2f}{r['fraction_of_limit']:>10.2f}"
            if "fraction_of_limit" in r
            else f"{'':>10}{'':>10}"
        )
        lines.append(
            f"{r['contender']:<26}{r['ms']:>10.2f}{r['ratio_to_torch_adamw_foreach']:>12.2f}"
            f"{r['all_reduces']:>13}{r['bytes_all_reduced']:>8}{r['collectives']:>13}{limit}"
        )
    for r in result["rows"]:
        if "failed" in r:
            lines.append(f"# {r['contender']} failed on DTensors: {r['failed']}")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def command(ranks: int, repeat: int, out_dir: Path) -> str:
    from optforge.bench import RESULTS

    words = ["optforge bench --fsdp", f"--ranks {ranks}", f"--repeat {repeat}"]
    if Path(out_dir) != RESULTS:
        words.append(f"--out-dir {out_dir}")
    return " ".join(words)


def run_fsdp(
    out_dir: Path, ranks: int = 2, repeat: int = 40, widths=WIDTHS, timeout_s: float = 900.0
) -> dict:
    """Run the ranks, write fsdp-<ranks>ranks.json and .txt into `out_dir`, print the table."""
    from optforge.bench.launch import RANK_ENV, run_ranks

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_path = out_dir / "fsdp-raw.json"
    raw_path.unlink(missing_ok=True)
    wall = run_ranks(ranks, fsdp_worker, str(out_dir), list(widths), repeat, timeout_s=timeout_s)
    raw = json.loads(raw_path.read_text())
    raw_path.unlink()
    widths = list(widths)
    result = {
        "command": command(ranks, repeat, out_dir),
        "machine": machine(),
        "ranks": ranks,
        "threads_per_rank": int(RANK_ENV["NUMBA_NUM_THREADS"]),
        "repeat": repeat,
        "wall_s": wall,
        "model": {
            "widths": widths,
            "parameters": sum(a * b + b for a, b in zip(widths[:-1], widths[1:])),
            "tensors": 2 * (len(widths) - 1),
            "local_elements": [sum(r["local"]) for r in raw["ranks"]],
        },
        "baseline": BASELINE,
        "rows": summarize(raw),
        "per_step_s": {name: [r["times"][name] for r in raw["ranks"]] for name in raw["ranks"][0]["times"]},
    }
    stem = f"fsdp-{ranks}ranks"
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    text = table(result)
    (out_dir / f"{stem}.txt").write_text(text)
    print(text, end="")
    print(f"wrote {out_dir / stem}.json, .txt ({wall:.0f} s)")
    return result


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from optforge.bench import add_arguments

    add_arguments(parser)
    args = parser.parse_args(argv)
    run_fsdp(args.out_dir, ranks=args.ranks, repeat=args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
