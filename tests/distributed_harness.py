"""Real torch.distributed process groups for the tests, bounded in time.

    from tests.distributed_harness import run_ranks

    def worker(rank, world_size, out_dir):  # module level: the ranks unpickle it by name
        ...  # dist is initialised (gloo); write results under out_dir (torch.save, np.savez)

    run_ranks(2, worker, str(tmp_path), timeout_s=60)

The ranks start as the benchmarks' do (optforge/bench/launch.py). Each rank is a
fresh process (``spawn``) that joins a gloo group on 127.0.0.1 at a port free when
the run starts, with a 120 s collective timeout and one thread for torch (OMP) and
for Numba. `run_ranks` returns when every rank has returned,
raises `RankFailed` with a rank's traceback as soon as one raises (the others
are ended), and raises `TimeoutError` (ending every rank) when they have not
all returned within `timeout_s`: a hung collective fails the test, never the
session. Results come back through files, which the parent reads and asserts on.
"""

from __future__ import annotations

from optforge.bench.launch import RANK_ENV, RankFailed, free_port
from optforge.bench.launch import run_ranks as _run_ranks

__all__ = ["RANK_ENV", "RankFailed", "free_port", "run_ranks"]


def run_ranks(world_size: int, worker, *args, timeout_s: float = 120.0) -> float:
    """`optforge.bench.launch.run_ranks`, with a test's time bound by default."""
    return _run_ranks(world_size, worker, *args, timeout_s=timeout_s)
