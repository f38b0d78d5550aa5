"""FSDP2's DTensor parameters: each rank steps its local part, in place.

`fully_shard` makes every parameter a DTensor split along dimension 0 over its
mesh (``Shard(0)``; HSDP's 2-D mesh replicates it over the other dimension). The
kernels step ``to_local()``, a view of this rank's rows; the state tensors shown in
``state[p]`` are DTensors over the engine's arrays with the parameter's placements
(a factored column state of a 2-D parameter, which every rank holds whole, is
replicated), so `torch.distributed.checkpoint` saves and loads them as torch.optim's.
The per-tensor sums of a spec that reduces are added up over the mesh dimension that
splits the tensor (optforge.runtime.shards).
"""

from __future__ import annotations

import math

import torch


def is_dtensor(t) -> bool:
    return hasattr(t, "to_local") and hasattr(t, "placements") and hasattr(t, "device_mesh")


def local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local part on this rank (a view, no copy); any other tensor as it is."""
    return t.to_local() if is_dtensor(t) else t


def split_dim(p) -> int | None:
    """The mesh dimension whose ranks hold parts of `p` along its dimension 0 (None: every
    rank holds it whole). Raises NotImplementedError for other placements, which only a
    spec without per-tensor reductions can step (each part on its own)."""
    if not is_dtensor(p):
        return None
    dims = []
    for mesh_dim, placement in enumerate(p.placements):
        if placement.is_replicate():
            continue
        if placement.is_shard() and placement.dim == 0:
            dims.append(mesh_dim)
            continue
        raise NotImplementedError(f"a DTensor placed {p.placements}: only Shard(0) and Replicate are")
    if len(dims) > 1:
        raise NotImplementedError(f"a DTensor split along dimension 0 over {len(dims)} mesh dimensions")
    return dims[0] if dims else None


def reduction_group(params: list, cls: str):
    """The process group over which the per-tensor sums of `params` are added up, or None when
    none is split. One group for all of them: a step adds its sums up in one all-reduce."""
    groups = {}
    for i, p in enumerate(params):
        try:
            dim = split_dim(p)
        except NotImplementedError as error:
            raise NotImplementedError(
                f"{cls}: parameter {i} is {error} supported by this optimizer's per-tensor reductions "
                "(their sums are added up along dimension 0)."
            ) from None
        if dim is not None:
            group = p.device_mesh.get_group(dim)
            groups[id(group)] = group
    if len(groups) > 1:
        raise NotImplementedError(
            f"{cls}: the parameters are split over {len(groups)} different process groups; this "
            "optimizer's per-tensor sums are added up over one. Give each group its own optimizer."
        )
    return next(iter(groups.values()), None)


def state_layout(p, kind: str) -> tuple[tuple, tuple]:
    """The global shape and the placements of a DTensor parameter `p`'s state of shape kind
    `kind` (optforge.runtime.factored.STATE_SHAPES): a "col" state of a 2-D parameter is
    every rank's whole (its sums were added up over the ranks), so it is replicated."""
    from torch.distributed.tensor import Replicate

    from optforge.runtime.factored import STATE_SHAPES

    placements = tuple(p.placements)
    if kind == "col" and p.dim() == 2:
        placements = tuple(Replicate() if pl.is_shard() else pl for pl in placements)
    return STATE_SHAPES[kind](tuple(p.shape)), placements


def state_tensor(view: torch.Tensor, p, kind: str) -> torch.Tensor:
    """The tensor torch shows for a parameter `p`'s state of shape kind `kind`: a DTensor over
    `view` (this rank's part) when `p` is one, shaped and placed as `state_layout` says."""
    if not is_dtensor(p):
        return view
    from torch.distributed.tensor import DTensor

    shape, placements = state_layout(p, kind)
    stride = tuple(math.prod(shape[k + 1 :]) for k in range(len(shape)))
    return DTensor.from_local(view, p.device_mesh, placements, run_check=False, shape=shape, stride=stride)


def local_value(value: torch.Tensor, p, kind: str) -> torch.Tensor:
    """This rank's part of a saved state `value` (its global shape already checked) for a
    parameter `p`'s state of shape kind `kind`, or ValueError, before anything is loaded.

    A DTensor placed as the state is gives its local part; a whole tensor (a consolidated
    checkpoint, or a DTensor replicated on every rank) gives the rows this rank holds. Any
    other placement (another split, a pending sum) would need a collective: refused.
    """
    shape, placements = state_layout(p, kind) if is_dtensor(p) else (None, None)
    if is_dtensor(value):
        if (
            placements is not None
            and value.device_mesh == p.device_mesh
            and tuple(value.placements) == placements
        ):
            return value.to_local()
        if not all(pl.is_replicate() for pl in value.placements):
            raise ValueError(
                f"it is a DTensor placed {tuple(value.placements)}, but the parameter's state is "
                f"{'not a DTensor' if placements is None else f'placed {placements}'}"
            )
        value = value.to_local()  # the whole, on every rank
    if placements is None:
        return value
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    rows, offset = compute_local_shape_and_global_offset(shape, p.device_mesh, placements)
    return value[tuple(slice(o, o + n) for o, n in zip(offset, rows))]
