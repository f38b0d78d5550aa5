"""`FusedOptimizer`: what every dialect does around the generated kernels.

It keeps the parameters and their state, groups the tensors of each
parameter group by dtype into one kernel call (a chunk table over typed
lists of flat arrays), checks every gradient of a step before anything
changes, picks the host-side branch of the kernel, and steps row-sparse
gradients. The dialect bases (nn, optim) add their arguments' semantics.
"""

from __future__ import annotations

import importlib
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from optforge.parameter import Parameter
from optforge.runtime.checks import OPTIMIZER_ATTRIBUTE, check_type
from optforge.runtime.chunks import chunk_table
from optforge.runtime.factored import factored_table
from optforge.runtime.finite import all_finite, table_finite
from optforge.runtime.kernels import Variant, tensor_variant_key
from optforge.runtime.launch import StageBuffers, fill_sum_values, group_totals, stage_steps
from optforge.runtime.pointers import ArrayFields, PointerTable, pointer_table, set_row
from optforge.runtime.precision import (
    SIXTEEN_BIT,
    Policy,
    Precision,
    check_parameters,
    check_policy,
    numpy_dtype,
    storage_name,
)
from optforge.runtime.quantize import (
    BLOCK,
    BUCKETS,
    MIDPOINT_ROWS,
    MIDPOINTS,
    TABLES,
    dequantize_blockwise,
    quantize_blockwise,
)
from optforge.runtime.row_tensor import RowTensor
from optforge.runtime.shards import BatchShards, Part, batch_shards, run_lockstep
from optforge.runtime.step_state import StepStateMixin
from optforge.runtime.storage import rounding_keys


@dataclass
class _Batch:
    """The tensors of one group with one dtype: one kernel call per step.

    `arrays` is the kernels' pointer table (parameters, gradients, then the variant's
    state, one column per tensor), built once; each step refreshes only the gradients'
    row. `held` keeps every array the table points at alive (a parameter's replaced data
    among them, until the next step rebinds the table to the new one).
    """

    group: int
    dtype: np.dtype  # what its kernels compute in (float32 for 16-bit parameters)
    indices: list[int]  # into `parameters`
    chunks: object  # a ChunkTable, or a FactoredTable for a factored variant
    arrays: PointerTable
    held: list
    buffers: StageBuffers
    # The last step's gradients, kept (so their ids stay theirs) for callers that pass the
    # same gradient arrays every step: their addresses are already in the table.
    grads_seen: tuple = ()
    grads_refs: list | None = None
    variant: Variant | None = None  # the compiled variant its kernels come from
    # How its arrays are stored (optforge.runtime.precision); `key` picks its compiled stages:
    # the dtype's name when every array is in the compute type, else the Precision.
    precision: Precision | None = None
    key: object = None
    # Its tensors that are one rank's part of larger ones (optforge.runtime.shards), or None.
    shards: BatchShards | None = None
    _flat_chunks: object = None
    _n_params: int = 0  # how many parameters the optimizer has (for `whole`)
    _whole: bool | None = None
    _values_key: tuple | None = None
    _values: tuple = ()
    _positions: np.ndarray | None = None

    @classmethod
    def over(
        cls,
        group,
        precision: Precision,
        indices,
        chunks,
        params: list,
        state: list[list],
        variant,
        master=None,
        blocks=(),
    ) -> _Batch:
        """The batch of `params` with `state` (per state of the variant, one array per tensor),
        stored as `precision` says; `master`: their float32 master copies (master weights);
        `blocks`: per state kept as 8-bit codes, in order, (its absmax arrays, one per tensor,
        and its code table's kind)."""
        dtype = np.dtype(precision.compute)
        flat = [p.reshape(-1) for p in params]
        # The gradients' row points at the parameters until the first step points it elsewhere.
        stepped = [m.reshape(-1) for m in master] if precision.master else flat
        rows = [stepped, list(flat)] + [[_kernel_view(a, dtype) for a in arrays] for arrays in state]
        if precision.master:
            rows.append(flat)  # the mirror: the parameters themselves, written at every store
        for absmax, kind in blocks:  # Storage.blocks: absmax values, code table, midpoints, buckets
            rows.append([_kernel_view(a, np.float32) for a in absmax])  # None: a state not kept
            rows += [[table] * len(flat) for table in (TABLES[kind], MIDPOINT_ROWS[kind], BUCKETS[kind])]
        buffers = StageBuffers(dtype, len(indices), chunks, [p.shape for p in params])
        key = precision.compute if precision.plain else precision
        return cls(
            group,
            dtype,
            indices,
            chunks,
            pointer_table(rows),
            rows,
            buffers,
            variant=variant,
            precision=precision,
            key=key,
        )

    def set_array(self, k: int, tensor: int, array: np.ndarray) -> None:
        """Point row `k` of the table at `array` for one tensor (C-contiguous; kept alive)."""
        self.held[k][tensor] = array
        self.arrays.addresses[k, tensor] = array.ctypes.data
        self.arrays.sizes[k, tensor] = array.size

    def positions(self) -> np.ndarray:
        """The batch's tensors' positions among the optimizer's parameters, as an index array."""
        if self._positions is None:
            self._positions = np.array(self.indices, dtype=np.int64)
        return self._positions

    @property
    def whole(self) -> bool:
        """Whether the batch is every parameter, in order (a step's gradients as given)."""
        if self._whole is None:
            self._whole = self.indices == list(range(len(self.indices))) and self._n_params == len(
                self.indices
            )
        return self._whole

    def per_tensor_values(self, decays, wd: float, inv_scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Each tensor's weight decay (`wd` where `decays` says so, else 0) and gradient scale,
        made once for the values a step gives (read-only: copy before changing them)."""
        key = (tuple(decays), wd, inv_scale)
        if self._values_key != key:
            weight_decay = np.where(decays, wd, 0.0).astype(self.dtype)
            grad_scale = np.full(len(self.indices), inv_scale, dtype=self.dtype)
            weight_decay.flags.writeable = grad_scale.flags.writeable = False
            self._values, self._values_key = (weight_decay, grad_scale), key
        return self._values

    def flat_chunks(self):
        """A flat chunk table over the batch's tensors (a factored batch's is by rows)."""
        if hasattr(self.chunks, "tensor"):
            return self.chunks
        if self._flat_chunks is None:
            self._flat_chunks = chunk_table(list(self.arrays.sizes[0]), self.variant.chunk)
        return self._flat_chunks

    def set_params(self, params: list[np.ndarray]) -> None:
        flat = [p.reshape(-1) for p in params]
        # behind master copies, the mirror: the row after the states (Precision.rows' last)
        row = len(self.precision.rows) - 1 if self.precision.master else 0
        before = self.arrays.addresses[row].copy()
        set_row(self.arrays, row, flat)
        self.held[row] = flat
        if self.precision.master:  # new values: their master copies start again from them
            # Only the replaced ones (the table held the old arrays, so a new one has a new
            # address): a parameter rebound alongside keeps its master copy's float32 bits.
            for k, (master, p) in enumerate(zip(self.held[0], flat)):
                if self.arrays.addresses[row, k] != before[k]:
                    master[:] = p.astype(np.float32)


class Addressed(list):
    """A step's gradients given by address: the gradient objects (kept alive, in engine
    order) with each one's address and element count. The caller has checked every one:
    dense, C-contiguous, in host memory, with its parameter's dtype and shape (the torch
    dialect reads them from the tensors, without a NumPy view per tensor per step)."""

    def __init__(self, gradients: list, addresses: list[int], sizes: list[int]):
        super().__init__(gradients)
        self.addresses = np.asarray(addresses, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)


class CheckedGradients(list):
    """A step's gradients as `_check_gradients` returns them; `plain` says whether every one
    is a plain ndarray of its parameter's dtype and shape (no RowTensor, no device array)."""

    plain = False


