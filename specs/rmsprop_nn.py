"""RMSProp, as MindSpore's nn.RMSProp computes it (ApplyRMSProp / ApplyCenteredRMSProp).

Unlike torch's: the mean square starts at 1, eps is inside the square root, and the
momentum buffer accumulates lr*g/sqrt(ms + eps), so it holds the step itself.
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import g_eff
from optforge.compiler.spec import Export, Flag, Hyper, Rule, State, lr, w

decay, momentum, epsilon = sp.symbols("decay momentum epsilon")
centered = sp.Symbol("centered")
ms, mg, mom = sp.symbols("ms mg mom")

SPEC = F.compose(
    F.nn_prologue(),
    name="rmsprop_nn",
    title="RMSProp",
    source=__file__,
    summary="Steps scaled by the root of a running mean square of gradients (MindSpore's form).",
    references=(
        "Geoffrey Hinton. Neural Networks for Machine Learning, lecture 6e. 2012. "
        "https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf",
    ),
    hypers=[
        Hyper(decay, ("float",), 0.9, "Decay rate of the mean square (>= 0)."),
        Hyper(momentum, ("float",), 0.0, "Momentum factor (>= 0)."),
        Hyper(epsilon, ("float",), 1e-10, "Added inside the square root (> 0)."),
    ],
    domains={
        decay: sp.Interval(0, sp.oo),
        momentum: sp.Interval(0, sp.oo),
        epsilon: sp.Interval.open(0, sp.oo),
    },
    flags=[Flag(centered, "Normalize by an estimate of the variance (ApplyCenteredRMSProp).")],
    state=[
        State(ms, 1, "mean_square", "Running mean of squared gradients; starts at 1."),
        State(mg, 0, "mean_grad", "Running mean of gradients.", when=centered),
        State(mom, 0, "moment", "Momentum of the step."),
    ],
    rules=[
        Rule(ms, decay * ms + (1 - decay) * g_eff**2),
        Rule(mg, decay * mg + (1 - decay) * g_eff, when=centered),
        Rule(
            mom,
            momentum * mom + lr * g_eff / sp.sqrt(sp.Piecewise((ms - mg**2, centered), (ms, True)) + epsilon),
        ),
        Rule(w, w - mom),
    ],
    latex={epsilon: r"\epsilon", decay: r"\rho", momentum: r"\mu"},
    exports=[
        Export(
            "nn",
            "RMSProp",
            (
                ("learning_rate", 0.1),
                "decay",
                "momentum",
                "epsilon",
                ("use_locking", False),
                "centered",
                ("loss_scale", 1.0),
                ("weight_decay", 0.0),
            ),
        )
    ],
)
