"""Spec fragments: what each expands to, the misuse each refuses, and that a composed spec
is the hand-written one (the old-style spec below is AdamW as it was written before fragments)."""

import pytest
import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import beta1, beta2, eps, g_eff, w_decayed
from optforge.compiler.spec import (
    Export,
    Flag,
    Hyper,
    Rule,
    Spec,
    SpecError,
    State,
    fma,
    g,
    grad_scale,
    lr,
    mean,
    numel,
    t,
    w,
    weight_decay,
)

m = sp.Symbol("m")
a = sp.Symbol("a")
maximize = F.maximize_flag
# A core that reads the effective gradient and starts its update from the decayed parameter.
CORE = F.Fragment(
    "core",
    hypers=[Hyper(a, ("float",), 0.5, "a")],
    domains={a: sp.Interval.open(0, 1)},
    state=[State(m, 0, "moment", "m")],
    rules=[Rule(m, a * m + g_eff), Rule(w, w_decayed - lr * m)],
)


def compose(*parts, **fields):
    return F.compose(
        CORE, *parts, **({"name": "tiny", "title": "Tiny", "source": "/x/specs/tiny.py"} | fields)
    )


def rules(spec):
    return [(r.target, r.expr, r.when) for r in spec.rules]


def test_a_core_alone_reads_g_and_w_for_its_effective_gradient_and_decayed_parameter():
    spec = compose(decay="decoupled")
    assert rules(spec) == [(m, a * m + g, None), (w, w - lr * m, None)]
    assert g_eff not in spec.latex and spec.flags == ()


def test_maximize_is_a_flag_and_the_gradient_s_sign():
    spec = compose(F.maximize(), decay="decoupled")
    assert spec.flags == (Flag(maximize, "Maximize the objective: step along the gradient."),)
    assert rules(spec)[0] == (g_eff, sp.Piecewise((-g, maximize), (g, True)), None)
    assert rules(spec)[1:] == [(m, a * m + g_eff, None), (w, w - lr * m, None)]
    assert spec.latex[g_eff] == r"\tilde{g}"


@pytest.mark.parametrize(
    "parts, expected, decay",
    [
        ((F.loss_scale(),), g * grad_scale, "decoupled"),
        ((F.loss_scale(), F.coupled_decay()), g * grad_scale + weight_decay * w, "coupled"),
        ((F.coupled_decay(fused=True), F.loss_scale()), fma(weight_decay, w, g * grad_scale), "coupled"),
        ((F.nn_prologue(),), g * grad_scale + weight_decay * w, "coupled"),
        (
            (F.torch_prologue(),),
            fma(weight_decay, w, sp.Piecewise((-g, maximize), (g, True)) * grad_scale),
            "coupled",
        ),
        # The order of the fragments never changes the order of the transforms.
        (
            (F.coupled_decay(fused=True), F.loss_scale(), F.maximize()),
            fma(weight_decay, w, sp.Piecewise((-g, maximize), (g, True)) * grad_scale),
            "coupled",
        ),
    ],
)
def test_the_effective_gradient_is_decay_of_scale_of_sign(parts, expected, decay):
    spec = compose(*parts, **({"decay": "decoupled"} if decay == "decoupled" else {}))
    assert rules(spec)[0] == (g_eff, expected, None)
    assert spec.decay == decay
    assert rules(spec)[-1] == (w, w - lr * m, None)  # no decoupled decay: w_decayed is w


def test_decoupled_decay_shrinks_the_parameter_the_update_starts_from():
    spec = compose(F.decoupled_decay())
    assert rules(spec) == [
        (w_decayed, w * (1 - lr * weight_decay), None),
        (m, a * m + g, None),
        (w, w_decayed - lr * m, None),
    ]
    assert spec.decay == "decoupled" and spec.latex[w_decayed] == r"\bar{w}"


