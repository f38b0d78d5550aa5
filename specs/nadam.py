"""NAdam (Dozat, 2016) as torch.optim.NAdam computes it, with the momentum-decay schedule.

mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay)); the product mu_1 ... mu_t is a
step-level value, computed on the host each step.
"""

import sympy as sp

from optforge.compiler.spec import (
    Export,
    Flag,
    Hyper,
    Rule,
    Spec,
    State,
    fma,
    g,
    grad_scale,
    lr,
    t,
    w,
    weight_decay,
)

beta1, beta2, eps, psi = sp.symbols("beta1 beta2 eps momentum_decay")
decoupled, maximize = sp.symbols("decoupled_weight_decay maximize")
m, v, g_eff, w_decayed, denom = sp.symbols("m v g_eff w_decayed denom")
i = sp.Symbol("i", integer=True, positive=True)


def mu(step):
    return beta1 * (1 - sp.Rational(1, 2) * sp.Float("0.96") ** (step * psi))


mu_product = sp.Product(mu(i), (i, 1, t))

# The optim and torch dialects share torch.optim's signature.
SIGNATURE = (
    ("lr", 2e-3),
    ("betas", ("beta1", "beta2")),
    "eps",
    ("weight_decay", 0.0),
    "momentum_decay",
    "decoupled_weight_decay",
    "maximize",
)
# torch.optim.NAdam's: the same names, keyword-only arguments marked by "*".
TORCH_SIGNATURE = (*SIGNATURE[:-1], "*", "foreach", "maximize", "capturable", "differentiable")

SPEC = Spec(
    name="nadam",
    title="NAdam",
    source=__file__,
    summary="Adam with Nesterov momentum and a momentum-decay schedule.",
    references=(
        "Timothy Dozat. Incorporating Nesterov Momentum into Adam. ICLR 2016 workshop. "
        "https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ",
    ),
    hypers=[
        Hyper(beta1, ("float", "numpy.floating"), 0.9, "Decay rate of the running mean of gradients."),
        Hyper(
            beta2, ("float", "numpy.floating"), 0.999, "Decay rate of the running mean of squared gradients."
        ),
        Hyper(eps, ("float", "int"), 1e-8, "Added to the denominator for numerical stability."),
        Hyper(psi, ("float", "int"), 4e-3, "Momentum decay of the schedule mu_t."),
    ],
    domains={
        beta1: sp.Interval.Ropen(0, 1),
        beta2: sp.Interval.Ropen(0, 1),
        eps: sp.Interval(0, sp.oo),
        psi: sp.Interval(0, sp.oo),
    },
    flags=[
        Flag(decoupled, "Decay the weights directly (AdamW-style) instead of adding to the gradient."),
        Flag(maximize, "Maximize the objective: step along the gradient."),
    ],
    state=[
        State(m, 0, "exp_avg", "First moment (running mean of gradients)."),
        State(v, 0, "exp_avg_sq", "Second moment (running mean of squared gradients)."),
    ],
    rules=[
        # torch's operations, fused where its CPU kernels are (see `fma`): grad.add(param, alpha=),
        # lerp_ (weight < 0.5), addcmul_ and add_(alpha=) each one fma.
        Rule(
            g_eff,
            fma(
                sp.Piecewise((0, decoupled), (weight_decay, True)),
                w,
                sp.Piecewise((-g, maximize), (g, True)) * grad_scale,
            ),
        ),
        Rule(w_decayed, sp.Piecewise((w * (1 - lr * weight_decay), decoupled), (w, True))),
        Rule(m, fma(1 - beta1, g_eff - m, m)),
        Rule(v, fma((1 - beta2) * g_eff, g_eff, beta2 * v)),
        Rule(denom, sp.sqrt(v / (1 - beta2**t)) + eps),
        Rule(
            w,
            w_decayed
            - lr * (1 - mu(t)) / (1 - mu_product) * g_eff / denom
            - lr * mu(t + 1) / (1 - mu_product * mu(t + 1)) * m / denom,
        ),
    ],
    latex={eps: r"\epsilon", g_eff: r"\tilde{g}", psi: r"\psi", w_decayed: r"\bar{w}", denom: "d"},
    exports=[
        Export("optim", "NAdam", SIGNATURE),
        Export("torch", "NAdam", TORCH_SIGNATURE, extra_state={"mu_product": mu_product}),
    ],
)
