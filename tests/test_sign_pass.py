"""The sign pass (compiler/passes/sign.py) and the 8-bit storage rule (compiler/passes/int8.py).

Hand-written rules first (SymPy expressions, no spec): what is proven, what is not, and that
nothing is claimed without a proof. Then every spec in specs/: each state's verdict, and the
SpecError that names a state that cannot be stored as 8-bit codes.
"""

import pytest
import sympy as sp

from optforge.compiler.build import load_specs
from optforge.compiler.passes import int8, sign
from optforge.compiler.passes.sign import ANY, NONNEGATIVE, NONPOSITIVE, prove_signs
from optforge.compiler.spec import SpecError, fma, g, lr, t, w

v, m, s, u, vmax = sp.symbols("v m s u v_max")
beta, beta1, beta2, rho, c, k, d, eps, init = sp.symbols("beta beta1 beta2 rho c k d eps init")
OPEN01 = {beta: sp.Interval.open(0, 1), beta1: sp.Interval.open(0, 1), beta2: sp.Interval.open(0, 1)}


def one(update, state=v, domains=OPEN01, initial=None):
    return prove_signs({state: update}, domains, initial)[state]


# --- hand-written rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "update",
    [
        v + (g**2 - v) * (1 - beta2),  # MindSpore's form
        beta2 * v + (1 - beta2) * g**2,  # the textbook's
        fma((1 - beta2) * g, g, beta2 * v),  # torch's, fused
        v + (1 - beta2) * ((g + 0.1 * w) ** 2 - v),  # coupled decay inside the square
    ],
)
def test_an_ema_of_squares_is_nonnegative(update):
    assert one(update) == NONNEGATIVE


@pytest.mark.parametrize("domain", [sp.Interval.Ropen(0, 1), sp.Interval(0, 1), sp.Interval.Lopen(0, 1)])
def test_an_ema_of_squares_is_nonnegative_at_the_ends_of_a_closed_domain_too(domain):
    assert one(v * rho + g**2 * (1 - rho), domains={rho: domain}) == NONNEGATIVE


def test_an_ema_of_squares_with_a_rate_that_may_exceed_1_is_not_provable():
    """beta2 = 2 gives 2v - g**2 < 0 for v = 0, g = 1 (RMSprop's alpha in [0, oo))."""
    assert one(beta2 * v + (1 - beta2) * g**2, domains={beta2: sp.Interval(0, 2)}) == ANY
    assert one(beta2 * v + (1 - beta2) * g**2, domains={beta2: sp.Interval(0, sp.oo)}) == ANY


def test_an_ema_of_the_gradient_has_no_sign():
    assert one(m + (1 - beta1) * (g - m), state=m) == ANY
    assert one(beta1 * m + (1 - beta1) * g, state=m) == ANY


def test_adagrads_sum_is_nonnegative_from_a_nonnegative_start():
    domains = {init: sp.Interval(0, sp.oo)}
    assert one(s + g**2, state=s, domains=domains, initial={s: init}) == NONNEGATIVE
    assert one(fma(g, g, s), state=s, domains=domains, initial={s: init}) == NONNEGATIVE
    # The base case is proven too: a start of unknown sign, or a negative one, proves nothing.
    assert one(s + g**2, state=s, domains={}, initial={s: init}) == ANY
    assert one(s + g**2, state=s, domains={}, initial={s: -1}) == ANY


def test_amsgrads_running_max_is_nonnegative_given_the_second_moment():
    v_new = beta2 * v + (1 - beta2) * g**2
    signs = prove_signs({v: v_new, vmax: sp.Max(vmax, v_new)}, OPEN01)
    assert signs == {v: NONNEGATIVE, vmax: NONNEGATIVE}


def test_the_fixpoint_drops_a_state_whose_proof_needed_one_that_dropped():
    """u <- beta*u + v is >= 0 only while v is: with v <- v - lr*g both have no sign."""
    assert prove_signs({v: v + g**2, u: beta * u + v}, OPEN01) == {v: NONNEGATIVE, u: NONNEGATIVE}
    assert prove_signs({v: v - lr * g, u: beta * u + v}, OPEN01) == {v: ANY, u: ANY}


def test_a_rule_that_can_go_negative_has_no_sign():
    assert one(v - lr * g) == ANY
    assert one(v - lr * g**2) == ANY  # lr is only real: no domain is declared for it
    assert one(sp.Abs(v) - g**2) == ANY


