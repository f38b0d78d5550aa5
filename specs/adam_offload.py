"""AdamOffload, as MindSpore's `nn.AdamOffload` computes it.

The moments live on the host whatever the parameter's device: the host
computes the update `delta` (MindSpore's AdamNoUpdateParam kernel, whose
moment update is `m*beta1 + (1 - beta1)*g`), and a separate stage, the only
one that touches the parameter, adds it: `w += delta`.
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
use_nesterov = sp.Symbol("use_nesterov")
m, v, delta = sp.symbols("m v delta")
g_eff = sp.Symbol("g_eff")

numerator = sp.Piecewise((m * beta1 + (1 - beta1) * g_eff, use_nesterov), (m, True))

SPEC = Spec(
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
    hypers=[
        Hyper(beta1, ("float",), 0.9, "Exponential decay rate of the first moment."),
        Hyper(beta2, ("float",), 0.999, "Exponential decay rate of the second moment."),
        Hyper(eps, ("float",), 1e-8, "Added to the denominator for numerical stability."),
    ],
    domains={
        beta1: sp.Interval.open(0, 1),
        beta2: sp.Interval.open(0, 1),
        eps: sp.Interval.open(0, sp.oo),
    },
    flags=[Flag(use_nesterov, "Use Nesterov's accelerated gradient in the update.")],
    state=[
        State(m, 0, "moment1", "First moment (running mean of gradients), in host memory."),
        State(v, 0, "moment2", "Second moment (running mean of squared gradients), in host memory."),
        State(delta, 0, "delta", "The update the host computed, added to the parameter by the apply stage."),
    ],
    rules=[
        Rule(g_eff, g * grad_scale + weight_decay * w),
        Rule(m, m * beta1 + (1 - beta1) * g_eff),
        Rule(v, v * beta2 + (1 - beta2) * g_eff**2),
        Rule(delta, -lr * sp.sqrt(1 - beta2**t) / (1 - beta1**t) * numerator / (sp.sqrt(v) + eps)),
        Rule(w, w + delta),
    ],
    separate_apply=True,
    latex={eps: r"\epsilon", g_eff: r"\tilde{g}", delta: r"\delta"},
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
