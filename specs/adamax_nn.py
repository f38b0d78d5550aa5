"""AdaMax, as MindSpore's nn.AdaMax computes it (ApplyAdaMax): eps added to the norm at the end."""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import beta1, beta2, eps, g_eff
from optforge.compiler.spec import Export, Rule, State, lr, t, w

m, v = sp.symbols("m v")

SPEC = F.compose(
    F.betas(docs=(None, "Exponential decay rate of the infinity norm."), convention="nn"),
    F.epsilon(1e-8, convention="nn"),
    F.nn_prologue(),
    name="adamax_nn",
    title="AdaMax",
    source=__file__,
    summary="Adam with the infinity norm (MindSpore's form: v = max(beta2*v, |g|), eps at the end).",
    references=(
        "Diederik P. Kingma, Jimmy Ba. Adam: A Method for Stochastic Optimization. ICLR 2015, "
        "section 7.1. https://arxiv.org/abs/1412.6980",
    ),
    state=[
        State(m, 0, "moment1", "First moment (running mean of gradients)."),
        State(v, 0, "moment2", "Decaying infinity norm of the gradients."),
    ],
    rules=[
        Rule(m, beta1 * m + (1 - beta1) * g_eff),
        Rule(v, sp.Max(beta2 * v, sp.Abs(g_eff))),
        Rule(w, w - lr / (1 - beta1**t) * m / (v + eps)),
    ],
    exports=[
        Export(
            "nn",
            "AdaMax",
            (("learning_rate", 0.001), "beta1", "beta2", "eps", ("weight_decay", 0.0), ("loss_scale", 1.0)),
        )
    ],
)