def test_a_hyperparameter_without_a_range_proves_nothing():
    assert one(c * v + g**2, domains={}) == ANY
    assert one(c * v + g**2, domains={c: sp.Interval(0, sp.oo)}) == NONNEGATIVE
    assert one(c * v + g**2, domains={c: sp.Interval(-1, sp.oo)}) == ANY


def test_branches_max_and_min():
    assert one(sp.Piecewise((v + g**2, k > 0), (v, True))) == NONNEGATIVE
    assert one(sp.Piecewise((v + g**2, k > 0), (-(g**2), True))) == ANY
    assert one(sp.Piecewise((v, k > 0), (-(g**2), True))) == NONPOSITIVE  # from 0, v stays <= 0
    assert one(sp.Piecewise((v + g**2, k > 0))) == ANY  # undefined where no condition holds
    assert (
        one(sp.Max(beta2 * v, eps + sp.Abs(g)), domains=OPEN01 | {eps: sp.Interval.open(0, sp.oo)})
        == NONNEGATIVE
    )
    assert one(sp.Max(v, g)) == NONNEGATIVE
    assert one(sp.Min(v + 1, g)) == ANY
    assert one(sp.Min(v, g)) == NONPOSITIVE  # from 0, min(v, g) <= v stays <= 0
    assert one(sp.Min(v, g**2)) == NONNEGATIVE


def test_a_decaying_power_of_the_step_is_a_rate_in_0_1():
    """Adafactor's t**beta2_decay with beta2_decay < 0 lies in (0, 1]; with d > 0 it exceeds 1."""
    update = v + t**d * (g**2 - v)
    assert one(update, domains={d: sp.Interval.open(-sp.oo, 0)}) == NONNEGATIVE
    assert one(update, domains={d: sp.Interval(-1, 0)}) == NONNEGATIVE
    assert one(update, domains={d: sp.Interval.open(0, sp.oo)}) == ANY


def test_a_denominator_that_may_be_zero_is_taken_where_the_value_is_finite():
    """Adadelta: delta**2 = g**2 (a + eps)/(sq + eps) with eps >= 0 is >= 0 wherever finite."""
    a, sq = sp.symbols("a sq")
    delta = g * sp.sqrt(a + eps) / sp.sqrt(sq + eps)
    domains = {rho: sp.Interval(0, 1), eps: sp.Interval(0, sp.oo)}
    signs = prove_signs({sq: rho * sq + (1 - rho) * g**2, a: rho * a + (1 - rho) * delta**2}, domains)
    assert signs == {sq: NONNEGATIVE, a: NONNEGATIVE}


def test_a_nonpositive_state_and_a_state_that_stays_zero():
    assert one(beta * s - g**2, state=s) == NONPOSITIVE
    assert one(beta * s, state=s) == NONNEGATIVE  # always 0: both signs hold


def test_reductions_carry_their_sign():
    from optforge.compiler.spec import norm, row_mean

    assert one(beta * v + (1 - beta) * norm(g) ** 2) == NONNEGATIVE
    assert one(beta * v + (1 - beta) * row_mean(g**2)) == NONNEGATIVE
    assert one(beta * v + (1 - beta) * row_mean(g)) == ANY


def test_interval_cases_cover_the_interval():
    assert len(sign.interval_cases(sp.Interval.open(0, 1))) == 1
    assert sign.interval_cases(sp.Interval.Ropen(0, 1))[1:] == [0]
    assert sign.interval_cases(sp.Interval(0, 1))[1:] == [0, 1]
    (inside,) = sign.interval_cases(sp.Interval.open(-sp.oo, sp.oo))
    assert inside.is_real and inside.is_nonnegative is None
    (p,) = sign.interval_cases(sp.Interval.open(0, 1))[0].free_symbols
    assert p.is_positive
    assert sign.widest([sp.Interval.open(0, sp.oo), sp.Interval(0, sp.oo)]) == sp.Interval(0, sp.oo)
    assert sign.widest([sp.Interval.open(0, 1), sp.Interval.Lopen(0.5, 2)]) == sp.Interval.Lopen(0, 2)


