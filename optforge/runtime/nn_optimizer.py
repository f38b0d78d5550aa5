"""The nn-dialect base: what MindSpore's `nn.Optimizer` does around the kernel.

It checks and keeps the parameters, groups, learning rate, weight decay
and loss scale (in MindSpore's order and with its exception types), and
runs a step: check every gradient, read the step's learning rates and
weight decays, then one kernel call per group and dtype. Nothing is
changed until every check of the step has passed.

The generated subclasses add their own arguments' checks and name the
compiled kernel variant and its state.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numba.typed import List

from optforge.parameter import Parameter
from optforge.runtime.checks import check_type
from optforge.runtime.kernels import Variant, chunk_table
from optforge.runtime.learning_rate import (
    LearningRate,
    WeightDecay,
    preprocess_learning_rate,
    preprocess_weight_decay,
)

GROUP_KEYS = ("params", "lr", "weight_decay", "order_params", "grad_centralization")


@dataclass
class ParamGroup:
    params: list[Parameter]
    lr: LearningRate
    weight_decay: WeightDecay
    grad_centralization: bool


@dataclass
class _Batch:
    """The tensors of one group with one dtype: one kernel call per step."""

    group: int
    dtype: np.dtype
    indices: list[int]  # into `parameters`
    decays: np.ndarray  # bool per tensor: weight decay applies
    centralize: list[bool]
    chunks: tuple[np.ndarray, np.ndarray, np.ndarray]
    params: List
    state: list[List]


class NNOptimizer:
    """Base of the generated `optforge.nn` classes."""

    _HYPERS: tuple[str, ...] = ()  # the spec's hyperparameters, in spec order

    def __init__(self, params, learning_rate, weight_decay, loss_scale):
        cls = type(self).__name__
        items = _check_parameter_list(params, "parameters", cls)
        if all(isinstance(p, Parameter) for p in items):
            grouped = False
        elif all(isinstance(p, dict) for p in items):
            grouped = True
        else:
            raise TypeError(
                f"For '{cls}', all elements of the argument 'parameters' must be 'Parameter' or "
                f"'dict', please check the 'parameters'."
            )
        # MindSpore's documentation says float: an int (or bool) loss_scale is refused.
        check_type(cls, "loss_scale", loss_scale, ("float",))
        if not math.isfinite(loss_scale):
            raise ValueError(f"For '{cls}', the 'loss_scale' must be a legal value, but got '{loss_scale}'.")
        if loss_scale <= 0:
            raise ValueError(
                f"For '{cls}', the 'loss_scale' must be float and must > 0, "
                f"but got '{loss_scale}' with type 'float'."
            )
        lr = preprocess_learning_rate(learning_rate, cls)
        if grouped:
            self.groups, order = _parse_groups(items, lr, weight_decay, cls)
        else:
            self.groups, order = [ParamGroup(list(items), lr, preprocess_weight_decay(weight_decay, cls), False)], None
        parameters = [p for group in self.groups for p in group.params]
        _check_unique(parameters, cls)
        group_of = {id(p): i for i, group in enumerate(self.groups) for p in group.params}
        if order is not None:
            parameters = _apply_order(parameters, order, cls)
        self.parameters: tuple[Parameter, ...] = tuple(parameters)
        self._group_of = [group_of[id(p)] for p in self.parameters]
        self._grouped = grouped
        self.loss_scale = float(loss_scale)
        self.global_step = 0

    # -- called by the generated subclass once its own arguments are checked --

    def _finish_init(self, variant: Variant, state_init: dict[str, float], use_locking: bool):
        """Allocate the state and the per-group kernel batches."""
        self._variant = variant
        self._lock = threading.Lock() if use_locking else None
        self.state = {
            name: tuple(np.full(p.shape, state_init[name], dtype=p.dtype) for p in self.parameters)
            for name in variant.state
        }
        for name, arrays in self.state.items():
            setattr(self, name, arrays)
        self._batches = []
        for g, group in enumerate(self.groups):
            indices = [i for i, gi in enumerate(self._group_of) if gi == g]
            for dtype in dict.fromkeys(self.parameters[i].dtype for i in indices):
                members = [i for i in indices if self.parameters[i].dtype == dtype]
                self._batches.append(self._make_batch(g, dtype, members))

    def _make_batch(self, g: int, dtype: np.dtype, members: list[int]) -> _Batch:
        group = self.groups[g]
        params = [self.parameters[i] for i in members]
        if self._grouped:
            decays = [group.weight_decay.decays] * len(params)
        else:  # MindSpore's rule without groups: never decay names with beta or gamma
            decays = [
                group.weight_decay.decays and "beta" not in p.name and "gamma" not in p.name
                for p in params
            ]
        return _Batch(
            group=g,
            dtype=dtype,
            indices=members,
            decays=np.array(decays, dtype=bool),
            centralize=[group.grad_centralization and p.ndim >= 2 for p in params],
            chunks=chunk_table([p.size for p in params], self._variant.chunk),
            params=List([p.data.reshape(-1) for p in params]),
            state=[List([self.state[name][i].reshape(-1) for i in members]) for name in self._variant.state],
        )

    # -- the step --

    def __call__(self, gradients) -> bool:
        if self._lock is None:
            return self._step(gradients)
        with self._lock:
            return self._step(gradients)

    def _step(self, gradients) -> bool:
        cls = type(self).__name__
        grads = self._check_gradients(gradients)
        k = self.global_step
        lrs = [group.lr.at(k, cls) for group in self.groups]
        wds = [group.weight_decay.at(k) for group in self.groups]
        hypers = tuple(getattr(self, name) for name in self._HYPERS)
        t = k + 1
        # Every check has passed: from here on the step changes parameters and state.
        for batch in self._batches:
            self._run_batch(batch, grads, t, lrs[batch.group], wds[batch.group], hypers)
        self.global_step = k + 1
        return True

    def _run_batch(self, batch: _Batch, grads, t: int, lr: float, wd: float, hypers: tuple):
        if batch.chunks[0].size == 0:
            return
        scalar = batch.dtype.type
        per_tensor = {
            "weight_decay": np.where(batch.decays, wd, 0.0).astype(batch.dtype),
            "grad_scale": np.full(len(batch.indices), 1.0 / self.loss_scale, dtype=batch.dtype),
        }
        flat = []
        for pos, i in enumerate(batch.indices):
            g = grads[i]
            if batch.centralize[pos]:
                # MindSpore centralizes after weight decay and before undoing the loss scale;
                # both are linear, so centralizing the effective gradient is the same.
                w = self.parameters[i].data
                g = g * scalar(1.0 / self.loss_scale) + scalar(wd if batch.decays[pos] else 0.0) * w
                g = g - g.mean(axis=tuple(range(1, g.ndim)), keepdims=True, dtype=batch.dtype)
                per_tensor["weight_decay"][pos] = 0
                per_tensor["grad_scale"][pos] = 1
            flat.append(g.reshape(-1))
        scalars = [scalar(s) for s in self._variant.scalars(t, lr, *hypers)]
        kernel = self._variant.kernels[batch.dtype.name]
        kernel(
            *batch.chunks,
            batch.params,
            List(flat),
            *batch.state,
            *(per_tensor[name] for name in self._variant.per_tensor),
            *scalars,
        )

    def _check_gradients(self, gradients) -> list[np.ndarray]:
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
        for i, (g, p) in enumerate(zip(gradients, self.parameters)):
            if not isinstance(g, np.ndarray):
                raise TypeError(
                    f"For '{cls}', gradient {i} (of parameter '{p.name}') must be a numpy.ndarray, "
                    f"but got {type(g)}."
                )
            if g.dtype != p.dtype:
                raise TypeError(
                    f"For '{cls}', gradient {i} (of parameter '{p.name}') must have dtype {p.dtype} "
                    f"like its parameter, but got {g.dtype}."
                )
            if g.shape != p.shape:
                raise ValueError(
                    f"For '{cls}', gradient {i} (of parameter '{p.name}') must have shape "
                    f"{p.shape} like its parameter, but got {g.shape}."
                )
        return list(gradients)

    def get_lr(self) -> float | list[float]:
        """The learning rate(s) the next step will use."""
        lrs = [group.lr.at(self.global_step, type(self).__name__) for group in self.groups]
        return lrs[0] if len(lrs) == 1 else lrs


def _check_parameter_list(params, what: str, cls: str) -> list:
    """MindSpore's `_parameters_base_check`: not None, iterable, not empty."""
    if params is None:
        raise ValueError(f"For '{cls}', the argument {what} can not be None.")
    if not isinstance(params, Iterable):
        raise TypeError(f"For '{cls}', the argument {what} must be Iterable type, but got {type(params)}.")
    items = list(params)
    if not items:
        raise ValueError(f"For '{cls}', the argument {what} must not be empty.")
    return items


