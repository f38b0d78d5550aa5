"""Optimizers over parameters split across ranks: what optforge adds up over them.

An elementwise update (Adam, SGD, Lion...) steps each rank's part of a tensor on
its own: nothing is communicated. A per-tensor reduction (Lamb's norms, Adafactor's
RMS, its column sums and row means) needs the whole tensor: each rank's kernels sum
over its part, the parts' sums are added up over the ranks, then the finalize and
the update run. All the tensors of a step share one all-reduce per reduction round
(Lamb: one; Adafactor's matrices: three, since each round's sums need the last
one's results), of 8 bytes per summed value.

optforge.torch does this by itself for FSDP2's DTensor parameters. For the nn and
optim dialects, say which parameters are parts (`Parameter(part, name,
split=whole_shape)`, each rank holding its rows of the whole along dimension 0)
and how to add up over the ranks::

    import torch.distributed as dist
    import optforge, optforge.distributed

    dist.init_process_group("gloo")
    rows = slice(start, stop)  # this rank's rows
    w = optforge.Parameter(whole[rows].copy(), "w", split=whole.shape)
    opt = optforge.optim.Adafactor([w], lr=1e-2)
    opt.all_reduce = optforge.distributed.torch_all_reduce()  # the default group
    opt([grad_of_my_rows])
"""

from __future__ import annotations

import numpy as np


def torch_all_reduce(group=None):
    """An `all_reduce(x)` for optforge's optimizers: sums the float64 NumPy array `x` in place
    over the ranks of the torch.distributed process group `group` (None: the default one).
    With a backend that takes device tensors only (NCCL), `x` goes through the rank's device."""
    import torch
    import torch.distributed as dist

    def all_reduce(values: np.ndarray) -> None:
        tensor = torch.from_numpy(values)
        if dist.get_backend(group) == "nccl":
            on_device = tensor.to(f"cuda:{torch.cuda.current_device()}")
            dist.all_reduce(on_device, op=dist.ReduceOp.SUM, group=group)
            tensor.copy_(on_device.cpu())
            return
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)

    return all_reduce
