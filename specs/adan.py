"""Adan (Xie et al., 2022): Nesterov-style adaptive momentum from gradient differences.

As the authors' implementation: the first step's gradient difference is 0, and the
weight decay is proximal, w = (w - lr * update) / (1 + lr * weight_decay).
"""

import sympy as sp

from optforge.compiler.spec import Export, Hyper, Rule, Spec, State, g, lr, t, w, weight_decay

beta1, beta2, beta3, eps = sp.symbols("beta1 beta2 beta3 eps")
m, d, n, g_prev, diff, update = sp.symbols("m d n g_prev diff update")

# The optim and torch dialects share torch.optim's signature.
SIGNATURE = (("lr", 1e-3), ("betas", ("beta1", "beta2", "beta3")), "eps", ("weight_decay", 0.0))

SPEC = Spec(
    name="adan",
    title="Adan",
    source=__file__,
    summary="Adaptive Nesterov momentum: moments of the gradient and of its change between steps.",
    references=(
        "Xingyu Xie, Pan Zhou, Huan Li, Zhouchen Lin, Shuicheng Yan. Adan: Adaptive Nesterov "
        "Momentum Algorithm for Faster Optimizing Deep Models. 2022. https://arxiv.org/abs/2208.06677",
    ),
    hypers=[
        Hyper(beta1, ("float", "numpy.floating"), 0.98, "Decay rate of the running mean of gradients."),
        Hyper(
            beta2, ("float", "numpy.floating"), 0.92, "Decay rate of the running mean of gradient changes."
        ),
        Hyper(beta3, ("float", "numpy.floating"), 0.99, "Decay rate of the second moment."),
        Hyper(eps, ("float", "int"), 1e-8, "Added to the denominator for numerical stability."),
    ],
    domains={
        beta1: sp.Interval.Ropen(0, 1),
        beta2: sp.Interval.Ropen(0, 1),
        beta3: sp.Interval.Ropen(0, 1),
        eps: sp.Interval.open(0, sp.oo),
    },
    flags=[],
    state=[
        State(m, 0, "exp_avg", "Running mean of gradients."),
        State(d, 0, "exp_avg_diff", "Running mean of gradient changes."),
        State(n, 0, "exp_avg_sq", "Running mean of the squared Nesterov gradient."),
        State(g_prev, 0, "pre_grad", "The previous step's gradient."),
    ],
    rules=[
        Rule(diff, sp.Piecewise((0, sp.Eq(t, 1)), (g - g_prev, True))),
        Rule(m, beta1 * m + (1 - beta1) * g),
        Rule(d, beta2 * d + (1 - beta2) * diff),
        Rule(n, beta3 * n + (1 - beta3) * (g + beta2 * diff) ** 2),
        # sqrt(n)/sqrt(1 - beta3^t), as the authors' code: n/(1 - beta3^t) can overflow float32
        # where its square root does not.
        Rule(
            update,
            (m / (1 - beta1**t) + beta2 * d / (1 - beta2**t)) / (sp.sqrt(n) / sp.sqrt(1 - beta3**t) + eps),
        ),
        Rule(w, (w - lr * update) / (1 + lr * weight_decay)),
        Rule(g_prev, g),
    ],
    decay="decoupled",
    latex={eps: r"\epsilon", g_prev: r"g_{\mathrm{prev}}", diff: r"\delta", update: "u"},
    exports=[Export("optim", "Adan", SIGNATURE), Export("torch", "Adan", SIGNATURE)],
)
