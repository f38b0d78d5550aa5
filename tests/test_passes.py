"""Unit tests of each compiler pass on tiny inputs."""

import sympy as sp

from optforge.compiler.ir import FINALIZE, Assignment, Space
from optforge.compiler.lower import lower
from optforge.compiler.passes.cse import eliminate_common_subexpressions, prune, schedule
from optforge.compiler.passes.hoist import hoist
from optforge.compiler.passes.levels import Level, assign_levels, level_of
from optforge.compiler.passes.specialize import specialize
from optforge.compiler.passes.ssa import to_ssa
from optforge.compiler.spec import Flag, Hyper, Rule, Spec, State, g, lr, t, w, weight_decay
from optforge.specs.adam import SPEC as ADAM

b, m, flag = sp.symbols("b m flag")
s0, s1, u0, x0 = sp.symbols("s0 s1 u0 x0")
E, S, T = Level.ELEMENT, Level.STEP, Level.TENSOR
LEVELS = {w: E, g: E, m: E, b: S, lr: S, t: S, weight_decay: T}


def element_regions(kernel):
    """A kernel's element loops (its stages), in phase order."""
    return [r for r in kernel.regions if r.space == Space.ELEMENT]


def tiny(rules, state=(State(m, 0, "m", "m"),)):
    return Spec(
        "tiny",
        "Tiny",
        "specs/tiny.py",
        [Hyper(b, ("float",), 0.5, "b")],
        [Flag(flag, "f")],
        state,
        rules,
        decay="decoupled",
    )


# -- specialize --


def test_specialize_collapses_piecewise_and_drops_rules_of_other_variants():
    spec = tiny(
        [
            Rule(m, b * m + g),
            Rule(m, m + 1, when=flag),
            Rule(w, w - lr * sp.Piecewise((2 * m, flag), (m, True))),
        ][::2]
    )
    assert [str(r) for r in specialize(spec, {flag: False})] == ["m <- b*m + g", "w <- -lr*m + w"]
    assert [str(r) for r in specialize(spec, {flag: True})] == ["m <- b*m + g", "w <- -2*lr*m + w"]


def test_specialize_drops_a_rule_whose_flag_is_off():
    d = sp.Symbol("d")
    spec = tiny([Rule(m, b * m + g), Rule(d, 2 * g, when=flag), Rule(w, w - lr * m)])
    assert [str(r.target) for r in specialize(spec, {flag: False})] == ["m", "w"]
    assert [str(r.target) for r in specialize(spec, {flag: True})] == ["m", "d", "w"]


# -- ssa --


def test_ssa_renames_updated_inputs_and_later_reads():
    d = sp.Symbol("d")
    rules = [Rule(d, 2 * g), Rule(m, b * m + d), Rule(w, w - lr * m)]
    assignments, outputs = to_ssa(rules, {w, g, m})
    assert [str(a) for a in assignments] == ["d = 2*g", "m_new = b*m + d", "w_new = -lr*m_new + w"]
    assert outputs == {m: sp.Symbol("m_new"), w: sp.Symbol("w_new")}


# -- levels --


def test_level_is_the_highest_level_of_the_free_symbols():
    assert level_of(sp.Integer(3), LEVELS) == Level.CONST
    assert level_of(1 - b**t, LEVELS) == S
    assert level_of(lr * weight_decay, LEVELS) == T
    assert level_of(lr * m, LEVELS) == E


def test_assign_levels_follows_the_assignments():
    c, d = sp.symbols("c d")
    levels = assign_levels([Assignment(c, 1 - b), Assignment(d, c * g)], LEVELS)
    assert levels[c] == S and levels[d] == E


# -- hoist --


def test_hoist_pulls_the_step_size_out_of_a_product():
    c = sp.Symbol("c")
    expr = w - lr * sp.sqrt(1 - c**t) / (1 - b**t) * m
    result = hoist([Assignment(sp.Symbol("w_new"), expr)], LEVELS | {c: S})
    assert [str(a) for a in result.step] == ["s0 = -lr*sqrt(1 - c**t)/(1 - b**t)"]
    assert [str(a) for a in result.element] == ["w_new = m*s0 + w"]
    assert result.levels[s0] == S