class FusedOptimizer(StepStateMixin):
    """Base of the generated classes; subclasses set the class attributes below."""

    _SPEC = ""  # the spec's module name: <_KERNELS>.{cpu,cuda}.<_SPEC>
    _KERNELS = "optforge.generated"  # the package its kernel modules were built into
    _HYPERS: tuple[str, ...] = ()  # the spec's hyperparameters, in spec order
    _DECAY = "coupled"  # how weight decay enters the spec: "coupled" or "decoupled"
    _SPARSE: str | None = None  # row-sparse gradients: "rows", "dense" or None
    _OFFLOAD = False  # state always in host memory, update computed on the host (AdamOffload)
    _FLAGS: tuple[str, ...] = ()  # the flags the class takes (attributes), saved in state dicts

    parameters: tuple[Parameter, ...]
    _group_of: list[int]  # group index of each parameter
    # skip_nonfinite=True: a step whose gradients hold a NaN or an infinity changes nothing
    # (parameters, state, step counter) and is counted in `skipped_steps`.
    skip_nonfinite = False
    skipped_steps = 0
    # The precision options (optforge.runtime.precision), set by `_set_precision`.
    _policy = Policy()
    state_dtype = None
    _none_values = None  # the kernel module's NONE_VALUES, read when the state is allocated
    master_weights = False
    stochastic_rounding = False
    _ROUNDING_SEED = 0  # the seed of the stochastic-rounding bits: the same bits on every run
    _ALL_PARAMETERS = True  # `parameters` are all the class's (not a torch engine's cohort)
    # all_reduce(x): sums the float64 array `x` in place over the ranks that hold the parts of
    # the split parameters (optforge.distributed.torch_all_reduce makes one for a process group).
    all_reduce = None

    def _set_skip_nonfinite(self, skip_nonfinite) -> None:
        check_type(type(self).__name__, "skip_nonfinite", skip_nonfinite, ("bool",))
        self.skip_nonfinite = skip_nonfinite
        self.skipped_steps = 0

    def _set_precision(self, state_dtype, master_weights, stochastic_rounding) -> None:
        """Check and keep the precision options (the documented TypeError and ValueError);
        what they need of the parameters is checked when the state is made."""
        module = importlib.import_module(f"{self._KERNELS}.cpu.{self._SPEC}")
        states = tuple(dict.fromkeys(name for v in module.VARIANTS.values() for name in v.state))
        self._policy = check_policy(
            type(self).__name__, state_dtype, master_weights, stochastic_rounding, states
        )
        self.state_dtype = state_dtype
        self.master_weights, self.stochastic_rounding = master_weights, stochastic_rounding

    def _allocate(
        self,
        variant_key: tuple,
        state_init: dict[str, float],
        use_locking: bool,
        n_groups: int,
        state: dict[str, tuple] | None = None,
    ):
        """Allocate the state and the per-group, per-dtype kernel batches.

        A group's parameters must all live in host memory or all on the
        device; that is checked before anything is allocated. `state`, when
        given, holds each parameter's existing arrays (per state name, one per
        parameter, None where its variant has no such state): the batches step
        those in place instead of new ones (optforge.torch's cohorts, which
        split and merge over the same arrays).
        """
        cls = type(self).__name__
        for g in range(n_groups):
            members = [p for p, gi in zip(self.parameters, self._group_of) if gi == g]
            places = {p.on_device for p in members}
            if len(places) > 1:
                on = next(p.name for p in members if p.on_device)
                off = next(p.name for p in members if not p.on_device)
                raise ValueError(
                    f"For '{cls}', parameter group {g} mixes device arrays ('{on}') and host arrays "
                    f"('{off}'); a group's parameters must all live in one place."
                )
        module = importlib.import_module(f"{self._KERNELS}.cpu.{self._SPEC}")
        check_kernel_support(module, cls, self.parameters, self._OFFLOAD)
        variant = module.VARIANTS[variant_key]
        self._variant = variant
        self._none_values = getattr(module, "NONE_VALUES", None)
        self._variant_key = variant_key
        self._n_groups = n_groups
        self._lock = ParameterLocks(self.parameters) if use_locking else None
        # What the state was made for: a parameter whose `data` is replaced must still match it.
        self._layout = [(p.shape, p.dtype, p.on_device) for p in self.parameters]
        self._rebound = False
        for p in self.parameters:
            p._watch(self)
        on_device = [p.on_device and not self._OFFLOAD for p in self.parameters]
        # A spec with a rank flag (Adafactor's `factored`) steps each tensor with the variant
        # its number of dimensions selects; the others have one variant for all.
        keys = [tensor_variant_key(module, variant_key, p.ndim) for p in self.parameters]

        def initial(name: str, i: int) -> float:
            value = state_init[name]
            return self._initial_lr(self._group_of[i]) if value == "lr" else value

        # Each parameter's own states; None for a state its variant does not have.
        own = [dict(module.VARIANTS[key].state_shapes(p.shape)) for key, p in zip(keys, self.parameters)]
        names = list(dict.fromkeys(name for shapes in own for name in shapes))
        policy = self._policy
        precisions = [
            policy.precision(storage_name(p.dtype), module.VARIANTS[key].state)
            for key, p in zip(keys, self.parameters)
        ]
        check_parameters(cls, policy, self.parameters, precisions, self._ALL_PARAMETERS)
        self._check_precision_use(precisions, on_device)
        int8 = self._int8_tables(module, [module.VARIANTS[key] for key in keys], precisions)
        self._check_split_use()
        names += [absmax_name(name) for name in dict.fromkeys(n for tables in int8 for n in tables)]
        if any(pr.master for pr in precisions):
            names.append(MASTER)

        def stored(name: str, i: int) -> np.dtype:
            return numpy_dtype(policy.state_storage(name, storage_name(self.parameters[i].dtype)))

        def made(name: str, i: int):
            p, dev, hypers = self.parameters[i], on_device[i], self._state_hypers(self._group_of[i])
            if name not in int8[i]:
                return _filled(own[i][name], stored(name, i), initial(name, i), dev, p, hypers)
            # 8-bit codes of its initial values, and their blocks' absmax (kept beside it)
            values = _filled(own[i][name], np.dtype(np.float32), initial(name, i), dev, p, hypers)
            codes, absmax = quantize_blockwise(values, TABLES[int8[i][name]], mids=MIDPOINTS[int8[i][name]])
            return codes.reshape(values.shape), absmax

        if state is not None:
            self.state = {name: tuple(state[name]) for name in names}
        else:
            self.state = {}
            for name in names:
                if name == MASTER or name.endswith(ABSMAX):
                    continue
                arrays = [made(name, i) if name in own[i] else None for i in range(len(self.parameters))]
                blockwise = [i for i in range(len(arrays)) if name in int8[i]]
                if blockwise:
                    absmax = [None] * len(arrays)
                    for i in blockwise:
                        arrays[i], absmax[i] = arrays[i]
                    self.state[absmax_name(name)] = tuple(absmax)
                self.state[name] = tuple(arrays)
            self.state = {name: self.state[name] for name in names if name in self.state}
            if MASTER in names:  # a float32 copy of each 16-bit parameter, stepped in its place
                self.state[MASTER] = tuple(
                    p.data.astype(np.float32) if pr.master else None
                    for p, pr in zip(self.parameters, precisions)
                )
        for name, arrays in self.state.items():
            setattr(self, name, arrays)
        self._batches = []
        self._device = None
        for g in range(n_groups):
            indices = [i for i, gi in enumerate(self._group_of) if gi == g]
            for dtype, key in dict.fromkeys((self.parameters[i].dtype, keys[i]) for i in indices):
                members = [i for i in indices if (self.parameters[i].dtype, keys[i]) == (dtype, key)]
                if self.parameters[members[0]].on_device:
                    if self._device is None:
                        from optforge.runtime.device import DeviceStepper

                        self._device = DeviceStepper(self, variant_key)
                    self._batches.append(self._device.batch(g, dtype, members, key))
                    continue
                params = [self.parameters[i] for i in members]
                v = module.VARIANTS[key]
                shards = batch_shards(params)
                if v.factored:
                    rows = None if shards is None else list(shards.rows)  # 2-D: its rows split
                    chunks = factored_table([p.shape for p in params], v.chunk, split_rows=rows)
                else:
                    chunks = chunk_table([p.size for p in params], v.chunk)
                self._batches.append(
                    _Batch.over(
                        g,
                        precisions[members[0]],
                        members,
                        chunks,
                        [p.data for p in params],
                        # A state the dialect does not keep for a tensor (torch's SGD without
                        # momentum) is None: an empty array the kernel's branch never touches.
                        [[self.state[n][i] for i in members] for n in v.state],
                        v,
                        master=[self.state[MASTER][i] for i in members] if MASTER in self.state else None,
                        blocks=[
                            ([self.state[absmax_name(n)][i] for i in members], int8[members[0]][n])
                            for n in v.state
                            if n in int8[members[0]]
                        ],
                    )
                )
                self._batches[-1]._n_params = len(self.parameters)
                self._batches[-1].shards = shards

    def _tensor_ids(self, batch: _Batch) -> np.ndarray:
        """Each tensor's number in the rounding keys: its position among the parameters."""
        return batch.positions()

    def _check_split_use(self) -> None:
        """What split parameters (parts of larger tensors, optforge.runtime.shards) cannot do
        (ValueError, before anything is made): a centralized gradient (its mean would be this
        part's)."""
        centralize = getattr(self, "_centralize", None) or [False] * len(self.parameters)
        for p, gc in zip(self.parameters, centralize):
            if p.split is not None and gc:
                raise ValueError(
                    f"For '{type(self).__name__}', parameter '{p.name}' is a part of a larger tensor "
                    "(split): grad_centralization would take the mean of this part only."
                )

    def _int8_tables(self, module, variants: list[Variant], precisions: list[Precision]) -> list[dict]:
        """Per parameter, its states kept as 8-bit codes -> their code tables' kinds
        (`int8_kinds`: what no kernel can keep so is refused, before anything is made)."""
        cls = type(self).__name__
        result = [
            int8_kinds(cls, module, variant, precision, p.name, self._state_key)
            for p, variant, precision in zip(self.parameters, variants, precisions)
        ]
        if any(result) and any(v.chunk % BLOCK for v in variants):  # chunks start at whole blocks
            raise AssertionError("a flat kernel's chunk must be a whole number of 8-bit blocks")
        return result

    def _state_key(self, name: str) -> str:
        """A state's public name, as the dialect shows it (optforge.torch: torch's)."""
        return name

    def _check_precision_use(self, precisions: list[Precision], on_device: list[bool]) -> None:
        """What the kernels cannot yet do under a precision policy (ValueError, before anything
        is made): device parameters keep every array in their dtype; 16-bit parameters take
        no centralized gradients (their mean would be taken in 16 bits)."""
        cls = type(self).__name__
        for p, precision, dev in zip(self.parameters, precisions, on_device):
            if dev and not precision.plain:
                raise ValueError(
                    f"For '{cls}', parameter '{p.name}' lives on a CUDA device, where state_dtype, "
                    "master_weights and stochastic_rounding are not available yet: every array is kept "
                    "in the parameter's dtype there."
                )
        centralize = getattr(self, "_centralize", None)
        for p, precision, gc in zip(self.parameters, precisions, centralize or [False] * len(precisions)):
            if gc and precision.rows[1] in SIXTEEN_BIT:
                raise ValueError(
                    f"For '{cls}', parameter '{p.name}' is {p.dtype.name}: grad_centralization is "
                    "not available for 16-bit parameters."
                )

    # -- copies: copy.deepcopy and pickle --

    # What `_allocate` builds over this optimizer's own memory: its batches' pointer tables
    # hold raw addresses, which a copy would carry over unchanged (the copy would step the
    # original's parameters and state, and an unpickled one freed or foreign memory).
    # A copy does not take the original's `all_reduce` (a process group's: not picklable).
    _BOUND_TO_MEMORY = ("_batches", "_device", "_lock", "_variant", "all_reduce")

    def __getstate__(self) -> dict:
        """Everything but the kernels' bindings; `__setstate__` binds the copy's own arrays."""
        state = {key: value for key, value in self.__dict__.items() if key not in self._BOUND_TO_MEMORY}
        state["_use_locking"] = self._lock is not None
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        use_locking = state.pop("_use_locking")
        self.__dict__.update(state)
        layout, rebound = self._layout, self._rebound
        # The copied parameters and state arrays: batches (and a lock) over them, none allocated.
        self._allocate(self._variant_key, {}, use_locking, self._n_groups, state=self.state)
        # What the state was made for stays the original's: a parameter whose data was
        # replaced by another shape before the copy is refused by the copy's step too.
        self._layout, self._rebound = layout, rebound or self._layout != layout

    def _initial_lr(self, group: int) -> float:
        """A group's learning rate before the first step (for state that starts at lr)."""
        raise NotImplementedError

    def _state_hypers(self, group: int) -> dict:
        """The hyperparameters a state's initial value reads, for a parameter of `group`."""
        return self.hypers

    def __call__(self, gradients) -> bool:
        if self._lock is None:
            return self._step(gradients)
        with self._lock:
            return self._step(gradients)

    def _step(self, gradients) -> bool:
        """Check every gradient, skip a non-finite step if asked, then apply the step."""
        self._check_mode()
        if self._rebound:
            self._rebind()
        grads = self._check_gradients(gradients)
        if self.skip_nonfinite and not self._finite_on_every_rank(self._all_finite(grads)):
            self.skipped_steps += 1
            return False
        return self._apply(grads)

    def _finite_on_every_rank(self, finite: bool) -> bool:
        """Whether every rank's gradients are finite, `finite` being this rank's: with split
        parameters a rank's gradient holds only its part, and the ranks must skip a step
        together (one all-reduce of a flag; else one would step alone, or wait forever in
        the step's all-reduce for the others)."""
        split = any(getattr(b, "shards", None) is not None for b in self._batches or ())
        if not split or self.all_reduce is None:
            return finite
        flag = np.array([0.0 if finite else 1.0])
        self.all_reduce(flag)
        return bool(flag[0] == 0.0)

    def _all_finite(self, grads: list) -> bool:
        """Whether every checked gradient is finite: one call per host batch whose gradients
        are plain arrays (its table then already points at them for the step), the others
        (row-sparse, device) one by one."""
        for batch in self._batches:
            if isinstance(grads, Addressed) and isinstance(batch, _Batch):
                _point_at_addresses(batch, grads)
                if not table_finite(batch.flat_chunks(), batch.arrays, 1, batch.precision.rows[1]):
                    return False
                continue
            batch_grads, plain = _batch_gradients(batch, grads)
            if isinstance(batch, _Batch) and plain:
                _point_at_gradients(batch, batch_grads)
                if not table_finite(batch.flat_chunks(), batch.arrays, 1, batch.precision.rows[1]):
                    return False
            elif not all_finite(batch_grads):
                return False
        return True

    def _apply(self, grads: list) -> bool:
        """The dialect's step over checked gradients: from here on, state changes."""
        raise NotImplementedError

    # -- parameters whose data was replaced --

    def _parameter_rebound(self) -> None:
        """Called by a Parameter whose `data` was replaced: the next step re-binds the kernels."""
        self._rebound = True

    def _rebind(self) -> None:
        """Point the kernels' tables at the parameters' current arrays.

        The kernels hold the arrays they were given; a replaced `data` of the same
        shape, dtype and place is followed, anything else refuses the step (the
        state was made for the old shape) before anything changes.
        """
        cls = type(self).__name__
        # Cleared before the arrays are read: a replacement landing while this runs sets it
        # again, and the next step binds that one too (never an orphaned array stepped).
        self._rebound = False
        for p, (shape, dtype, on_device) in zip(self.parameters, self._layout):
            if (p.shape, p.dtype, p.on_device) != (shape, dtype, on_device):
                self._rebound = True
                where = {True: "device", False: "host"}
                raise ValueError(
                    f"For '{cls}', the data of parameter '{p.name}' was replaced by a "
                    f"{p.dtype.name}{list(p.shape)} {where[p.on_device]} array, but its state is for a "
                    f"{dtype.name}{list(shape)} {where[on_device]} array; the step was not taken. "
                    "Give it data of the old shape and dtype, or create a new optimizer."
                )
        for batch in self._batches:
            members = [self.parameters[i] for i in batch.indices]
            if isinstance(batch, _Batch):
                batch.set_params([p.data for p in members])
            else:
                batch.params = [p.data.reshape(p.size) for p in members]

    # -- checkpoints --

    def state_dict(self) -> dict:
        """The optimizer's state as a flat dict of NumPy arrays, strings and numbers.

        Keys: ``optimizer`` (the class), ``step``, ``flag/<name>`` (the kernel
        variant's flags), ``param/<i>/{name,shape,dtype}``, ``state/<i>/<state name>``
        (host copies, also of device state) and what the dialect adds (the optim
        dialect: ``group/<g>/<key>``). It pickles, and ``np.savez(path, **opt.state_dict())``
        saves it; ``load_state_dict`` takes the dict back or what ``np.load(path)`` returns.
        With ``use_locking=True`` it is taken under the step's lock, so it never mixes steps.
        """
        if self._lock is None:
            return self._state_dict()
        with self._lock:
            return self._state_dict()

    def _state_dict(self) -> dict:
        result = {"optimizer": self._checkpoint_name(), "step": int(self.global_step)}
        for name in self._FLAGS:
            result[f"flag/{name}"] = bool(getattr(self, name))
        for i, p in enumerate(self.parameters):
            result[f"param/{i}/name"] = p.name
            result[f"param/{i}/shape"] = np.array(p.shape, dtype=np.int64)
            result[f"param/{i}/dtype"] = p.dtype.name
        for name, arrays in self.state.items():
            for i, array in enumerate(arrays):
                if array is not None:
                    result[f"state/{i}/{name}"] = _host_copy(array)
        result.update(self._extra_state())
        return result

    def float32_state_dict(self) -> dict:
        """`state_dict()` with every state as float32 values: 8-bit codes dequantised
        (``table[code] * absmax``, their ``<name>_absmax`` entries dropped) and 16-bit states
        widened, exactly. For reading the state, or for a class that keeps it in float32; a
        class with `state_dtype` loads only `state_dict()`'s stored form (bit-exact resume)."""
        saved = self.state_dict()
        tables = {}
        for batch in self._batches or []:
            for k in getattr(batch, "precision", None) and batch.precision.int8_rows or ():
                name = batch.variant.state[k - 2]
                kind = self._int8_kind(batch, name)
                tables.update({(i, name): kind for i in batch.indices})
        result = {}
        for key, value in saved.items():
            parts = key.split("/")
            if parts[0] != "state":
                result[key] = value
            elif parts[2].endswith(ABSMAX):
                continue  # read into its state's values
            elif (int(parts[1]), parts[2]) in tables:
                i, name = int(parts[1]), parts[2]
                absmax = saved[f"state/{i}/{absmax_name(name)}"]
                result[key] = dequantize_blockwise(value, absmax, TABLES[tables[i, name]]).reshape(
                    value.shape
                )
            elif value.dtype.itemsize == 2 and value.dtype.kind not in "iu":  # bfloat16, float16
                result[key] = value.astype(np.float32)
            else:
                result[key] = value
        return result

    def _int8_kind(self, batch: _Batch, name: str) -> str:
        module = importlib.import_module(f"{self._KERNELS}.cpu.{self._SPEC}")
        return module.INT8_TABLES[name]

    def load_state_dict(self, state_dict) -> None:
        """Continue from `state_dict` (from `state_dict()` of the same class, flags and
        parameters of the same count, shapes and dtypes): the next steps are bit-identical
        to those of the optimizer it came from.

        The whole dict is parsed and checked first (every key, every value converted to
        what it will become); only then is anything copied, so a refused dict
        (ValueError) leaves the optimizer exactly as it was."""
        if self._lock is None:
            self._load_state_dict(state_dict)
            return
        with self._lock:
            self._load_state_dict(state_dict)

    def _load_state_dict(self, state_dict) -> None:
        cls = type(self).__name__
        try:
            sd = {key: state_dict[key] for key in state_dict}  # also an NpzFile
        except Exception as error:
            raise ValueError(f"For '{cls}', the state dict cannot be read as a mapping: {error}") from None

        def entry(key: str):
            if key not in sd:
                raise ValueError(f"For '{cls}', the state dict has no '{key}'.")
            return sd[key]

        if "optimizer" not in sd or "step" not in sd:
            raise ValueError(
                f"For '{cls}', the state dict has no 'optimizer' and 'step': not an optforge one."
            )
        source = str(sd["optimizer"])
        if source != self._checkpoint_name():
            raise ValueError(f"For '{cls}', the state dict is from {source}, not {self._checkpoint_name()}.")
        for name in self._FLAGS:
            saved = sd.get(f"flag/{name}")
            if saved is not None and bool(saved) != bool(getattr(self, name)):
                raise ValueError(
                    f"For '{cls}', the state dict was saved with {name}={bool(saved)}, but this optimizer "
                    f"has {name}={getattr(self, name)}; flags select the compiled kernel and are not loaded. "
                    f"Create the optimizer with {name}={bool(saved)}."
                )
        count = sum(1 for key in sd if key.startswith("param/") and key.endswith("/shape"))
        if count != len(self.parameters):
            raise ValueError(
                f"For '{cls}', the state dict holds {count} parameters, but this optimizer has "
                f"{len(self.parameters)}."
            )
        known = {
            f"state/{i}/{name}"
            for name, arrays in self.state.items()
            for i, a in enumerate(arrays)
            if a is not None
        }
        stray = sorted(key for key in sd if key.startswith("state/") and key not in known)
        if stray:
            raise ValueError(
                f"For '{cls}', the state dict holds state this optimizer does not keep ({stray[0]}"
                f"{' and more' if len(stray) > 1 else ''}): was it saved with other flags?"
            )
        staged = []  # (array, values): every value already converted, so the copies cannot fail
        for i, p in enumerate(self.parameters):
            try:
                shape = tuple(int(n) for n in np.asarray(entry(f"param/{i}/shape")).reshape(-1))
            except (TypeError, ValueError) as error:
                raise ValueError(f"For '{cls}', 'param/{i}/shape' is not a shape: {error}") from None
            dtype = str(entry(f"param/{i}/dtype"))
            if shape != p.shape or dtype != p.dtype.name:
                raise ValueError(
                    f"For '{cls}', parameter {i} ('{p.name}') is {p.dtype.name}{list(p.shape)}, but the "
                    f"state dict's is {dtype}{list(shape)}."
                )
            for name, arrays in self.state.items():
                if arrays[i] is None:
                    continue
                key = f"state/{i}/{name}"
                value = np.asarray(entry(key))
                if value.shape != arrays[i].shape:
                    raise ValueError(
                        f"For '{cls}', '{key}' has shape {list(value.shape)}, not {list(arrays[i].shape)}."
                    )
                kept = np.dtype(arrays[i].dtype)
                value = _as_stored(value, kept)
                if value.dtype != kept:
                    what = "like its parameter" if kept == p.dtype else "the dtype it is kept in"
                    raise ValueError(f"For '{cls}', '{key}' is {value.dtype}, not {kept.name} {what}.")
                staged.append((arrays[i], np.array(value, dtype=kept)))
        step = _step_count(cls, entry("step"))
        extra = self._parse_extra_state(sd)
        # Everything is parsed and checked: copy into the existing arrays (the kernels hold them).
        for array, values in staged:
            _copy_into(array, values)
        self.global_step = step
        self._load_extra_state(extra)

    def _checkpoint_name(self) -> str:
        """The class by its dialect path (optforge.generated.optim.adam_torch.Adam); for a spec
        compiled into a cache folder, whose package name changes with every edit, without the
        package (user-spec.optim.qhadam.QHAdam), so its checkpoints survive an edit."""
        module = type(self).__module__
        if self._KERNELS != "optforge.generated" and module.startswith(self._KERNELS + "."):
            module = "user-spec" + module[len(self._KERNELS) :]  # never a built-in's name
        return f"{module}.{type(self).__qualname__}"

    def _extra_state(self) -> dict:
        return {}

    def _parse_extra_state(self, sd: dict):
        """The dialect's part of a state dict, parsed and checked (ValueError), not yet applied."""
        return None

    def _load_extra_state(self, parsed) -> None:
        """Apply what `_parse_extra_state` returned; it cannot fail."""

    # -- checks --

    def _check_gradients(self, gradients) -> list:
        """Every gradient's type, count, shape, dtype and row indices, before any change."""
        cls = type(self).__name__
        if not isinstance(gradients, (tuple, list)):
            raise TypeError(
                f"For '{cls}', the gradients must be a tuple of arrays in 'parameters' order, "
                f"but got {type(gradients)}."
            )
        if len(gradients) != len(self.parameters):
            raise ValueError(
                f"For '{cls}', expected {len(self.parameters)} gradients (one per parameter, in "
                f"'parameters' order), but got {len(gradients)}."
            )
        # The common case in one compiled call: every gradient a plain C-contiguous ndarray of
        # its parameter's dtype and shape, read by address (runtime/pointers.py, ArrayFields).
        read = self._gradient_fields().read(gradients)
        if read is not None:
            return Addressed(gradients, *read)
        expected = self._expected_gradients()
        grads = CheckedGradients(gradients)
        grads.plain = True
        for i, (g, (dtype, shape)) in enumerate(zip(grads, expected)):
            # Three comparisons per gradient in the common case; the details (and the
            # conversion of array subclasses) only otherwise. Layouts are handled where the
            # table is pointed at the gradients (`_point_at_gradients`): a non-contiguous
            # gradient is copied there.
            if type(g) is not np.ndarray or g.shape != shape or g.dtype != dtype:
                grads[i] = self._check_gradient(i, g, cls)
                grads.plain = grads.plain and type(grads[i]) is np.ndarray
        return grads

    def _expected_gradients(self) -> list[tuple]:
        if not hasattr(self, "_expected"):
            self._expected = [(p.dtype, p.shape) for p in self.parameters]
        return self._expected

    def _gradient_fields(self) -> ArrayFields:
        if not hasattr(self, "_fields"):
            self._fields = ArrayFields(self._expected_gradients())
        return self._fields

    def _check_gradient(self, i: int, g, cls: str):
        """Refuse a gradient the step cannot take (TypeError/ValueError); return it as the
        kernels take it (a plain ndarray for an ndarray subclass)."""
        p = self.parameters[i]
        what = f"For '{cls}', gradient {i} (of parameter '{p.name}')"
        if isinstance(g, RowTensor):
            if self._SPARSE is None:
                raise TypeError(
                    f"For '{cls}', row-sparse gradients (RowTensor) are not supported, "
                    f"but gradient {i} (of parameter '{p.name}') is one."
                )
            if p.dtype.itemsize == 2:
                raise TypeError(
                    f"{what} is a RowTensor, but the parameter is {p.dtype.name}: row-sparse "
                    "gradients are not available for 16-bit parameters."
                )
            blockwise = [
                n[: -len(ABSMAX)] for n, a in self.state.items() if n.endswith(ABSMAX) and a[i] is not None
            ]
            if blockwise and self._SPARSE == "rows":  # ("dense": stepped as a dense gradient)
                raise TypeError(
                    f"{what} is a RowTensor, but the parameter's state '{self._state_key(blockwise[0])}' "
                    "is kept as 8-bit codes: row-sparse gradients step single rows, and the codes are "
                    "written a 256-element block at a time. Keep it in 'float32' or 'bfloat16'."
                )
            self._check_row_tensor(g, p, what)
            return g
        if not isinstance(g, np.ndarray) and not (p.on_device and _on_device(g)):
            where = (
                "a numpy.ndarray, a device array or a RowTensor"
                if p.on_device
                else ("a numpy.ndarray or a RowTensor (the parameter is in host memory)")
            )
            raise TypeError(f"{what} must be {where}, but got {type(g)}.")
        if isinstance(g, np.ma.MaskedArray):
            raise TypeError(
                f"{what} is a masked array; the kernels would ignore its mask. Pass g.filled(0) "
                "(masked entries as zero gradient) or np.asarray(g)."
            )
        if isinstance(g, np.ndarray) and type(g) is not np.ndarray:
            g = g.view(np.ndarray)  # np.matrix, np.memmap, ...: the same memory as a plain array
        if np.dtype(g.dtype) != p.dtype:
            raise TypeError(f"{what} must have dtype {p.dtype} like its parameter, but got {g.dtype}.")
        if tuple(g.shape) != p.shape:
            raise ValueError(f"{what} must have shape {p.shape} like its parameter, but got {g.shape}.")
        if not isinstance(g, np.ndarray) and not _device_c_contiguous(g):
            raise ValueError(f"{what} is a device array that is not C-contiguous; pass a contiguous copy.")
        return g

    @staticmethod
    def _check_row_tensor(g: RowTensor, p: Parameter, what: str) -> None:
        if g.dtype != p.dtype:
            raise TypeError(f"{what} must have dtype {p.dtype} like its parameter, but got {g.dtype}.")
        if g.dense_shape != p.shape:
            raise ValueError(
                f"{what} must have dense shape {p.shape} like its parameter, but got {g.dense_shape}."
            )
        rows = p.shape[0]
        bad = (g.indices < 0) | (g.indices >= rows)
        if bad.any():
            raise ValueError(
                f"{what} has row index {int(g.indices[bad][0])} outside [0, {rows}); the step was not taken."
            )

    # -- running the kernels --

    def _host_steps(self, t: int, lrs: list, hypers: list) -> list[tuple]:
        """Each batch's branch and step-level scalars (group `g` has `lrs[g]`, `hypers[g]`),
        all computed before any kernel runs: values that break them (a square root of a
        negative number) refuse the whole step, never half of it."""
        steps = []
        for batch in self._batches:
            # A hyperparameter left at None is the machine epsilon of the dtype (Adafactor's eps1),
            # or the number the spec declares for it (its NONE_VALUES).
            eps = machine_epsilon(self.parameters[batch.indices[0]].dtype) if batch.indices else 0.0
            functions, stand_ins = self._none_rules(len(hypers[batch.group]))
            values = tuple(
                h if h is not None or f else (eps if s is None else s)
                for h, f, s in zip(hypers[batch.group], functions, stand_ins)
            )
            try:
                steps.append((values, *batch.variant.step(t, lrs[batch.group], values, batch.dtype)))
            except (ArithmeticError, ValueError, TypeError) as error:
                raise ValueError(
                    f"For '{type(self).__name__}', the step-level values of param group {batch.group} "
                    f"cannot be computed at step {t} ({error}); the step was not taken."
                ) from None
        return steps

    def _none_rules(self, n: int) -> tuple[tuple, tuple]:
        """For `n` values (the hyperparameters, then the step rules' values): whether each is
        a callable hyperparameter (left at None, it stays None: the host code tests it), and
        the number a None stands for (NONE_VALUES; None: the machine epsilon). Made once."""
        cache = self.__dict__.setdefault("_none_rules_cache", {})
        if n not in cache:
            functions = [index == OPTIMIZER_ATTRIBUTE for _, index in getattr(self, "_HYPER_KEYS", ())]
            functions += [False] * (n - len(functions))
            stand_ins = tuple(self._none_values or ())
            # (the step rules' values after the hyperparameters have none: never None)
            stand_ins += (None,) * (n - len(stand_ins))
            cache[n] = (tuple(functions), stand_ins)
        return cache[n]

    def _run_batches(self, launches: list[tuple]) -> None:
        """Run every batch's `_launch` ((batch, generator) pairs), in lockstep over the ranks
        when some batch has split tensors (optforge.runtime.shards), and over the batches at a
        group sums' round."""
        all_reduce = self._checked_launches(launches)
        self._summed = {}
        run_lockstep([gen for _, gen in launches], all_reduce, self._group_round())

    def _group_round(self):
        """What runs a group sums' round (`group_round`), or None for a spec without them."""
        return group_round if self._SPEC and hasattr(self._kernel_module(), "AFTER_SUMS") else None

    def _checked_launches(self, launches: list[tuple]):
        """Refuse launches that split tensors cannot run (before any runs); the all-reduce
        their rounds take (None: no batch has split tensors)."""
        split = [batch for batch, _ in launches if getattr(batch, "shards", None) is not None]
        if any(b.plan.matrices for batch in split for b in batch.variant.branches.values()):
            raise RuntimeError(
                f"For '{type(self).__name__}', some parameters are parts of larger tensors (split), "
                "and this optimizer's matrix stage needs each whole matrix. Nothing was changed."
            )
        if (
            split
            and self.all_reduce is None
            and any(b.plan.combine for batch in split for b in batch.variant.branches.values())
        ):
            raise RuntimeError(
                f"For '{type(self).__name__}', some parameters are parts of larger tensors (split), "
                "and this optimizer's per-tensor reductions need every rank's part: set its "
                "`all_reduce` (optforge.distributed.torch_all_reduce(group)). Nothing was changed."
            )
        return self.all_reduce if split else None

    def _summed_step_state(self, advanced: list[tuple] | None) -> list[tuple] | None:
        """`advanced` (each group's step rules' values) with the step state the sum rules left
        in the groups whose tensors stepped (`_summed`): what the step keeps."""
        summed = getattr(self, "_summed", None)
        if advanced is None or not summed:
            return advanced
        n = len(self._kernel_module().STEP_STATE)
        return [
            tuple(summed[g][:n]) + tuple(values[n:]) if g in summed else values
            for g, values in enumerate(advanced)
        ]

    def _launch(self, batch: _Batch, grads: list, t: int, lr: float, wd: float, decays, gc, step: tuple):
        """One step of `batch` (a generator: run it through, or in lockstep with the other
        batches and ranks, see `_run_batches`): its dense tensors in one call, row-sparse ones
        row by row.

        `decays[pos]` says whether the weight decay applies to the tensor at
        `pos`; `gc[pos]` whether its gradient is centralized; `step` is the batch's
        entry of `_host_steps`: (hyperparameters, branch, step-level scalars).
        """
        hypers, branch, scalars = step
        if not isinstance(batch, _Batch):  # a device batch
            yield from self._device.launch(batch, grads, t, lr, wd, decays, gc, hypers, (branch, scalars))
            return
        if batch.chunks[0].size == 0 and batch.shards is None:  # (a split one takes part in the sums)
            return
        scalar = batch.dtype.type
        inv_scale = 1.0 / getattr(self, "loss_scale", 1.0)
        weight_decay, grad_scale = batch.per_tensor_values(decays, wd, inv_scale)

        sparse = []
        if isinstance(grads, Addressed) and not any(gc):  # checked and read already: no per-array work
            held = _point_at_addresses(batch, grads)
        else:
            batch_grads, plain = _batch_gradients(batch, grads)
            if plain and not any(gc):
                held = _point_at_gradients(batch, batch_grads)
            else:
                # Row-sparse and centralized gradients (not a factored variant's: the optim dialect
                # has neither): their effective values are formed here, the table points at those.
                weight_decay, grad_scale = weight_decay.copy(), grad_scale.copy()  # folded in per tensor
                held = self._effective_gradients(
                    batch, batch_grads, gc, scalar, inv_scale, weight_decay, grad_scale, sparse
                )
                _point_at(batch, held)
        chunks = batch.chunks
        if sparse:
            keep = ~np.isin(chunks[0], [pos for pos, *_ in sparse])
            chunks = type(chunks)(*(a[keep] for a in chunks))
        if batch.precision.stochastic:  # this step's rounding bits, per tensor
            batch.arrays.keys[:] = rounding_keys(self._ROUNDING_SEED, t, self._tensor_ids(batch))
        if chunks[0].size or batch.shards is not None:
            steps = stage_steps(
                branch, batch.key, chunks, batch.arrays, batch.buffers, weight_decay, grad_scale, scalars
            )
            for kind, scratch in steps:
                group = None
                if kind == "group":  # what the sum rules read of this batch (`_group_round`)
                    group = (self, batch.group, branch.plan, t, lr, hypers)
                yield [Part(kind, scratch, batch.shards, batch.chunks, group)]
        for pos, i, rows, values in sparse:
            w = self.parameters[i].data
            row_len = w.size // max(w.shape[0], 1)
            state = [[self.state[name][i].reshape(-1)] for name in batch.variant.state]
            branch.rows[batch.key][0](
                rows,
                row_len,
                pointer_table([[w.reshape(-1)], [values.reshape(-1)], *state]),
                np.array([[0], [1]], dtype=batch.dtype),  # decay and scale are in `values`
                *scalars,
            )
        del held  # the gradients the table pointed at may go once the kernels have run

    # -- step-level state and modes (optforge.runtime.step_state) --

    def _transition_groups(self, method: str, groups: list[int]) -> None:
        self._transition(method, groups)

    def _transition_values(self, g: int) -> tuple[float, tuple]:
        """(lr, hypers and step state) the transition scalars of engine group `g` read."""
        module = self._kernel_module()
        group = self.param_groups[g]
        hypers = tuple(
            float(h) if h is not None else h for h in self._group_hypers(group)
        )  # a torch engine's group holds its torch group's values (synchronised)
        steps = tuple(group[key] for key, _ in getattr(module, "STEP_STATE", ()))
        return float(group["lr"]), hypers + steps

    def _transition(self, method: str, groups: list[int]) -> None:
        """Run transition `method`'s kernels over the batches of `groups` (every check first)."""
        run_transition(self._transition_work(method, groups))

    def _transition_work(self, method: str, groups: list[int]) -> list[tuple]:
        """(batch, branch, scalars) of each batch of `groups` that transition `method` rewrites,
        checked: nothing has run yet (a device batch is refused, NotImplementedError)."""
        module = self._kernel_module()
        if not groups or self._batches is None:
            return []
        work = []
        for batch in self._batches:
            if batch.group not in groups or not batch.indices:
                continue
            if not isinstance(batch, _Batch):
                raise NotImplementedError(
                    f"For '{type(self).__name__}', {method}() on parameters in device memory is not "
                    "implemented yet (only host tensors); nothing was changed."
                )
            key = next(k for k, v in module.VARIANTS.items() if v is batch.variant)
            branch = module.TRANSITIONS[method][key]
            lr, values = self._transition_values(batch.group)
            scalars = [batch.dtype.type(s) for s in branch.scalars(self.global_step, lr, *values)]
            work.append((batch, branch, scalars))
        return work

    def _effective_gradients(
        self, batch, batch_grads, gc, scalar, inv_scale, weight_decay, grad_scale, sparse
    ):
        """Flat gradients for a batch with row-sparse or centralized ones; their decay and
        scale, folded in here, are zeroed/unitised in `weight_decay`/`grad_scale`."""
        flat = []
        for pos, i in enumerate(batch.indices):
            g = batch_grads[pos]
            w = self.parameters[i].data
            if isinstance(g, RowTensor):
                rows, values = self._effective_rows(g, w, scalar(inv_scale), scalar(weight_decay[pos]))
                weight_decay[pos], grad_scale[pos] = 0, 1  # already in `values`
                if self._SPARSE == "dense":
                    g = np.zeros_like(w)
                    g[rows] = values
                else:
                    sparse.append((pos, i, rows, values))
                    g = w  # not read: no chunk of this tensor runs in the dense call
            elif gc[pos]:
                g = self._centralized(g, w, scalar(inv_scale), scalar(weight_decay[pos]))
                grad_scale[pos] = 1
                if self._DECAY == "coupled":
                    weight_decay[pos] = 0
            flat.append(flat_view(g))
        return flat

    def _effective_rows(self, g: RowTensor, w: np.ndarray, inv_scale, wd):
        """Unique rows and their summed effective gradient.

        As MindSpore does, a coupled weight decay is added once per occurrence
        of an index (and only to the rows the gradient names), then the loss
        scale is undone, then duplicate rows are summed.
        """
        values = g.values * inv_scale
        if self._DECAY == "coupled" and wd != 0:
            values = values + wd * w[g.indices]
        rows, inverse = np.unique(g.indices, return_inverse=True)
        summed = np.zeros((rows.size, *w.shape[1:]), dtype=w.dtype)
        np.add.at(summed, inverse, values)
        return rows, summed

    def _centralized(self, g, w, inv_scale, wd):
        """Gradient centralization: subtract the mean over all axes but the first.

        For a coupled decay MindSpore centralizes after adding it (and before
        undoing the loss scale; both are linear, so the order of those two
        does not matter): the decay term is centralized too.
        """
        g = g * inv_scale
        if self._DECAY == "coupled":
            g = g + wd * w
        return g - g.mean(axis=tuple(range(1, g.ndim)), keepdims=True, dtype=g.dtype)


