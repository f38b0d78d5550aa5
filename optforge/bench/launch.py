"""N gloo ranks on 127.0.0.1 for a benchmark, bounded in time; results come back through files.

    from optforge.bench.launch import run_ranks

    def worker(rank, world_size, out_dir):  # module level: the ranks unpickle it by name
        ...  # dist is initialised (gloo); rank 0 writes its result under out_dir

    run_ranks(2, worker, str(out_dir), timeout_s=600)

The tests start their ranks with it too (tests/distributed_harness.py). Each rank is a
fresh ``spawn``ed process that joins a gloo group at a port free when the run starts,
with one thread for OMP, MKL, torch and Numba (each rank has a core of its own, or
shares one; never a thread per core each). A rank that raises
ends the others (`RankFailed`, with its traceback); ranks still running at `timeout_s`
are ended (`TimeoutError`).
"""

from __future__ import annotations

import datetime
import os
import socket
import time

RANK_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=120)


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


def run_ranks(world_size: int, worker, *args, timeout_s: float = 600.0) -> float:
    """Run ``worker(rank, world_size, *args)`` on `world_size` spawned ranks of one gloo group;
    returns the wall-clock seconds the run took. `worker` and `args` must pickle."""
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    # The ranks read the thread counts from the environment at their start (Numba when it is
    # imported): set it for the start only, then give the parent its own back.
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
