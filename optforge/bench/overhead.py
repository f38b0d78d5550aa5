"""Per-step cost on many small tensors (`optforge bench --overhead`), where Python, not bytes, decides.

Whole steps, interleaved round by round so every contender sees the same machine:
- `optforge.torch.AdamW` against torch.optim.AdamW (fused and foreach) on 300 tensors of
  64 to 4,096 elements and on ResNet-18's 62 parameter shapes, and the same-traffic limit
  over as many elements (where the bytes, not Python, set the step: ResNet-18);
- `optforge.nn.Adam` on 200 tensors of 100 elements (new gradient arrays every step, as a
  training loop hands them over, and the same arrays every step) against its bare kernel
  call: the generated kernel with prepared arguments, no checks and no hand-off.
Each figure is the median over rounds of the mean over a round's steps.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# ResNet-18 (torchvision): conv weights, batch-norm weights and biases, the fc layer: 62 tensors.
RESNET18 = (
    [(64, 3, 7, 7), (64,), (64,)]
    + [s for _ in range(4) for s in ((64, 64, 3, 3), (64,), (64,))]
    + [(128, 64, 3, 3), (128,), (128,), (128, 128, 3, 3), (128,), (128,), (128, 64, 1, 1), (128,), (128,)]
    + [(128, 128, 3, 3), (128,), (128,)] * 2
    + [(256, 128, 3, 3), (256,), (256,), (256, 256, 3, 3), (256,), (256,), (256, 128, 1, 1), (256,), (256,)]
    + [(256, 256, 3, 3), (256,), (256,)] * 2
    + [(512, 256, 3, 3), (512,), (512,), (512, 512, 3, 3), (512,), (512,), (512, 256, 1, 1), (512,), (512,)]
    + [(512, 512, 3, 3), (512,), (512,)] * 2
    + [(1000, 512), (1000,)]
)


def small_shapes(count: int = 300, seed: int = 0) -> list[tuple[int]]:
    """`count` vectors of 64 to 4,096 elements, log-uniform: many small tensors (norms, biases)."""
    rng = np.random.default_rng(seed)
    return [(int(n),) for n in np.exp(rng.uniform(np.log(64), np.log(4096), count)).round()]


def timed(contenders: dict[str, Callable[[], None]], rounds: int, steps: int) -> dict[str, float]:
    """Seconds per step of each contender: rounds interleave them; the median round counts."""
    for step in contenders.values():  # compile, allocate state, warm caches
        step()
        step()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, step in contenders.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            samples[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(values) for name, values in samples.items()}


def torch_contenders(shapes: list[tuple[int, ...]]) -> dict[str, Callable[[], None]]:
    import torch

    import optforge.torch

    def model():
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape) * 1e-3
        return params

    return {
        "optforge.torch.AdamW": optforge.torch.AdamW(model(), lr=1e-3).step,
        "torch AdamW fused": torch.optim.AdamW(model(), lr=1e-3, fused=True).step,
        "torch AdamW foreach": torch.optim.AdamW(model(), lr=1e-3, foreach=True).step,
        "same-traffic limit (one call, no Python)": same_traffic_limit("adamw", shapes),
    }


def same_traffic_limit(spec: str, shapes: list[tuple[int, ...]]) -> Callable[[], None]:
    """The floor under every contender: a kernel moving the bytes of `spec`'s step over as
    many elements, in one array per operand and even chunks (optforge/bench/traffic.py)."""
    from optforge.bench.traffic import accesses, same_traffic_step

    return same_traffic_step(*accesses(spec), sum(math.prod(s) for s in shapes))


def nn_contenders(count: int = 200, size: int = 100) -> dict[str, Callable[[], None]]:
    import optforge

    rng = np.random.default_rng(0)

    def parameters():
        return [
            optforge.Parameter(rng.standard_normal(size).astype(np.float32), f"p{i}") for i in range(count)
        ]

    grads = tuple(rng.standard_normal(size).astype(np.float32) * 1e-3 for _ in range(count))
    fresh = optforge.nn.Adam(parameters(), learning_rate=1e-3)
    same = optforge.nn.Adam(parameters(), learning_rate=1e-3)
    bare = optforge.nn.Adam(parameters(), learning_rate=1e-3)
    bare(grads)
    batch = bare._batches[0]
    branch, scalars = batch.variant.step(2, 1e-3, tuple(bare.hypers[h] for h in bare._HYPERS), batch.dtype)
    from optforge.runtime.launch import run_stages

    weight_decay, grad_scale = np.zeros(count, np.float32), np.ones(count, np.float32)

    def kernel():  # the stages over the batch's pointer table, as a step runs them
        run_stages(
            branch, batch.key, batch.chunks, batch.arrays, batch.buffers, weight_decay, grad_scale, scalars
        )

    return {
        "optforge.nn.Adam, new gradient arrays": lambda: fresh(tuple(g.copy() for g in grads)),
        "optforge.nn.Adam, the same arrays": lambda: same(grads),
        "copying the gradients alone": lambda: tuple(g.copy() for g in grads),
        "the bare kernel call": kernel,
    }


def run_overhead(out_dir: Path, rounds: int = 15, steps: int = 50) -> dict:
    results = {}
    try:
        import torch  # noqa: F401  (only to know whether the torch contenders can run)

        suites = {"300 tensors of 64-4096": small_shapes(), "ResNet-18 (62 tensors)": RESNET18}
        for suite, shapes in suites.items():
            results[suite] = timed(torch_contenders(shapes), rounds, max(1, steps // 5))
    except ImportError:
        results["torch"] = "not installed: `pip install torch==2.13.0` (the CPU wheel)"
    results["nn dialect, 200 tensors of 100"] = timed(nn_contenders(), rounds, steps)
    lines = []
    for suite, figures in results.items():
        if not isinstance(figures, dict):
            lines.append(f"{suite}: {figures}")
            continue
        lines.append(suite)
        base = next(iter(figures.values()))
        for name, seconds in figures.items():
            lines.append(f"  {name:40s} {seconds * 1e6:10.1f} us   {seconds / base:6.2f}x the first")
    text = "\n".join(lines)
    print(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cpu-overhead.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / "cpu-overhead.txt").write_text(text + "\n")
    return results
