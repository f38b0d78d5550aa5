"""Spec errors: each mistake raises one SpecError naming the spec file and the rule."""

import pytest
import sympy as sp

from optforge.compiler.spec import (
    Export,
    Flag,
    Hyper,
    Option,
    Rule,
    Spec,
    SpecError,
    State,
    g,
    is_factored,
    lr,
    norm,
    row_mean,
    w,
)

a, b, m, flag = sp.symbols("a b m flag")


def make(**overrides):
    fields = dict(
        name="tiny",
        title="Tiny",
        source="/somewhere/specs/tiny.py",
        hypers=[Hyper(a, ("float",), 0.5, "a")],
        flags=[Flag(flag, "a flag")],
        state=[State(m, 0, "moment", "m")],
        rules=[Rule(m, a * m + g), Rule(w, w - lr * m)],
        domains={a: sp.Interval.open(0, 1)},
        decay="decoupled",
    )
    return Spec(**(fields | overrides))


def test_a_correct_spec_builds_and_lists_its_variants():
    spec = make()
    assert spec.where == "specs/tiny.py"
    assert spec.variants() == [{flag: False}, {flag: True}]


def test_undefined_symbol_names_the_file_and_the_rule():
    with pytest.raises(
        SpecError, match=r"specs/tiny.py: rule 2 \(w <- -b\*lr\*m \+ w\): undefined symbol 'b'"
    ):
        make(rules=[Rule(m, a * m + g), Rule(w, w - b * lr * m)])


def test_state_never_written():
    with pytest.raises(SpecError, match=r"specs/tiny.py: state 'moment': is never written"):
        make(rules=[Rule(w, w - lr * m)])


def test_rule_assigning_twice():
    with pytest.raises(SpecError, match=r"rule 2 \(m <- 2\*m\): assigns 'm' twice"):
        make(rules=[Rule(m, a * m + g), Rule(m, 2 * m), Rule(w, w - lr * m)])


def test_domain_on_an_unknown_name():
    with pytest.raises(
        SpecError, match=r"specs/tiny.py: domain of 'b': is not a hyperparameter of this spec"
    ):
        make(domains={b: sp.Interval(0, 1)})


def test_domain_on_a_state_is_refused_too():
    with pytest.raises(SpecError, match="domain of 'm': is not a hyperparameter"):
        make(domains={m: sp.Interval(0, 1)})


def test_parameter_never_updated():
    with pytest.raises(SpecError, match="never update the parameter 'w'"):
        make(rules=[Rule(m, a * m + g)])


def test_assigning_a_hyperparameter():
    with pytest.raises(SpecError, match="rule 1 .*cannot assign to 'a'"):
        make(rules=[Rule(a, 2 * a), Rule(m, a * m + g), Rule(w, w - lr * m)])


def test_state_of_one_variant_read_in_another():
    v = sp.Symbol("v")
    with pytest.raises(SpecError, match="reads state 'v', which does not exist when flag=False"):
        make(
            state=[State(m, 0, "moment", "m"), State(v, 0, "v", "v", when=flag)],
            rules=[Rule(m, a * m + g), Rule(v, v + g, when=flag), Rule(w, w - lr * (m + v))],
        )


def test_flag_selects_a_piecewise_branch_without_error():
    v = sp.Symbol("v")
    make(
        state=[State(m, 0, "moment", "m"), State(v, 0, "v", "v", when=flag)],
        rules=[
            Rule(m, a * m + g),
            Rule(v, v + g, when=flag),
            Rule(w, w - lr * sp.Piecewise((v, flag), (m, True))),
        ],
    )


def test_duplicate_names():
    with pytest.raises(SpecError, match="hyperparameter 'w': name already used by a built-in symbol"):
        make(hypers=[Hyper(w, ("float",), 0.5, "w")])


def test_export_with_an_unknown_argument():
    with pytest.raises(SpecError, match="export Tiny: signature names unknown argument 'beta'"):
        make(exports=[Export("nn", "Tiny", ("learning_rate", "beta"))])


def test_locals_are_readable_after_assignment():
    d = sp.Symbol("d")
    make(rules=[Rule(d, 2 * g), Rule(m, a * m + d), Rule(w, w - lr * m)])
    with pytest.raises(SpecError, match="undefined symbol 'd'"):
        make(rules=[Rule(m, a * m + d), Rule(d, 2 * g), Rule(w, w - lr * m)])


def test_coupled_decay_needs_the_effective_gradient_rule():
    with pytest.raises(SpecError, match="'coupled' needs a rule `g\\*grad_scale \\+ weight_decay\\*w`"):
        make(decay="coupled")


