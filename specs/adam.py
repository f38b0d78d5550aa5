"""Adam, as MindSpore's `nn.Adam` computes it (Kingma & Ba, 2015).

MindSpore's kernels fold both bias corrections into the step size and add
eps to sqrt(v) uncorrected (the "epsilon hat" form of the paper's section 2),
which is what this spec writes; its documentation's formula, m_hat over
sqrt(v_hat) + eps, scales eps differently.
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import beta1, beta2, eps, g_eff
from optforge.compiler.spec import (
    REQUIRED,  # noqa: F401  (re-exported for spec authors who copy this file)
    Export,
    Flag,
    Rule,
    State,
    lr,
    t,
    w,
)

NESTEROV = F.nesterov(
    "use_nesterov", "Use Nesterov's accelerated gradient in the update (ignored with use_amsgrad)."
)
use_nesterov, use_amsgrad = NESTEROV.flag, sp.Symbol("use_amsgrad")
m, v, vhat = sp.symbols("m v vhat")

# Nesterov's numerator; MindSpore ignores use_nesterov when use_amsgrad is set.
numerator = F.lookahead(use_nesterov, beta1 * m + (1 - beta1) * g_eff, m, unless=use_amsgrad)
second_moment = sp.Piecewise((vhat, use_amsgrad), (v, True))

SPEC = F.compose(
    F.betas(convention="nn"),
    F.epsilon(1e-8, convention="nn"),
    NESTEROV,
    # The nn dialect's effective gradient: loss scale undone, coupled L2 decay added.
    F.nn_prologue(),
    name="adam",
    title="Adam",
    source=__file__,
    summary="Adaptive moment estimation: per-element steps scaled by running moments of the gradient.",
    references=(
        "Diederik P. Kingma, Jimmy Ba. Adam: A Method for Stochastic Optimization. ICLR 2015. "
        "https://arxiv.org/abs/1412.6980",
        "Sashank J. Reddi, Satyen Kale, Sanjiv Kumar. On the Convergence of Adam and Beyond "
        "(AMSGrad). ICLR 2018. https://openreview.net/forum?id=ryQu7f-RZ",
    ),
    flags=[Flag(use_amsgrad, "Divide by the running maximum of the second moment (AMSGrad).")],
    state=[
        State(m, 0, "moment1", "First moment (running mean of gradients)."),
        State(v, 0, "moment2", "Second moment (running mean of squared gradients)."),
        State(vhat, 0, "vhat", "Running maximum of the second moment.", when=use_amsgrad),
    ],
    rules=[
        Rule(m, m + (g_eff - m) * (1 - beta1)),
        Rule(v, v + (g_eff**2 - v) * (1 - beta2)),
        Rule(vhat, sp.Max(vhat, v), when=use_amsgrad),
        Rule(
            w,
            w - lr * sp.sqrt(1 - beta2**t) / (1 - beta1**t) * numerator / (sp.sqrt(second_moment) + eps),
        ),
    ],
    # A row-sparse gradient steps every row (the moments decay everywhere), as MindSpore's Adam.
    sparse="dense",
    latex={vhat: r"\hat{v}"},
    notes=(
        "eps is added to sqrt(v) without bias correction and both corrections are folded into the "
        "step size, as MindSpore's kernels do; its documentation writes m_hat / (sqrt(v_hat) + eps).",
        "use_nesterov is ignored when use_amsgrad is set, as in MindSpore's code (its documentation "
        "does not say so).",
    ),
    exports=[
        Export(
            "nn",
            "Adam",
            (
                ("learning_rate", 1e-3),
                "beta1",
                "beta2",
                "eps",
                ("use_locking", False),
                "use_nesterov",
                ("weight_decay", 0.0),
                ("loss_scale", 1.0),
                "use_amsgrad",
            ),
        )
    ],
)