def test_hoist_keeps_lone_symbols_and_numbers_in_place():
    result = hoist([Assignment(sp.Symbol("y"), m * b + 2 * g)], LEVELS)
    assert result.step == []
    assert str(result.element[0].expr) == "b*m + 2*g"


def test_hoist_folds_a_negation_into_the_scalar():
    result = hoist([Assignment(sp.Symbol("y"), w - b * m)], LEVELS)
    assert [str(a) for a in result.step] == ["s0 = -b"]
    assert str(result.element[0].expr) == "m*s0 + w"


def test_hoist_gives_equal_invariants_one_scalar():
    result = hoist([Assignment(sp.Symbol("y"), (1 - b) * m + (1 - b) * g)], LEVELS)
    assert [str(a) for a in result.step] == ["s0 = 1 - b"]


def test_hoist_moves_tensor_level_work_to_the_chunk_and_its_step_parts_to_the_host():
    result = hoist([Assignment(sp.Symbol("y"), w - lr * (1 - b) * weight_decay * w)], LEVELS)
    assert [str(a) for a in result.step] == ["s0 = -lr*(1 - b)"]
    assert [str(a) for a in result.tensor] == ["u0 = s0*weight_decay"]
    assert [str(a) for a in result.element] == ["y = u0*w + w"]


def test_hoist_moves_whole_step_level_assignments_to_the_host():
    c = sp.Symbol("c")
    result = hoist([Assignment(c, 1 - b**t), Assignment(sp.Symbol("y"), m / c)], LEVELS)
    # Dividing by a step-level value stays a division (torch's `m.div(c)`), not m*(1/c).
    assert [str(a) for a in result.step] == ["c = 1 - b**t"]
    assert [str(a) for a in result.element] == ["y = m/c"]


# -- cse and scheduling --


def test_cse_computes_a_repeated_subexpression_once():
    y, z = sp.symbols("y z")
    out = eliminate_common_subexpressions(
        [Assignment(y, sp.sqrt(m + g) * b), Assignment(z, sp.sqrt(m + g) + w)], "x"
    )
    assert [str(a) for a in out] == ["x0 = sqrt(g + m)", "y = b*x0", "z = w + x0"]


def test_schedule_orders_by_dependency_and_keeps_order_otherwise():
    y, z = sp.symbols("y z")
    out = schedule([Assignment(z, y + 1), Assignment(x0, g), Assignment(y, x0 * 2)])
    assert [a.target for a in out] == [x0, y, z]


def test_prune_drops_what_nothing_needs():
    y, z = sp.symbols("y z")
    out = prune([Assignment(x0, g), Assignment(y, 2 * g), Assignment(z, x0 + 1)], [z])
    assert [a.target for a in out] == [x0, z]


# -- the whole pipeline on Adam --


def test_adam_kernels_compute_no_power_and_no_step_level_value():
    beta1, beta2 = sp.symbols("beta1 beta2")
    for variant in ADAM.variants():
        (kernel,) = lower(ADAM, variant)
        (stage,) = element_regions(kernel)
        for a in stage.body:
            assert not a.expr.free_symbols & {beta2, t, lr}, a
            for power in a.expr.atoms(sp.Pow):
                assert power.exp in (2, sp.S.Half, -1), f"{a}: {power}"
        host = {str(a.target): str(a.expr) for a in kernel.host}
        assert host["s2"] == "-lr*sqrt(1 - beta2**t)/(1 - beta1**t)"


def test_adam_stores_only_the_arrays_that_change():
    ((stage,),) = [element_regions(k) for k in lower(ADAM, ADAM.variants()[0])]
    assert [s.array.name for s in stage.stores] == ["param", "moment1", "moment2"]
    assert [load.array.name for load in stage.loads] == ["param", "grad", "moment1", "moment2"]


