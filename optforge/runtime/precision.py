"""Precision: how a batch's kernels hold each array, chosen when the batch is made.

Kernels compute in their element type `F` (np.float32 or np.float64). Each array
they are handed (the parameter, its gradient, each state) is stored in its own type:
float32, float64, bfloat16 or float16. A stage loads with `load(x, F)`, which widens
what is stored to `F`, and stores with `store(value, T, stochastic, key, counter)`,
which narrows `value` to the storage type `T`, rounding to nearest even, or
stochastically from the counter-based random bits of (`key`, `counter`). The update
in between is the same code for every policy: a policy is a compile-time choice, like
a flag, and each one compiles its own copy of a stage (`Storage` is what the stage's
factory closes over; see optforge.runtime.kernels.per_dtype).

Numba's CPU target has no 16-bit float type (numba#8138), so kernels view 16-bit
arrays as integers holding the bit patterns: bfloat16 as uint16 and float16 as int16.
The integer type is what tells `load` and `store`, at compile time, which exact
conversion to use (optforge.runtime.storage). A parameter kept with
`master_weights=True` is stepped in a float32 master copy (row 0 of the table), and
every store of it also writes the rounded value to the parameter itself: the
`mirror` row.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import types
from numba.extending import overload
from numba.np import numpy_support

from optforge.runtime import storage as conv

# Storage name -> the NumPy type a kernel views such an array as. The two 16-bit storages
# are told apart by their integer types, which is how `load` and `store` pick a conversion
# at compile time (the conversions themselves take either's bits as uint16).
# An "int8" state is viewed as its uint8 codes (optforge.runtime.blockwise reads and writes them).
VIEW_TYPES = {
    "float32": np.float32,
    "float64": np.float64,
    "bfloat16": np.uint16,
    "float16": np.int16,
    "int8": np.uint8,
}
BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2, "int8": 1}
SIXTEEN_BIT = ("bfloat16", "float16")
INT8 = "int8"
# The element loop's block without 8-bit state: larger than any chunk, so a stage's loop over
# blocks runs once per chunk (the plain loop).
WHOLE_CHUNK = 1 << 40


class Storage(NamedTuple):
    """What a stage's factory closes over: per array row of the pointer table, the type a
    kernel views it as and whether its stores round stochastically; the mirror; and, for
    8-bit rows, where their blocks' rows are (optforge.runtime.blockwise)."""

    types: tuple  # per row: np.float32, np.float64, np.uint16 (bfloat16), np.int16 (float16), np.uint8
    stochastic: tuple  # per row: bool
    mirror: int = 0  # the row of the parameter behind a float32 master copy in row 0; 0: none
    mirror_type: type = np.float32  # what the mirror row is viewed as
    # Per row: for an int8 row, the row of its absmax values (its code table, midpoints and
    # buckets are the next three); else 0.
    blocks: tuple = ()
    block: int = WHOLE_CHUNK  # the element loop's block: the 8-bit block where a row is int8


def plain_storage(F, rows: int) -> Storage:
    """Every row stored in the compute type `F`, rounded to nearest: what a stage's factory
    uses when it is given no storage."""
    return Storage((F,) * rows, (False,) * rows, 0, F, (0,) * rows)


class Precision(NamedTuple):
    """A batch's policy, the key its compiled stages are made and shared under: the compute
    type, each row's storage (parameter, gradient, then the variant's states), whether the
    parameter's stores round stochastically, and whether row 0 is a float32 master copy of
    a 16-bit parameter (the parameter's own storage then the last of `rows`)."""

    compute: str
    rows: tuple[str, ...]
    stochastic: bool = False
    master: bool = False

    @property
    def plain(self) -> bool:
        """Every row in the compute type, rounded to nearest: today's kernels exactly."""
        return not (self.stochastic or self.master) and all(r == self.compute for r in self.rows)

    @property
    def int8_rows(self) -> tuple[int, ...]:
        """The rows (states) kept as 8-bit codes, in order: each has four more rows after the
        others (`storage().blocks`): its absmax values, code table, midpoints and buckets."""
        return tuple(k for k, r in enumerate(self.rows) if r == INT8)

    def storage(self) -> Storage:
        from optforge.runtime.quantize import BLOCK

        if not self.master:
            view = tuple(VIEW_TYPES[r] for r in self.rows)
            stochastic = (self.stochastic,) + (False,) * (len(self.rows) - 1)
            mirror, mirror_type = 0, view[0]  # no mirror: row 0 as itself
        else:
            *rows, param = self.rows
            view = tuple(VIEW_TYPES[r] for r in rows) + (VIEW_TYPES[param],)
            stochastic, mirror, mirror_type = (False,) * len(view), len(rows), VIEW_TYPES[param]
        after = {k: len(view) + 4 * j for j, k in enumerate(self.int8_rows)}
        blocks = tuple(after.get(k, 0) for k in range(len(view)))
        return Storage(view, stochastic, mirror, mirror_type, blocks, BLOCK if after else WHOLE_CHUNK)


