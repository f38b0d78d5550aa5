"""Adamax (Kingma & Ba, 2015, section 7) as torch.optim.Adamax computes it: the infinity norm."""

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

beta1, beta2, eps = sp.symbols("beta1 beta2 eps")
maximize = sp.Symbol("maximize")
m, u, g_eff = sp.symbols("m u g_eff")

# The optim and torch dialects share torch.optim's signature.
SIGNATURE = (("lr", 2e-3), ("betas", ("beta1", "beta2")), "eps", ("weight_decay", 0.0), "maximize")
# torch.optim.Adamax's: the same names, keyword-only arguments marked by "*".
TORCH_SIGNATURE = (*SIGNATURE[:-1], "foreach", "*", "maximize", "differentiable", "capturable")

SPEC = Spec(
    name="adamax",
    title="Adamax",
    source=__file__,
    summary="Adam with the infinity norm: steps scaled by a decaying maximum of |g|.",
    references=(
        "Diederik P. Kingma, Jimmy Ba. Adam: A Method for Stochastic Optimization. ICLR 2015, "
        "section 7.1. https://arxiv.org/abs/1412.6980",
    ),
    hypers=[
        Hyper(beta1, ("float", "numpy.floating"), 0.9, "Decay rate of the running mean of gradients."),
        Hyper(beta2, ("float", "numpy.floating"), 0.999, "Decay rate of the infinity norm."),
        Hyper(eps, ("float", "int"), 1e-8, "Added to |g| for numerical stability."),
    ],
    domains={beta1: sp.Interval.Ropen(0, 1), beta2: sp.Interval.Ropen(0, 1), eps: sp.Interval.open(0, sp.oo)},
    flags=[Flag(maximize, "Maximize the objective: step along the gradient.")],
    state=[
        State(m, 0, "exp_avg", "First moment (running mean of gradients)."),
        State(u, 0, "exp_inf", "Decaying infinity norm of the gradients."),
    ],
    rules=[
        # torch's operations, fused where its CPU kernels are (see `fma`): grad.add(param, alpha=),
        # lerp_ (weight < 0.5), addcmul_ and add_(alpha=) each one fma.
        Rule(g_eff, fma(weight_decay, w, sp.Piecewise((-g, maximize), (g, True)) * grad_scale)),
        Rule(m, fma(1 - beta1, g_eff - m, m)),
        Rule(u, sp.Max(beta2 * u, sp.Abs(g_eff) + eps)),
        Rule(w, w - lr / (1 - beta1**t) * m / u),
    ],
    latex={eps: r"\epsilon", g_eff: r"\tilde{g}"},
    exports=[
        Export("optim", "Adamax", SIGNATURE),
        Export(
            "torch",
            "Adamax",
            TORCH_SIGNATURE,
            domains={eps: sp.Interval(0, sp.oo)},  # torch: `0.0 <= eps`
        ),
    ],
)