def test_adam_offload_touches_the_parameter_only_in_its_apply_stage():
    from optforge.specs.adam_offload import SPEC as OFFLOAD

    for variant in OFFLOAD.variants():
        (kernel,) = lower(OFFLOAD, variant)
        host_stage, apply_stage = element_regions(kernel)
        assert [s.array.name for s in host_stage.stores] == ["moment1", "moment2", "delta"]
        assert [s.array.name for s in apply_stage.stores] == ["param"]
        assert sorted(load.array.name for load in apply_stage.loads) == ["delta", "param"]
        assert [str(a) for a in apply_stage.body] == ["w_new = delta_new + w"]


def test_lamb_splits_at_its_reductions():
    from optforge.specs.lamb import SPEC as LAMB

    (kernel,) = lower(LAMB, {})
    first, second = element_regions(kernel)
    finalize = kernel.region(Space.TENSOR, FINALIZE)
    assert [r.symbol.name for r in first.reductions] == ["norm0", "norm1"]
    assert "param" not in [s.array.name for s in first.stores]
    assert [s.array.name for s in second.stores] == ["param"]
    assert tuple(s.value for s in finalize.stores) == (sp.Symbol("u0"),)
    assert "trust_ratio" in [a.target.name for a in finalize.body]


def test_radam_rectification_is_a_host_side_branch():
    from optforge.specs.radam import SPEC as RADAM

    kernels = lower(RADAM, {})
    assert [k.branch for k in kernels] == [(True,), (False,)]
    assert [str(g) for g in kernels[0].guards] == ["rho_t > 5"]
    for k in kernels:
        (stage,) = element_regions(k)
        assert not any(a.expr.atoms(sp.Piecewise) for a in stage.body)


def test_changed_outputs_drops_arrays_a_branch_leaves_as_they_were():
    from optforge.compiler.passes.unchanged import changed_outputs

    w, buf, acc, w_new, buf_new, buf_copy, acc_new, g = sp.symbols(
        "w buf acc w_new buf_new buf_copy acc_new g"
    )
    assignments = [
        Assignment(buf_copy, buf),  # RMSprop's buf <- buf once momentum > 0 is False
        Assignment(buf_new, buf_copy),
        Assignment(acc_new, acc + g * g),
        Assignment(w_new, w - g),
    ]
    outputs = {w: w_new, buf: buf_new, acc: acc_new}
    assert changed_outputs(outputs, assignments) == {w: w_new, acc: acc_new}


def test_rmsprop_without_momentum_neither_loads_nor_stores_its_buffer():
    from optforge.compiler.build import load_specs

    (spec,) = load_specs(["rmsprop"])
    variant = {f.symbol: False for f in spec.flags}
    kernels = {k.branch: k for k in lower(spec, variant)}
    without, with_momentum = (
        {a.array.name for stage in element_regions(kernels[branch]) for a in stage.loads + stage.stores}
        for branch in ((False,), (True,))
    )
    assert "momentum_buffer" not in without and "momentum_buffer" in with_momentum


# -- the order of products (passes/order.py, printed by ElementPrinter) --


def test_a_step_level_weight_multiplies_a_square_before_it_is_squared():
    from optforge.compiler.printers import ElementPrinter

    # ((s1*g)*g), torch's addcmul(v, g, g, value=1 - beta2): finite where (g*g)*s1 overflows.
    printer = ElementPrinter("float32", {s1, b})
    assert printer.doprint(b * m + s1 * g**2) == "b*m + s1*g*g"
    assert printer.doprint(s1 * (g - m) ** 2) == "s1*(g - m)*(g - m)"
    # The invariant factor comes first whatever the names: SymPy's order puts m before s1.
    assert ElementPrinter("float32", {s1}).doprint(w**2 * m * s1) == "s1*m*w*w"
    assert ElementPrinter("float32").doprint(w**2 * m * s1) == "m*s1*w*w"


def test_divisions_come_after_the_products_one_by_one():
    from optforge.compiler.printers import ElementPrinter

    printer = ElementPrinter("float32", {s0, s1})
    assert printer.doprint(s0 * m / (g + w)) == "s0*m/(g + w)"
    assert printer.doprint(m / s1 / (g + w)) == "m/s1/(g + w)"
    assert printer.doprint(-m / (s1 * w)) == "-m/s1/w"
    assert printer.doprint(m / w**2) == "m/(w*w)"
    assert printer.doprint(m / sp.sqrt(w)) == "m/math.sqrt(w)"