def test_value_symbols_leave_out_conditions_and_deciding_condition_follows_locals():
    from optforge.compiler.spec import Rule

    prev, agree, kept = sp.symbols("prev agreement kept")
    expr = sp.Piecewise((0, g * prev < 0), (g, True))
    assert int8.value_symbols(expr) == {g}
    rules = [Rule(agree, g * prev), Rule(kept, sp.Piecewise((0, agree < 0), (g, True))), Rule(prev, kept)]
    condition, via = int8.deciding_condition(rules, prev)
    assert via == agree and condition == (agree < 0)
    assert int8.deciding_condition(rules, g) is not None
    assert int8.deciding_condition([Rule(m, beta * m + g), Rule(w, w - lr * sp.sign(m))], m) is None


# --- every spec ------------------------------------------------------------------------------

U, S_, F = "unsigned", "signed", None  # F: refused (float storage only)
EXPECTED = {
    "adabelief": {"exp_avg": S_, "exp_avg_var": U},
    "adadelta": {"square_avg": U, "acc_delta": U},
    "adadelta_nn": {"accum": U, "accum_update": U},
    "adafactor": {"row_var": F, "col_var": F, "variance": U},
    "adagrad": {"sum": U},
    "adagrad_nn": {"accum": U},
    "adam": {"moment1": S_, "moment2": U, "vhat": U},
    "adam_offload": {"moment1": S_, "moment2": U, "delta": F},
    "adam_torch": {"exp_avg": S_, "exp_avg_sq": U, "max_exp_avg_sq": U},
    "adam_weight_decay": {"moments1": S_, "moments2": U},
    "adamax": {"exp_avg": S_, "exp_inf": U},
    "adamax_nn": {"moment1": S_, "moment2": U},
    "adamw": {"exp_avg": S_, "exp_avg_sq": U, "max_exp_avg_sq": U},
    "adan": {"exp_avg": S_, "exp_avg_diff": S_, "exp_avg_sq": U, "pre_grad": F},
    "asgd": {"ax": F},
    "ftrl": {"moments": F, "linear": F},
    "lamb": {"moments1": S_, "moments2": U},
    "lion": {"exp_avg": S_},
    "momentum": {"moments": S_},
    "nadam": {"exp_avg": S_, "exp_avg_sq": U},
    "proximal_adagrad": {"accum": U},
    "radam": {"exp_avg": S_, "exp_avg_sq": U},
    "radam_torch": {"exp_avg": S_, "exp_avg_sq": U},
    # alpha and decay are declared in [0, oo), as torch and MindSpore check them: a rate above 1
    # can drive the square average negative, so it takes the signed table.
    "rmsprop": {"square_avg": S_, "grad_avg": S_, "momentum_buffer": S_},
    "rmsprop_nn": {"mean_square": S_, "mean_grad": S_, "moment": S_},
    "rprop": {"prev": F, "step_size": F},
    "sgd": {"momentum_buffer": S_},
    "schedulefree": {"z": "signed", "exp_avg_sq": "unsigned"},
    "muon": {"momentum_buffer": "signed"},
    # s and p0 take the gradient's and the parameter's sign; exp_avg_sq adds d^2*(1-beta2)*g^2
    "prodigy": {"exp_avg": "signed", "exp_avg_sq": "unsigned", "s": "signed", "p0": "signed"},
    "adopt": {"exp_avg": "signed", "exp_avg_sq": "unsigned"},
    # debiased betas: the sign pass cannot show exp_avg_sq stays non-negative
    "stable_adamw": {"exp_avg": "signed", "exp_avg_sq": "signed"},
    "ademamix": {"exp_avg": "signed", "exp_avg_sq": "unsigned", "exp_avg_slow": "signed"},
    "mars": {"exp_avg": "signed", "exp_avg_sq": "unsigned", "last_grad": None, "max_exp_avg_sq": "unsigned"},
}


@pytest.fixture(scope="module")
def verdicts():
    return {spec.name: (spec, {v.state: v for v in int8.int8_storage(spec)}) for spec in load_specs()}


def test_every_spec_has_a_recorded_verdict_per_state(verdicts):
    found = {name: {state: v.table for state, v in states.items()} for name, (_, states) in verdicts.items()}
    assert found == EXPECTED
    assert len(found) == 34


def test_adam_and_adamw_moments(verdicts):
    for name in ("adam_torch", "adamw"):
        spec, _ = verdicts[name]
        assert sign.state_sign(spec, "exp_avg") == ANY
        assert sign.state_sign(spec, "exp_avg_sq") == NONNEGATIVE
        assert sign.state_sign(spec, "max_exp_avg_sq") == NONNEGATIVE
        assert int8.int8_table(spec, "exp_avg") == "signed"
        assert int8.int8_table(spec, "exp_avg_sq") == "unsigned"
        assert int8.int8_table(spec, spec.state[2].symbol) == "unsigned"  # by symbol too


