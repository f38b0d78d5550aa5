"""The optim-dialect base: `mindspore.experimental.optim`, whose API is torch.optim's.

Parameters come as a list or as `param_groups` dicts that may override
`lr`, `betas`, `eps` and `weight_decay`; `param_groups[i]["lr"]` is read at
every step, so `optforge.optim.lr_scheduler` schedulers (or the user) can
change it. One step counter serves all groups.
"""

from __future__ import annotations

import math

import numpy as np

from optforge.parameter import Parameter
from optforge.runtime.checks import OPTIMIZER_ATTRIBUTE, check_choice, check_hyper
from optforge.runtime.optimizer import FusedOptimizer, check_parameter_list
from optforge.runtime.precision import check_wide_only


class OptimOptimizer(FusedOptimizer):
    """Base of the generated `optforge.optim` classes."""

    # How each hyperparameter is read from a group dict: (key, index or None).
    _HYPER_KEYS: tuple[tuple[str, int | None], ...] = ()

    def __init__(self, params, defaults: dict):
        cls = type(self).__name__
        items = check_parameter_list(params, "params", cls)
        if not isinstance(items[0], dict):
            items = [{"params": items}]
        # The spec's step state and mode are group entries too, as in the reference's groups.
        self.defaults = {**defaults, **self._group_extras(defaults)}
        self.param_groups: list[dict] = []
        for group in items:
            self._add_group(group, cls)
        self.parameters = tuple(p for group in self.param_groups for p in group["params"])
        self._group_of = [g for g, group in enumerate(self.param_groups) for _ in group["params"]]
        self.global_step = 0

    def _add_group(self, group, cls: str) -> None:
        if not isinstance(group, dict):
            raise TypeError(f"For '{cls}', a param group must be a dict, but got {type(group)}.")
        params = group.get("params")
        if isinstance(params, Parameter):
            params = [params]
        elif isinstance(params, set):
            raise TypeError(
                f"For '{cls}', parameters need to be organized in ordered collections, but the "
                "ordering of tensors in sets will change between runs. Please use a list instead."
            )
        elif params is None:
            raise KeyError(f"For '{cls}', every param group needs the key 'params'.")
        params = list(params)
        for index, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"For '{cls}', the element in params must be Parameter type, but got {type(p)} "
                    f"at index {index}."
                )
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params) or len({id(p) for p in params}) != len(params):
            raise ValueError(f"For '{cls}', some parameters appear in more than one parameter group.")
        group = {**self.defaults, **group, "params": params}
        # A list option (betas=[0.9, 0.999], eps=[None, 1e-3]) is kept as a tuple: the group then
        # holds no object the caller can change behind its checks, and saves like the default.
        group.update({k: tuple(v) for k, v in group.items() if k != "params" and isinstance(v, list)})
        group["lr"] = _check_group_lr(group["lr"], cls)
        if "weight_decay" in group:
            group["weight_decay"] = _check_group_weight_decay(group["weight_decay"], cls)
        self._check_group(group, len(self.param_groups), cls)
        self.param_groups.append(group)

    _WIDE_ONLY: tuple[str, ...] = ()  # flags that refuse 16-bit parameters where set

    def _finish_init(self, variant_key: tuple, state_init: dict[str, float]):
        check_wide_only(
            type(self).__name__,
            {f: getattr(self, f) for f in self._WIDE_ONLY},
            [p.dtype for p in self.parameters],
        )
        self._allocate(variant_key, state_init, use_locking=False, n_groups=len(self.param_groups))

    def _initial_lr(self, group: int) -> float:
        return float(self.param_groups[group]["lr"])

    def _state_hypers(self, group: int) -> dict:
        return dict(zip(self._HYPERS, hyper_values(self._group_hypers(self.param_groups[group]))))

    def _group_hypers(self, group: dict) -> tuple:
        return group_hypers(self, group)

    # Checkpoints also hold each group's options (a scheduler may have changed lr). None
    # (Adafactor's eps1: the dtype's epsilon) is saved as NaN with a mask beside it.
    def _extra_state(self) -> dict:
        result = {}
        for g, group in enumerate(self.param_groups):
            for key, value in group.items():
                if key == "params":
                    continue
                if isinstance(value, str):  # a named option (MARS's mars_type): kept as text
                    result[f"group/{g}/{key}"] = np.array(value)
                    continue
                items = value if isinstance(value, tuple) else (value,)
                result[f"group/{g}/{key}"] = np.array(
                    tuple(math.nan if x is None else x for x in items) if isinstance(value, tuple) else value,
                    dtype=np.float64,
                )
                if any(x is None for x in items):
                    result[f"group/{g}/{key}/none"] = np.array([x is None for x in items])
        return result

    def _parse_extra_state(self, sd: dict) -> list[dict]:
        """Each group's options from the state dict, converted to this optimizer's types and
        checked like the constructor's arguments (ValueError), not yet applied."""
        cls = type(self).__name__
        groups = {key.split("/")[1] for key in sd if key.startswith("group/")}
        if len(groups) != len(self.param_groups):
            raise ValueError(
                f"For '{cls}', the state dict holds {len(groups)} param groups, but this optimizer has "
                f"{len(self.param_groups)}."
            )
        parsed = []
        for g, group in enumerate(self.param_groups):
            options = {}
            for key, value in group.items():
                if key == "params":
                    continue
                saved = f"group/{g}/{key}"
                if saved not in sd or np.shape(sd[saved]) != np.shape(value):
                    raise ValueError(
                        f"For '{cls}', the state dict's param group {g} has no '{key}' like this one's."
                    )
                options[key] = _parse_option(
                    cls, g, key, value, np.asarray(sd[saved]), sd.get(f"{saved}/none")
                )
            self._check_group({**group, **options}, g, cls)
            parsed.append(options)
        return parsed

    def _load_extra_state(self, parsed: list[dict]) -> None:
        for group, options in zip(self.param_groups, parsed):
            group.update(options)
        self._checked_options = None

    # -- every group's options, checked before a step changes anything --

    # (label, group key, index or None, types, domain) of each hyperparameter (generated)
    _GROUP_CHECKS: tuple = ()
    _OPTIONS: dict = {}  # option name -> (values, supported, reason): a spec's Option arguments
    _checked_options = None  # the options the last step checked: unchanged ones are not re-checked

    def _check_group(self, group: dict, g: int, cls: str) -> None:
        """A group's options as the constructor checks its arguments: lr and weight decay
        (numbers, finite, >= 0) and each hyperparameter's type and domain."""
        _lr_value(group["lr"], cls)
        if "weight_decay" in group:
            _check_group_weight_decay(group["weight_decay"], cls)
        for key, (values, supported, reason) in self._OPTIONS.items():
            check_choice(cls, f"param group {g}'s {key}", group[key], values, supported, reason)
        for label, key, index, types, domain in self._GROUP_CHECKS:
            value = group[key]
            if index is not None:
                if not isinstance(value, (tuple, list)) or len(value) <= index:
                    raise ValueError(
                        f"For '{cls}', param group {g}'s '{key}' is {value!r}; it must be a tuple like "
                        f"the argument '{key}'."
                    )
                value = value[index]
            check_hyper(cls, label, value, types, domain)

    def _check_groups(self, cls: str) -> None:
        """Every group's options, re-checked when any changed since the last step. The
        snapshot copies sequences (a user may change `betas[0]` in place); lr, which a
        scheduler changes every step, is checked by `_lr_value` at every step instead."""
        options = [_snapshot(group) for group in self.param_groups]
        if options == self._checked_options:
            return
        for g, group in enumerate(self.param_groups):
            self._check_group(group, g, cls)
        self._checked_options = options

    def _apply(self, grads: list) -> bool:
        launches, finish = self._step_work(grads)
        self._run_batches(launches)
        finish()
        return True

    def _step_work(self, grads: list) -> tuple[list[tuple], object]:
        """The step over checked gradients, checked and not yet run: its (batch, generator)
        launches and the function that keeps the step once they have run (a torch optimizer
        runs several engines' launches in lockstep, for the group sums over all of them)."""
        cls = type(self).__name__
        self._check_groups(cls)
        lrs = [_lr_value(group["lr"], cls) for group in self.param_groups]
        wds = [float(group.get("weight_decay", 0.0)) for group in self.param_groups]
        hypers = [hyper_values(self._group_hypers(group)) for group in self.param_groups]
        t = self.global_step + 1
        advanced = self._advance(t, lrs, hypers)
        if advanced is not None:  # the kernels' host code reads the new step state and the locals
            hypers = [h + values for h, values in zip(hypers, advanced)]
        steps = self._host_steps(t, lrs, hypers)
        # Every check has passed: once they run, the launches change parameters and state.
        launches = [
            (
                batch,
                self._launch(
                    batch,
                    grads,
                    t=t,
                    lr=lrs[batch.group],
                    wd=wds[batch.group],
                    decays=[True] * len(batch.indices),
                    gc=[False] * len(batch.indices),
                    step=step,
                ),
            )
            for batch, step in zip(self._batches, steps)
        ]

        def finish() -> None:
            self.global_step = t
            self._commit_step_state(self._summed_step_state(advanced))

        return launches, finish


