"""The per-tensor `mean(e)` reduction, the built-in element count `numel`, and deferred stores
(passes/defer.py): spec checks, passes on tiny specs, printing, and one compiled user spec
against the float64 reference over a tensor of several chunks."""

import textwrap

import numpy as np
import pytest
import sympy as sp

from optforge.compiler.ir import FINALIZE, PASS1, PASS3, Array, Assignment, Space
from optforge.compiler.lower import lower
from optforge.compiler.passes.defer import deferred_stores
from optforge.compiler.passes.reductions import extract_reductions, summands
from optforge.compiler.spec import Hyper, Rule, Spec, SpecError, State, g, lr, mean, numel, rms, w

a = sp.Symbol("a")
m, c, u, mask = sp.symbols("m c u mask")


def make(rules, state=(State(m, 0, "moment", "m"),)):
    return Spec(
        name="tiny",
        title="Tiny",
        source="/somewhere/specs/tiny.py",
        hypers=[Hyper(a, ("float",), 0.5, "a")],
        flags=[],
        state=list(state),
        rules=rules,
        decay="decoupled",
    )


# --- the spec language ----------------------------------------------------------------------


def test_a_mean_of_a_number_is_the_number():
    assert mean(3) == 3 and mean(sp.Rational(-1, 2)) == sp.Rational(-1, 2)
    spec = make([Rule(m, a * m + g), Rule(w, w - lr * m * mean(2))])
    assert not spec.rules[1].expr.atoms(mean)


@pytest.mark.parametrize("reduced", [mean(lr), mean(a * lr), mean(rms(w))])
def test_a_mean_of_what_does_not_vary_over_the_tensor_is_refused(reduced):
    with pytest.raises(SpecError, match=r"specs/tiny.py: rule 2 .*does not vary over the tensor"):
        make([Rule(m, a * m + g), Rule(w, w - lr * m * reduced)])


def test_a_mean_is_one_value_per_tensor_for_the_checks():
    """A rule reading only a mean and scalars does not vary: a mean of it is refused too."""
    with pytest.raises(SpecError, match="does not vary over the tensor"):
        make([Rule(m, a * m + g), Rule(c, mean(g) * lr), Rule(w, w - mean(c) * m)])


def test_numel_needs_a_per_tensor_reduction_in_the_variant():
    with pytest.raises(
        SpecError, match=r"rule 2 .*reads numel, the element count .* no rule reduces per tensor"
    ):
        make([Rule(m, a * m + g), Rule(w, w - lr * m / numel)])
    make([Rule(m, a * m + g), Rule(w, w - lr * (m - mean(m)) / numel)])  # with a mean it builds


def test_numel_cannot_be_assigned_and_mean0_is_reserved():
    with pytest.raises(SpecError, match="cannot assign to 'numel'"):
        make([Rule(m, a * m + g), Rule(numel, m), Rule(w, w - lr * m)])
    mean0 = sp.Symbol("mean0")
    with pytest.raises(SpecError, match="'mean0': the name is reserved"):
        make([Rule(m, a * m + g), Rule(mean0, m), Rule(w, w - lr * mean0)])


# --- the passes -----------------------------------------------------------------------------


def test_extract_reductions_names_means_and_marks_them_plain():
    assignments = [Assignment(u, g * 2), Assignment(w, w - lr * (u - mean(u)) * rms(g))]
    rewritten, found = extract_reductions(assignments)
    kinds = {r.symbol.name: (r.mean, r.plain) for r in found}
    assert kinds == {"mean0": (True, True), "rms0": (True, False)}
    assert rewritten[1].expr.free_symbols >= {sp.Symbol("mean0"), sp.Symbol("rms0")}


def test_a_mean_sums_its_argument_itself_even_where_a_square_would_drop_a_root():
    """A norm of `sqrt(v)` sums `v` (the square, no root); a mean of it must sum `sqrt(v)`."""
    v = sp.Symbol("v")
    assignments = [Assignment(u, sp.sqrt(v)), Assignment(w, w - lr * mean(u) * sp.Symbol("x"))]
    rewritten, found = extract_reductions(assignments)
    values, marked = summands(rewritten, found)
    assert values[0].expr == u and not marked[0].squared and marked[0].plain


def test_a_spec_with_a_mean_lowers_to_a_two_stage_kernel_reading_numel_in_its_finalize():
    spec = make([Rule(m, a * m + g), Rule(w, w - lr * m / (mean(m) + 1 / numel))])
    (kernel,) = lower(spec, {})
    sums = [r for region in kernel.regions for r in region.reductions]
    assert [(r.symbol.name, r.mean, r.plain, r.space) for r in sums] == [("mean0", True, True, Space.TENSOR)]
    (finalize,) = [r for r in kernel.regions if r.phase == FINALIZE]
    assert numel in set().union(*(x.expr.free_symbols for x in finalize.body))
    assert [r.phase for r in kernel.regions if r.space == Space.ELEMENT] == [PASS1, PASS3]


def test_a_mean_of_a_value_that_reads_a_mean_is_refused():
    """One reduction stage per kernel: a mean of what reads another mean would need a second."""
    spec = make([Rule(m, a * m + g), Rule(c, m - mean(m)), Rule(w, w - lr * c * mean(c * c))])
    with pytest.raises(SpecError, match="a norm, rms or mean reads a value of the last pass"):
        lower(spec, {})