def group_round(parts: list) -> None:
    """A group sums' round over the parts that reach it (every batch of every engine stepping
    together, each rank's part of a split tensor already added by the round's all-reduce):
    the sums' totals over all their tensors, then each engine's param group's sum rules (its
    module's AFTER_SUMS, in float64, from the group's step-level values), whose outputs the
    next stages read (Scratch.sum_values) and the engine's `_summed` keeps for its step state."""
    totals = group_totals([part.scratch.sums for part in parts], parts[0].group[2].group_sums)
    shared = None
    with np.errstate(all="ignore"):  # a sum rule's 0/0 is NaN, as the reference's NumPy would be
        for part in parts:
            engine, g, _, t, lr, hypers = part.group
            module = engine._kernel_module()
            if getattr(module, "SHARED_STEP_STATE", False):
                # one estimate: the first part's group computes it, every group of every engine holds it
                if shared is None:
                    shared = tuple(float(v) for v in module.AFTER_SUMS(t, np.float64(lr), *hypers, *totals))
                engine._summed = dict.fromkeys(range(len(engine.param_groups)), shared)
            elif g not in engine._summed:
                values = module.AFTER_SUMS(t, np.float64(lr), *hypers, *totals)
                engine._summed[g] = tuple(float(v) for v in values)
            fill_sum_values(part.scratch, engine._summed[g])