def _parse_groups(items: list[dict], default_lr: LearningRate, weight_decay, cls: str):
    default_wd = preprocess_weight_decay(weight_decay, cls)
    groups, order = [], None
    for spec in items:
        unknown = [key for key in spec if key not in GROUP_KEYS]
        if unknown:
            raise KeyError(
                f"For '{cls}', the key in group params must be one of in {list(GROUP_KEYS)}, "
                f"but got {unknown}."
            )
        if "order_params" in spec:
            if len(spec) > 1:
                raise ValueError(
                    f"For '{cls}', the order params dict in group parameters should only include "
                    f"the 'order_params' key, but got {spec.keys()}."
                )
            order = spec["order_params"]
            if not isinstance(order, Iterable):
                raise TypeError(
                    f"For '{cls}', the 'order_params' must be Iterable type, but got {type(order)}."
                )
            continue
        if "params" not in spec:
            raise KeyError(f"For '{cls}', every group dict needs the key 'params', but got {list(spec)}.")
        params = _check_parameter_list(spec["params"], "group `params`", cls)
        for index, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"For '{cls}', the element in group parameters must be Parameter type, "
                    f"but got {type(p)} at index {index}."
                )
        lr = preprocess_learning_rate(spec["lr"], cls) if "lr" in spec else default_lr
        if "weight_decay" in spec:
            wd = preprocess_weight_decay(spec["weight_decay"], cls)
        else:
            wd = default_wd
        centralize = spec.get("grad_centralization", False)
        if not isinstance(centralize, bool):
            raise TypeError(
                f"For '{cls}', the 'grad_centralization' must be bool type, but got {type(centralize)}."
            )
        groups.append(ParamGroup(params, lr, wd, centralize))
    if not groups:
        raise ValueError(f"For '{cls}', the group parameters hold no group with 'params'.")
    lengths = {len(g.lr.values) for g in groups if g.lr.values is not None}
    if default_lr.values is not None:
        lengths.add(len(default_lr.values))
    if len(lengths) > 1:
        raise ValueError(
            f"For '{cls}', the dynamic learning rates in groups must all have the same length as "
            f"the argument 'learning_rate', but got lengths {sorted(lengths)}."
        )
    return groups, order


def _check_unique(parameters: list[Parameter], cls: str) -> None:
    seen = set()
    for p in parameters:
        if p.name in seen:
            raise RuntimeError(
                f"For '{cls}', the parameter '{p.name}' appears more than once (in one group or in "
                f"two); each parameter can be set only once."
            )
        seen.add(p.name)


def _apply_order(parameters: list[Parameter], order, cls: str) -> list[Parameter]:
    order = list(order)
    if len(order) != len(parameters):
        raise ValueError(
            f"For '{cls}', the length of order parameters must be the same as the length of group "
            f"parameters, but got {len(order)} and {len(parameters)}."
        )
    by_name = {p.name: p for p in parameters}
    result = []
    for p in order:
        name = getattr(p, "name", p)
        if name not in by_name:
            raise ValueError(f"For '{cls}', the order parameter {name!r} is in no group.")
        result.append(by_name[name])
    _check_unique(result, cls)
    return result