def test_deferred_stores_moves_a_store_to_the_pass_that_reads_the_old_value():
    m_new, w_new = sp.symbols("m_new w_new")
    element = [
        Assignment(c, a * m + g),  # a local of pass 1, recomputed in pass 3
        Assignment(sp.Symbol("x_of"), c),  # summed in pass 1
        Assignment(m_new, a * m + (1 - a) * g),
        Assignment(w_new, w - lr * sp.sign(c) * sp.Symbol("y")),
    ]
    phases = {c: PASS1, sp.Symbol("x_of"): PASS1, m_new: PASS1, w_new: PASS3}
    stores = {m_new: Array(m, "m"), w_new: Array(w, "param")}
    assert deferred_stores(element, phases, stores) == {m_new: PASS3}
    # A later pass that reads the new value reloads it: nothing to defer.
    element[-1] = Assignment(w_new, w - lr * m_new * sp.Symbol("y"))
    assert deferred_stores(element, phases, stores) == {}


def test_lowering_defers_the_momentum_of_a_lion_like_cautious_rule():
    """Without the deferral this spec is refused (a later pass reads the old m); with it, pass 1
    only reads and sums, pass 3 writes the momentum and the parameter."""
    spec = make(
        [
            Rule(c, a * m + (1 - a) * g),
            Rule(mask, sp.Piecewise((1, sp.sign(c) * g > 0), (0, True))),
            Rule(w, w - lr * sp.sign(c) * mask / (mean(mask) + 1 / numel)),
            Rule(m, a * m + (1 - a) * g),
        ]
    )
    (kernel,) = lower(spec, {})
    stored = {r.phase: {s.array.name for s in r.stores} for r in kernel.regions if r.space == Space.ELEMENT}
    assert stored == {PASS1: set(), PASS3: {"param", "moment"}}


# --- printing -------------------------------------------------------------------------------


def test_the_generated_kernels_sum_the_mean_unsquared_and_divide_it_by_the_count():
    from optforge.compiler.backends.cpu import render_cpu_module

    spec = make([Rule(m, a * m + g), Rule(w, w - lr * m / (mean(m) + 1 / numel))])
    text = render_cpu_module(spec, lower(spec, {}), "optforge.generated")
    assert "sum0 += f64(mean0_of)\n" in text
    assert "mean0 = sums[tensor, 0] / max(sums[tensor, 1], 1)" in text
    assert "numel = sums[tensor, 1]" in text
    assert "math.sqrt(sums" not in text


def test_the_docs_print_a_mean_as_an_overline_and_numel_by_name():
    from optforge.compiler.docs import BUILTIN_LATEX, latex

    assert latex(mean(g * w), BUILTIN_LATEX) == r"\overline{g w}"
    assert latex(1 / numel, BUILTIN_LATEX) == r"\frac{1}{\operatorname{numel}}"


# --- compiled: a centred step against the float64 reference ---------------------------------

CENTRED = textwrap.dedent(
    '''
    """Centred sign step: the gradient minus its mean, with the element count."""

    import sympy as sp

    from optforge.compiler.spec import Export, Rule, Spec, g, lr, mean, numel, w

    d = sp.Symbol("d")

    SPEC = Spec(
        name="centred",
        title="Centred",
        source=__file__,
        summary="A step along the centred gradient.",
        hypers=[],
        flags=[],
        state=[],
        rules=[
            Rule(d, g - mean(g)),
            Rule(w, w - lr * d * numel / (numel * mean(sp.Piecewise((1, g > 0), (0, True))) + 1)),
        ],
        decay="decoupled",
        exports=[Export("optim", "Centred", (("lr", 1e-2),))],
    )
    '''
)


def test_a_compiled_mean_matches_the_reference_over_several_chunks(tmp_path, monkeypatch):
    import optforge
    from optforge import user_specs
    from optforge.compiler.build import load_spec_file
    from optforge.compiler.reference import reference_step
    from optforge.compiler.spec import t, weight_decay

    (tmp_path / "centred.py").write_text(CENTRED)
    monkeypatch.setenv(user_specs.CACHE_ENV, str(tmp_path / "cache"))
    compiled = optforge.compile_spec(tmp_path / "centred.py")
    rng = np.random.default_rng(5)
    values = [rng.standard_normal(s) for s in [(70_001,), (3, 7)]]
    grads = [rng.standard_normal(v.shape) + 0.3 for v in values]
    opt = compiled.optim.Centred(
        [optforge.Parameter(v.copy(), f"p{i}") for i, v in enumerate(values)], lr=0.1
    )
    opt(tuple(grads))
    spec = load_spec_file(tmp_path / "centred.py", "centred_reference").SPEC
    scalars = {t.name: 1, "lr": 0.1, weight_decay.name: 0.0, "grad_scale": 1.0}
    for p, v, gr in zip(opt.parameters, values, grads):
        expected = reference_step(spec, {}, {"w": v, "g": gr}, scalars)["w"]
        np.testing.assert_allclose(p.data, expected, rtol=1e-12, atol=1e-12)
        assert np.abs(p.data - v).max() > 0.05  # it moved