def run_transition(work: list[tuple]) -> None:
    """Run what `_transition_work` returned: each batch's transition stages (no weight decay,
    unit gradient scale: a transition reads neither)."""
    for batch, branch, scalars in work:
        if batch.chunks[0].size == 0:
            continue
        zeros = np.zeros(len(batch.indices), dtype=batch.dtype)
        for _ in stage_steps(
            branch, batch.key, batch.chunks, batch.arrays, batch.buffers, zeros, zeros + 1, scalars
        ):
            pass


def check_kernel_support(module, cls: str, parameters, offload: bool = False) -> None:
    """Refuse, before anything is allocated, parameters the module's kernels cannot step: of
    another number of dimensions than its `TENSOR_RANK` (a spec of matrices; ValueError, as
    torch.optim.Muon), or on the device where it has `DEVICE_REFUSED` (NotImplementedError)."""
    rank = getattr(module, "TENSOR_RANK", None)
    for p in parameters:
        if rank is not None and len(p.shape) != rank:
            raise ValueError(
                f"{cls} only supports {rank}D parameters whereas we found a parameter with size: "
                f"{tuple(p.shape)}"
            )
    refused = getattr(module, "DEVICE_REFUSED", None)
    if refused and any(getattr(p, "on_device", False) or getattr(p, "is_cuda", False) for p in parameters):
        raise NotImplementedError(f"For '{cls}', {refused}. Nothing was allocated.")