def test_an_accepted_state_is_refused_nothing_and_a_refused_one_says_why(verdicts):
    for _, states in verdicts.values():
        for v in states.values():
            assert v.reasons
            assert (v.table == "unsigned") == (
                v.sign == NONNEGATIVE and v.table is not None
            ) or v.table is None


@pytest.mark.parametrize(
    "spec_name, state, words",
    [
        ("rprop", "prev", ["snapshot", "decides a branch"]),
        ("rprop", "step_size", ["not a statistic of the gradient"]),
        ("asgd", "ax", ["holds parameter values"]),
        ("adan", "pre_grad", ["snapshot"]),
        ("adam_offload", "delta", ["snapshot"]),
        ("ftrl", "linear", ["decides a branch", "holds parameter values"]),
        ("ftrl", "moments", ["decides a branch", "through 'linear'"]),
        ("adafactor", "row_var", ["row-shaped"]),
    ],
)
def test_a_state_that_cannot_be_quantised_is_a_spec_error_naming_it(verdicts, spec_name, state, words):
    spec, _ = verdicts[spec_name]
    with pytest.raises(SpecError) as error:
        int8.int8_table(spec, state)
    message = str(error.value)
    assert message.startswith(f"specs/{spec_name}.py: state '{state}' cannot be stored as 8-bit codes")
    for word in words:
        assert word in message, message


def test_an_unknown_state_is_a_spec_error(verdicts):
    spec, _ = verdicts["adamw"]
    with pytest.raises(SpecError, match="no state 'nope'"):
        int8.int8_table(spec, "nope")


def test_a_condition_on_a_norm_does_not_refuse_lambs_moments(verdicts):
    """Lamb's trust ratio tests norm(r) > 0, and r reads both moments: a per-tensor decision."""
    _, states = verdicts["lamb"]
    assert states["moments1"].table == "signed" and states["moments2"].table == "unsigned"


def toy_spec(rule, domains, exports=()):
    """A one-state spec with a flag `f` (the update may differ per variant)."""
    from optforge.compiler.spec import Export, Flag, Hyper, Rule, Spec, State

    f = sp.Symbol("f")
    return Spec(
        name="toy",
        title="Toy",
        source="specs/toy.py",
        hypers=[Hyper(beta, ("float",), 0.5, "A rate."), Hyper(c, ("float",), 1.0, "A factor.")],
        flags=[Flag(f, "A switch.")],
        state=[State(v, 0, "v", "The state.")],
        rules=[Rule(v, rule(f)), Rule(w, w - lr * v)],
        domains=domains,
        decay="decoupled",
        exports=[Export("optim", "Toy", ("lr", "beta", "c"), domains=d) for d in exports],
    )


def test_a_sign_must_hold_in_every_variant():
    domains = {beta: sp.Interval.open(0, 1), c: sp.Interval(0, sp.oo)}
    both = toy_spec(lambda f: sp.Piecewise((beta * v + (1 - beta) * g**2, f), (v + g**2, True)), domains)
    assert sign.state_sign(both, "v") == NONNEGATIVE and int8.int8_table(both, "v") == "unsigned"
    one_only = toy_spec(
        lambda f: sp.Piecewise((beta * v + (1 - beta) * g**2, f), (v - lr * g, True)), domains
    )
    assert sign.state_sign(one_only, "v") == ANY and int8.int8_table(one_only, "v") == "signed"


def test_a_proof_holds_for_the_widest_domain_any_export_accepts():
    """The spec's c in [0, oo) proves c*v + g**2 >= 0; an export that takes c > -1 undoes it."""
    domains = {beta: sp.Interval.open(0, 1), c: sp.Interval(0, sp.oo)}
    rule = lambda f: c * v + g**2  # noqa: E731
    assert sign.state_sign(toy_spec(rule, domains), "v") == NONNEGATIVE
    wider = toy_spec(rule, domains, exports=[{c: sp.Interval.open(-1, sp.oo)}])
    assert sign.hyper_domains(wider)[c] == sp.Interval.open(-1, sp.oo)
    assert sign.state_sign(wider, "v") == ANY