def _parse_option(cls: str, g: int, key: str, current, saved: np.ndarray, none_mask):
    """A saved group option as the type of the current one. NaN is only None where the mask
    (or, for state dicts saved before the mask, the current value) says so; a NaN
    anywhere else is refused, never reinterpreted."""
    if isinstance(current, str) and saved.dtype.kind == "U" and saved.ndim == 0:
        return str(saved)  # a named option, checked with the group's other values
    if saved.dtype.kind not in "fiub":
        raise ValueError(f"For '{cls}', the state dict's param group {g} '{key}' is not numeric: {saved!r}.")
    if isinstance(current, tuple):
        mask = (
            [bool(x) for x in np.asarray(none_mask).reshape(-1)]
            if none_mask is not None
            else [x is None for x in current]
        )
        values = []
        for index, x in enumerate(saved.reshape(-1)):
            if index < len(mask) and mask[index] and math.isnan(x):
                values.append(None)
            else:
                values.append(float(x))
        return tuple(values)
    if isinstance(current, bool):
        return bool(saved)
    if isinstance(current, np.ndarray):
        return saved.astype(current.dtype)
    mask = np.asarray(none_mask if none_mask is not None else [current is None]).reshape(-1)
    if saved.size == 1 and mask.size and bool(mask[0]) and math.isnan(float(saved)):
        return None  # an option saved as None (AdEMAMix's t_alpha_beta3)
    return float(saved) if current is None else type(current)(saved)