# -- the loads and stores the kernels call --
#
# `load` and `store` run as written under the CUDA simulator and in plain Python (NumPy
# scalars); in compiled kernels their overloads pick the conversion (optforge.runtime.storage)
# from the argument types, so a stage's code is the same for every policy.

# The integer type a kernel views a 16-bit storage as -> the storage's name.
SIXTEEN_BIT_VIEWS = {np.uint16: "bfloat16", np.int16: "float16"}


def load(x, F):
    """`x` as stored, widened to the compute type `F` (exact)."""
    for view, name in SIXTEEN_BIT_VIEWS.items():
        if isinstance(x, view):
            widen, _, _ = conv.storage_functions(name, F, target="python")
            return F(widen(np.uint16(np.asarray(x).view(np.uint16))))
    return F(x)


def store(value, T, stochastic, key, counter):
    """`value` narrowed to the storage type `T`: to nearest even, or stochastically from the
    random bits of (`key`, `counter`) when `stochastic`."""
    if T in SIXTEEN_BIT_VIEWS:
        compute = np.float64 if isinstance(value, np.float64) else np.float32
        _, narrow, _ = conv.storage_functions(SIXTEEN_BIT_VIEWS[T], compute, stochastic, "python")
        return np.asarray(narrow(compute(value), key, counter)).astype(np.uint16).view(T)[()]
    return T(value)


def _sixteen_bit(t: types.Type) -> str | None:
    """The 16-bit storage a numba type views (SIXTEEN_BIT_VIEWS, as numba types), or None."""
    return {numpy_support.from_dtype(np.dtype(view)): name for view, name in SIXTEEN_BIT_VIEWS.items()}.get(t)


@overload(load, target="cpu")
def _load(x, F):
    name = _sixteen_bit(x)
    if name is not None:
        widen, _, _ = conv.storage_functions(name, F.instance_type.name)
        return lambda x, F: F(widen(np.uint16(x)))
    if isinstance(x, types.Float):
        return lambda x, F: F(x)
    return None


@overload(store, target="cpu")
def _store(value, T, stochastic, key, counter):
    if not isinstance(T, types.NumberClass) or not isinstance(value, types.Float):
        return None
    name = _sixteen_bit(T.instance_type)
    if name is None:
        return lambda value, T, stochastic, key, counter: T(value)
    _, nearest, _ = conv.storage_functions(name, value.name)
    _, rounded, _ = conv.storage_functions(name, value.name, stochastic=True)

    # `stochastic` is a constant of the stage's storage: the branch not taken folds away.
    def narrow(value, T, stochastic, key, counter):
        if stochastic:
            return T(rounded(value, key, counter))
        return T(nearest(value, key, counter))

    return narrow


# -- the policy a class is given: state_dtype, master_weights, stochastic_rounding --

STATE_DTYPES = ("float32", "float64", "bfloat16", "float16", "int8")


def storage_name(dtype) -> str | None:
    """The storage of a parameter of NumPy `dtype` (ml_dtypes' bfloat16 by its name), or None
    (an integer array is never taken for 8-bit codes)."""
    name = np.dtype(dtype).name
    return name if name in BYTES and name != INT8 else None


def numpy_dtype(storage: str) -> np.dtype:
    """The NumPy dtype of an array stored as `storage` (bfloat16: ml_dtypes', imported only then;
    int8: the uint8 codes)."""
    if storage == INT8:
        return np.dtype(np.uint8)
    if storage != "bfloat16":
        return np.dtype(storage)
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - ml_dtypes comes with the test extra
        raise ImportError(
            "bfloat16 state needs ml_dtypes for its NumPy arrays: pip install ml_dtypes"
        ) from None
    return np.dtype(ml_dtypes.bfloat16)


def compute_type(param: str) -> str:
    """What a parameter stored as `param` is stepped in: float64 for float64, else float32."""
    return "float64" if param == "float64" else "float32"


