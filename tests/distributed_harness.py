"""Real torch.distributed process groups for the tests, bounded in time.

    from tests.distributed_harness import run_ranks

    def worker(rank, world_size, out_dir):  # module level: the ranks unpickle it by name
        ...  # dist is initialised (gloo); write results under out_dir (torch.save, np.savez)

    run_ranks(2, worker, str(tmp_path), timeout_s=60)

Each rank is a fresh process (``spawn``) that joins a gloo group on 127.0.0.1 at a
port free when the run starts, with a 60 s collective timeout, one thread for
torch (OMP) and one for Numba. `run_ranks` returns when every rank has returned,
raises `RankFailed` with a rank's traceback as soon as one raises (the others
are ended), and raises `TimeoutError` (ending every rank) when they have not
all returned within `timeout_s`: a hung collective fails the test, never the
session. Results come back through files, which the parent reads and asserts on.
"""

from __future__ import annotations

import datetime
import os
import socket
import time

import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

# The ranks' environment: one thread each (the test machines have few cores, and every rank
# would otherwise start a thread per core for torch and for Numba's parallel kernels).
RANK_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=60)


class RankFailed(RuntimeError):
    """A rank raised: the message holds its traceback."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, worker, args: tuple) -> None:
    """What each spawned process runs: join the group, run the worker, leave the group."""
    os.environ.update(RANK_ENV, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=COLLECTIVE_TIMEOUT,
    )
    try:
        worker(rank, world_size, *args)
        dist.barrier()  # no rank leaves while another may still talk to it
    finally:
        dist.destroy_process_group()


def run_ranks(world_size: int, worker, *args, timeout_s: float = 120.0) -> float:
    """Run ``worker(rank, world_size, *args)`` on `world_size` spawned ranks of one gloo group;
    returns the wall-clock seconds the run took. `worker` and `args` must pickle (a
    module-level function; paths as str)."""
    # The ranks inherit the environment at their start (Numba reads NUMBA_NUM_THREADS when it
    # is imported, there): set it for the start only, then give the parent its own back.
    saved = {key: os.environ.get(key) for key in RANK_ENV}
    os.environ.update(RANK_ENV)
    start = time.monotonic()
    try:
        context = mp.start_processes(
            _rank_main,
            args=(world_size, free_port(), worker, args),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    deadline = start + timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                alive = [rank for rank, p in enumerate(context.processes) if p.is_alive()]
                raise TimeoutError(
                    f"{world_size} ranks of {getattr(worker, '__name__', worker)} ran past {timeout_s} s "
                    f"(ranks still running: {alive}); they were ended."
                )
            try:
                if context.join(timeout=left):
                    return time.monotonic() - start
            except ProcessException as error:  # torch has ended the other ranks
                raise RankFailed(str(error)) from None
    finally:
        for p in context.processes:
            if p.is_alive():
                p.kill()
        for p in context.processes:
            p.join(5)
