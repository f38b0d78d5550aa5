"""The nn-dialect base: what MindSpore's `nn.Optimizer` does around the kernel.

It checks and keeps the parameters, groups, learning rate, weight decay
and loss scale (in MindSpore's order and with its exception types), and
runs a step: check every gradient, read the step's learning rates and
weight decays, then one kernel call per group and dtype (see
optimizer.FusedOptimizer). Nothing is changed until every check of the
step has passed.

The generated subclasses add their own arguments' checks and name the
compiled kernel variant and its state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from optforge.parameter import Parameter
from optforge.runtime.checks import check_type
from optforge.runtime.learning_rate import (
    LearningRate,
    WeightDecay,
    preprocess_learning_rate,
    preprocess_weight_decay,
)
from optforge.runtime.optimizer import FusedOptimizer, check_parameter_list

GROUP_KEYS = ("params", "lr", "weight_decay", "order_params", "grad_centralization")


@dataclass
class ParamGroup:
    params: list[Parameter]
    lr: LearningRate
    weight_decay: WeightDecay
    grad_centralization: bool


class NNOptimizer(FusedOptimizer):
    """Base of the generated `optforge.nn` classes."""

    def __init__(self, params, learning_rate, weight_decay, loss_scale):
        cls = type(self).__name__
        items = check_parameter_list(params, "parameters", cls)
        if all(isinstance(p, Parameter) for p in items):
            grouped = False
        elif all(isinstance(p, dict) for p in items):
            grouped = True
        else:
            raise TypeError(
                f"For '{cls}', all elements of the argument 'parameters' must be 'Parameter' or "
                f"'dict', please check the 'parameters'."
            )
        # An int is converted, as MindSpore's documentation of loss_scale says (and its code does).
        check_type(cls, "loss_scale", loss_scale, ("float", "int"))
        if not math.isfinite(loss_scale):
            raise ValueError(f"For '{cls}', the 'loss_scale' must be a legal value, but got '{loss_scale}'.")
        if loss_scale <= 0:
            raise ValueError(
                f"For '{cls}', the 'loss_scale' must be float and must > 0, "
                f"but got '{float(loss_scale)}' with type '{type(loss_scale).__name__}'."
            )
        lr = preprocess_learning_rate(learning_rate, cls)
        if grouped:
            self.groups, order = _parse_groups(items, lr, weight_decay, cls)
        else:
            wd = preprocess_weight_decay(weight_decay, cls)
            self.groups, order = [ParamGroup(list(items), lr, wd, False)], None
        parameters = [p for group in self.groups for p in group.params]
        _check_unique(parameters, cls)
        group_of = {id(p): i for i, group in enumerate(self.groups) for p in group.params}
        if order is not None:
            parameters = _apply_order(parameters, order, cls)
        self.parameters = tuple(parameters)
        self._group_of = [group_of[id(p)] for p in self.parameters]
        if grouped:
            self._decays = [self.groups[g].weight_decay.decays for g in self._group_of]
        else:  # MindSpore's rule without groups: never decay names with beta or gamma
            self._decays = [
                self.groups[0].weight_decay.decays and "beta" not in p.name and "gamma" not in p.name
                for p in self.parameters
            ]
        self._centralize = [
            self.groups[g].grad_centralization and p.ndim >= 2
            for g, p in zip(self._group_of, self.parameters)
        ]
        self.loss_scale = float(loss_scale)
        self.global_step = 0
        # MindSpore's is_group_lr: some group sets its own learning rate (nn.LARS asks).
        self.is_group_lr = grouped and any("lr" in d for d in items if isinstance(d, dict))

    def _finish_init(self, variant_key: tuple, state_init: dict[str, float], use_locking: bool):
        """Called by the generated subclass once its own arguments are checked."""
        self._allocate(variant_key, state_init, use_locking, len(self.groups))

    def _apply(self, grads: list) -> bool:
        cls = type(self).__name__
        k = self.global_step
        lrs = [group.lr.at(k, cls) for group in self.groups]
        wds = [group.weight_decay.at(k, cls) for group in self.groups]
        hypers = tuple(self.hypers[name] for name in self._HYPERS)
        steps = self._host_steps(k + 1, lrs, [hypers] * len(self.groups))
        # Every check has passed: from here on the step changes parameters and state.
        self._run_batches(
            [
                (
                    batch,
                    self._launch(
                        batch,
                        grads,
                        t=k + 1,
                        lr=lrs[batch.group],
                        wd=wds[batch.group],
                        decays=decays,
                        gc=gc,
                        step=step,
                    ),
                )
                for batch, step, (decays, gc) in zip(self._batches, steps, self._batch_flags())
            ]
        )
        self.global_step = k + 1
        return True

    def _batch_flags(self) -> list[tuple[tuple, tuple]]:
        """Per batch, its tensors' decay and centralization flags: made again only when
        `_decays` or `_centralize` is another list (LARS swaps in its own), not per step."""
        key = (self._decays, self._centralize, self._batches)
        cached = getattr(self, "_flags_cache", None)
        if cached is None or any(a is not b for a, b in zip(cached[0], key)):
            flags = [
                (tuple(self._decays[i] for i in b.indices), tuple(self._centralize[i] for i in b.indices))
                for b in self._batches
            ]
            self._flags_cache = cached = (key, flags)
        return cached[1]

    def _initial_lr(self, group: int) -> float:
        return self.groups[group].lr.at(0, type(self).__name__)

    def get_lr(self) -> float | list[float]:
        """The learning rate(s) the next step will use."""
        lrs = [group.lr.at(self.global_step, type(self).__name__) for group in self.groups]
        return lrs[0] if len(lrs) == 1 else lrs


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
        params = check_parameter_list(spec["params"], "group `params`", cls)
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
