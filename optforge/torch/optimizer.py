"""`TorchOptimizer`: the base of the generated `optforge.torch` classes.

A `torch.optim.Optimizer` whose step runs a spec's fused kernels on the
parameters' own memory: CPU tensors through zero-copy NumPy views, CUDA tensors
through ``__cuda_array_interface__``. torch keeps what it always keeps
(`param_groups`, hooks, `zero_grad`, the lr schedulers' view of the groups);
an optim-dialect engine over the same memory does the arithmetic, and the
tensors in ``state[p]`` are views of the engine's arrays, so `state_dict()`
is torch's own, in torch's layout.

torch counts steps per parameter and skips parameters without a gradient.
A fused step has one step count for all the tensors it updates, so the
parameters with one step count form a *cohort* (usually one: all of them),
with its own engine. At a step, a cohort whose parameters all have gradients
is stepped as it is (nothing is built: the full-group path costs what it did
before cohorts could split); one whose parameters have none is skipped, as
torch would; one with gradients for only some of them (a frozen layer, an
unrouted expert) splits in two: the part with gradients steps to t+1, the rest
stays at t, each with its own engine over the same state arrays, so the
tensors in ``state[p]`` stay valid. When a step leaves cohorts with equal step
counts, they merge (members in parameter order, cohorts in ascending step
order): there is always one cohort per distinct step, as `load_state_dict`
builds them from the saved steps. An engine over existing arrays builds its
chunk tables and typed lists when it first steps.
"""

from __future__ import annotations

import importlib
import inspect
import math
import operator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from optforge.parameter import Parameter
from optforge.runtime.checks import OPTIMIZER_ATTRIBUTE, Interval, check_choice
from optforge.runtime.kernels import tensor_variant_key
from optforge.runtime.optim_optimizer import OptimOptimizer, _lr_value, group_hypers, hyper_values
from optforge.runtime.optimizer import (
    ABSMAX,
    MASTER,
    Addressed,
    _Batch,
    absmax_name,
    check_kernel_support,
    group_round,
    int8_kinds,
    run_transition,
)
from optforge.runtime.precision import (
    INT8,
    check_policy,
    check_sixteen_bit,
    check_wide_only,
    numpy_dtype,
    storage_name,
)
from optforge.runtime.quantize import BLOCK, MIDPOINTS, TABLES, dequantize_blockwise, quantize_blockwise
from optforge.runtime.shards import run_lockstep
from optforge.runtime.step_state import StepStateMixin
from optforge.torch import options
from optforge.torch.dtensor import is_dtensor, local, local_value, reduction_group, split_dim, state_tensor


def check_value(
    cls: str, name: str, value, domain: Interval | None, message: str = "", none_ok: bool = False
) -> None:
    """torch.optim's checks: a value outside its domain is a ValueError with torch's `message`
    (`Invalid learning rate: -1`), a Tensor of more than one element too (`Tensor lr must be
    1-element`). With `none_ok`, None passes (Adafactor's eps1: the dtype's machine epsilon)."""
    if none_ok and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer, torch.Tensor)):
        raise TypeError(f"{cls}: '{name}' must be a real number, but got {type(value).__name__}: {value!r}.")
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        raise ValueError(f"Tensor {name} must be 1-element (it has shape {tuple(value.shape)}).")
    if domain is not None and float(value) not in domain:
        message = message or f"Invalid {name} value: {value}"
        raise ValueError(f"{message} (it must be {domain.describe()}).")