@pytest.mark.parametrize("name", ["chunk", "elem", "s0", "x3", "norm0", "m_new", "w_c", "np"])
def test_names_the_generated_code_uses_are_reserved(name):
    reserved = sp.Symbol(name)
    with pytest.raises(SpecError, match=f"symbol '{name}': the name is reserved by the generated code"):
        make(rules=[Rule(m, a * m + g), Rule(reserved, 2 * g), Rule(w, w - lr * m)])


def test_runtime_domains_print_and_check_both_infinite_ends():
    import math

    from optforge.compiler.wrappers import runtime_domain
    from optforge.runtime.checks import Interval

    at_most_zero = runtime_domain(sp.Interval(-sp.oo, 0))
    assert repr(at_most_zero) == "Interval(-math.inf, 0.0, left_open=True, right_open=False)"
    assert eval(repr(at_most_zero), {"Interval": Interval, "math": math}) == at_most_zero
    assert -0.5 in at_most_zero and 0.0 in at_most_zero and 0.1 not in at_most_zero
    assert at_most_zero.describe() == "<= 0"


# -- reductions and functions the kernels can compute --


def test_a_reduction_under_a_power_prints_in_latex():
    """`norm(e)**2` used to crash `optforge docs` (SymPy passes the exponent to _latex)."""
    from optforge.compiler.docs import algorithm
    from optforge.compiler.spec import norm, rms

    assert sp.latex(norm(m) ** 2) == r"{\left\| m \right\|}^{2}"
    assert sp.latex(rms(m) ** 3) == r"{\operatorname{RMS}\left(m\right)}^{3}"
    spec = make(rules=[Rule(m, a * m + g), Rule(w, w - lr * m / (rms(m) ** 2 + norm(w) ** 2 + 1))])
    assert r"{\left\| w \right\|}^{2}" in algorithm(spec, "optim")


def test_a_mean_of_a_number_folds_to_the_number():
    """`rms(1)` used to build and then fail at the first step (`name 'rms0_of' is not defined`)."""
    from optforge.compiler.spec import col_mean, rms, row_mean

    assert rms(1) == 1 and rms(-2.5) == 2.5 and row_mean(3) == 3
    assert col_mean(sp.Rational(1, 2)) == sp.Rational(1, 2)
    spec = make(rules=[Rule(m, a * m + g), Rule(w, w - lr * m * rms(1))])
    assert not spec.rules[1].expr.atoms(rms)


@pytest.mark.parametrize("reduced", ["norm(2)", "norm(lr)", "rms(a*lr)", "rms(norm(w))"])
def test_a_reduction_of_what_does_not_vary_over_the_tensor_is_refused(reduced):
    from optforge.compiler.spec import norm, rms

    expr = eval(reduced, {"norm": norm, "rms": rms, "lr": lr, "a": a, "w": w})
    with pytest.raises(SpecError, match=r"specs/tiny.py: rule 2 .*does not vary over the tensor"):
        make(rules=[Rule(m, a * m + g), Rule(w, w - lr * m * expr)])


def test_an_unsupported_function_is_refused_naming_the_rule_and_what_is_supported():
    f = sp.Function("f")
    with pytest.raises(
        SpecError,
        match=r"specs/tiny.py: rule 2 \(.*\): f is not something the kernels can compute\. "
        r"Reductions: norm, rms, mean, row_mean, col_mean, matrix_mean, group_sum; functions: Abs, sign",
    ):
        make(rules=[Rule(m, a * m + g), Rule(w, w - lr * f(m))])
    with pytest.raises(SpecError, match="factorial is not something the kernels can compute"):
        make(rules=[Rule(m, a * m + g), Rule(w, w - lr * m * sp.factorial(a))])


def test_supported_functions_pass_the_checks():
    make(rules=[Rule(m, a * m + g), Rule(w, w - lr * sp.tanh(m) * sp.exp(-abs(m)) * sp.sign(g))])


@pytest.mark.parametrize(
    "construct, shown",
    [
        (lambda: sp.Derivative(m, a), "Derivative"),
        (lambda: sp.Sum(m, (sp.Symbol("k"), 1, 3)), "Sum"),
        (lambda: sp.I * m, "I"),
        (lambda: sp.zoo * m, "zoo"),
        (lambda: sp.oo * m, "oo"),
        (lambda: sp.pi * m, "pi"),
        (lambda: sp.Function("gamma")(m, m), "gamma"),  # an undefined function of a known name
    ],
)
def test_what_the_kernels_cannot_compute_is_refused_naming_the_rule(construct, shown):
    with pytest.raises(SpecError, match=rf"specs/tiny.py: rule 2 .*{shown} is not something the kernels"):
        make(rules=[Rule(m, a * m + g), Rule(w, w - lr * construct())])


