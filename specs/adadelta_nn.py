"""Adadelta, as MindSpore's nn.Adadelta computes it (ApplyAdadelta, TensorFlow's)."""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import g_eff
from optforge.compiler.spec import Export, Hyper, Rule, State, lr, w

rho, epsilon = sp.symbols("rho epsilon")
accum, accum_update, update = sp.symbols("accum accum_update update")

SPEC = F.compose(
    F.nn_prologue(),
    name="adadelta_nn",
    title="Adadelta",
    source=__file__,
    summary="Steps scaled by the ratio of running RMS of updates and of gradients (MindSpore's form).",
    references=(
        "Matthew D. Zeiler. ADADELTA: An Adaptive Learning Rate Method. 2012. https://arxiv.org/abs/1212.5701",
    ),
    hypers=[
        Hyper(rho, ("float",), 0.9, "Decay rate of the running averages, in [0, 1]."),
        Hyper(epsilon, ("float",), 1e-6, "Added inside the square roots (>= 0)."),
    ],
    domains={rho: sp.Interval(0, 1), epsilon: sp.Interval(0, sp.oo)},
    state=[
        State(accum, 0, "accum", "Running average of squared gradients."),
        State(accum_update, 0, "accum_update", "Running average of squared updates."),
    ],
    rules=[
        Rule(accum, rho * accum + (1 - rho) * g_eff**2),
        Rule(update, sp.sqrt(accum_update + epsilon) / sp.sqrt(accum + epsilon) * g_eff),
        Rule(accum_update, rho * accum_update + (1 - rho) * update**2),
        Rule(w, w - lr * update),
    ],
    latex={epsilon: r"\epsilon", accum: "v", accum_update: "u", update: r"\Delta"},
    exports=[
        Export(
            "nn",
            "Adadelta",
            (("learning_rate", 1.0), "rho", "epsilon", ("loss_scale", 1.0), ("weight_decay", 0.0)),
        )
    ],
)