def test_hoist_keeps_a_division_by_a_step_level_value():
    y = sp.Symbol("y")
    result = hoist([Assignment(y, sp.sqrt(m) / sp.sqrt(1 - b**t) + w)], LEVELS)
    assert [str(a) for a in result.step] == ["s0 = sqrt(1 - b**t)"]
    assert [str(a) for a in result.element] == ["y = sqrt(m)/s0 + w"]
    # A product with a step-level numerator still hoists the whole step size (torch's `value`).
    result = hoist([Assignment(y, w - lr / (1 - b**t) * m / (sp.sqrt(g) + 1))], LEVELS)
    assert [str(a) for a in result.step] == ["s0 = -lr/(1 - b**t)"]


def test_cse_divides_twice_rather_than_multiplying_by_a_reciprocal():
    y, z, d = sp.symbols("y z d")
    out = eliminate_common_subexpressions([Assignment(y, w + s0 * g / d + s1 * m / d)], "x")
    assert [str(a) for a in out] == ["y = w + g*s0/d + m*s1/d"]
    out = eliminate_common_subexpressions([Assignment(y, g / (w + m)), Assignment(z, m / (w + m))], "x")
    assert [str(a) for a in out] == ["x0 = m + w", "y = g/x0", "z = m/x0"]


def test_guarded_cse_leaves_a_piecewise_whole_so_an_untaken_branch_never_runs():
    y, z, k = sp.symbols("y z k")
    chosen = sp.Piecewise((b, k < 0), (sp.log(b) * t / k, True))
    assignments = [Assignment(y, chosen), Assignment(z, sp.log(b) * t / k + 1)]
    # Unguarded (the kernels), log(b)*t/k is shared and computed whichever branch is taken.
    plain = eliminate_common_subexpressions(assignments, "h")
    assert str(plain[0]) == "h0 = t*log(b)/k"
    guarded = eliminate_common_subexpressions(assignments, "h", guarded=True)
    assert [a.target for a in guarded] == [y, z]
    assert guarded[0].expr == chosen and guarded[1].expr == sp.log(b) * t / k + 1


# -- the scheduler (passes/schedule.py) on tiny placed kernels --


def _placed(element, phases, stores, reductions=(), tensor=(), spaces=None):
    from optforge.compiler.ir import Array
    from optforge.compiler.passes.schedule import Placed

    arrays = (Array(w, "param"), Array(g, "grad"), Array(m, "m"))
    by_symbol = {a.symbol: a for a in arrays}
    return Placed(
        element=tuple(Assignment(t_, e, Space.ELEMENT) for t_, e in element),
        tensor=tuple(Assignment(t_, e) for t_, e in tensor),
        phases={w: 1, g: 1, m: 1} | phases,
        spaces={w: Space.ELEMENT, g: Space.ELEMENT, m: Space.ELEMENT, weight_decay: Space.TENSOR}
        | (spaces or {}),
        arrays=arrays,
        stores={value: by_symbol[array] for value, array in stores.items()},
        reductions=tuple(reductions),
        per_tensor_arrays=(weight_decay,),
        matrices=False,
        where="specs/tiny.py",
    )


D, M_NEW, W_NEW, NORM0, NORM0_OF, U = sp.symbols("d m_new w_new norm0 norm0_of u")


def _two_stage(update):
    """Pass 1 stores m_new and sums norm0; the finalize makes u of it; pass 3 stores `update`."""
    from optforge.compiler.ir import PASS1, PASS3, Reduction

    element = [(D, 2 * g), (M_NEW, b * m + D), (NORM0_OF, g), (W_NEW, update)]
    phases = {D: PASS1, M_NEW: PASS1, NORM0_OF: PASS1, W_NEW: PASS3, NORM0: FINALIZE, U: FINALIZE}
    return _placed(
        element,
        phases,
        {M_NEW: m, W_NEW: w},
        [Reduction(NORM0, NORM0_OF)],
        tensor=[(U, weight_decay * NORM0)],
        spaces={NORM0: Space.TENSOR, U: Space.TENSOR},
    )


