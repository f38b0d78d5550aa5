"""RAdam as torch.optim.RAdam computes it (Liu et al., 2020).

The same algorithm as specs/radam.py (MindSpore's), with torch's arithmetic and
options: the step-level values (rho_t, the rectification term, the bias
corrections) are Python floats in torch, so this spec's host code is float64,
where MindSpore's is float32 (for some beta2 the two choose different branches
near rho_t = 5); `maximize`; and `decoupled_weight_decay`, which shrinks the
weights by lr*weight_decay (AdamW's decay) instead of adding to the gradient.
"""

import sympy as sp

from optforge.compiler.spec import (
    Export,
    Flag,
    Hyper,
    Rule,
    Spec,
    State,
    g,
    grad_scale,
    lr,
    t,
    w,
    weight_decay,
)

beta1, beta2, eps = sp.symbols("beta1 beta2 eps")
decoupled, maximize = sp.symbols("decoupled_weight_decay maximize")
m, v = sp.symbols("m v")
g_eff, w_decayed, m_hat, rho_inf, rho_t, rect = sp.symbols("g_eff w_decayed m_hat rho_inf rho_t r_t")

# torch.optim.RAdam's: the same names, keyword-only arguments marked by "*".
TORCH_SIGNATURE = (
    ("lr", 1e-3),
    ("betas", ("beta1", "beta2")),
    "eps",
    ("weight_decay", 0.0),
    "decoupled_weight_decay",
    "*",
    "foreach",
    "maximize",
    "capturable",
    "differentiable",
)

SPEC = Spec(
    name="radam_torch",
    title="RAdam",
    source=__file__,
    summary="Rectified Adam with PyTorch's arithmetic: float64 step-level values, maximize, decoupled decay.",
    references=(
        "Liyuan Liu, Haoming Jiang, Pengcheng He, et al. On the Variance of the Adaptive Learning "
        "Rate and Beyond. ICLR 2020. https://arxiv.org/abs/1908.03265",
    ),
    hypers=[
        Hyper(beta1, ("float", "numpy.floating"), 0.9, "Decay rate of the running mean of gradients."),
        Hyper(
            beta2, ("float", "numpy.floating"), 0.999, "Decay rate of the running mean of squared gradients."
        ),
        Hyper(eps, ("float", "int"), 1e-8, "Added to the denominator for numerical stability."),
    ],
    domains={beta1: sp.Interval.Ropen(0, 1), beta2: sp.Interval.Ropen(0, 1), eps: sp.Interval(0, sp.oo)},
    flags=[
        Flag(decoupled, "Decay the weights directly (AdamW's arithmetic) instead of adding to the gradient."),
        Flag(maximize, "Maximize the objective: step along the gradient."),
    ],
    state=[
        State(m, 0, "exp_avg", "First moment (running mean of gradients)."),
        State(v, 0, "exp_avg_sq", "Second moment (running mean of squared gradients)."),
    ],
    rules=[
        Rule(
            g_eff,
            sp.Piecewise((-g, maximize), (g, True)) * grad_scale
            + sp.Piecewise((0, decoupled), (weight_decay * w, True)),
        ),
        Rule(w_decayed, sp.Piecewise((w * (1 - lr * weight_decay), decoupled), (w, True))),
        Rule(m, m + (g_eff - m) * (1 - beta1)),
        Rule(v, v * beta2 + (1 - beta2) * g_eff**2),
        Rule(m_hat, m / (1 - beta1**t)),
        Rule(rho_inf, 2 / (1 - beta2) - 1),
        Rule(rho_t, rho_inf - 2 * t * beta2**t / (1 - beta2**t)),
        Rule(rect, sp.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))),
        Rule(
            w,
            sp.Piecewise(
                (w_decayed - m_hat * lr * (sp.sqrt(1 - beta2**t) / (sp.sqrt(v) + eps)) * rect, rho_t > 5),
                (w_decayed - m_hat * lr, True),
            ),
        ),
    ],
    latex={
        eps: r"\epsilon",
        g_eff: r"\tilde{g}",
        w_decayed: r"\bar{w}",
        m_hat: r"\hat{m}",
        rho_inf: r"\rho_\infty",
        rho_t: r"\rho_t",
        rect: "r_t",
    },
    notes=(
        "rho_t and the rectification term are computed in float64, as torch does with Python floats; "
        "optforge.optim.RAdam (specs/radam.py) keeps MindSpore's float32.",
    ),
    exports=[Export("torch", "RAdam", TORCH_SIGNATURE)],
)