def check_parameter_list(params, what: str, cls: str) -> list:
    """MindSpore's `_parameters_base_check`: not None, iterable, not empty."""
    if params is None:
        raise ValueError(f"For '{cls}', the argument {what} can not be None.")
    if not isinstance(params, Iterable):
        raise TypeError(f"For '{cls}', the argument {what} must be Iterable type, but got {type(params)}.")
    items = list(params)
    if not items:
        raise ValueError(f"For '{cls}', the argument {what} must not be empty.")
    return items


def _batch_gradients(batch, grads: list) -> tuple[list, bool]:
    """(the batch's gradients, whether all are plain ndarrays): the step's own list when the
    batch is every parameter in order, and what `_check_gradients` found when it checked them."""
    whole = isinstance(batch, _Batch) and batch.whole
    batch_grads = grads if whole else [grads[i] for i in batch.indices]
    if isinstance(grads, CheckedGradients):
        return batch_grads, grads.plain
    return batch_grads, all(type(g) is np.ndarray for g in batch_grads)


def _point_at_gradients(batch: _Batch, grads: list) -> list:
    """Point the batch's gradient row at `grads` (checked: each its parameter's dtype and
    shape); returns the arrays it points at, which must live until the kernels have run.

    The same arrays as at the last step are already there: sound only while the table
    points at them, not at copies. A gradient that is not C-contiguous (Fortran order, a
    transpose, a strided slice) is copied into a flat array, and a table holding such a
    copy is never reused, or a buffer refilled in place would be stepped with its first
    values forever.
    """
    seen = tuple(map(id, grads))
    if seen == batch.grads_seen:
        return batch.grads_refs
    views = all(g.flags.c_contiguous for g in grads)
    flat = grads if views else [flat_view(g) for g in grads]  # the table takes any shape
    _point_at(batch, flat)
    batch.grads_seen, batch.grads_refs = (seen, grads) if views else ((), None)
    return flat


