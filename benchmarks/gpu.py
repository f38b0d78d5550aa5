"""GPU benchmark: optforge's CUDA kernels against torch's fused Adam and the copy bandwidth.

    python benchmarks/gpu.py                          # 1e7, 1e8 and 1e9 float32 parameters
    python benchmarks/gpu.py --sizes 1e7 1e8 --repeat 20

For each size: the device's copy bandwidth (a device-to-device copy, bytes read plus
written); optforge Adam, RAdam, Lamb and Adafactor (a matrix of 1000 columns: the
factored kernels) with the parameter on the device (step time, effective GB/s from the
bytes the compiled kernels load and store per element, and the ratio to the copy
bandwidth); torch.optim.Adam(fused=True) and torch.optim.Adafactor(foreach=True) on the
same GPU when torch with CUDA is installed; and AdamOffload's step against the plain transfer time of the
gradient down and the delta up through pinned memory. Writes a JSON file into
benchmarks/results/ and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from numba import config, cuda

import optforge
from optforge.bench.traffic import bytes_per_element

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn, repeat: int) -> float:
    """Median seconds of `fn()` over `repeat` runs, after two warm-up runs (compilation)."""
    for _ in range(2):
        fn()
    cuda.synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_bandwidth(n: int, repeat: int) -> float:
    src = cuda.to_device(np.ones(n, np.float32))
    dst = cuda.device_array(n, np.float32)
    seconds = timed(lambda: dst.copy_to_device(src), repeat)
    return 2 * n * 4 / seconds / 1e9


def optforge_step(name: str, n: int, repeat: int) -> dict:
    make = {
        "Adam": lambda p: optforge.nn.Adam(p, learning_rate=1e-3),
        "RAdam": lambda p: optforge.optim.RAdam(p, lr=1e-3),
        "Lamb": lambda p: optforge.nn.Lamb(p, learning_rate=1e-3),
        "Adafactor": lambda p: optforge.optim.Adafactor(p, lr=1e-3),
    }[name]
    spec = {"Adam": "adam", "RAdam": "radam", "Lamb": "lamb", "Adafactor": "adafactor"}[name]
    shape = matrix_shape(n) if name == "Adafactor" else (n,)
    flags = {"factored": len(shape) == 2} if name == "Adafactor" else None
    p = optforge.Parameter(cuda.to_device(np.full(shape, 0.5, np.float32)), "w")
    g = cuda.to_device(np.full(shape, 0.01, np.float32))
    opt = make([p])
    seconds = timed(lambda: opt((g,)), repeat)
    moved = bytes_per_element(spec, flags=flags) * n
    return {
        "optimizer": f"optforge {name}",
        "seconds": seconds,
        "bytes": moved,
        "GB/s": moved / seconds / 1e9,
    }


def matrix_shape(n: int) -> tuple[int, ...]:
    """Adafactor's parameter: rows of 1000 columns (a vector where 1000 does not divide n)."""
    return (n // 1000, 1000) if n % 1000 == 0 else (n,)


def torch_adafactor(n: int, repeat: int) -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    p = torch.full(matrix_shape(n), 0.5, device="cuda", requires_grad=True)
    p.grad = torch.full(matrix_shape(n), 0.01, device="cuda")
    opt = torch.optim.Adafactor([p], lr=1e-3, foreach=True)
    seconds = timed(opt.step, repeat)
    moved = bytes_per_element("adafactor", flags={"factored": p.dim() == 2}) * n
    return {
        "optimizer": "torch Adafactor foreach",
        "seconds": seconds,
        "bytes": moved,
        "GB/s": moved / seconds / 1e9,
    }


def torch_fused_adam(n: int, repeat: int) -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    p = torch.full((n,), 0.5, device="cuda", requires_grad=True)
    p.grad = torch.full((n,), 0.01, device="cuda")
    opt = torch.optim.Adam([p], lr=1e-3, fused=True)
    seconds = timed(opt.step, repeat)
    moved = 28 * n
    return {
        "optimizer": "torch Adam fused",
        "seconds": seconds,
        "bytes": moved,
        "GB/s": moved / seconds / 1e9,
    }


def offload(n: int, repeat: int) -> list[dict]:
    p = optforge.Parameter(cuda.to_device(np.full(n, 0.5, np.float32)), "w")
    g = cuda.to_device(np.full(n, 0.01, np.float32))
    opt = optforge.nn.AdamOffload([p], learning_rate=1e-3)
    step = timed(lambda: opt((g,)), max(1, repeat // 4))
    pinned = cuda.pinned_array(n, np.float32)

    def transfer():  # the plain transfer: gradient down, delta up, through pinned memory
        g.copy_to_host(pinned)
        g.copy_to_device(pinned)

    plain = timed(transfer, max(1, repeat // 4))
    return [
        {"optimizer": "optforge AdamOffload", "seconds": step, "ratio_to_transfer": step / plain},
        {"optimizer": "transfer only (D2H grad + H2D delta)", "seconds": plain},
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e7, 1e8, 1e9])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    device = "CUDA simulator" if config.ENABLE_CUDASIM else cuda.get_current_device().name
    device = device.decode() if isinstance(device, bytes) else str(device)
    rows = []
    for size in args.sizes:
        n = int(size)
        bandwidth = copy_bandwidth(n, args.repeat)
        rows.append({"size": n, "optimizer": "copy (same bytes, no arithmetic)", "GB/s": bandwidth})
        for name in ("Adam", "RAdam", "Lamb", "Adafactor"):
            row = optforge_step(name, n, args.repeat)
            rows.append({"size": n, **row, "ratio_to_copy": row["GB/s"] / bandwidth})
        theirs = torch_adafactor(n, args.repeat)
        if theirs is not None:
            rows.append({"size": n, **theirs, "ratio_to_copy": theirs["GB/s"] / bandwidth})
            ours = next(r for r in rows if r.get("optimizer") == "optforge Adafactor" and r["size"] == n)
            ours["time_ratio_to_torch_foreach"] = ours["seconds"] / theirs["seconds"]
        fused = torch_fused_adam(n, args.repeat)
        if fused is None:
            rows.append(
                {"size": n, "optimizer": "torch Adam fused", "skipped": "torch with CUDA not installed"}
            )
        else:
            rows.append({"size": n, **fused, "ratio_to_copy": fused["GB/s"] / bandwidth})
            ours = next(r for r in rows if r.get("optimizer") == "optforge Adam" and r["size"] == n)
            ours["time_ratio_to_torch_fused"] = ours["seconds"] / fused["seconds"]
        rows += [{"size": n, **r} for r in offload(n, args.repeat)]

    result = {
        "device": device,
        "host": platform.node(),
        "numba": __import__("numba").__version__,
        "rows": rows,
    }
    out = args.out or RESULTS / f"gpu-{device.replace(' ', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"device: {device}")
    for r in rows:
        figures = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items() if k != "size"
        )
        print(f"{r['size']:>12,}  {figures}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
