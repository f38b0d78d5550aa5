"""The small IR between the passes and the backends.

A `Kernel` is one flag variant of one spec, split by binding time:
host code (float64, once per step), per-tensor code (once per chunk) and
element code (the fused loop body), with the arrays it loads and stores.
Backends print it; they make no decisions about the math.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp


@dataclass(frozen=True)
class Assignment:
    target: sp.Symbol
    expr: sp.Expr

    def __str__(self) -> str:
        return f"{self.target} = {self.expr}"


@dataclass(frozen=True)
class Array:
    """A per-element array argument: the parameter, its gradient, or a state."""

    symbol: sp.Symbol  # the element value inside the loop, e.g. m
    name: str  # the public name, e.g. "moment1"; "param" and "grad" for w and g


@dataclass(frozen=True)
class Store:
    array: Array
    value: sp.Symbol  # the element-level symbol holding the array's new value


@dataclass(frozen=True)
class Kernel:
    spec_name: str
    variant: tuple[tuple[str, bool], ...]  # (flag name, value) in spec order
    host_inputs: tuple[sp.Symbol, ...]  # t, lr and the hyperparameters
    host: tuple[Assignment, ...]  # float64, once per step, on the host
    scalars: tuple[sp.Symbol, ...]  # step-level values the kernel takes as arguments
    tensor_inputs: tuple[sp.Symbol, ...]  # per-tensor values (one array entry per tensor)
    tensor: tuple[Assignment, ...]  # once per tensor chunk
    arrays: tuple[Array, ...]  # per-element arrays in argument order
    loads: tuple[Array, ...]  # the arrays whose old value the body reads
    element: tuple[Assignment, ...]  # the fused loop body
    stores: tuple[Store, ...]  # only arrays whose value changes

    @property
    def suffix(self) -> str:
        """'' for the all-False variant, else the set flags joined, e.g. 'use_nesterov'."""
        return "__".join(name for name, value in self.variant if value)