def test_switched_decay_is_a_flag_choosing_coupled_or_decoupled_per_variant():
    spec = compose(F.switched_decay(fused=True), F.loss_scale())
    flag = sp.Symbol("decoupled_weight_decay")
    assert [f.symbol for f in spec.flags] == [flag]
    scaled = g * grad_scale
    assert rules(spec)[:2] == [
        (g_eff, sp.Piecewise((scaled, flag), (fma(weight_decay, w, scaled), True)), None),
        (w_decayed, sp.Piecewise((w * (1 - lr * weight_decay), flag), (w, True)), None),
    ]
    assert spec.decay == "coupled"


def test_switched_decay_with_a_fixed_flag_drops_lr_from_the_decoupled_decay():
    spec = compose(F.switched_decay("weight_decouple", fused=True, fixed="fixed_decay"), F.loss_scale())
    flag, fixed = sp.symbols("weight_decouple fixed_decay")
    assert [f.symbol for f in spec.flags] == [flag, fixed]
    decayed = sp.Piecewise((w * (1 - weight_decay), fixed), (w * (1 - lr * weight_decay), True))
    assert rules(spec)[1] == (w_decayed, sp.Piecewise((decayed, flag), (w, True)), None)
    assert spec.decay == "coupled"
    with pytest.raises(SpecError, match="only a switched decay has a fixed-decay flag"):
        F.Fragment("odd", decay=F.Decay("decoupled", fixed=fixed))


def test_betas_and_epsilon_declare_hypers_domains_and_latex_by_convention():
    spec = compose(F.betas(), F.epsilon(1e-8), decay="decoupled")
    assert [h.name for h in spec.hypers] == ["a", "beta1", "beta2", "eps"]  # in the fragments' order
    assert spec.hyper("beta1") == Hyper(
        beta1, ("float", "numpy.floating"), 0.9, "Decay rate of the running mean of gradients."
    )
    assert spec.domains[beta2] == sp.Interval.Ropen(0, 1) and spec.domains[eps] == sp.Interval.open(0, sp.oo)
    assert spec.hyper("eps").types == ("float", "int") and spec.latex[eps] == r"\epsilon"
    nn = compose(F.betas(convention="nn"), F.epsilon(1e-6, convention="nn"), decay="decoupled")
    assert nn.hyper("beta2") == Hyper(
        beta2, ("float",), 0.999, "Exponential decay rate of the second moment."
    )
    assert nn.domains[beta1] == sp.Interval.open(0, 1) and nn.hyper("eps").types == ("float",)
    three = F.betas((0.98, 0.92, 0.99), (None, "changes", "second"))
    assert [(h.name, h.default, h.doc) for h in three.hypers] == [
        ("beta1", 0.98, "Decay rate of the running mean of gradients."),
        ("beta2", 0.92, "changes"),
        ("beta3", 0.99, "second"),
    ]


def test_nesterov_is_a_flag_and_lookahead_picks_per_variant():
    fragment = F.nesterov("use_nesterov")
    assert fragment.flags == (Flag(sp.Symbol("use_nesterov"), "Use Nesterov momentum."),)
    other = sp.Symbol("amsgrad")
    assert F.lookahead(fragment.flag, g, m, unless=other) == sp.Piecewise(
        (g, fragment.flag & ~other), (m, True)
    )
    assert F.lookahead(fragment.flag, g, m) == sp.Piecewise((g, fragment.flag), (m, True))


