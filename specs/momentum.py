"""Momentum, as MindSpore's nn.Momentum computes it (its ApplyMomentum kernel, TensorFlow's).

The accumulator adds the gradient undamped, accum = momentum*accum + g, and the step is
lr*accum (Nesterov: lr*(g + momentum*accum)).
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import g_eff
from optforge.compiler.spec import REQUIRED, Export, Hyper, Rule, State, lr, w

momentum = sp.Symbol("momentum")
NESTEROV = F.nesterov("use_nesterov")
accum = sp.Symbol("accum")

SPEC = F.compose(
    NESTEROV,
    F.nn_prologue(),
    name="momentum",
    title="Momentum",
    source=__file__,
    summary="SGD with (Nesterov) momentum, accumulating undamped gradients.",
    references=(
        "Ning Qian. On the momentum term in gradient descent learning algorithms. Neural Networks "
        "12(1), 1999. https://doi.org/10.1016/S0893-6080(98)00116-6",
    ),
    hypers=[Hyper(momentum, ("float",), REQUIRED, "Momentum factor (>= 0).")],
    domains={momentum: sp.Interval(0, sp.oo)},
    state=[State(accum, 0, "moments", "Accumulated gradients.")],
    rules=[
        Rule(accum, momentum * accum + g_eff),
        Rule(w, F.lookahead(NESTEROV.flag, w - lr * (g_eff + momentum * accum), w - lr * accum)),
    ],
    latex={accum: "a", momentum: r"\mu"},
    notes=(
        "use_nesterov follows the documented formula, w -= lr*(g + momentum*accum). MindSpore 2.10's "
        "CPU kernel ignores use_nesterov (its results equal plain momentum's); its documentation does not.",
    ),
    exports=[
        Export(
            "nn",
            "Momentum",
            (
                ("learning_rate", REQUIRED),
                "momentum",
                ("weight_decay", 0.0),
                ("loss_scale", 1.0),
                "use_nesterov",
            ),
            example={"learning_rate": 0.01, "momentum": 0.9},
        )
    ],
)
