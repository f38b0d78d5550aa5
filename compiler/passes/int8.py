"""Which 8-bit table may store each state, or why none may (issue 17).

A state stored as blockwise codes (optforge/runtime/quantize.py) reads back with an error of up
to a few per cent of its block's largest value. That is sound for a *moment*: a running statistic
of the gradient, whose error written at one step is damped by the statistic's own decay at the
next and which the update only uses arithmetically. The rule, checked in every flag variant in
which the state changes (a variant that leaves it as it is reads and writes the same code):

1. it is element-shaped (blocks run over a parameter-shaped array; Adafactor's row and column
   factors are already small);
2. its new value reads its old value, outside branch conditions: a snapshot (Adan's previous
   gradient, AdamOffload's delta, Rprop's previous gradient) is used as an exact copy, so a
   code's error enters every use in full;
3. its new value reads the gradient outside branch conditions: otherwise it is no statistic
   of the gradient but a step size or a counter (Rprop's step sizes, driven by the gradient's
   sign only), whose multiplicative updates would compound the codes' error;
4. no branch condition of the step reads it, directly or through element values computed from
   it (Rprop's `g*prev > 0`; FTRL's `l1 < |linear|`, which its accumulator reaches through
   `linear`): a code's error could flip the branch.
   Through a per-tensor reduction it may (Lamb's `norm(r) > 0`): an element's error reaches a
   norm averaged with all the others, and such a condition decides for the tensor, not for one
   element; `sign()` is no branch (Lion's `sign(c)`: the signed table keeps the sign of every
   value it does not round to 0, as bitsandbytes' 8-bit Lion relies on);
5. without weight decay its new value does not read the parameter: a state holding parameter
   values (ASGD's average of the weights) needs the weights' own precision, far finer than
   8 bits around their magnitude.

A state that passes takes the unsigned table where `passes/sign.py` proves it non-negative at
every step, the signed table otherwise (a signed table is sound for any value: per-block absmax
scaling makes the magnitude irrelevant). `int8_table` raises `SpecError` naming the state and the
rules it breaks; `int8_storage` gives every state's verdict, for the documentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from optforge.compiler import spec as S
from optforge.compiler.memo import per_spec
from optforge.compiler.passes.sign import ANY, NONNEGATIVE, spec_signs, state_of, variant_updates
from optforge.compiler.passes.specialize import specialize

UNSIGNED = "unsigned"
SIGNED = "signed"


@dataclass(frozen=True)
class Storage:
    """One state's 8-bit verdict: `table` "unsigned", "signed", or None (float only), and why."""

    state: str  # the public name
    sign: str  # passes/sign.py's "nonnegative", "nonpositive" or "any"
    table: str | None
    reasons: tuple[str, ...]  # why refused, or why this table


def value_symbols(expr: sp.Expr) -> set[sp.Symbol]:
    """The free symbols `expr`'s value reads: those of Piecewise conditions only, left out."""
    if isinstance(expr, sp.Piecewise):
        return set().union(*(value_symbols(e) for e, _ in expr.args))
    if isinstance(expr, sp.Symbol):
        return {expr}
    return set().union(set(), *(value_symbols(a) for a in expr.args))


def _outside_reductions(expr) -> set[sp.Symbol]:
    """The free symbols of `expr` not inside a per-tensor (or row, column, matrix) reduction."""
    hidden = {r: sp.Dummy() for r in sp.sympify(expr).atoms(*S.REDUCTIONS)}
    return sp.sympify(expr).xreplace(hidden).free_symbols - set(hidden.values())


def _conditions(expr: sp.Expr):
    """Every Piecewise condition in `expr`."""
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.Piecewise):
            yield from (c for _, c in node.args if c not in (sp.true, sp.false))


def deciding_condition(rules: list[S.Rule], state: sp.Symbol) -> tuple[sp.Expr, sp.Symbol] | None:
    """The first branch condition that reads `state`'s value at the start of the step, directly
    or through element values computed from it (not through a reduction), with the symbol it
    reads; None if there is none (rule 4 of the module's docstring)."""
    tainted = {state}
    for rule in rules:
        expr = S.unfused(sp.sympify(rule.expr))
        for condition in _conditions(expr):
            read = _outside_reductions(condition) & tainted
            if read:
                return condition, sorted(read, key=str)[0]
        if _outside_reductions(expr) & tainted:
            tainted.add(rule.target)
    return None


def _short(expr: sp.Expr, limit: int = 60) -> str:
    text = str(expr)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _refusals(spec: S.Spec, state: S.State) -> list[str]:
    """Rules 1-5 of the module's docstring that `state` breaks in some variant, in words."""
    if state.shape != "element":
        return [
            f"is {state.shape}-shaped: 8-bit blocks cover element-shaped states (a factored state is "
            "already small)"
        ]
    found: dict[str, str] = {}
    for variant in spec.variants():
        if not S.active(state.when, variant):
            continue
        new = variant_updates(spec, variant)[state.symbol]
        if new == state.symbol:
            continue  # unchanged here: its codes are read and written back as they are
        values, shown = value_symbols(new), _short(new)
        if state.symbol not in values:
            found.setdefault(
                "snapshot",
                f"is a snapshot, not a running statistic: its new value ({shown}) "
                "does not read its old one, so a code's error would enter every use in full",
            )
        if S.g not in values:
            found.setdefault(
                "statistic",
                f"is not a statistic of the gradient: its new value ({shown}) "
                "reads the gradient only in branch conditions, if at all (a step size or "
                "a counter, whose exact value matters)",
            )
        decided = deciding_condition(specialize(spec, variant), state.symbol)
        if decided is not None:
            condition, via = decided
            through = "" if via == state.symbol else f" through '{via}'"
            found.setdefault(
                "branch",
                f"decides a branch: the condition {condition} reads it{through}, "
                "and a code's error could flip it",
            )
        if S.w in new.xreplace({S.weight_decay: 0}).free_symbols:
            found.setdefault(
                "parameter",
                "holds parameter values: without weight decay its new value "
                "still reads the parameter w, and an average or copy of the weights needs "
                "their precision",
            )
    return list(found.values())


@per_spec  # the docs and every kernel of the CPU module ask
def int8_storage(spec: S.Spec) -> tuple[Storage, ...]:
    """Every state's verdict, in the spec's order (the module's docstring gives the rule)."""
    signs = spec_signs(spec)
    verdicts = []
    for state in spec.state:
        sign = signs[state.name]
        refused = _refusals(spec, state)
        if refused:
            verdicts.append(Storage(state.name, sign, None, tuple(refused)))
        elif sign == NONNEGATIVE:
            verdicts.append(Storage(state.name, sign, UNSIGNED, ("proven non-negative at every step",)))
        else:
            why = "its sign is not proven" if sign == ANY else f"proven {sign}"
            verdicts.append(Storage(state.name, sign, SIGNED, (why,)))
    return tuple(verdicts)


def int8_table(spec: S.Spec, state: str | sp.Symbol) -> str:
    """ "unsigned" or "signed": the table `state` (a public name or symbol) may be stored in;
    `SpecError` naming the state and the reasons where it may not be stored as 8-bit codes."""
    name = state_of(spec, state).name
    verdict = next(v for v in int8_storage(spec) if v.state == name)
    if verdict.table is None:
        raise S.SpecError(
            f"{spec.where}: state '{name}' cannot be stored as 8-bit codes: it "
            + "; it ".join(verdict.reasons)
        )
    return verdict.table