@pytest.mark.parametrize(
    "parts, message",
    [
        (
            (F.maximize(), F.maximize()),
            "fragment 'maximize': the gradient's sign is already given by fragment",
        ),
        (
            (F.torch_prologue(), F.maximize()),
            "fragment 'maximize': the gradient's sign is already given by fragment 'maximize'",
        ),
        ((F.nn_prologue(), F.loss_scale()), "fragment 'loss_scale': the gradient's scale is already given"),
        (
            (F.coupled_decay(), F.decoupled_decay()),
            "fragment 'decoupled_decay': the gradient's decay is already given by fragment 'coupled_decay'",
        ),
        ((F.betas(), F.betas()), "fragment 'betas': 'beta1' is already declared by fragment 'betas'"),
        ((F.epsilon(name="a"),), "the spec: 'a' is already declared by fragment 'epsilon'"),
        ((F.switched_decay(name="a"),), "the spec: 'a' is already declared by fragment 'switched_decay'"),
    ],
)
def test_a_fragment_applied_twice_or_clashing_is_a_spec_error_naming_the_file(parts, message):
    with pytest.raises(SpecError, match=f"^specs/tiny.py: {message}"):
        # CORE's declarations given as the spec's own, after the fragments.
        F.compose(
            *parts,
            **{name: getattr(CORE, name) for name in ("hypers", "domains", "state", "rules")},
            name="tiny",
            title="Tiny",
            source="/x/specs/tiny.py",
            decay="coupled",
        )


def test_a_rule_assigning_what_a_fragment_defines_is_refused():
    with pytest.raises(
        SpecError, match=r"the spec: rule g_eff <- 2\*g assigns 'g_eff', which fragment 'maximize'"
    ):
        compose(F.maximize(), rules=[Rule(g_eff, 2 * g)], decay="decoupled")
    with pytest.raises(
        SpecError, match="rule w_decayed <- w assigns 'w_decayed', which fragment 'decoupled_decay'"
    ):
        compose(F.decoupled_decay(), rules=[Rule(w_decayed, w)])


def test_a_decay_contradicting_the_decay_fragment_and_other_misuse_are_refused():
    with pytest.raises(SpecError, match="decay='decoupled', but fragment 'nn_prologue' makes it 'coupled'"):
        compose(F.nn_prologue(), decay="decoupled")
    with pytest.raises(SpecError, match="compose takes fragments .* got Hyper"):
        compose(Hyper(sp.Symbol("b"), ("float",), 1.0, "b"))
    with pytest.raises(SpecError, match="its domains of 'eps' differs"):
        compose(F.epsilon(), F.Fragment("other", domains={eps: sp.Interval(0, 1)}), decay="decoupled")
    with pytest.raises(SpecError, match="fragment 'betas': 2 defaults but 3 docs"):
        F.betas(docs=("x", "y", "z"))
    with pytest.raises(SpecError, match="give the doc of beta3"):
        F.betas((0.9, 0.9, 0.9))
    with pytest.raises(SpecError, match="convention must be one of"):
        F.epsilon(convention="jax")
    with pytest.raises(SpecError, match="decay kind must be one of"):
        F.Fragment("odd", decay=F.Decay("halfway"))
    with pytest.raises(SpecError, match="a switched decay, and only it, names its flag"):
        F.Fragment("odd", decay=F.Decay("switched"))
    with pytest.raises(SpecError, match="fragment 'betas' declares 0 flags, not one"):
        F.betas().flag
    # The spec's own checks still run on the result: coupled decay needs the loss scale (the
    # nn run-time undoes both together), and a core may not read a symbol nobody declares.
    with pytest.raises(
        SpecError, match="decay: 'coupled' needs a rule `g\\*grad_scale \\+ weight_decay\\*w`"
    ):
        compose(F.coupled_decay())
    with pytest.raises(SpecError, match="undefined symbol 'b'"):
        compose(rules=[Rule(sp.Symbol("c"), sp.Symbol("b"))], decay="decoupled")