def group_hypers(optimizer, group: dict) -> tuple:
    """A group's hyperparameters, in `_HYPER_KEYS` order: each from the group (an index
    into a packed tuple such as `betas`), or the optimizer's attribute (OPTIMIZER_ATTRIBUTE:
    a callable hyperparameter, which no group holds)."""
    return tuple(
        getattr(optimizer, key)
        if index == OPTIMIZER_ATTRIBUTE
        else group[key]
        if index is None
        else group[key][index]
        for key, index in optimizer._HYPER_KEYS
    )


def hyper_values(values) -> tuple:
    """Hyperparameters as floats; None (the dtype's machine epsilon, or no callable) stays None,
    and a callable hyperparameter (a function of the step) stays the callable."""
    return tuple(None if h is None else h if callable(h) else float(h) for h in values)


def _check_group_lr(lr, cls: str):
    """MindSpore's `_build_single_lr`: a number >= 0 (finite) or a 0-d array."""
    if isinstance(lr, np.ndarray):
        if lr.ndim != 0:
            raise ValueError(f"For '{cls}', if 'lr' is an ndarray, then it should be a scalar (0-d).")
        return lr
    if not isinstance(lr, (int, float)):
        raise TypeError(
            f"For '{cls}', the argument 'lr' must be int, float or a 0-d ndarray, but got {type(lr)}."
        )
    if not math.isfinite(lr):
        raise ValueError(f"For '{cls}', the 'learning rate' must be a legal value, but got '{lr}'.")
    if lr < 0:
        raise ValueError(f"For '{cls}', the 'learning rate' must be float and must >= 0, but got '{lr}'.")
    return float(lr)


