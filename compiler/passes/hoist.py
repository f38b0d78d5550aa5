"""Hoisting: move everything that does not vary per element out of the loop.

`sympy.cse` alone does not do this: in `w - lr*sqrt(1 - b2**t)/(1 - b1**t)*m/d`
the invariant factors are arguments of one Mul beside `m` and `d`, never a
subexpression of their own. This pass splits each Add and Mul into its
invariant and varying arguments and replaces the invariant part (when it is
more than a lone symbol or number) by a fresh scalar. Step-level scalars are
computed on the host in float64; tensor-level ones once per chunk, after
their own step-level parts have been hoisted to the host in turn.

For Adam the result is `w + s0*m/(sqrt(v) + eps)` with
`s0 = -lr*sqrt(1 - beta2**t)/(1 - beta1**t)`: the negated step size makes
the update one fused multiply-add, and no power is left in the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp
from sympy.core.relational import Relational
from sympy.functions.elementary.piecewise import ExprCondPair

from optforge.compiler.ir import Assignment
from optforge.compiler.passes.levels import Level, assign_levels, level_of
from optforge.compiler.spec import SpecError, rounded_sub

# Hoisted scalars are named s0, s1, ... (host) and u0, u1, ... (per tensor).
PREFIX = {Level.STEP: "s", Level.TENSOR: "u"}


@dataclass
class Hoisted:
    step: list[Assignment] = field(default_factory=list)
    tensor: list[Assignment] = field(default_factory=list)
    element: list[Assignment] = field(default_factory=list)
    levels: dict[sp.Symbol, Level] = field(default_factory=dict)


class _Hoister:
    def __init__(self, levels: dict[sp.Symbol, Level]):
        self.levels = levels
        self.tables: dict[Level, dict[sp.Expr, sp.Symbol]] = {Level.STEP: {}, Level.TENSOR: {}}

    def level(self, expr: sp.Expr) -> Level:
        # A rounded_sub is computed in the element code (its operands may be hoisted).
        if isinstance(expr, sp.Basic) and expr.has(rounded_sub):
            return Level.ELEMENT
        return level_of(expr, self.levels)

    def scalar(self, expr: sp.Expr) -> sp.Symbol:
        """The scalar that holds invariant `expr` (the same one for equal expressions)."""
        level = max(self.level(expr), Level.STEP)  # constants are folded on the host
        if level == Level.TENSOR:
            expr = self.visit(expr, below=Level.TENSOR)
        table = self.tables[level]
        if expr not in table:
            symbol = sp.Symbol(f"{PREFIX[level]}{len(table)}")
            table[expr] = symbol
            self.levels[symbol] = level
        return table[expr]

    def visit(self, expr: sp.Expr, below: Level) -> sp.Expr:
        """`expr` with each maximal subexpression of level < `below` made a scalar."""
        if not _is_value(expr):  # conditions and (value, condition) pairs: only their parts
            return expr.func(*[self.visit(a, below) for a in expr.args]) if expr.args else expr
        if isinstance(expr, rounded_sub):  # its operands hoisted, the subtraction left in the loop
            return expr.func(
                *[self._hoisted(a) if self.level(a) < below else self.visit(a, below) for a in expr.args]
            )
        if self.level(expr) < below:
            return expr if expr.is_Atom else self.scalar(expr)
        if isinstance(expr, (sp.Add, sp.Mul)):
            invariant = [a for a in expr.args if self.level(a) < below]
            varying = [self.visit(a, below) for a in expr.args if self.level(a) >= below]
            if isinstance(expr, sp.Mul) and _only_divisors(invariant):
                # `x / c` stays a division by c (torch's `x.div(c)`), not a product with 1/c.
                coefficient = [a for a in invariant if a.is_Number]
                divisor = sp.Mul(*(1 / a for a in invariant if not a.is_Number))
                return expr.func(*coefficient, *varying, 1 / self._hoisted(divisor))
            if len(invariant) > 1:
                invariant = [self.scalar(expr.func(*invariant))]
            elif invariant:
                invariant = [self._hoisted(invariant[0])]
            return expr.func(*invariant, *varying)
        if expr.args:
            return expr.func(*[self.visit(a, below) for a in expr.args])
        return expr

    def _hoisted(self, invariant: sp.Expr) -> sp.Expr:
        """An invariant value as the kernel reads it: itself if a symbol or number, else a scalar."""
        return invariant if invariant.is_Atom else self.scalar(invariant)


def _only_divisors(invariant: list[sp.Expr]) -> bool:
    """Whether a product's invariant factors are divisors, numbers aside (`-x/c`, not `lr*x/c`)."""
    divisors = [a for a in invariant if not a.is_Number]
    return bool(divisors) and all(a.is_Pow and a.exp.is_negative for a in divisors)


def _is_value(expr) -> bool:
    """A number-valued expression (not a condition, and not a Piecewise's pair)."""
    return isinstance(expr, sp.Expr) and not isinstance(expr, (Relational, ExprCondPair))


def hoist(assignments: list[Assignment], levels: dict[sp.Symbol, Level]) -> Hoisted:
    """Split `assignments` (single-assignment form) by binding-time level.

    `levels` gives the level of every input symbol. Whole assignments below
    ELEMENT level move to the host or the chunk prologue as they are; the
    invariant parts of element-level ones become hoisted scalars.
    """
    levels = assign_levels(assignments, levels)
    hoister = _Hoister(levels)
    result = Hoisted()
    for a in assignments:
        level = levels[a.target]
        if level != Level.ELEMENT and a.expr.has(rounded_sub):
            raise SpecError(
                f"'{a.target}': rounded_sub is computed per element, in a rule that varies per element"
            )
        if level == Level.ELEMENT:
            result.element.append(Assignment(a.target, hoister.visit(a.expr, Level.ELEMENT)))
        elif level == Level.TENSOR:
            result.tensor.append(Assignment(a.target, hoister.visit(a.expr, Level.TENSOR)))
        else:
            result.step.append(a)
    result.step += [Assignment(s, e) for e, s in hoister.tables[Level.STEP].items()]
    result.tensor += [Assignment(s, e) for e, s in hoister.tables[Level.TENSOR].items()]
    result.levels = hoister.levels
    return result