# AdamW exactly as specs/adamw.py wrote it before fragments: an old-style spec still builds,
# and the fragments' AdamW (Adam's core plus decoupled_decay()) is the same spec.
amsgrad = sp.Symbol("amsgrad")
v, vmax = sp.symbols("v v_max")
U = sp.Symbol("u")
HAND_WRITTEN_ADAMW = Spec(
    name="adamw",
    title="AdamW",
    source="/x/specs/adamw.py",
    hypers=[
        Hyper(beta1, ("float", "numpy.floating"), 0.9, "Decay rate of the running mean of gradients."),
        Hyper(
            beta2, ("float", "numpy.floating"), 0.999, "Decay rate of the running mean of squared gradients."
        ),
        Hyper(eps, ("float", "int"), 1e-8, "Added to the denominator for numerical stability."),
    ],
    domains={beta1: sp.Interval.Ropen(0, 1), beta2: sp.Interval.Ropen(0, 1), eps: sp.Interval.open(0, sp.oo)},
    flags=[
        Flag(amsgrad, "Divide by the running maximum of the second moment (AMSGrad)."),
        Flag(F.cautious_flag, F.CAUTIOUS_DOC),
        Flag(maximize, "Maximize the objective: step along the gradient."),
    ],
    state=[
        State(m, 0, "exp_avg", "First moment (running mean of gradients)."),
        State(v, 0, "exp_avg_sq", "Second moment (running mean of squared gradients)."),
        State(vmax, 0, "max_exp_avg_sq", "Running maximum of the second moment.", when=amsgrad),
    ],
    rules=[
        Rule(g_eff, sp.Piecewise((-g, maximize), (g, True))),
        Rule(w_decayed, w * (1 - lr * weight_decay)),
        Rule(m, fma(1 - beta1, g_eff - m, m)),
        Rule(v, fma((1 - beta2) * g_eff, g_eff, beta2 * v)),
        Rule(vmax, sp.Max(vmax, v), when=amsgrad),
        Rule(
            w,
            w_decayed
            - lr
            / (1 - beta1**t)
            * m
            / (sp.sqrt(sp.Piecewise((vmax, amsgrad), (v, True))) / sp.sqrt(1 - beta2**t) + eps),
            when=~F.cautious_flag,
        ),
        # C-AdamW: the same update u, masked where u*g_eff <= 0, the rest scaled by numel/(kept + 1).
        Rule(
            U,
            m
            / (1 - beta1**t)
            / (sp.sqrt(sp.Piecewise((vmax, amsgrad), (v, True))) / sp.sqrt(1 - beta2**t) + eps),
            when=F.cautious_flag,
        ),
        Rule(F.cautious_mask, sp.Max(sp.sign(U * g_eff), 0), when=F.cautious_flag),
        Rule(
            w,
            w_decayed - lr * U * F.cautious_mask / (mean(F.cautious_mask) + 1 / numel),
            when=F.cautious_flag,
        ),
    ],
    decay="decoupled",
    latex={
        eps: r"\epsilon",
        g_eff: r"\tilde{g}",
        vmax: r"v_{\max}",
        w_decayed: r"\bar{w}",
        U: "u",
        F.cautious_mask: r"\mu",
    },
    exports=[Export("optim", "AdamW", (("lr", 1e-3), ("betas", ("beta1", "beta2")), "eps", "amsgrad"))],
)


def test_adamw_composed_from_adam_s_core_and_decoupled_decay_is_the_hand_written_spec():
    from optforge.specs.adamw import SPEC

    for name in ("hypers", "flags", "state", "domains", "latex", "decay", "constraints"):
        assert getattr(SPEC, name) == getattr(HAND_WRITTEN_ADAMW, name), name
    assert rules(SPEC) == rules(HAND_WRITTEN_ADAMW)


def test_adam_s_core_with_coupled_decay_is_torch_s_adam_without_its_decoupled_flag():
    from optforge.specs import adam_torch

    spec = F.compose(
        adam_torch.ADAM, F.loss_scale(), F.coupled_decay(fused=True), name="adam", title="Adam", source="x.py"
    )
    plain = {sp.Symbol("decoupled_weight_decay"): sp.false, maximize: sp.false}
    # torch's Adam in its variant without maximize and decoupled decay, where w_decayed is w.
    plain_torch = [
        (r.target, sp.sympify(r.expr).subs(plain).subs(w_decayed, w), r.when)
        for r in adam_torch.SPEC.rules
        if r.target != w_decayed
    ]
    assert rules(spec) == plain_torch
    assert w_decayed not in spec.latex and not rules(spec)[-1][1].has(w_decayed)