def _check_group_weight_decay(wd, cls: str) -> float:
    if not isinstance(wd, (int, float)):
        raise TypeError(f"For '{cls}', the argument 'weight_decay' must be int or float, but got {type(wd)}.")
    if not math.isfinite(wd):
        raise ValueError(f"For '{cls}', the 'weight_decay' must be a legal value, but got '{wd}'.")
    if wd < 0:
        raise ValueError(f"For '{cls}', the weight_decay must be greater than or equal to 0.0, but got {wd}.")
    return float(wd)


def _snapshot(group: dict) -> tuple:
    """A group's options but lr and params, by value: sequences copied into tuples."""
    return tuple(
        (key, tuple(value) if isinstance(value, (list, tuple)) else value)
        for key, value in group.items()
        if key not in ("params", "lr")
    )


def _lr_value(lr, cls: str) -> float:
    """A group's lr at step time: whatever a scheduler or the user left in `group['lr']`:
    a real number or a 0-d array, finite and >= 0 (a string or a bool is refused, as the
    constructor refuses them)."""
    if isinstance(lr, (str, bytes, bool)) or not isinstance(lr, (int, float, np.ndarray, np.number)):
        if type(lr).__name__ != "Tensor":  # the torch dialect's engines get floats; a user's Tensor lr
            raise TypeError(
                f"For '{cls}', the learning rate of a param group is {lr!r} ({type(lr).__name__}); it "
                "must be a number. The step was not taken."
            )
    if isinstance(lr, np.ndarray) and lr.ndim != 0:
        raise ValueError(f"For '{cls}', the learning rate of a param group must be a scalar, not {lr!r}.")
    value = float(lr)
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"For '{cls}', the learning rate of a param group is {value}; the step was not taken."
        )
    return value


def check_positive_lr(cls: str, lr) -> None:
    """The optimizer-level lr of the optim dialect: a number or 0-d array > 0 (RAdam's page:
    ValueError for anything else, where MindSpore's code raises TypeError for some)."""
    if isinstance(lr, np.ndarray):
        if lr.ndim != 0:
            raise ValueError(
                f"For {cls}, the lr must be int, float or a 0-d ndarray, but got a {lr.ndim}-d array."
            )
        value = float(lr)
    elif isinstance(lr, (int, float)):
        value = float(lr)
    else:
        raise ValueError(f"For {cls}, the lr must be int, float or a 0-d ndarray, but got {type(lr)}.")
    if value <= 0:
        raise ValueError(f"For {cls}, the lr must be greater than 0.0, but got {value}.")
    if not math.isfinite(value):
        raise ValueError(f"For '{cls}', the 'learning rate' must be a legal value, but got '{value}'.")


def check_weight_decay(cls: str, weight_decay) -> None:
    if not isinstance(weight_decay, (int, float)):
        raise TypeError(
            f"For '{cls}', the argument 'weight_decay' must be int or float, but got {type(weight_decay)}."
        )
    if weight_decay < 0:
        raise ValueError(
            f"For {cls}, the weight_decay must be greater than or equal to 0.0, but got {weight_decay}."
        )
    if not math.isfinite(weight_decay):
        raise ValueError(f"For '{cls}', the 'weight_decay' must be a legal value, but got '{weight_decay}'.")


def unpack_pair(cls: str, name: str, value, count: int = 2) -> tuple:
    """`betas=(b1, b2)`: a sequence of `count`; too few is an IndexError, as in MindSpore."""
    words = {2: "two", 3: "three"}.get(count, str(count))
    if not isinstance(value, (tuple, list)):
        raise TypeError(
            f"For '{cls}', the '{name}' must be a tuple or list of {words} floats, but got {type(value)}."
        )
    if len(value) < count:
        raise IndexError(
            f"For '{cls}', the '{name}' must hold {words} values, but got {len(value)}: {value!r}."
        )
    if len(value) > count:
        raise ValueError(
            f"For '{cls}', the '{name}' must hold {words} values, but got {len(value)}: {value!r}."
        )
    return tuple(value)
