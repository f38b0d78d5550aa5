"""Group sums: each `Rule(x, group_sum(e))` becomes a plain sum of `e` per tensor that the
run-time adds over the step's tensors, and the rules after the last one read the sum
rules' values (`spec.sum_rules`), which the run-time computes between the element stages.

The rules are sequential, and the sum rules run once every group sum is known: an element
rule before the last group sum reads a step state as the step rules left it, one after it as
the sum rules leave it. After single assignment the
rules after it read each sum rule output `d` under its own name, `d_late`: a per-tensor
value from the stage after the sums (the run-time hands it over in Scratch.sum_values).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from optforge.compiler.ir import Assignment, Reduction
from optforge.compiler.spec import group_sum


def late_symbol(symbol: sp.Symbol) -> sp.Symbol:
    """The name the element rules after the group sums read a sum rule's output by."""
    return sp.Symbol(f"{symbol.name}_late")


@dataclass(frozen=True)
class GroupSums:
    reductions: tuple[Reduction, ...]  # plain per-tensor sums, `group` set; `expr` the summand
    summands: tuple[Assignment, ...]  # `<x>_of = e`, where the group sum stood
    late: tuple[tuple[sp.Symbol, sp.Symbol], ...]  # (sum rule output, the name later rules read)


def extract_group_sums(
    assignments: list[Assignment], outputs: tuple[sp.Symbol, ...]
) -> tuple[list[Assignment], GroupSums]:
    """Each `x = group_sum(e)` replaced by its summand `x_of = e` (in place: `e` reads the
    values its position gives it), and each of `outputs` (the sum rules' step states and
    locals) renamed to its late name in every assignment after the last group sum."""
    late = {o: late_symbol(o) for o in outputs}
    last = max(
        (i for i, a in enumerate(assignments) if isinstance(a.expr, group_sum)), default=len(assignments)
    )
    rewritten, reductions, summands = [], [], []
    for i, a in enumerate(assignments):
        if isinstance(a.expr, group_sum):
            summand = Assignment(sp.Symbol(f"{a.target.name}_of"), a.expr.args[0])
            rewritten.append(summand)
            summands.append(summand)
            reductions.append(Reduction(a.target, summand.target, plain=True, group=True))
        elif i > last:
            rewritten.append(Assignment(a.target, a.expr.xreplace(late)))
        else:
            rewritten.append(a)
    if not reductions:
        return assignments, GroupSums((), (), ())
    return rewritten, GroupSums(tuple(reductions), tuple(summands), tuple(late.items()))
