"""Adagrad, as MindSpore's nn.Adagrad computes it (ApplyAdagrad): the accumulator starts at 0.1.

update_slots=False keeps the accumulator fixed at its initial value.
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import g_eff
from optforge.compiler.spec import Export, Flag, Hyper, Rule, State, lr, w

accum_init = sp.Symbol("accum")
update_slots = sp.Symbol("update_slots")
acc = sp.Symbol("a")

SPEC = F.compose(
    F.nn_prologue(),
    name="adagrad_nn",
    title="Adagrad",
    source=__file__,
    summary="Per-element steps scaled by the root of the sum of squared gradients (MindSpore's form).",
    references=(
        "John Duchi, Elad Hazan, Yoram Singer. Adaptive Subgradient Methods for Online Learning and "
        "Stochastic Optimization. JMLR 12, 2011. https://jmlr.org/papers/v12/duchi11a.html",
    ),
    hypers=[Hyper(accum_init, ("float",), 0.1, "Initial value of the accumulator (>= 0).")],
    domains={accum_init: sp.Interval(0, sp.oo)},
    flags=[Flag(update_slots, "Update the accumulator (False keeps it at its initial value).", default=True)],
    state=[State(acc, accum_init, "accum", "Accumulated squared gradients.")],
    rules=[
        Rule(acc, sp.Piecewise((acc + g_eff**2, update_slots), (acc, True))),
        Rule(w, w - lr * g_eff / sp.sqrt(acc)),
    ],
    latex={accum_init: r"a_0", acc: "a"},
    exports=[
        Export(
            "nn",
            "Adagrad",
            ("accum", ("learning_rate", 0.001), "update_slots", ("loss_scale", 1.0), ("weight_decay", 0.0)),
        )
    ],
)
