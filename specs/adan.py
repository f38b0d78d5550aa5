"""Adan (Xie et al., 2022): Nesterov-style adaptive momentum from gradient differences.

As the authors' implementation: the first step's gradient difference is 0, and the
weight decay is proximal, w = (w - lr * update) / (1 + lr * weight_decay).
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import beta1, beta2, beta3, eps
from optforge.compiler.spec import Export, Rule, State, g, lr, t, w, weight_decay

m, d, n, g_prev, diff, update = sp.symbols("m d n g_prev diff update")

# The optim and torch dialects share torch.optim's signature.
SIGNATURE = (("lr", 1e-3), ("betas", ("beta1", "beta2", "beta3")), "eps", ("weight_decay", 0.0))

SPEC = F.compose(
    F.betas(
        (0.98, 0.92, 0.99),
        (None, "Decay rate of the running mean of gradient changes.", "Decay rate of the second moment."),
    ),
    F.epsilon(1e-8),
    name="adan",
    title="Adan",
    source=__file__,
    summary="Adaptive Nesterov momentum: moments of the gradient and of its change between steps.",
    references=(
        "Xingyu Xie, Pan Zhou, Huan Li, Zhouchen Lin, Shuicheng Yan. Adan: Adaptive Nesterov "
        "Momentum Algorithm for Faster Optimizing Deep Models. 2022. https://arxiv.org/abs/2208.06677",
    ),
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
    latex={g_prev: r"g_{\mathrm{prev}}", diff: r"\delta", update: "u"},
    exports=[Export("optim", "Adan", SIGNATURE), Export("torch", "Adan", SIGNATURE)],
)
