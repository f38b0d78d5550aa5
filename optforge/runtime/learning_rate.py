"""Learning-rate and weight-decay forms of the nn dialect, as MindSpore accepts them."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np


class LearningRateSchedule:
    """Base class of a dynamic learning rate: a callable of the step (0 at the first update).

    Subclasses implement `construct(global_step)`, as in MindSpore.
    """

    def construct(self, global_step: int) -> float:
        raise NotImplementedError

    def __call__(self, global_step: int):
        # Converted and range-checked where the step uses it (LearningRate.at).
        return self.construct(global_step)


class ExponentialDecayLR(LearningRateSchedule):
    """`learning_rate * decay_rate ** (step / decay_steps)` (floored when `is_stair`)."""

    def __init__(self, learning_rate: float, decay_rate: float, decay_steps: int, is_stair=False):
        if not isinstance(decay_steps, int) or isinstance(decay_steps, bool) or decay_steps <= 0:
            raise ValueError(
                f"For 'ExponentialDecayLR', the 'decay_steps' must be a positive int, "
                f"but got {decay_steps!r}."
            )
        self.learning_rate = float(learning_rate)
        self.decay_rate = float(decay_rate)
        self.decay_steps = decay_steps
        self.is_stair = bool(is_stair)

    def construct(self, global_step: int) -> float:
        p = global_step / self.decay_steps
        if self.is_stair:
            p = math.floor(p)
        return self.learning_rate * self.decay_rate**p


class LearningRate:
    """The learning rate of one group at each step `k` (0 at the first update)."""

    def __init__(self, value: float | None = None, values=None, schedule=None):
        self.value = value
        self.values = values
        self.schedule = schedule

    @property
    def is_dynamic(self) -> bool:
        return self.value is None

    def at(self, k: int, cls_name: str) -> float:
        if self.value is not None:
            return self.value
        if self.schedule is not None:
            # A schedule's value is known only now: checked before the step changes anything.
            return _checked_step_value(self.schedule(k), "learning rate", k, cls_name)
        if k >= len(self.values):
            raise RuntimeError(
                f"For '{cls_name}', the dynamic learning rate has {len(self.values)} values, "
                f"so there is no learning rate for step {k + 1}; the step was not taken."
            )
        return float(self.values[k])


def _checked_step_value(value, what: str, k: int, cls_name: str) -> float:
    """A schedule's value at step `k`: a finite number >= 0, or a ValueError (nothing stepped)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"For '{cls_name}', the {what} schedule returned {value!r} at step {k}, not a number; "
            "the step was not taken."
        ) from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(
            f"For '{cls_name}', the {what} schedule returned {number} at step {k}; it must be finite "
            "and >= 0. The step was not taken."
        )
    return number


def preprocess_learning_rate(learning_rate, cls_name: str) -> LearningRate:
    """Check a learning rate in any accepted form (MindSpore's `_preprocess_single_lr`)."""
    if isinstance(learning_rate, (int, float)):  # bool too, as 1.0 or 0.0
        value = float(learning_rate)
        if not math.isfinite(value):
            raise ValueError(
                f"For '{cls_name}', the 'learning rate' must be a legal value, but got '{value}'."
            )
        if value < 0:
            raise ValueError(
                f"For '{cls_name}', the 'learning rate' must be float and must >= 0, "
                f"but got '{value}' with type '{type(learning_rate).__name__}'."
            )
        return LearningRate(value=value)
    if isinstance(learning_rate, LearningRateSchedule):
        return LearningRate(schedule=learning_rate)
    if isinstance(learning_rate, np.ndarray):
        return _from_array(learning_rate, cls_name)
    if isinstance(learning_rate, Iterable):
        try:
            values = np.array(list(learning_rate), dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"For '{cls_name}', the iterable 'learning_rate' must hold numbers: {error}"
            ) from None
        return _from_array(values, cls_name)
    raise TypeError(
        f"For '{cls_name}', the argument 'learning_rate' must be int, float, ndarray, Iterable "
        f"or LearningRateSchedule, but got {type(learning_rate)}."
    )


def _from_array(array: np.ndarray, cls_name: str) -> LearningRate:
    if array.ndim > 1:
        raise ValueError(
            f"For '{cls_name}', if 'learning_rate' is an ndarray, then the dimension of it should be "
            f"0 or 1, but got {array.ndim}."
        )
    if array.dtype.kind not in "fiub":
        raise ValueError(f"For '{cls_name}', the 'learning_rate' array must hold numbers, not {array.dtype}.")
    values = array.astype(np.float64)
    # MindSpore does not range-check an array learning rate; a NaN, infinite or negative one
    # would step the parameters into NaN, so every value is checked here, as a number is.
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        index = int(np.flatnonzero(bad.reshape(-1))[0])
        raise ValueError(
            f"For '{cls_name}', the 'learning rate' must be finite and >= 0 at every step, but "
            f"value {index} is {values.reshape(-1)[index]}."
        )
    if array.ndim == 0:
        return LearningRate(value=float(values))
    if array.size == 0:
        raise ValueError(f"For '{cls_name}', the dynamic 'learning_rate' must not be empty.")
    return LearningRate(values=values)


class WeightDecay:
    """A group's weight decay at step `k`: a number, or a callable of the step."""

    def __init__(self, value: float | None = None, schedule: Callable | None = None):
        self.value = value
        self.schedule = schedule

    @property
    def is_dynamic(self) -> bool:
        return self.schedule is not None

    @property
    def decays(self) -> bool:
        """Whether parameters of the group are decayed at all (MindSpore: wd > 0 or a Cell)."""
        return self.is_dynamic or self.value > 0

    def at(self, k: int, cls_name: str = "") -> float:
        if self.schedule is None:
            return self.value
        return _checked_step_value(self.schedule(k), "weight decay", k, cls_name)


def preprocess_weight_decay(weight_decay, cls_name: str) -> WeightDecay:
    if isinstance(weight_decay, (int, float)):  # bool too
        value = float(weight_decay)
        if not math.isfinite(value):
            raise ValueError(
                f"For '{cls_name}', the 'weight_decay' must be a legal value, but got '{value}'."
            )
        if value < 0:
            raise ValueError(
                f"For '{cls_name}', the 'weight_decay' must be float and must >= 0, "
                f"but got '{value}' with type '{type(weight_decay).__name__}'."
            )
        return WeightDecay(value=value)
    if callable(weight_decay):
        return WeightDecay(schedule=weight_decay)
    raise TypeError(
        f"For '{cls_name}', the argument 'weight_decay' must be int, float or a callable of the "
        f"step (such as a LearningRateSchedule), but got {type(weight_decay)}."
    )
