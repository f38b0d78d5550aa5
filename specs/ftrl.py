"""FTRL-Proximal (McMahan et al., 2013), as MindSpore's nn.FTRL computes it (ApplyFtrl)."""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import g_eff
from optforge.compiler.spec import Export, Hyper, Rule, State, lr, w

initial_accum, lr_power, l1, l2 = sp.symbols("initial_accum lr_power l1 l2")
accum, linear, pow_old, pow_new = sp.symbols("accum linear pow_before pow_after")

SPEC = F.compose(
    F.nn_prologue(),
    name="ftrl",
    title="FTRL",
    source=__file__,
    summary="Follow-the-regularized-leader with l1 and l2: sparse solutions for online learning.",
    references=(
        "H. Brendan McMahan, Gary Holt, D. Sculley, et al. Ad Click Prediction: a View from the "
        "Trenches. KDD 2013, Algorithm 1. https://doi.org/10.1145/2487575.2488200",
    ),
    hypers=[
        Hyper(initial_accum, ("float",), 0.1, "Initial value of the accumulator (>= 0)."),
        Hyper(lr_power, ("float",), -0.5, "Power of the accumulator in the step size (<= 0)."),
        Hyper(l1, ("float",), 0.0, "l1 regularization strength (>= 0)."),
        Hyper(l2, ("float",), 0.0, "l2 regularization strength (>= 0)."),
    ],
    domains={
        initial_accum: sp.Interval(0, sp.oo),
        lr_power: sp.Interval(-sp.oo, 0),
        l1: sp.Interval(0, sp.oo),
        l2: sp.Interval(0, sp.oo),
    },
    state=[
        State(accum, initial_accum, "moments", "Accumulated squared gradients."),
        State(linear, 0, "linear", "The linear term of the FTRL objective."),
    ],
    rules=[
        Rule(pow_old, accum ** (-lr_power)),
        Rule(accum, accum + g_eff**2),
        Rule(pow_new, accum ** (-lr_power)),
        Rule(linear, linear + g_eff - (pow_new - pow_old) / lr * w),
        Rule(
            w,
            sp.Piecewise(
                ((l1 * sp.sign(linear) - linear) / (pow_new / lr + 2 * l2), sp.Abs(linear) > l1),
                (0, True),
            ),
        ),
    ],
    latex={accum: "n", linear: "z", initial_accum: "n_0", l1: r"\ell_1", l2: r"\ell_2"},
    notes=(
        "The l1 shrink follows FTRL-Proximal (and MindSpore's documentation): |w| moves toward 0 whatever "
        "the sign of the linear term. MindSpore 2.10's CPU kernel grows |w| instead where the linear term "
        "is negative; its l2 and lr_power handling match ours.",
        "MindSpore's FTRL also refuses a dynamic or per-group learning rate and decays every parameter "
        "whatever its name; here the nn dialect's usual rules apply (dynamic rates, the beta/gamma rule).",
    ),
    exports=[
        Export(
            "nn",
            "FTRL",
            (
                "initial_accum",
                ("learning_rate", 0.001),
                "lr_power",
                "l1",
                "l2",
                ("use_locking", False),
                ("loss_scale", 1.0),
                ("weight_decay", 0.0),
            ),
        )
    ],
)
