"""AdamOffload, as MindSpore's `nn.AdamOffload` computes it.

The moments live on the host whatever the parameter's device: the host
computes the update `delta` (MindSpore's AdamNoUpdateParam kernel, whose
moment update is `m*beta1 + (1 - beta1)*g`), and a separate stage, the only
one that touches the parameter, adds it: `w += delta`.
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import beta1, beta2, eps, g_eff
from optforge.compiler.spec import Export, Rule, State, lr, t, w

NESTEROV = F.nesterov("use_nesterov", "Use Nesterov's accelerated gradient in the update.")
m, v, delta = sp.symbols("m v delta")

numerator = F.lookahead(NESTEROV.flag, m * beta1 + (1 - beta1) * g_eff, m)

SPEC = F.compose(
    F.betas(convention="nn"),
    F.epsilon(1e-8, convention="nn"),
    NESTEROV,
    F.nn_prologue(),
    name="adam_offload",
    title="AdamOffload",
    source=__file__,
    summary="Adam with moments and update on the host; only `w += delta` runs on the device.",
    references=(
        "Diederik P. Kingma, Jimmy Ba. Adam: A Method for Stochastic Optimization. ICLR 2015. "
        "https://arxiv.org/abs/1412.6980",
        "Jie Ren, Samyam Rajbhandari, et al. ZeRO-Offload: Democratizing Billion-Scale Model "
        "Training. USENIX ATC 2021. https://arxiv.org/abs/2101.06840",
    ),
    state=[
        State(m, 0, "moment1", "First moment (running mean of gradients), in host memory."),
        State(v, 0, "moment2", "Second moment (running mean of squared gradients), in host memory."),
        State(delta, 0, "delta", "The update the host computed, added to the parameter by the apply stage."),
    ],
    rules=[
        Rule(m, m * beta1 + (1 - beta1) * g_eff),
        Rule(v, v * beta2 + (1 - beta2) * g_eff**2),
        Rule(delta, -lr * sp.sqrt(1 - beta2**t) / (1 - beta1**t) * numerator / (sp.sqrt(v) + eps)),
        Rule(w, w + delta),
    ],
    separate_apply=True,
    latex={delta: r"\delta"},
    notes=(
        "The moment update is m*beta1 + (1 - beta1)*g, the order of MindSpore's AdamNoUpdateParam "
        "kernel (nn.Adam's kernel computes m + (g - m)*(1 - beta1)); the values agree to rounding.",
        "MindSpore documents AdamOffload as deprecated and GRAPH_MODE-only; it still works in 2.10.",
    ),
    exports=[
        Export(
            "nn",
            "AdamOffload",
            (
                ("learning_rate", 1e-3),
                "beta1",
                "beta2",
                "eps",
                ("use_locking", False),
                "use_nesterov",
                ("weight_decay", 0.0),
                ("loss_scale", 1.0),
            ),
        )
    ],
)