class Policy(NamedTuple):
    """A class's precision options, checked: `state` maps state names to storage (a name
    absent: the parameter's own); `default` is the storage of every other state (None: the
    parameter's)."""

    default: str | None = None
    state: tuple[tuple[str, str], ...] = ()
    master: bool = False
    stochastic: bool = False

    def state_storage(self, name: str, param: str) -> str:
        return dict(self.state).get(name) or self.default or param

    def precision(self, param: str, states: tuple[str, ...]) -> Precision:
        """The Precision of a batch of parameters stored as `param`, with `states`."""
        sixteen = param in SIXTEEN_BIT
        master = self.master and sixteen
        rows = ("float32" if master else param, param, *(self.state_storage(n, param) for n in states))
        return Precision(
            compute_type(param), rows + ((param,) if master else ()), self.stochastic and sixteen, master
        )


def check_policy(
    cls: str, state_dtype, master_weights, stochastic_rounding, states: tuple[str, ...]
) -> Policy:
    """The documented checks of the precision options (TypeError, ValueError), in argument order.
    `states` are the names of the states the class can keep."""
    from optforge.runtime.checks import check_type

    check_type(cls, "state_dtype", state_dtype, ("None", "str", "dict"))
    default, per_state = None, {}
    if isinstance(state_dtype, str):
        default = _check_state_dtype(cls, "state_dtype", state_dtype)
    elif isinstance(state_dtype, dict):
        for name, value in state_dtype.items():
            if name not in states:
                raise ValueError(
                    f"For '{cls}', state_dtype names the state {name!r}, but its states are "
                    f"{', '.join(map(repr, states))}."
                )
            check_type(cls, f"state_dtype[{name!r}]", value, ("str",))
            per_state[name] = _check_state_dtype(cls, f"state_dtype[{name!r}]", value)
    check_type(cls, "master_weights", master_weights, ("bool",))
    check_type(cls, "stochastic_rounding", stochastic_rounding, ("bool",))
    if master_weights and stochastic_rounding:
        raise ValueError(
            f"For '{cls}', master_weights=True and stochastic_rounding=True cannot be combined: a "
            "float32 master copy is stepped exactly, and the parameter is its nearest 16-bit value."
        )
    return Policy(default, tuple(per_state.items()), master_weights, stochastic_rounding)


def _check_state_dtype(cls: str, what: str, value: str) -> str:
    if value not in STATE_DTYPES:
        raise ValueError(
            f"For '{cls}', {what} must be one of {', '.join(map(repr, STATE_DTYPES))} or None, "
            f"but got {value!r}."
        )
    return value


def check_sixteen_bit(cls: str, policy: Policy, dtypes) -> None:
    """master_weights and stochastic_rounding need a 16-bit parameter among all of a class's
    parameters (of NumPy `dtypes`) (ValueError)."""
    stored = [storage_name(d) for d in dtypes]
    if (policy.master or policy.stochastic) and not any(s in SIXTEEN_BIT for s in stored):
        option = "master_weights" if policy.master else "stochastic_rounding"
        raise ValueError(
            f"For '{cls}', {option}=True is for bfloat16 and float16 parameters, but every parameter "
            f"is {' or '.join(sorted(set(stored)))}."
        )


def check_wide_only(cls: str, flags: dict[str, bool], dtypes) -> None:
    """A flag set whose kernels step only float32 and float64 parameters (a spec's
    `Flag(wide_only=True)`, StableAdamW's kahan_sum) refuses 16-bit ones (ValueError)."""
    for name, value in flags.items():
        sixteen = sorted({storage_name(d) for d in dtypes} & set(SIXTEEN_BIT))
        if value and sixteen:
            raise ValueError(
                f"For '{cls}', {name}=True is not implemented for {' and '.join(sixteen)} parameters; "
                f"pass {name}=False to step them (with float32 and float64 parameters it changes nothing)."
            )


def check_parameters(
    cls: str, policy: Policy, parameters, precisions: list[Precision], whole: bool = True
) -> None:
    """What the policy cannot do with these parameters (ValueError), before anything is made.
    `whole`: they are all of the class's parameters (a torch engine steps only some of them,
    and its owner checks all: a cohort of float32 ones is stepped plainly)."""
    if whole:
        check_sixteen_bit(cls, policy, [p.dtype for p in parameters])
    for p, precision in zip(parameters, precisions):
        wide = [r for r in precision.rows[2:] if BYTES[r] > BYTES[precision.compute]]
        if wide:
            raise ValueError(
                f"For '{cls}', state stored as {wide[0]} is wider than the {precision.compute} that "
                f"parameter '{p.name}' ({p.dtype.name}) is stepped in; choose float32 or narrower."
            )