def check_flag(cls: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{cls}: '{name}' must be a bool, but got {type(value).__name__}: {value!r}.")


def unpack_betas(cls: str, name: str, value, count: int = 2) -> tuple:
    if not isinstance(value, (tuple, list)):
        raise TypeError(
            f"{cls}: '{name}' must be a tuple of {count} numbers, but got {type(value).__name__}."
        )
    if len(value) != count:
        raise ValueError(f"{cls}: '{name}' must hold {count} numbers, but got {len(value)}: {value!r}.")
    return tuple(value)


class _Engine(OptimOptimizer):
    """The fused step of one cohort: an optim-dialect optimizer over views of its tensors.

    Built by `TorchOptimizer` (not by the optim dialect's constructor: torch
    has validated the groups already); each engine group is the part of one
    torch group that belongs to the cohort, synchronised before every step.
    """

    _SPARSE = None
    _OFFLOAD = False
    _ALL_PARAMETERS = False  # a cohort: its owner checks the policy against all its parameters

    def __init__(
        self,
        owner: TorchOptimizer,
        members: list[int],
        views: dict[int, Parameter],
        state: dict[str, dict[int, object]] | None = None,
    ):
        """An engine over `views` of the `members` (torch parameter indices). Without `state`
        it allocates the state; with it (per state name, each member's existing array) it steps
        those arrays, and its chunk tables and typed lists wait for `ready` (a cohort merged
        after a step may split again before it ever steps whole)."""
        group_index = owner._group_index
        self._policy = owner._policy
        self.torch_groups = sorted({group_index[i] for i in members})
        self.param_groups = []
        self._group_of = []
        self.members = []  # the torch parameter indices, in the engine's order
        for g, tg in enumerate(self.torch_groups):
            mine = [i for i in members if group_index[i] == tg]
            self.param_groups.append({"params": [views[i] for i in mine]})
            self.members += mine
            self._group_of += [g] * len(mine)
        self.parameters = tuple(views[i] for i in self.members)
        self.global_step = 0
        # FSDP2's DTensors: their per-tensor sums added up over the mesh (optforge.runtime.shards).
        self.all_reduce = owner._all_reduce_for(self.members)
        self.sync(owner)
        self._batches = None
        if state is None:
            self.ready(owner)
        else:
            self.state = {name: tuple(arrays.get(i) for i in self.members) for name, arrays in state.items()}

    def ready(self, owner: TorchOptimizer) -> None:
        """Build the batches (and, for a new engine, the state) unless built: before a step's
        checks are done, since building refuses some groups (device and host tensors mixed)."""
        if self._batches is None:
            self._allocate(
                owner._variant_key(),
                owner._state_init(),
                use_locking=False,
                n_groups=len(self.param_groups),
                state=getattr(self, "state", None),
            )
            self._drop_unkept(owner)

    def _tensor_ids(self, batch: _Batch) -> np.ndarray:
        """The torch parameter index of each tensor: its rounding bits do not change when the
        cohorts split or merge."""
        return np.asarray(self.members, dtype=np.int64)[batch.positions()]

    def _kept(self, owner: TorchOptimizer, g: int) -> dict[str, bool]:
        """Which states torch keeps for engine group `g` with its torch group's values now."""
        group = owner.param_groups[self.torch_groups[g]]
        return owner._kept_state(*hyper_values(owner._group_hypers(group)))

    def _drop_unkept(self, owner: TorchOptimizer) -> None:
        """States torch does not keep for a group (SGD's buffer without momentum) are neither
        shown nor, on the host, allocated: None in `state`, an empty array in the kernels'
        lists. The kernel such a group runs does not touch them (its host-side branch skips
        the state), and `check_kept` refuses a step whose values would need them."""
        self.dropped: set[tuple[str, int]] = set()  # (state name, engine group)
        if getattr(owner, "_kept_state", None) is None:
            return
        for g in range(len(self.torch_groups)):
            kept = self._kept(owner, g)
            self.dropped |= {(name, g) for name, keep in kept.items() if not keep and name in self.state}
        for name in {name for name, _ in self.dropped}:
            # a state kept as 8-bit codes: its absmax values too
            for shown in (name, absmax_name(name)) if absmax_name(name) in self.state else (name,):
                arrays = zip(self.state[shown], self._group_of)
                self.state[shown] = tuple(None if (name, g) in self.dropped else a for a, g in arrays)
                setattr(self, shown, self.state[shown])
        for batch in self._batches:
            if not isinstance(batch, _Batch):  # a device batch keeps its arrays (not shown)
                continue
            blocks = batch.precision.storage().blocks
            for k, name in enumerate(batch.variant.state):
                if (name, batch.group) in self.dropped:
                    for j in range(len(batch.indices)):
                        batch.set_array(2 + k, j, np.empty(0, dtype=batch.dtype))
                        if blocks[2 + k]:  # its absmax row: the kernels' extents go to 0
                            batch.set_array(blocks[2 + k], j, np.empty(0, dtype=np.float32))

    def check_kept(self, owner: TorchOptimizer) -> None:
        """Refuse (RuntimeError, nothing changed) a step whose group values need a state
        that was not kept for the group, e.g. SGD's momentum raised from 0 after step 1."""
        for name, g in sorted(self.dropped):
            if self._kept(owner, g)[name]:
                raise RuntimeError(
                    f"{type(owner).__name__}: param group {self.torch_groups[g]}'s options now need "
                    f"'{owner._STATE_KEYS[name]}', which was not kept for its parameters (their options "
                    "did not need it at their first step). Create the optimizer with the momentum it "
                    "will use. Nothing was changed."
                )

    def _advance(self, t: int, lrs: list, hypers: list):
        """The step rules' values its owner computed for this step (once per torch group,
        whatever the cohorts): `_advanced`, set before each `_apply`."""
        return getattr(self, "_advanced", None)

    def _commit_step_state(self, advanced) -> None:
        """The owner keeps the step state, in torch's groups."""

    def _check_groups(self, cls: str) -> None:
        """torch's checks have run on these values (its constructor, add_param_group and
        load_state_dict); the optim dialect's types (weight_decay an int or float) are not
        torch's, which takes np.float32 too. Step-time values are checked by `_lr_value`."""

    def sync(self, owner: TorchOptimizer) -> None:
        """Copy each torch group's options (a scheduler may have changed lr) into the engine's."""
        for group, tg in zip(self.param_groups, self.torch_groups):
            for key, value in owner.param_groups[tg].items():
                if key != "params":
                    group[key] = float(value) if isinstance(value, torch.Tensor) else value
        for key, index in self._HYPER_KEYS:  # a callable hyperparameter: the owner's, as it is now
            if index == OPTIMIZER_ATTRIBUTE:
                setattr(self, key, getattr(owner, key))


class _SavedCodes(NamedTuple):
    """A saved state of 8-bit codes (checked by `_saved_values`)."""

    codes: torch.Tensor
    absmax: torch.Tensor
    codes_table: torch.Tensor

    def values(self) -> torch.Tensor:
        """The float32 values: ``codes_table[code] * absmax``."""
        table = self.codes_table.numpy()
        values = dequantize_blockwise(self.codes.cpu().numpy(), self.absmax.cpu().numpy(), table)
        return torch.from_numpy(values.reshape(tuple(self.codes.shape)))


@dataclass
class _Cohort:
    engine: _Engine
    pointers: list[int]  # each tensor's data_ptr() when the views were made


class _Piece(NamedTuple):
    """Parameters that will share a step count once a step is taken."""

    members: list[int]
    sources: list[_Cohort]  # the cohorts that hold their views and state arrays now
    step: int  # their count after the step
    cohort: _Cohort | None  # the cohort that is theirs alone, if there is one


class TorchOptimizer(StepStateMixin, torch.optim.Optimizer):
    """Base of the generated `optforge.torch` classes; they set the class attributes below."""

    _SPEC = ""  # <_KERNELS>.{cpu,cuda}.<_SPEC>
    _KERNELS = "optforge.generated"
    _HYPERS: tuple[str, ...] = ()
    _HYPER_KEYS: tuple = ()  # (group key, index or None) of each hyperparameter
    _FLAGS: tuple[str, ...] = ()  # the flags this class exposes (group keys)
    _VARIANT_KEY: tuple = ()  # each spec flag: its group key, or the value it is pinned to
    _DECAY = "coupled"
    _STATE_KEYS: dict[str, str] = {}  # spec state name -> torch's key
    _FLAT_STATE: tuple[str, ...] = ()  # torch keys the reference keeps flattened (Export.flat_state)
    _OPTIONAL_STATE: tuple[str, ...] = ()
    _IMPL_OPTIONS: tuple[str, ...] = ()  # torch's foreach, fused, capturable, differentiable it takes
    _STEP_STATE = True  # torch keeps state[p]["step"] (SGD does not)
    _WIDE_ONLY: tuple[str, ...] = ()  # flags that refuse 16-bit parameters where set (Flag.wide_only)
    # The reference keeps one step count per param group (pytorch_optimizer's group["step"]):
    # each group keeps it too (its parameters' largest, see _write_group_steps), and a saved
    # state without a step takes its group's (Export.group_step).
    _GROUP_STEP = False
    _OPTIONS: dict = {}  # option name -> (values, supported, reason): a spec's Option arguments
    _kept_state = None  # generated where torch keeps a state only for some values (SGD's buffer)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        engine_attributes = {
            "_SPEC": cls._SPEC,
            "_KERNELS": cls._KERNELS,
            "_HYPERS": cls._HYPERS,
            "_HYPER_KEYS": cls._HYPER_KEYS,
            "_DECAY": cls._DECAY,
        }
        cls._ENGINE = type(f"{cls.__name__}Engine", (_Engine,), engine_attributes)

    def __init__(
        self,
        params,
        defaults: dict,
        *,
        skip_nonfinite: bool = False,
        state_dtype=None,
        master_weights: bool = False,
        stochastic_rounding: bool = False,
    ):
        check_flag(type(self).__name__, "skip_nonfinite", skip_nonfinite)
        self.skip_nonfinite = skip_nonfinite
        self._set_precision(state_dtype, master_weights, stochastic_rounding)
        self.skipped_steps = 0
        self._cohorts: list[_Cohort] = []
        self._steps = np.zeros(0, dtype=np.float32)  # each parameter's step, as torch's state shows it
        self._registered: list[dict | None] = []  # each parameter's state[p] as its engine left it
        # The spec's step state and mode are group entries, as the reference keeps them.
        super().__init__(params, {**defaults, **self._group_extras(defaults)})
        self.hypers = dict(zip(self._HYPERS, hyper_values(self._group_hypers(self.defaults))))

    def _set_precision(self, state_dtype, master_weights, stochastic_rounding) -> None:
        """The precision options (optforge.runtime.precision), with torch's state names as the
        keys of a `state_dtype` dict; the engines get them under the spec's names."""
        torch_names = {key: name for name, key in self._STATE_KEYS.items()}
        policy = check_policy(
            type(self).__name__, state_dtype, master_weights, stochastic_rounding, tuple(torch_names)
        )
        self._policy = policy._replace(state=tuple((torch_names[k], v) for k, v in policy.state))
        self.state_dtype = state_dtype
        self.master_weights, self.stochastic_rounding = master_weights, stochastic_rounding

    def _state_key(self, name: str) -> str:
        """torch's key of an engine state (a master copy's is its own name; the absmax values
        of a state kept as 8-bit codes are under its key and `_absmax`)."""
        if name.endswith(ABSMAX) and name[: -len(ABSMAX)] in self._STATE_KEYS:
            return self._STATE_KEYS[name[: -len(ABSMAX)]] + ABSMAX
        return self._STATE_KEYS.get(name, name)

    def _int8_states(self, p: torch.Tensor, i: int) -> dict[str, str]:
        """The states of parameter `i`, `p`, kept as 8-bit codes (spec name -> code table
        kind); ValueError for one no kernel can keep so (`int8_kinds`): checked as each
        parameter is added."""
        if INT8 not in (self._policy.default, *(storage for _, storage in self._policy.state)):
            return {}
        variant = self._tensor_variant(p)
        precision = self._policy.precision(storage_name(_numpy_dtype(p.dtype)), variant.state)
        return int8_kinds(
            type(self).__name__, self._kernel_module(), variant, precision, f"param{i}", self._state_key
        )

    def _state_init(self) -> dict:
        """Each state's initial value (generated: a number, "lr", or a hyperparameter)."""
        raise NotImplementedError

    def _group_hypers(self, group: dict) -> tuple:
        return group_hypers(self, group)

    def _variant_key(self) -> tuple:
        """The kernel variant: each spec flag from the defaults, from a named option's value
        (`(key, values that set it)`: Muon's adjust_lr_fn), or the value the class pins."""
        return tuple(
            self.defaults[f]
            if isinstance(f, str)
            else self.defaults[f[0]] in f[1]
            if isinstance(f, tuple)
            else f
            for f in self._VARIANT_KEY
        )

    # -- parameters --

    def add_param_group(self, param_group: dict) -> None:
        """torch's checks, then optforge's: every option understood, the same flags,
        float32/float64, contiguous."""
        cls = type(self).__name__
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        first = sum(len(g["params"]) for g in self.param_groups[:-1])  # the group's first index
        try:
            self._check_group_options(group, f"param group {len(self.param_groups) - 1}")
            # The kernels' own limits (a spec of matrices: 2-D parameters only), before any state.
            kernels = importlib.import_module(f"{self._KERNELS}.cpu.{self._SPEC}")
            check_kernel_support(kernels, cls, group["params"])
            for i, p in enumerate(group["params"], first):
                if p.dtype not in TORCH_DTYPES:
                    raise TypeError(
                        f"{cls}: parameters must be float32, float64, bfloat16 or float16 (the kernels "
                        f"are compiled for those), but one is {p.dtype}."
                    )
                if not p.is_contiguous():
                    raise ValueError(
                        f"{cls}: parameters must be contiguous (they are stepped in place through a "
                        f"view), but one of shape {tuple(p.shape)} is not."
                    )
                if self._int8_states(p, i) and is_dtensor(p):
                    raise ValueError(
                        f"{cls}: a DTensor parameter (FSDP2's) cannot keep state as 8-bit codes "
                        "(state_dtype 'int8'): each rank's 256-element blocks and their absmax values "
                        "would not form one tensor of the parameter's layout. Keep its state in "
                        "'float32' or 'bfloat16'."
                    )
            check_wide_only(
                cls,
                {f: group.get(f, self.defaults[f]) for f in self._WIDE_ONLY},
                [_numpy_dtype(p.dtype) for p in group["params"]],
            )
        except (TypeError, ValueError, NotImplementedError):
            self.param_groups.pop()  # refused: the optimizer is as it was
            raise
        self._steps = np.zeros(len(self._flat_params()), dtype=np.float32)
        self._registered += [None] * (len(self._steps) - len(self._registered))
        for cohort in self._cohorts:  # new arrays: the state's step tensors must view them
            self._link_steps(cohort.engine)

    def _check_group_options(self, group: dict, where: str) -> None:
        """Every key of a group (given, or loaded) is understood or refused (ValueError).

        A flag must equal the optimizer's (one kernel variant per optimizer);
        `foreach`/`fused` may be any bool or None, `capturable`/`differentiable`
        only False; an option of any torch.optim optimizer that this class does
        not have is refused, since it would be ignored. Other keys (an lr
        scheduler's `initial_lr`, a user's own labels) are kept, as torch keeps them.
        """
        cls = type(self).__name__
        for key, value in group.items():
            if key in ("params", "param_names"):
                continue
            if key in self._IMPL_OPTIONS:
                options.check_option(cls, key, value, f"{where} sets ")
            elif key in self._OPTIONS:
                check_choice(cls, f"{where}'s {key}", value, *self._OPTIONS[key])
            elif key in self._FLAGS:
                named = not isinstance(self.defaults[key], bool)  # a named option (adjust_lr_fn)
                if not (named or isinstance(value, bool)) or value != self.defaults[key]:
                    raise ValueError(
                        f"{cls}: {where} sets {key}={value!r}, but the optimizer has "
                        f"{key}={self.defaults[key]}; optforge compiles one kernel variant per "
                        "optimizer, so flags must be the same in every group."
                    )
            elif key == "decoupled_weight_decay" and value is (self._DECAY == "decoupled"):
                continue  # what this class does anyway: torch's AdamW saves decoupled_weight_decay=True
            elif key not in self.defaults and key in options.OPTIMIZER_OPTIONS:
                raise ValueError(
                    f"{cls}: {where} sets '{key}', an option of torch.optim optimizers that "
                    f"optforge.torch.{cls} does not have (its options: {sorted(self.defaults)}); it "
                    "would be ignored, so it is refused."
                )

    def _completed_groups(self, saved_groups: list[dict]) -> list[dict]:
        """The saved groups, each with the flags and implementation options it lacks at their
        constructor defaults (what a torch checkpoint from before the option existed meant, as
        torch's own `__setstate__` assumes); a numeric option missing is refused."""
        cls = type(self).__name__
        signature = inspect.signature(type(self)).parameters
        completed = []
        for g, saved in enumerate(saved_groups):
            group = dict(saved)
            for key in self.defaults:
                if key in group:
                    continue
                if key not in self._FLAGS and key not in self._IMPL_OPTIONS:
                    raise ValueError(
                        f"{cls}: the state dict's param group {g} has no '{key}' (keys: {sorted(saved)}); "
                        "is it a state dict of another optimizer?"
                    )
                # A user's subclass may take it under another signature: then the optimizer's own.
                group[key] = signature[key].default if key in signature else self.defaults[key]
            self._check_group_options(group, f"the state dict's param group {g}")
            completed.append(group)
        return completed

    def _flat_params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @property
    def _group_index(self) -> list[int]:
        return [g for g, group in enumerate(self.param_groups) for _ in group["params"]]

    # -- stepping --

    @torch.no_grad()
    def step(self, closure=None):
        """One step over every parameter that has a gradient; returns what `closure` returns."""
        self._check_mode()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = self._flat_params()
        self._adopt_replaced_state(params)
        has_grad = [p.grad is not None for p in params]
        work, pieces, new = self._plan(params, has_grad)
        # When every cohort steps whole, their distinct step counts stay distinct: the cohorts
        # stay as they are. Otherwise they are regrouped by step now (engine objects only: their
        # tables wait until they step), and take over once the step is taken.
        regrouped = self._by_step(pieces) if new is not None or len(pieces) != len(work) else None
        # Every check before any change: memory, gradients, lr values, finiteness.
        checked = []
        for cohort in work:
            self._check_memory(cohort, params)
            cohort.engine.ready(self)
            members = cohort.engine.members
            local_grads = [_local_grad(params[i], i, type(self).__name__) for i in members]
            grads = _addressed([params[i] for i in members], local_grads)
            if grads is None:  # not all plain: each one viewed and checked (and refused, or copied)
                grads = [_grad_view(g, type(self).__name__) for g in local_grads]
                grads = cohort.engine._check_gradients(grads)
            checked.append((cohort, grads))
            cohort.engine.sync(self)
            cohort.engine.check_kept(self)
            for group in cohort.engine.param_groups:
                _lr_value(group["lr"], type(self).__name__)
        if self.skip_nonfinite and not self._finite_on_every_rank(
            all(cohort.engine._all_finite(grads) for cohort, grads in checked), checked
        ):
            self.skipped_steps += 1
            return loss
        advanced = self._advance_groups()
        if new is not None:
            self._register(new)
        for cohort, _ in checked:
            if advanced is not None:
                cohort.engine._advanced = [advanced[tg] for tg in cohort.engine.torch_groups]
        together = len(checked) > 1 and hasattr(self._kernel_module(), "AFTER_SUMS")
        if together:
            self._apply_together(checked)
        for cohort, grads in checked:
            if not together:
                cohort.engine._apply(grads)
            if advanced is not None:  # the step state the sum rules left (group sums)
                summed = cohort.engine._summed_step_state(cohort.engine._advanced)
                for tg, values in zip(cohort.engine.torch_groups, summed):
                    advanced[tg] = values
            self._steps[cohort.engine.members] = cohort.engine.global_step
            self._refresh_extra_state(cohort.engine)
        if advanced is not None and getattr(self._kernel_module(), "SHARED_STEP_STATE", False):
            # one estimate for the optimizer: every group holds what the stepped ones computed
            stepped = [cohort.engine for cohort, _ in checked if cohort.engine._summed]
            if stepped:
                advanced = [advanced[stepped[0].torch_groups[0]]] * len(advanced)
        if regrouped is not None:
            self._cohorts = regrouped
        self._commit_step_state(advanced)
        self._write_group_steps()
        return loss

    def _apply_together(self, checked: list) -> None:
        """The cohorts' steps in lockstep (a spec with group sums: its sums run over every
        parameter of the step, whatever its step count, as the reference's do): every engine's
        launches made and checked first, then run as one, each engine's step then kept."""
        work = [(cohort.engine, *cohort.engine._step_work(grads)) for cohort, grads in checked]
        reduces = [engine._checked_launches(launches) for engine, launches, _ in work]
        all_reduce = next((r for r in reduces if r is not None), None)
        for engine, _, _ in work:
            engine._summed = {}
        run_lockstep([gen for _, launches, _ in work for _, gen in launches], all_reduce, group_round)
        for _, _, finish in work:
            finish()

    def _advance_groups(self):
        """Every torch group's step rules, once per step (whatever its cohorts, as the
        reference steps each group): t is one more than its parameters' largest step count."""
        if getattr(self._kernel_module(), "STEP", None) is None:
            return None
        cls = type(self).__name__
        lrs = [_lr_value(group["lr"], cls) for group in self.param_groups]
        hypers = [hyper_values(self._group_hypers(group)) for group in self.param_groups]
        index = np.asarray(self._group_index, dtype=np.int64)
        ts = [1 + int(self._steps[index == g].max(initial=0)) for g in range(len(self.param_groups))]
        return self._advance_values(ts, lrs, hypers, self.param_groups)

    def _transition_groups(self, method: str, groups: list[int]) -> None:
        """Each cohort's transition over its part of `groups` (parameters never stepped have no
        state and are left as they are, as the reference leaves them); every cohort is made
        ready first, so a refusal changes nothing."""
        work = []
        for cohort in self._cohorts:
            engine = cohort.engine
            engine.ready(self)
            engine.sync(self)
            mine = [g for g, tg in enumerate(engine.torch_groups) if tg in groups]
            if mine:
                work += engine._transition_work(method, mine)
        run_transition(work)

    def _finite_on_every_rank(self, finite: bool, checked: list) -> bool:
        """Whether every rank's gradients are finite (FSDP2: each rank sees its shard's): the
        ranks skip a step together (optforge.runtime.optimizer's `_finite_on_every_rank`)."""
        for cohort, _ in checked:
            if cohort.engine.all_reduce is not None:
                return cohort.engine._finite_on_every_rank(finite)
        return finite

    def _check_memory(self, cohort: _Cohort, params: list) -> None:
        for i, pointer in zip(cohort.engine.members, cohort.pointers):
            if local(params[i]).data_ptr() != pointer:
                raise RuntimeError(
                    f"{type(self).__name__}: parameter {i}'s memory moved (its .data was replaced, or the "
                    "model was moved) after its first step; optforge steps the memory it saw then. Create "
                    "the optimizer after moving the model. Nothing was changed."
                )

    def _plan(self, params: list, has_grad: list[bool]) -> tuple[list[_Cohort], list[_Piece], _Cohort | None]:
        """The cohorts that step (the whole ones, the parts with gradients of the others, and a
        new one for the parameters' first gradients), the pieces the cohorts will be in once the
        step is taken, and the new cohort (or None)."""
        work, pieces = [], []
        for cohort in self._cohorts:
            members, step = cohort.engine.members, cohort.engine.global_step
            count = sum(has_grad[i] for i in members)
            if count == len(members):
                work.append(cohort)
                pieces.append(_Piece(members, [cohort], step + 1, cohort))
            elif count == 0:
                pieces.append(_Piece(members, [cohort], step, cohort))
            else:  # the part with gradients steps; the rest keeps its count (and gets an engine if alone)
                part = self._cohort_over([i for i in members if has_grad[i]], [cohort], step)
                work.append(part)
                pieces.append(_Piece(part.engine.members, [cohort], step + 1, part))
                pieces.append(_Piece([i for i in members if not has_grad[i]], [cohort], step, None))
        stepped = {i for c in self._cohorts for i in c.engine.members}
        first = [i for i, has in enumerate(has_grad) if has and i not in stepped]
        new = None
        if first:
            new = self._new_cohort(first, params)  # registered only once the step is taken
            work.append(new)
            pieces.append(_Piece(new.engine.members, [new], 1, new))
        return work, pieces, new

    def _cohort_over(self, members: list[int], sources: list[_Cohort], step: int) -> _Cohort:
        """A cohort of `members` at `step`, over the views and state arrays that `sources` (the
        cohorts holding them now) step: no state is allocated or copied."""
        views, pointers, state = {}, {}, {}
        for source in sources:
            engine = source.engine
            for pos, i in enumerate(engine.members):
                views[i], pointers[i] = engine.parameters[pos], source.pointers[pos]
            for name, arrays in engine.state.items():
                state.setdefault(name, {}).update(zip(engine.members, arrays))
        engine = self._ENGINE(self, members, views, state)
        engine.global_step = step
        return _Cohort(engine, [pointers[i] for i in engine.members])

    def _by_step(self, pieces: list[_Piece]) -> list[_Cohort]:
        """One cohort per step count, in ascending order: pieces with the same count merge into
        one new cohort (members in parameter order); a piece alone keeps its cohort if it has one."""
        by_step: dict[int, list[_Piece]] = {}
        for piece in pieces:
            by_step.setdefault(piece.step, []).append(piece)
        cohorts = []
        for step, group in sorted(by_step.items()):
            if len(group) == 1 and group[0].cohort is not None:
                cohorts.append(group[0].cohort)
            else:
                members = sorted(i for piece in group for i in piece.members)
                cohorts.append(
                    self._cohort_over(members, [c for piece in group for c in piece.sources], step)
                )
        return cohorts

    def _new_cohort(self, members: list[int], params: list) -> _Cohort:
        # master_weights and stochastic_rounding need a 16-bit parameter among all of them, not
        # among the ones stepped first (a cohort of float32 ones is stepped plainly).
        check_sixteen_bit(type(self).__name__, self._policy, [_numpy_dtype(p.dtype) for p in params])
        views = {i: _view(params[i], f"param{i}") for i in members}
        return _Cohort(self._ENGINE(self, members, views), [local(params[i]).data_ptr() for i in members])

    def _register(self, cohort: _Cohort) -> None:
        """The cohort's state becomes torch's `state[p]`: views of the engine's arrays."""
        params = self._flat_params()
        engine = cohort.engine
        tables = getattr(self._kernel_module(), "INT8_TABLES", {})
        for pos, i in enumerate(engine.members):
            # None: a state this tensor's variant lacks (Adafactor: row/col factors for
            # matrices, else variance) or torch does not keep (SGD's buffer without momentum).
            kinds = self._state_kinds(params[i])
            views = {
                self._state_key(name): self._flat(
                    self._state_key(name),
                    self._state_tensor(arrays[pos], params[i], kinds.get(name, "element")),
                    params[i],
                )
                for name, arrays in engine.state.items()
                if arrays[pos] is not None
            }
            for name, arrays in engine.state.items():  # beside each state of codes: its code table
                if name.endswith(ABSMAX) and arrays[pos] is not None:
                    base = name[: -len(ABSMAX)]
                    views[self._state_key(base) + QMAP] = self._qmap(tables[base])
            if views:  # torch makes no entry for a parameter it keeps nothing for (SGD, momentum 0)
                self.state[params[i]].update(views)
        self._link_steps(engine)
        self._refresh_extra_state(engine)

    def _qmap(self, kind: str) -> torch.Tensor:
        """The code table of `kind` as the tensor `state[p]` shows beside codes (one per kind,
        shared): a saved state dict says which table its codes index, so another class's codes
        (StableAdamW's signed `exp_avg_sq`, Adam's unsigned one) load by their own table."""
        qmaps = self.__dict__.setdefault("_qmaps", {})
        if kind not in qmaps:
            qmaps[kind] = torch.from_numpy(TABLES[kind].copy())
        return qmaps[kind]

    def _link_steps(self, engine: _Engine) -> None:
        params = self._flat_params()
        self._steps[engine.members] = engine.global_step
        for i in engine.members:
            if self._STEP_STATE:  # torch's SGD keeps no step per parameter
                self.state[params[i]]["step"] = torch.from_numpy(self._steps[i : i + 1].reshape(()))
            self._registered[i] = self.state.get(params[i])

    def _adopt_replaced_state(self, params: list) -> None:
        """State put into `self.state` from outside becomes the engines' state.

        torch's ZeroRedundancyOptimizer.load_state_dict gives each of its rank's parameters
        a new dict, ``optim.state[p] = {...}``, not through `load_state_dict` (so does a
        user who assigns ``state[p]``); the engines would step their own arrays and the
        loaded values would be lost. When a parameter's dict is not the one its engine left
        (or one not stepped yet has state), or a step count shown in `state` was written in
        place, all of `self.state` is loaded as a state dict: checked, and copied into new
        engines, as `load_state_dict` does.
        """
        state = self.state
        # A step count written in place (torch.distributed.checkpoint's load writes into the
        # tensors of the state dict it was given, `step` among them): the engines' are stale.
        stale = any((self._steps[c.engine.members] != c.engine.global_step).any() for c in self._cohorts)
        if not stale and not any(map(operator.is_not, map(state.get, params), self._registered)):
            return  # the usual case, checked at C speed: every dict is the engine's (or absent)
        if not stale and all(
            state.get(p) is mine if mine is not None else not state.get(p)
            for p, mine in zip(params, self._registered)
        ):
            return  # an empty dict made by reading state[p] of a parameter without state
        count = iter(range(len(params)))
        groups = [{**group, "params": [next(count) for _ in group["params"]]} for group in self.param_groups]
        saved = {i: dict(state[p]) for i, p in enumerate(params) if state.get(p)}
        self.load_state_dict({"state": saved, "param_groups": groups})

    # -- checkpoints in torch's layout --

    def state_dict(self) -> dict:
        """torch's `state_dict()`: ``state`` (per parameter index: ``step`` and the state
        tensors, under torch's names) and ``param_groups``; `torch.save` it, or load it into
        this class or into torch's own optimizer of the same name."""
        self._adopt_replaced_state(self._flat_params())
        for cohort in self._cohorts:  # a scheduler may have changed a group's hyperparameters
            self._refresh_extra_state(cohort.engine)
        return super().state_dict()

    def float32_state_dict(self) -> dict:
        """`state_dict()` with every state tensor as float32 values: 16-bit ones widened
        (exactly), 8-bit codes dequantised (``qmap[code] * absmax``, their ``<key>_absmax``
        and ``<key>_qmap`` entries dropped). What torch.optim's optimizer of the same name
        loads and steps on at full precision, after a run with `state_dtype` or 16-bit
        parameters. Master copies stay as they are (``master_param``, float32: the values to
        give float32 parameters)."""
        saved = self.state_dict()
        widened = {}
        for index, state in saved["state"].items():
            values = {}
            for key, value in state.items():
                if key.endswith((ABSMAX, QMAP)) and key.rsplit("_", 1)[0] in state:
                    continue  # read into its state's values
                if key + ABSMAX in state and key + QMAP in state:
                    value = _SavedCodes(value, state[key + ABSMAX], state[key + QMAP]).values()
                elif isinstance(value, torch.Tensor) and value.dtype in (torch.bfloat16, torch.float16):
                    value = value.float()
                values[key] = value
            widened[index] = values
        return {**saved, "state": widened}

    def _refresh_extra_state(self, engine: _Engine) -> None:
        """What torch keeps per parameter besides the arrays (NAdam's `mu_product`), from the
        engine's step and each group's hyperparameters, in `state[p]` as torch has it."""
        extra = getattr(self, "_extra_state", None)
        if extra is None or engine.global_step == 0:
            return
        params, group_index = self._flat_params(), self._group_index
        for i in engine.members:
            hypers = hyper_values(self._group_hypers(self.param_groups[group_index[i]]))
            state = self.state[params[i]]
            for key, value in extra(engine.global_step, *hypers).items():
                if isinstance(state.get(key), torch.Tensor):
                    state[key].fill_(float(value))
                else:
                    state[key] = torch.tensor(float(value), dtype=torch.float32)

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue from a state dict of this class, or of torch's optimizer of the same name.

        Everything is checked before anything changes: the groups' sizes (torch's check),
        each state's keys and shapes, every group option (`_check_group_options`: a flag
        that differs from this optimizer's, or an option this class does not have, is
        refused). Parameters whose saved steps are equal form one cohort (one fused engine)
        again.
        """
        cls = type(self).__name__
        params = self._flat_params()
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if len(saved_groups) != len(self.param_groups) or any(
            len(a["params"]) != len(b["params"]) for a, b in zip(saved_groups, self.param_groups)
        ):
            raise ValueError(
                f"{cls}: the state dict's param groups do not match this optimizer's in number or size."
            )
        index_of = {saved: i for i, saved in enumerate(s for g in saved_groups for s in g["params"])}
        group_steps = {
            s: g["step"] for g in saved_groups if self._GROUP_STEP and "step" in g for s in g["params"]
        }
        state_dict = {**state_dict, "param_groups": self._completed_groups(saved_groups)}
        steps: dict[int, int] = {}
        parts: dict[int, dict[str, torch.Tensor]] = {}  # each parameter's states as this rank loads them
        for saved, state in saved_state.items():
            if saved not in index_of:
                raise ValueError(
                    f"{cls}: the state dict has state for parameter {saved!r}, which no group holds."
                )
            i = index_of[saved]
            parts[i] = self._loaded_parts(i, params[i], state)
            # torch's SGD keeps no step: it has stepped once at least; the reference of a class with
            # _GROUP_STEP (pytorch_optimizer's) keeps one per param group instead.
            step = state.get("step", group_steps.get(saved, 1))
            steps[i] = int(float(step))
            if steps[i] < 0 or steps[i] != float(step):
                raise ValueError(f"{cls}: the step of parameter {i} is {float(step)}, not a count.")
        # The state dict is checked. What is left can refuse only the parameters themselves (as
        # their first step would: a policy, a placement, device and host tensors mixed): then
        # the optimizer is put back as it was. torch's load replaces `state` and `param_groups`
        # with new objects, leaving the old ones as they were.
        before = (self.state, self.param_groups, self._cohorts, self._steps, self._registered)
        try:
            self._load_checked(state_dict, params, steps, parts)
        except BaseException:
            self.state, self.param_groups, self._cohorts, self._steps, self._registered = before
            raise

    def _load_checked(self, state_dict: dict, params: list, steps: dict, parts: dict) -> None:
        """`load_state_dict` once everything is checked: the groups, then new cohorts over
        copies of the saved states (`parts`), one per saved step count."""
        # torch's load casts every state to its parameter's dtype, which would round state kept
        # wider than a 16-bit parameter (float32 state, the master copy) to 16 bits; copy_ below
        # converts each to the dtype it is kept in.
        super().load_state_dict(state_dict)  # replaces self.state and the groups' options
        self.state.clear()
        self._cohorts = []
        self._steps = np.zeros(len(params), dtype=np.float32)
        self._registered = [None] * len(params)
        for step in sorted(set(steps.values())):
            members = [i for i in sorted(steps) if steps[i] == step]
            cohort = self._new_cohort(members, params)
            engine = cohort.engine
            engine.global_step = step
            for pos, i in enumerate(engine.members):
                for name, arrays in engine.state.items():
                    value = parts[i].get(name)
                    if value is not None and arrays[pos] is not None:  # this rank's part, into its array
                        _as_tensor(arrays[pos], local(params[i])).copy_(value)
            self._register(cohort)
            self._cohorts.append(cohort)
        self._write_group_steps()

    def _write_group_steps(self) -> None:
        """A class with _GROUP_STEP keeps the reference's ``group["step"]`` (pytorch_optimizer's
        count, read by whatever reads param groups: state_dict(), ZeroRedundancyOptimizer's
        consolidated state dict, a user's logging): its parameters' largest step, written after
        each step and load; a group not stepped yet has none, as the reference's."""
        if not self._GROUP_STEP:
            return
        index = np.asarray(self._group_index, dtype=np.int64)
        for g, group in enumerate(self.param_groups):
            step = int(self._steps[index == g].max(initial=0))
            if step:
                group["step"] = step
            else:
                group.pop("step", None)

    def _flat(self, key: str, tensor: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """`state[p][key]` as the reference shows it: flattened (a view) where it keeps it so,
        for a parameter that is no DTensor."""
        return tensor.reshape(-1) if key in self._FLAT_STATE and not is_dtensor(p) else tensor

    def _loaded_parts(self, i: int, p: torch.Tensor, state: dict) -> dict[str, torch.Tensor]:
        """Parameter `i`'s saved states (per engine state name) as this rank loads them (its
        part of a DTensor's), each checked: present unless optional, shaped as the state is
        (and the master copy as the parameter). ValueError otherwise.

        A state kept as 8-bit codes takes saved codes with their absmax values, or values of
        any floating dtype (torch.optim's, `float32_state_dict()`'s), which it quantises; a
        state kept as values takes saved codes dequantised."""
        cls = type(self).__name__
        kinds = self._state_kinds(p)
        int8 = self._int8_states(p, i)
        expected = [(name, shape, self._STATE_KEYS[name]) for name, shape in self._state_shapes(p)]
        if MASTER in state:
            expected.append((MASTER, tuple(p.shape), MASTER))
        parts = {}
        for name, shape, key in expected:
            value = state.get(key)
            if value is None:
                if key in self._OPTIONAL_STATE:
                    continue
                raise ValueError(
                    f"{cls}: the state of parameter {i} has no '{key}' (keys: {sorted(state)}); "
                    "is it a state dict of another optimizer?"
                )
            if key in self._FLAT_STATE and isinstance(value, torch.Tensor) and not is_dtensor(value):
                if value.dim() == 0 and float(value) == 0.0:
                    # a reference may keep a flat state as a 0-d zero (a copy of an all-zero parameter)
                    value = value.expand(shape)
                elif value.dim() == 1 and value.numel() == math.prod(shape):
                    value = value.reshape(shape)  # flattened, as the reference keeps it
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(
                    f"{cls}: '{key}' of parameter {i} has shape {got}, not {shape} "
                    f"(the parameter's is {tuple(p.shape)})."
                )
            absmax = state.get(key + ABSMAX)
            if absmax is not None:  # saved as codes: checked, and read by the table they index
                value = self._saved_values(i, key, value, absmax, state.get(key + QMAP))
            if name in int8:
                kind = int8[name]
                if absmax is not None and torch.equal(value.codes_table, self._qmap(kind)):
                    value, parts[absmax_name(name)] = value.codes, value.absmax  # as they are
                else:
                    values = value.values() if absmax is not None else value
                    value, parts[absmax_name(name)] = self._quantised(i, key, values, kind)
            elif absmax is not None:
                value = value.values()
            elif name != MASTER and not value.is_floating_point():
                raise ValueError(
                    f"{cls}: '{key}' of parameter {i} is {value.dtype}, not a floating-point tensor "
                    f"(8-bit codes come with their '{key}{ABSMAX}' and '{key}{QMAP}')."
                )
            try:
                parts[name] = local_value(value, p, kinds.get(name, "element"))
            except ValueError as error:
                raise ValueError(f"{cls}: '{key}' of parameter {i} cannot be loaded: {error}.") from None
        return parts

    def _quantised(self, i: int, key: str, value: torch.Tensor, kind: str) -> tuple:
        """(codes, absmax) of saved values of any floating dtype: the same bits as the kernels'
        stores of those values."""
        if not value.is_floating_point():
            raise ValueError(
                f"{type(self).__name__}: '{key}' of parameter {i} is {value.dtype} without "
                f"'{key}{ABSMAX}': neither 8-bit codes with their absmax values nor floating-point "
                "values to quantise."
            )
        codes, absmax = quantize_blockwise(
            value.detach().cpu().float().numpy(), TABLES[kind], mids=MIDPOINTS[kind]
        )
        return torch.from_numpy(codes.reshape(tuple(value.shape))), torch.from_numpy(absmax)

    def _saved_values(self, i: int, key: str, codes, absmax, table) -> _SavedCodes:
        """A saved state of 8-bit codes, checked (ValueError): uint8 codes, float32 absmax
        values (one per 256 elements), and the float32[256] code table they index."""
        cls = type(self).__name__
        blocks = -(-codes.numel() // BLOCK)
        if codes.dtype is not torch.uint8 or is_dtensor(codes):
            raise ValueError(
                f"{cls}: '{key}' of parameter {i} comes with '{key}{ABSMAX}', so it holds 8-bit codes, "
                f"but it is {'a DTensor' if is_dtensor(codes) else codes.dtype}, not a torch.uint8 tensor."
            )
        if not isinstance(absmax, torch.Tensor) or is_dtensor(absmax) or tuple(absmax.shape) != (blocks,):
            got = tuple(absmax.shape) if isinstance(absmax, torch.Tensor) else type(absmax).__name__
            raise ValueError(
                f"{cls}: '{key}{ABSMAX}' of parameter {i} has shape {got}, not ({blocks},) (one value "
                f"per {BLOCK} elements)."
            )
        if absmax.dtype is not torch.float32:
            raise ValueError(f"{cls}: '{key}{ABSMAX}' of parameter {i} is {absmax.dtype}, not torch.float32.")
        if table is None:
            raise ValueError(
                f"{cls}: '{key}' of parameter {i} holds 8-bit codes without '{key}{QMAP}', the code "
                "table they index (tables differ between states and classes)."
            )
        if (
            not isinstance(table, torch.Tensor)
            or is_dtensor(table)
            or table.dtype is not torch.float32
            or tuple(table.shape) != (256,)
        ):
            raise ValueError(f"{cls}: '{key}{QMAP}' of parameter {i} is not a float32 tensor of 256 entries.")
        return _SavedCodes(codes, absmax, table.cpu())

    # -- copies: copy.deepcopy, pickle, torch.save of the optimizer object --

    # The attributes this class sets besides torch's own; a copy keeps them as they are.
    # (torch's __getstate__ keeps only defaults, state and param_groups.)
    _COPIED_ATTRIBUTES = (
        "skip_nonfinite",
        "skipped_steps",
        "hypers",
        "_policy",
        "state_dtype",
        "master_weights",
        "stochastic_rounding",
    )

    def __getstate__(self) -> dict:
        """torch's (defaults, state, param_groups), optforge's options and counters, and each
        cohort as its members and step; not the engines, whose views and typed lists point at
        this optimizer's memory: `__setstate__` builds new ones over the copy's tensors."""
        state = super().__getstate__()
        state.update({key: getattr(self, key) for key in self._COPIED_ATTRIBUTES})
        # A callable hyperparameter is the optimizer's attribute (ADOPT's clip_lambda): it travels too.
        state.update(
            {key: getattr(self, key) for key, index in self._HYPER_KEYS if index == OPTIMIZER_ATTRIBUTE}
        )
        state["_cohort_steps"] = [(list(c.engine.members), int(c.engine.global_step)) for c in self._cohorts]
        return state

    def __setstate__(self, state: dict) -> None:
        if "_cohort_steps" not in state:  # torch's load_state_dict sets state and param_groups so
            self._torch_setstate(state)
            return
        state = dict(state)
        cohorts = state.pop("_cohort_steps")
        self._torch_setstate(state)
        params = self._flat_params()
        self._steps = np.zeros(len(params), dtype=np.float32)
        self._registered = [None] * len(params)
        self._cohorts = []
        for members, step in cohorts:  # engines over the copy's parameters and state tensors
            arrays: dict[str, dict[int, object]] = {}
            for i in members:
                p, codes = params[i], self._int8_states(params[i], i)
                shapes = dict(self._state_shapes(p))
                for name in [*shapes, *(absmax_name(n) for n in codes)]:
                    # A state torch does not keep for the group (RMSprop's buffer without
                    # momentum) is absent: None, as the engine it came from held it.
                    tensor = self.state[p].get(self._state_key(name))
                    if tensor is None and name.endswith(ABSMAX) and name[: -len(ABSMAX)] in codes:
                        if self.state[p].get(self._state_key(name[: -len(ABSMAX)])) is not None:
                            raise ValueError(
                                f"{type(self).__name__}: the copy's state of parameter {i} has 8-bit codes "
                                f"without their '{self._state_key(name)}'."
                            )
                    if tensor is not None:
                        if name.endswith(ABSMAX):
                            dtype, size = np.float32, -(-p.numel() // BLOCK)
                        else:
                            storage = self._policy.state_storage(name, storage_name(_numpy_dtype(p.dtype)))
                            dtype, size = numpy_dtype(storage), math.prod(shapes[name])
                        tensor = self._copied_state(p, i, name, tensor, dtype, size)
                    arrays.setdefault(name, {})[i] = tensor
                if MASTER in self.state[p]:  # master weights: the float32 copy
                    tensor = self._copied_state(p, i, MASTER, self.state[p][MASTER], np.float32, p.numel())
                    arrays.setdefault(MASTER, {})[i] = tensor
            views = {i: _view(params[i], f"param{i}") for i in members}
            engine = self._ENGINE(self, members, views, arrays)
            engine.global_step = step
            self._cohorts.append(_Cohort(engine, [local(params[i]).data_ptr() for i in engine.members]))
            self._link_steps(engine)

    def _copied_state(self, p: torch.Tensor, i: int, name: str, tensor, dtype, size: int):
        """The kernels' view of a copy's state tensor, checked against what they keep
        (ValueError otherwise: a tensor cast to another dtype, or cut short, in the copied
        `state`, would have the kernels read and write past its end)."""
        key, array = self._state_key(name), _as_array(local(tensor))
        if np.dtype(array.dtype) != np.dtype(dtype) or not local(tensor).is_contiguous():
            raise ValueError(
                f"{type(self).__name__}: the copy's '{key}' of parameter {i} is {tensor.dtype}"
                f"{'' if local(tensor).is_contiguous() else ', not contiguous'}; its kernels keep it as "
                f"contiguous {np.dtype(dtype).name}. Load a state dict instead: load_state_dict converts."
            )
        if not is_dtensor(p) and array.size != size:
            raise ValueError(
                f"{type(self).__name__}: the copy's '{key}' of parameter {i} has {array.size} elements, "
                f"not {size}."
            )
        return array

    def _torch_setstate(self, state: dict) -> None:
        """torch's `__setstate__`, less the `differentiable` it adds to the defaults of a class
        that has no such option (Lamb, Lion, ...): the next `load_state_dict` would otherwise
        ask every saved group for it, and refuse the optimizer's own state dict."""
        had = "differentiable" in state.get("defaults", getattr(self, "defaults", {}))
        super().__setstate__(state)
        if not had and "differentiable" not in self._IMPL_OPTIONS:
            self.defaults.pop("differentiable", None)

    def _state_shapes(self, p: torch.Tensor) -> list[tuple[str, tuple]]:
        """(name, shape) of each state `p` has: its kernel variant's (set by its rank for
        Adafactor: row and column factors for a matrix, a full variance for a vector)."""
        return self._tensor_variant(p).state_shapes(tuple(p.shape))

    def _tensor_variant(self, p: torch.Tensor):
        module = importlib.import_module(f"{self._KERNELS}.cpu.{self._SPEC}")
        return module.VARIANTS[tensor_variant_key(module, self._variant_key(), p.dim())]

    def _state_kinds(self, p: torch.Tensor) -> dict[str, str]:
        """Each state's shape kind for `p`: "element", or a factored variant's "row"/"col"."""
        v = self._tensor_variant(p)
        return dict(zip(v.state, v.shapes or ("element",) * len(v.state)))

    def _state_tensor(self, array, p: torch.Tensor, kind: str) -> torch.Tensor:
        """The tensor `state[p]` shows for an engine array: a view of it (a DTensor over it
        for FSDP2's parameters, optforge.torch.dtensor)."""
        return state_tensor(_as_tensor(array, local(p)), p, kind)

    def _all_reduce_for(self, members: list[int]):
        """How an engine over `members` adds values up over the ranks (its per-tensor sums, and
        with skip_nonfinite its finiteness): over the process group splitting its DTensor
        parameters (None: none is). A spec without reductions steps any placement part by
        part; one with them refuses those its sums cannot be added up over (NotImplementedError)."""
        module = importlib.import_module(f"{self._KERNELS}.cpu.{self._SPEC}")
        reduces = any(b.plan.combine for v in module.VARIANTS.values() for b in v.branches.values())
        params = self._flat_params()
        try:
            group = reduction_group([params[i] for i in members], type(self).__name__)
        except NotImplementedError:
            if reduces:
                raise
            return None
        if group is None:
            return None
        from optforge.distributed import torch_all_reduce

        return torch_all_reduce(group)


# Beside a state of 8-bit codes, `state[p]` holds its absmax values (`<key>_absmax`) and the code
# table its codes index (`<key>_qmap`, bitsandbytes' name for it).
QMAP = "_qmap"

# The parameter dtypes the kernels step (16-bit ones in float32, their arrays as ml_dtypes'
# bfloat16 or NumPy's float16 views of the same memory).
TORCH_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _view(p: torch.Tensor, name: str) -> Parameter:
    """A Parameter over the tensor's own memory (no copy): a DTensor's local part, `split`
    when the other ranks hold the rest of it along dimension 0."""
    data = local(p).detach()
    try:
        split = None if split_dim(p) is None else tuple(p.shape)
    except NotImplementedError:  # stepped part by part; refused where a spec reduces (_all_reduce_for)
        split = None
    return Parameter(data if data.is_cuda else _numpy(data), name, split=split)


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The NumPy dtype of a torch parameter dtype (bfloat16: ml_dtypes', imported only then)."""
    return numpy_dtype(str(dtype).removeprefix("torch."))


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor (bfloat16, which NumPy lacks: as ml_dtypes' bfloat16)."""
    if tensor.dtype is torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def _local_grad(p: torch.Tensor, i: int, cls: str) -> torch.Tensor:
    """Parameter `i`'s gradient as this rank steps it. A DTensor parameter's gradient must be a
    DTensor on its mesh; one placed otherwise (replicated, or a pending sum, on a parameter
    split along dimension 0) is redistributed to the parameter's placements, as torch's
    DTensor ops would, and this rank steps its local part."""
    g = p.grad
    if not is_dtensor(p) and not is_dtensor(g):
        return g
    if not is_dtensor(p) or not is_dtensor(g):
        raise TypeError(
            f"{cls}: parameter {i} is {'' if is_dtensor(p) else 'not '}a DTensor, but its gradient is "
            f"{'' if is_dtensor(g) else 'not '}one; they must both be (FSDP2's are), or neither. Nothing "
            "was changed."
        )
    if g.device_mesh != p.device_mesh:
        raise ValueError(
            f"{cls}: parameter {i}'s gradient is a DTensor on another device mesh ({g.device_mesh}) than "
            f"the parameter's ({p.device_mesh}). Nothing was changed."
        )
    if tuple(g.placements) != tuple(p.placements):
        g = g.redistribute(p.device_mesh, p.placements)
    return g.to_local()


def _addressed(params: list, grads: list) -> Addressed | None:
    """The parameters' (local) gradients by address, when every one is what the kernels take
    as it is: a dense, C-contiguous CPU tensor of its parameter's dtype and shape, without a
    lazy negation. Otherwise None: the caller views and checks each one."""
    addresses, sizes = [], []
    for p, g in zip(params, grads):
        p = local(p)
        if (
            g.layout is not torch.strided
            or g.is_cuda
            or g.dtype is not p.dtype
            or g.shape != p.shape
            or not g.is_contiguous()
            or g.is_neg()
        ):
            return None
        addresses.append(g.data_ptr())
        sizes.append(g.numel())
    return Addressed(grads, addresses, sizes)


def _grad_view(g: torch.Tensor, cls: str):
    if g.is_sparse:
        raise TypeError(f"{cls}: sparse gradients are not supported (use torch.optim.SparseAdam).")
    g = g.detach()
    if g.is_cuda:
        from optforge.runtime.cuda import as_device_array

        return as_device_array(g)
    if g.dtype not in TORCH_DTYPES:
        raise TypeError(
            f"{cls}: a gradient is {g.dtype}; its parameter's dtype (float32, float64, bfloat16 or "
            "float16) is needed."
        )
    return _numpy(g)


def _as_array(tensor: torch.Tensor):
    """The kernels' view of a state tensor's own memory (no copy): NumPy or device array."""
    if tensor.is_cuda:
        from optforge.runtime.cuda import as_device_array

        return as_device_array(tensor)
    return _numpy(tensor)


def _as_tensor(array, like: torch.Tensor) -> torch.Tensor:
    """A torch view of a state array (host or device), on the parameter's device."""
    if isinstance(array, np.ndarray):
        if array.dtype.name == "bfloat16":  # ml_dtypes': torch's own bfloat16 over the same bytes
            return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(array)
    return torch.as_tensor(array, device=like.device)