def _point_at_addresses(batch: _Batch, grads: Addressed) -> Addressed:
    """The batch's gradient row from addresses its caller has read and checked (and, as for
    every row, the batch holds what it points at)."""
    batch.grads_seen, batch.grads_refs = (), None
    batch.held[1] = grads
    positions = batch.positions()
    batch.arrays.addresses[1] = grads.addresses[positions]
    batch.arrays.sizes[1] = grads.sizes[positions]
    return grads


def _point_at(batch: _Batch, flat: list) -> None:
    """The gradient row of the batch's table: addresses of `flat`, sizes their own.

    The batch holds `flat` until the row points elsewhere, as it holds every other row's
    arrays: a caller that drops what it passed (the finiteness check, whose copies of
    non-contiguous gradients the step's kernels read next) never leaves the table over
    freed memory."""
    batch.grads_seen, batch.grads_refs = (), None
    set_row(batch.arrays, 1, flat)
    batch.held[1] = flat


# The state name of a 16-bit parameter's float32 master copy (master_weights=True).
MASTER = "master_param"


def int8_kinds(cls: str, module, variant: Variant, precision: Precision, param: str, shown) -> dict[str, str]:
    """The states of a parameter (named `param`) stepped by `variant` under `precision` that are
    kept as 8-bit codes -> their code tables' kinds ("signed", "unsigned"). Refused (ValueError):
    a state the compiler did not prove sound for 8-bit codes (INT8_REFUSED says why), and any
    state of a factored variant (Adafactor's 2-D parameters: the passes go by rows and columns).
    `shown(name)` is a state's public name, for the messages."""
    tables = getattr(module, "INT8_TABLES", {})
    refused = getattr(module, "INT8_REFUSED", {})
    names = [variant.state[k - 2] for k in precision.int8_rows]
    for name in names:
        if not tables.get(name):
            why = refused.get(name, "the compiler did not prove it sound")
            raise ValueError(
                f"For '{cls}', state '{shown(name)}' cannot be kept as 8-bit codes (state_dtype 'int8'): "
                f"it {why}. Give state_dtype a dict that keeps it in 'float32' or 'bfloat16'."
            )
        if variant.factored:
            raise ValueError(
                f"For '{cls}', parameter '{param}' is stepped by the factored kernels, which do "
                f"not keep state as 8-bit codes; state '{shown(name)}' must be 'float32' or 'bfloat16'."
            )
    return {name: tables[name] for name in names}


