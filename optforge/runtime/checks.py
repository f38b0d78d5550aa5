"""Argument checks with MindSpore's exception types and messages.

Every check names the class, the argument and the offending value, as
MindSpore's ``_checkparam`` does, so users porting code see familiar errors.
The generated classes call these with the types and domains declared in the
specs; the hand-written dialect bases call them for the shared arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Python type names accepted by `check_type`. `bool` is a subclass of `int`,
# so "int" admits True/False exactly as MindSpore's checks do; "float" does not.
# "numpy.floating" admits NumPy float scalars (np.float32 is not a `float`).
# "None" admits None, which a spec's hyperparameter documents (Adafactor's eps1: the dtype's epsilon).
_TYPES = {
    "float": (float,),
    "int": (int,),
    "bool": (bool,),
    "numpy.floating": (np.floating,),
    "None": (type(None),),
    "str": (str,),
    "dict": (dict,),
}


# The "index" in a class's _HYPER_KEYS of a hyperparameter kept as an attribute of the optimizer,
# not in its param groups: a spec's callable hyperparameter (a function of the step).
OPTIMIZER_ATTRIBUTE = "attribute"


def type_name(value) -> str:
    return type(value).__name__


def check_type(cls_name: str, arg: str, value, types: tuple[str, ...]) -> None:
    """Raise TypeError unless `value` is an instance of one of `types` (names)."""
    accepted = tuple(t for name in types if name != "callable" for t in _TYPES[name])
    if isinstance(value, bool) and "bool" not in types and "int" not in types:
        ok = False
    else:
        # "callable": a function of the step (a spec's callable hyperparameter, ADOPT's clip_lambda).
        ok = isinstance(value, accepted) or ("callable" in types and callable(value))
    if not ok:
        wanted = "' or '".join(t for t in types if t != "numpy.floating")
        raise TypeError(
            f"For '{cls_name}', the type of '{arg}' should be '{wanted}', but got type '{type_name(value)}'."
        )


@dataclass(frozen=True)
class Interval:
    """A real interval; the run-time form of a spec's SymPy domain.

    Infinite ends are always open and non-finite values never belong, so
    `Interval(0, inf, left_open=True)` is MindSpore's "positive float".
    """

    lower: float
    upper: float
    left_open: bool = False
    right_open: bool = False

    def __contains__(self, value: float) -> bool:
        x = float(value)
        if not math.isfinite(x):
            return False
        above = x > self.lower if self.left_open else x >= self.lower
        below = x < self.upper if self.right_open else x <= self.upper
        return above and below

    @property
    def is_half_line(self) -> bool:
        return math.isinf(self.upper)

    def describe(self) -> str:
        """The condition in words, e.g. '> 0' or 'in range of (0.0, 1.0)'."""
        if self.is_half_line:
            return f"{'>' if self.left_open else '>='} {self.lower:g}"
        if math.isinf(self.lower):
            return f"{'<' if self.right_open else '<='} {self.upper:g}"
        left = "(" if self.left_open else "["
        right = ")" if self.right_open else "]"
        return f"in range of {left}{float(self.lower)}, {float(self.upper)}{right}"

    def __repr__(self) -> str:
        def num(x: float) -> str:
            if math.isinf(x):
                return "math.inf" if x > 0 else "-math.inf"
            return repr(float(x))

        return (
            f"Interval({num(self.lower)}, {num(self.upper)}, "
            f"left_open={self.left_open}, right_open={self.right_open})"
        )


def check_domain(cls_name: str, arg: str, value, domain: Interval) -> None:
    """Raise ValueError unless `value` lies in `domain` (NaN never does)."""
    if value in domain:
        return
    if domain.is_half_line:
        if not math.isfinite(float(value)):
            raise ValueError(f"For '{cls_name}', the '{arg}' must be a legal value, but got '{value}'.")
        raise ValueError(
            f"For '{cls_name}', the '{arg}' must be float and must {domain.describe()}, "
            f"but got '{value}' with type '{type_name(value)}'."
        )
    raise ValueError(
        f"For '{cls_name}', the '{arg}' must be {domain.describe()}, "
        f"but got {value} with type '{type_name(value)}'."
    )


def check_hyper(cls_name: str, arg: str, value, types: tuple[str, ...], domain: Interval | None):
    """Type first, then domain: the order MindSpore checks in."""
    check_type(cls_name, arg, value, types)
    if domain is not None and value is not None:
        check_domain(cls_name, arg, value, domain)


def check_choice(cls_name: str, arg: str, value, values: tuple, supported: tuple, reason: str) -> None:
    """An option argument (a spec's `Option`): one of `values` (else ValueError, as the
    reference's validate_options), and among those `supported` (else NotImplementedError)."""
    # By type as well: 1 is not True, and "adamw" is not a bool.
    same = [v for v in values if type(v) is type(value) and v == value]
    if not same:
        choices = " or ".join(repr(v) for v in values)
        raise ValueError(f"For '{cls_name}', '{arg}' must be one of ({choices}), but got {value!r}.")
    if value not in supported:
        raise NotImplementedError(f"For '{cls_name}', {arg}={value!r} is not supported: {reason}")


def unpack_tuple(cls_name: str, arg: str, value, count: int = 2) -> tuple:
    """MindSpore's nn checks of `etas=(a, b)`: a tuple (TypeError), of `count` items (ValueError)."""
    if not isinstance(value, tuple):
        raise TypeError(f"For {cls_name}, {arg} must be a tuple, but got {type(value)}.")
    if len(value) != count:
        raise ValueError(
            f"For {cls_name}, {arg} must be a tuple with the size of {count}, but got {len(value)}."
        )
    return value
