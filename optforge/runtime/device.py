"""Steps for parameters that live on a CUDA device.

`DeviceStepper` is created by `FusedOptimizer` when a group's parameters are
device arrays. It launches the generated CUDA kernels (one launch per up to
SLOTS tensors of a group and dtype) and, for specs that apply their update
separately (AdamOffload), runs the ZeRO-Offload pipeline: per chunk, the
effective gradient is formed on the device and copied to pinned host memory,
the generated CPU kernel updates the state (kept in host memory) and computes
the host output the module names (HOST_OUTPUT: AdamOffload's delta), and that
goes back to be added by the device-side apply kernel. Two streams and
two buffer slots overlap the transfers of one chunk with the host work on
the next. The optimizer's device memory is those transfer buffers only.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np
from numba import config, cuda

from optforge.runtime.chunks import chunk_table
from optforge.runtime.cuda import (
    DeviceLaunchGroup,
    Launch,
    as_device_array,
    dense_from_rows,
    device_stage_steps,
    to_device,
)
from optforge.runtime.kernels import Plan, Variant
from optforge.runtime.launch import StageBuffers
from optforge.runtime.pointers import pointer_table
from optforge.runtime.row_tensor import RowTensor
from optforge.runtime.shards import BatchShards, Part, batch_shards, rounds


@dataclass
class DeviceBatch:
    group: int
    dtype: np.dtype
    indices: list[int]
    params: list  # flat device views of the parameters
    state: dict[str, list]  # flat views of the state (device, or host memory when offloading)
    launch_groups: list[DeviceLaunchGroup] = field(default_factory=list)
    variant: Variant | None = None  # the compiled variant its kernels come from
    shards: BatchShards | None = None  # its tensors split across ranks (optforge.runtime.shards)


class DeviceStepper:
    # Elements per offload chunk: transfers of a few MB run near PCIe/NVLink speed.
    offload_chunk = 1 << 20
    # Elements per chunk-table entry; None: the generated module's choice. (Tests set a small
    # value so the simulator's small tensors still span several chunks.)
    chunk: int | None = None

    def __init__(self, optimizer, variant_key: tuple):
        self.opt = optimizer
        self.module = importlib.import_module(f"{optimizer._KERNELS}.cuda.{optimizer._SPEC}")
        self.variant = self.module.VARIANTS[variant_key]
        self.launch_config = Launch()
        self.offload = self.module.OFFLOAD[variant_key] if optimizer._OFFLOAD else None
        self.variant_key = variant_key
        self._slots: dict = {}

    def batch(self, group: int, dtype: np.dtype, members: list[int], variant_key: tuple) -> DeviceBatch:
        """The batch of `members` (one group, dtype and variant: a factored variant for
        Adafactor's matrices, whose launches take a FactoredTable)."""
        opt = self.opt
        variant = self.module.VARIANTS[variant_key]
        params = [opt.parameters[i].data.reshape(opt.parameters[i].size) for i in members]
        state = {
            name: [opt.state[name][i].reshape(opt.state[name][i].size) for i in members]
            for name in variant.state
        }
        batch = DeviceBatch(group, dtype, members, params, state, variant=variant)
        shards = batch_shards([opt.parameters[i] for i in members])
        batch.shards = shards
        if self.offload is None:
            dummy = cuda.device_array(1, dtype=dtype)
            slots = self.module.SLOTS
            for first in range(0, len(members), slots):
                positions = list(range(first, min(first + slots, len(members))))
                shapes = [opt.parameters[members[p]].shape for p in positions]
                batch.launch_groups.append(
                    DeviceLaunchGroup(
                        positions,
                        shapes,
                        slots,
                        self.chunk or variant.chunk,
                        dummy,
                        factored=variant.factored,
                        shards=None if shards is None else shards.subset(positions),
                    )
                )
        return batch

    # -- one step --

    def launch(self, batch: DeviceBatch, grads, t, lr, wd, decays, gc, hypers, step) -> None:
        """One step of `batch`; `step` is its (branch, step-level scalars), computed on the host."""
        opt = self.opt
        scalar = batch.dtype.type
        n = len(batch.indices)
        inv_scale = 1.0 / getattr(opt, "loss_scale", 1.0)
        weight_decay = np.where(decays, wd, 0.0).astype(batch.dtype)
        grad_scale = np.full(n, inv_scale, dtype=batch.dtype)
        flat, sparse = [], []
        for pos, i in enumerate(batch.indices):
            p, g = opt.parameters[i], grads[i]
            if isinstance(g, RowTensor):
                w_host = p.asnumpy() if opt._DECAY == "coupled" and weight_decay[pos] != 0 else None
                rows, values = opt._effective_rows(g, w_host, scalar(inv_scale), scalar(weight_decay[pos]))
                weight_decay[pos], grad_scale[pos] = 0, 1  # already in `values`
                if opt._SPARSE == "dense":
                    flat.append(dense_from_rows(rows, values, p.shape, batch.dtype, self.launch_config))
                else:
                    sparse.append((pos, rows, values))
                    flat.append(batch.params[pos])  # not read: no chunk of this tensor is launched
            elif gc[pos]:
                host = g.copy_to_host() if hasattr(g, "copy_to_host") else g
                centralized = opt._centralized(
                    host, p.asnumpy(), scalar(inv_scale), scalar(weight_decay[pos])
                )
                grad_scale[pos] = 1
                if opt._DECAY == "coupled":
                    weight_decay[pos] = 0
                flat.append(to_device(centralized.reshape(-1)))
            else:
                flat.append(to_device(g if isinstance(g, np.ndarray) else as_device_array(g)).reshape(p.size))
        if self.offload is not None:
            self._offload_step(batch, flat, t, lr, weight_decay, grad_scale, hypers)
            return
        branch, scalars = step
        skip = {pos for pos, _, _ in sparse}
        stream = self.launch_config.stream
        launches = []
        for lg in batch.launch_groups:
            if lg.n_chunks == 0 and lg.shards is None:  # (a split one takes part in the sums)
                continue
            chunks, n_chunks = lg.chunks, lg.n_chunks
            if skip & set(lg.positions):
                chunks = self._without(lg, skip)
                n_chunks = chunks.tensor.shape[0]
            per_tensor, scratch = lg.buffers(branch.plan, batch.dtype, weight_decay, grad_scale, stream)
            arrays = (
                lg.tuple_of([batch.params[p] for p in lg.positions]),
                lg.tuple_of([flat[p] for p in lg.positions]),
                *(lg.tuple_of([batch.state[name][p] for p in lg.positions]) for name in batch.variant.state),
            )
            steps = device_stage_steps(
                branch,
                batch.dtype,
                self.launch_config,
                self.module.THREADS,
                chunks,
                n_chunks,
                lg.n_matrices,
                lg.slots,
                (arrays, per_tensor, scratch, *scalars),
            )
            launches.append(_parts(steps, lg))
        # The launches go through their reduction rounds together: a round's all-reduce, on
        # split parameters, carries every launch's values (optforge.runtime.shards).
        yield from rounds(launches)
        for pos, rows, values in sparse:
            p = opt.parameters[batch.indices[pos]]
            (rows_kernel,) = branch.rows[batch.dtype.name]
            arrays = tuple(
                (a,)
                for a in (
                    batch.params[pos],
                    cuda.to_device(values.reshape(-1)),
                    *(batch.state[name][pos] for name in batch.variant.state),
                )
            )
            rows_kernel[self.launch_config.grid(rows.size, self.module.THREADS)](
                cuda.to_device(rows),
                p.size // max(p.shape[0], 1),
                arrays,
                cuda.to_device(np.array([[0], [1]], batch.dtype)),  # decay and scale are in `values`
                *scalars,
            )

    def _without(self, lg: DeviceLaunchGroup, skip: set[int]):
        """The launch group's chunk table without the tensors stepped row by row."""
        host = lg.host_chunks
        keep = ~np.isin(host.tensor, [lg.positions.index(p) for p in skip if p in lg.positions])
        return type(host)(*(cuda.to_device(np.ascontiguousarray(c[keep])) for c in host))

    # -- AdamOffload: state and update on the host --

    def _offload_step(self, batch, flat_grads, t, lr, weight_decay, grad_scale, hypers) -> None:
        opt = self.opt
        dtype = batch.dtype
        scalar = dtype.type
        _, scalars = opt._variant.step(t, lr, hypers, dtype)
        cpu = importlib.import_module(f"{opt._KERNELS}.cpu.{opt._SPEC}")
        host_update = cpu.HOST_STAGE[self.variant_key][dtype.name][0]  # its first stage
        effective_gradient, apply = self.offload[dtype.name]
        slots = self._transfer_slots(dtype)
        scratch = StageBuffers(dtype, 1, chunk_table([1], 1)).get(Plan())
        # The host stage's state; what it writes for the apply stage goes to the pinned buffers.
        output = cpu.HOST_OUTPUT[self.variant_key]
        work = []  # (position, start, stop) in order
        for pos in range(len(batch.indices)):
            size = batch.params[pos].shape[0]
            work += [(pos, s, min(s + self.offload_chunk, size)) for s in range(0, size, self.offload_chunk)]

        def send_down(k):
            pos, start, stop = work[k]
            slot = slots[k % 2]
            n = stop - start
            effective_gradient[self.launch_config_for(slot, n)](
                flat_grads[pos][start:stop],
                batch.params[pos][start:stop],
                scalar(weight_decay[pos]),
                scalar(grad_scale[pos]),
                slot["device_g"][:n],
            )
            slot["device_g"][:n].copy_to_host(slot["host_g"][:n], stream=slot["stream"])

        if work:
            send_down(0)
        for k, (pos, start, stop) in enumerate(work):
            if k + 1 < len(work):
                send_down(k + 1)  # the next chunk travels while the host works on this one
            slot = slots[k % 2]
            n = stop - start
            slot["stream"].synchronize()
            arrays = pointer_table(
                [
                    [slot["zeros"][:n]],  # w: its decay is already in the gradient
                    [slot["host_g"][:n]],
                    *(
                        [slot["host_output"][:n]] if name == output else [batch.state[name][pos][start:stop]]
                        for name in self.variant.state
                    ),
                ]
            )
            per_tensor = np.array([[0], [1]], dtype)
            host_update(chunk_table([n], n), arrays, per_tensor, scratch, *scalars)
            slot["device_output"][:n].copy_to_device(slot["host_output"][:n], stream=slot["stream"])
            apply[self.launch_config_for(slot, n)](
                batch.params[pos][start:stop], slot["device_output"][:n], *scalars
            )
        for slot in slots:
            slot["stream"].synchronize()

    def launch_config_for(self, slot, n: int) -> tuple:
        threads = 32 if config.ENABLE_CUDASIM else 256
        blocks = min(max(1, (n + threads - 1) // threads), self.launch_config.max_blocks)
        return (blocks, threads, slot["stream"])

    def _transfer_slots(self, dtype) -> list[dict]:
        """Two sets of transfer buffers (device gradient, pinned host gradient and host
        output, device output), each with its stream: all the device memory offloading uses."""
        if dtype.name not in self._slots:
            n = self.offload_chunk
            self._slots[dtype.name] = [
                {
                    "stream": cuda.stream(),
                    "device_g": cuda.device_array(n, dtype=dtype),
                    "host_g": cuda.pinned_array(n, dtype=dtype),
                    "host_output": cuda.pinned_array(n, dtype=dtype),
                    "device_output": cuda.device_array(n, dtype=dtype),
                    "zeros": np.zeros(n, dtype=dtype),
                }
                for _ in range(2)
            ]
        return self._slots[dtype.name]


def _parts(steps, lg: DeviceLaunchGroup):
    """A launch's reduction rounds as optforge.runtime.shards takes them: a list of one Part each."""
    for kind, scratch in steps:
        yield [Part(kind, scratch, lg.shards, lg.host_chunks)]