# A state kept as 8-bit codes keeps its blocks' absmax values (float32) under this name after it.
ABSMAX = "_absmax"


def absmax_name(state: str) -> str:
    return state + ABSMAX


def machine_epsilon(dtype) -> float:
    """The machine epsilon of a parameter dtype (a hyperparameter left at None: Adafactor's eps1)."""
    try:
        return float(np.finfo(dtype).eps)
    except ValueError:  # ml_dtypes' bfloat16, which NumPy's finfo does not know
        import ml_dtypes

        return float(ml_dtypes.finfo(dtype).eps)


def _as_stored(value: np.ndarray, kept: np.dtype) -> np.ndarray:
    """A saved 16-bit state as the dtype it is kept in: np.save writes ml_dtypes' bfloat16 as
    two raw bytes (void) per value, which are its bits; uint16 bits are taken too."""
    if kept.itemsize == 2 and kept.kind != "f" or kept.name == "bfloat16":
        if value.dtype == np.uint16 or (value.dtype.kind == "V" and value.dtype.itemsize == 2):
            return np.ascontiguousarray(value).view(kept)
    return value


def _kernel_view(array, dtype) -> np.ndarray:
    return np.empty(0, dtype=dtype) if array is None else array.reshape(-1)


def flat_view(g: np.ndarray) -> np.ndarray:
    """`g` as a flat C-contiguous array: a view when it is C-contiguous, else a copy."""
    return g.reshape(-1) if g.flags.c_contiguous else np.ascontiguousarray(g).reshape(-1)