def test_a_step_level_product_passes_and_an_element_level_one_is_refused():
    k = sp.Symbol("k", integer=True, positive=True)
    make(rules=[Rule(m, a * m + g), Rule(w, w - lr * m * sp.Product(a, (k, 1, sp.Symbol("t"))))])
    with pytest.raises(SpecError, match="Product"):
        make(rules=[Rule(m, a * m + g), Rule(w, w - lr * sp.Product(m, (k, 1, 3)))])


@pytest.mark.parametrize(
    "name, home",
    [
        ("DIALECT_ARGUMENTS", "optforge.compiler.dialects"),
        ("RESERVED", "optforge.compiler.reserved"),
        ("RESERVED_PATTERN", "optforge.compiler.reserved"),
    ],
)
def test_policy_moved_out_of_the_spec_model_still_imports_with_a_warning(name, home):
    import importlib

    from optforge.compiler import spec

    assert name not in vars(spec)  # the spec model no longer holds it
    with pytest.warns(DeprecationWarning, match=f"spec.{name} is deprecated: import it from {home}"):
        moved = getattr(spec, name)
    assert moved is getattr(importlib.import_module(home), name)
    with pytest.raises(AttributeError, match="has no attribute 'NOT_A_NAME'"):
        spec.NOT_A_NAME


def test_what_none_stands_for_is_a_number_outside_the_domain():
    none = [Hyper(a, ("float", "None"), None, "a", none=-1)]
    assert make(hypers=none).hyper("a").none == -1
    with pytest.raises(SpecError, match="specs/tiny.py: hyperparameter 'a': none=0.5 must lie outside"):
        make(hypers=[Hyper(a, ("float", "None"), None, "a", none=0.5)])
    with pytest.raises(SpecError, match="but None is not one of its types"):
        make(hypers=[Hyper(a, ("float",), 0.5, "a", none=-1)])
    with pytest.raises(SpecError, match="none must be a finite number"):
        make(hypers=[Hyper(a, ("float", "None"), None, "a", none="off")])


def test_an_option_argument_is_declared_on_an_export_and_checked():
    choice = Option("kind", "x", ("x", "y"), ("x",), "which", "y is not compiled")
    spec = make(exports=[Export("optim", "Tiny", (("lr", 0.1), "kind"), options=(choice,))])
    assert spec.exports[0].options == (choice,)
    with pytest.raises(SpecError, match="signature names unknown argument 'kind'"):
        make(exports=[Export("optim", "Tiny", (("lr", 0.1), "kind"))])
    bad = Option("kind", "y", ("x", "y"), ("x",), "which")
    with pytest.raises(SpecError, match="option 'kind': its default must be supported"):
        make(exports=[Export("optim", "Tiny", (("lr", 0.1), "kind"), options=(bad,))])
    with pytest.raises(SpecError, match="option 'a' is already an argument"):
        make(exports=[Export("optim", "Tiny", (("lr", 0.1),), options=(Option("a", 1, (1,), (1,), "a"),))])


def test_a_derived_hyperparameter_is_computed_from_arguments_only():
    derived = make(exports=[Export("optim", "Tiny", (("lr", 0.1),), derived={"a": 2 * lr})])
    assert derived.exports[0].derived == {"a": 2 * lr}
    with pytest.raises(SpecError, match=r"derived 'a' reads \['b'\], not arguments"):
        make(exports=[Export("optim", "Tiny", (("lr", 0.1),), derived={"a": b * lr})])
    with pytest.raises(SpecError, match="derived 'a' must be a hyperparameter not in the signature"):
        make(exports=[Export("optim", "Tiny", (("lr", 0.1), "a"), derived={"a": 2 * lr})])


def test_a_rank_flag_compiles_to_a_factored_kernel_only_where_it_needs_one():
    rank = sp.Symbol("rank")
    ranked = [Flag(rank, "by rank", rank=2)]
    # The rank flag only picks the rules: no factored kernel (MARS's is_2d).
    plain = make(
        flags=ranked,
        rules=[Rule(m, sp.Piecewise((a * m + g / norm(g), rank), (g, True))), Rule(w, w - lr * m)],
    )
    assert not is_factored(plain, {rank: True}) and not is_factored(plain, {rank: False})
    # A row mean needs one (Adafactor).
    factored = make(
        flags=ranked, rules=[Rule(m, sp.Piecewise((row_mean(g**2), rank), (g, True))), Rule(w, w - lr * m)]
    )
    assert is_factored(factored, {rank: True}) and not is_factored(factored, {rank: False})
