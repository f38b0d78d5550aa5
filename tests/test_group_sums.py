"""Group sums (`group_sum`) and sum rules in the spec language: the pass that extracts them
(compiler/passes/group_sums.py), a toy spec lowered, and every misuse a SpecError naming
the rule. Prodigy (tests/test_prodigy.py) runs them end to end against its reference.
"""

import pytest
import sympy as sp

from optforge.compiler.ir import FINALIZE, PASS1, PASS3, Assignment, Space
from optforge.compiler.lower import lower
from optforge.compiler.passes.group_sums import extract_group_sums
from optforge.compiler.spec import Hyper, Rule, Spec, SpecError, State, StepState, g, group_sum, w


def test_extract_group_sums_renames_the_later_reads():
    d, x, y, z = sp.symbols("d x y z")
    assignments = [
        Assignment(sp.Symbol("m_new"), d * g),
        Assignment(x, group_sum(sp.Symbol("m_new") * w)),
        Assignment(sp.Symbol("w_new"), w - d * sp.Symbol("m_new")),
    ]
    rewritten, found = extract_group_sums(assignments, (d,))
    assert [str(a) for a in rewritten] == ["m_new = d*g", "x_of = m_new*w", "w_new = -d_late*m_new + w"]
    assert [(r.symbol, r.expr, r.plain, r.group) for r in found.reductions] == [
        (x, sp.Symbol("x_of"), True, True)
    ]
    assert found.late == ((d, sp.Symbol("d_late")),)
    assert extract_group_sums(assignments[:1], (d,))[0] == assignments[:1]  # no group sum: as it was


def _spec(**changes):
    d, total, m = sp.symbols("d total m")
    fields = dict(
        name="toy",
        title="Toy",
        source="specs/toy.py",
        hypers=[Hyper(sp.Symbol("d0"), ("float",), 1.0, "start")],
        flags=[],
        state=[State(m, 0, "m", "momentum")],
        step_state=[StepState(d, sp.Symbol("d0"), "d", "estimate")],
        rules=[Rule(m, m + g), Rule(total, group_sum(m * m)), Rule(w, w - d * m)],
        sum_rules=[Rule(d, d + total)],
        decay="decoupled",
    )
    return Spec(**(fields | changes))


def test_a_spec_with_a_group_sum_builds():
    [kernel] = lower(_spec(), {})
    assert [name.name for _, name in kernel.late] == ["d_late"]
    first, last = (kernel.region(Space.ELEMENT, phase) for phase in (PASS1, PASS3))
    # pass 1 updates m and sums m*m; the later pass reads the sum rules' d and moves w
    assert [(r.symbol.name, r.group) for r in first.reductions] == [("total", True)]
    assert [s.array.name for s in first.stores] == ["m"] and not last.reductions
    assert [s.array.name for s in last.stores] == ["param"]
    # the finalize between them reads d_late (from the sum rules' values) for the update's factor
    finalize = kernel.region(Space.TENSOR, FINALIZE)
    assert [ld.value.name for ld in finalize.loads] == ["d_late"]
    assert [str(a) for a in finalize.body] == ["u0 = -d_late"]


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            dict(rules=[Rule(sp.Symbol("m"), sp.Symbol("m") + 2 * group_sum(g)), Rule(w, w)]),
            "whole expression",
        ),
        (
            dict(
                rules=[
                    Rule(sp.Symbol("m"), g),
                    Rule(sp.Symbol("total"), group_sum(g)),
                    Rule(w, w * sp.Symbol("total")),
                ]
            ),
            "only the sum rules read a group sum",
        ),
        (dict(sum_rules=[], step_rules=[Rule(sp.Symbol("d"), sp.Symbol("d"))]), "need sum rules"),
        (dict(sum_rules=[Rule(sp.Symbol("d"), sp.Symbol("d") + g)]), "reads 'g'"),
        (
            dict(
                sum_rules=[Rule(sp.Symbol("m"), sp.Symbol("total"))],
                step_rules=[Rule(sp.Symbol("d"), sp.Symbol("d"))],
            ),
            "cannot assign to 'm'",
        ),
        (
            dict(
                rules=[Rule(sp.Symbol("m"), g), Rule(w, w)], sum_rules=[Rule(sp.Symbol("d"), sp.Symbol("d"))]
            ),
            "no rule is a group sum",
        ),
        (
            dict(
                rules=[
                    Rule(sp.Symbol("m"), g),
                    Rule(sp.Symbol("total"), group_sum(sp.Integer(1))),
                    Rule(w, w),
                ]
            ),
            "does not vary",
        ),
    ],
)
def test_misused_group_sums_are_spec_errors(changes, message):
    with pytest.raises(SpecError, match=message):
        _spec(**changes)


def test_the_rules_between_two_group_sums_read_the_step_rules_values():
    """The sum rules run once every group sum is known: a rule between two sums reads d as it
    was (and a second sum of it is a sum of the old d's values); only the rules after the last
    one read the sum rules' d."""
    d, a, b, x = sp.symbols("d a b x")
    assignments = [
        Assignment(a, group_sum(g)),
        Assignment(x, d * g),
        Assignment(b, group_sum(x)),
        Assignment(sp.Symbol("w_new"), w - d),
    ]
    rewritten, _ = extract_group_sums(assignments, (d,))
    assert [str(r) for r in rewritten] == ["a_of = g", "x = d*g", "b_of = x", "w_new = -d_late + w"]