def test_a_later_pass_reloads_what_an_earlier_one_stored_and_recomputes_its_locals():
    from optforge.compiler.ir import PASS1, PASS3
    from optforge.compiler.passes.schedule import regions

    found = {(r.space, r.phase): r for r in regions(_two_stage(w - U * (M_NEW + D)))}
    assert [(r.space, r.phase) for r in regions(_two_stage(w - U * (M_NEW + D)))] == [
        (Space.TENSOR, PASS1),
        (Space.ELEMENT, PASS1),
        (Space.TENSOR, FINALIZE),
        (Space.TENSOR, PASS3),
        (Space.ELEMENT, PASS3),
    ]
    last = found[Space.ELEMENT, PASS3]
    # m_new is stored by pass 1: reloaded from m's array; d is a local of pass 1: recomputed from g.
    assert sorted((ld.array.name, ld.value.name) for ld in last.loads) == [
        ("grad", "g"),
        ("m", "m_new"),
        ("param", "w"),
    ]
    assert [str(a) for a in last.body] == ["d = 2*g", "w_new = -u*(d + m_new) + w"]
    assert [s.array.name for s in last.stores] == ["param"]
    # The finalize hands u to pass 3, whose prologue takes it as a per-tensor value.
    finalize = found[Space.TENSOR, FINALIZE]
    assert [s.value for s in finalize.stores] == [U] and [ld.value for ld in finalize.loads] == [weight_decay]
    assert [ld.value for ld in found[Space.TENSOR, PASS3].loads] == [U]
    assert [r.symbol for r in found[Space.ELEMENT, PASS1].reductions] == [NORM0]


def test_statements_are_typed_with_their_space_and_dtype():
    from optforge.compiler.ir import PASS3, DType
    from optforge.compiler.passes.schedule import regions

    found = {(r.space, r.phase): r for r in regions(_two_stage(w - U * M_NEW))}
    assert {(a.space, a.dtype) for a in found[Space.ELEMENT, PASS3].body} == {(Space.ELEMENT, DType.KERNEL)}
    # The finalize computes from float64 sums: its values are float64 whatever the kernel's dtype.
    assert [(a.space, a.dtype) for a in found[Space.TENSOR, FINALIZE].body] == [(Space.TENSOR, DType.FLOAT64)]


def test_a_later_pass_cannot_read_an_input_an_earlier_pass_overwrote():
    import pytest

    from optforge.compiler.passes.schedule import regions
    from optforge.compiler.spec import SpecError

    with pytest.raises(SpecError, match="a later pass reads the old value of 'm', which an earlier pass"):
        regions(_two_stage(w - U * m))


def test_a_norm_of_a_value_of_the_last_pass_is_refused():
    import pytest

    from optforge.compiler.ir import PASS3, Reduction
    from optforge.compiler.passes.schedule import regions
    from optforge.compiler.spec import SpecError

    placed = _placed(
        [(W_NEW, w - g), (NORM0_OF, W_NEW)],
        {W_NEW: PASS3, NORM0_OF: PASS3, NORM0: FINALIZE},
        {W_NEW: w},
        [Reduction(NORM0, NORM0_OF)],
    )
    with pytest.raises(SpecError, match=r"a norm, rms or mean reads a value of the last pass \(norm0_of\)"):
        regions(placed)


def test_a_row_mean_read_outside_the_line_stage_is_refused():
    import pytest

    from optforge.compiler.ir import LINES, PASS1, PASS2, Reduction
    from optforge.compiler.passes.schedule import gather
    from optforge.compiler.spec import SpecError

    row_mean0, of = sp.symbols("row_mean0 row_mean0_of")
    placed = _placed(
        [(of, g * g), (W_NEW, w - row_mean0 * g)],
        {of: PASS1, W_NEW: PASS2, row_mean0: LINES},
        {W_NEW: w},
        [Reduction(row_mean0, of, True, space=Space.ROW)],
        spaces={row_mean0: Space.ROW},
    )
    assert gather(placed, [row_mean0], LINES) == ([], [], [])  # the line stage reads it
    with pytest.raises(SpecError, match=r"'row_mean0' \(row_mean\) is read in a later pass"):
        gather(placed, [W_NEW], PASS2)
