"""Benchmarks (`optforge bench`): step time and GB/s against the same-traffic limit, torch and DeepSpeed.

Development tooling, not the run-time path: it imports the compiler (to count
the bytes a compiled step moves) and, when installed, torch, DeepSpeed and
matplotlib. `pip install -e ".[bench]"` installs all three.
"""

from __future__ import annotations

import argparse
from pathlib import Path

RESULTS = Path("benchmarks") / "results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`optforge bench`'s arguments; here, so building the CLI parser imports nothing heavy."""
    parser.add_argument(
        "optimizers", nargs="*", default=["adam"], help="spec names (adam, radam, lamb, ...), or 'all'"
    )
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 1e8], help="elements in all")
    parser.add_argument("--tensors", type=int, default=1, help="split each size into this many tensors")
    parser.add_argument("--repeat", type=int, default=10, help="timed steps per contender (median)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where JSON, table and plot go")
    parser.add_argument(
        "--limit-only",
        action="store_true",
        help="time only optforge and the same-traffic limit (the 'of limit' figures: quicker, and "
        "two contenders interleaved see the same machine)",
    )
    parser.add_argument(
        "--startup", action="store_true", help="instead: time a new process's import and first Adam step"
    )
    parser.add_argument(
        "--state-dtype",
        nargs="*",
        choices=["float32", "bfloat16", "float16", "int8"],
        help="instead: Adam and AdamW under precision policies (float32 parameters with each state "
        "dtype given, default all; bfloat16 parameters with stochastic rounding and with master "
        "weights), each against its own same-traffic limit, at --sizes (default 1e8)",
    )
    parser.add_argument(
        "--overhead",
        action="store_true",
        help="instead: whole steps on many small tensors (optforge.torch.AdamW vs torch fused and "
        "foreach; optforge.nn.Adam vs its bare kernel call), interleaved",
    )
    parser.add_argument(
        "--fsdp",
        action="store_true",
        help="instead: the optimizer step on a fully_shard'ed ~21M-parameter model over --ranks gloo "
        "ranks (optforge.torch AdamW, Lamb, Adafactor against torch.optim's AdamW foreach), with the "
        "all-reduces per step; median of --repeat steps",
    )
    parser.add_argument("--ranks", type=int, default=2, help="with --fsdp: processes of the gloo group")