def _device_c_contiguous(g) -> bool:
    from optforge.runtime.cuda import as_device_array

    return as_device_array(g).is_c_contiguous()


def _step_count(cls: str, value) -> int:
    """A saved step counter: a non-negative integer (2.0 is 2; 2.5, NaN, True are refused)."""
    array = np.asarray(value)
    if array.shape != () or array.dtype.kind not in "fiu":
        raise ValueError(f"For '{cls}', the state dict's step is {value!r}, not a count.")
    number = float(array)
    if not math.isfinite(number) or number < 0 or number != int(number):
        raise ValueError(f"For '{cls}', the state dict's step is {number}, not a count.")
    return int(number)


class ParameterLocks:
    """The lock of `use_locking=True`: it protects the parameters, not the optimizer.

    Every Parameter stepped by a locking optimizer is given one lock for good, shared with
    the other parameters of the first locking optimizer to see it; a step (or a state dict
    taken or loaded) holds the locks of all its parameters, acquired in one global order,
    so two locking optimizers over the same parameters never interleave their updates, and
    never deadlock.
    """

    def __init__(self, parameters):
        shared = next((p._lock for p in parameters if p._lock is not None), None) or threading.RLock()
        for p in parameters:
            if p._lock is None:
                p._lock = shared
        self.locks = sorted({id(p._lock): p._lock for p in parameters}.values(), key=id)

    def __enter__(self):
        for lock in self.locks:
            lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        for lock in reversed(self.locks):
            lock.release()


def _filled(shape: tuple, dtype: np.dtype, value, on_device: bool, parameter: Parameter, hypers: dict):
    """A state array filled with `value`: a number, or a function of the parameter's values
    and its group's hyperparameters (`State(z, w)` starts as a copy), on the device or in
    host memory."""
    if callable(value):
        w = parameter.asnumpy() if parameter.on_device else parameter.data
        values = np.asarray(value(w, hypers), dtype=dtype)
        array = np.array(np.broadcast_to(values, shape), dtype=dtype)
    else:
        array = np.full(shape, value, dtype=dtype)
    if on_device:
        from optforge.runtime.cuda import to_device

        return to_device(array)
    return array


def _host_copy(array) -> np.ndarray:
    return array.copy() if isinstance(array, np.ndarray) else array.copy_to_host()


def _copy_into(array, values: np.ndarray) -> None:
    if isinstance(array, np.ndarray):
        np.copyto(array, values)
    else:
        array.copy_to_device(np.ascontiguousarray(values))


def _on_device(x) -> bool:
    from optforge.parameter import _is_device

    return _is_device(x)
