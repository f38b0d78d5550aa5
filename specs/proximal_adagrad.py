"""ProximalAdagrad, as MindSpore's `nn.ProximalAdagrad` kernels compute it (Duchi & Singer, 2009).

The accumulator is updated first, and both the l1 shrink and the l2
denominator use the per-element step `lr / sqrt(accum)` (TensorFlow's
semantics). MindSpore's documentation writes them with `lr` alone; its
kernels, which we follow, do not.
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import g_eff
from optforge.compiler.spec import Export, Hyper, Rule, State, lr, w

accum_init, l1, l2 = sp.symbols("accum l1 l2")
accum = sp.Symbol("a")
step, prox = sp.symbols("eta prox")

SPEC = F.compose(
    F.nn_prologue(),
    name="proximal_adagrad",
    title="ProximalAdagrad",
    source=__file__,
    summary="Adagrad with a proximal step: l1 shrinkage and l2 scaling at the per-element step size.",
    references=(
        "John Duchi, Yoram Singer. Efficient Learning using Forward-Backward Splitting. NeurIPS 2009. "
        "https://papers.nips.cc/paper/3793-efficient-learning-using-forward-backward-splitting",
    ),
    hypers=[
        Hyper(accum_init, ("float",), 0.1, "Initial value of the accumulator."),
        Hyper(l1, ("float",), 0.0, "l1 regularization strength."),
        Hyper(l2, ("float",), 0.0, "l2 regularization strength."),
    ],
    domains={
        accum_init: sp.Interval(0, sp.oo),
        l1: sp.Interval(0, sp.oo),
        l2: sp.Interval(0, sp.oo),
    },
    state=[State(accum, accum_init, "accum", "Accumulated squared gradients.")],
    rules=[
        Rule(accum, accum + g_eff**2),
        Rule(step, lr / sp.sqrt(accum)),
        Rule(prox, w - g_eff * step),
        Rule(
            w,
            sp.Piecewise(
                # l1 > 0 is known per step: the host picks the kernel, the loop has no branch.
                (sp.sign(prox) * sp.Max(sp.Abs(prox) - step * l1, 0) / (1 + l2 * step), l1 > 0),
                (prox / (1 + l2 * step), True),
            ),
        ),
    ],
    sparse="rows",
    latex={
        accum_init: r"\mathrm{accum}_0",
        accum: r"\mathrm{accum}",
        l1: r"\ell_1",
        l2: r"\ell_2",
        prox: r"\mathrm{prox}",
    },
    notes=(
        "The l1 shrink and the l2 denominator use the per-element step lr/sqrt(accum), as MindSpore's "
        "kernels (and TensorFlow) do; the documentation's formula writes lr.",
        "accum, l1 and l2 must be floats: an int, even 0, is a TypeError, as the documentation says.",
        "A row-sparse gradient (RowTensor) changes only the rows it names; duplicate rows are summed.",
    ),
    exports=[
        Export(
            "nn",
            "ProximalAdagrad",
            (
                "accum",
                ("learning_rate", 0.001),
                "l1",
                "l2",
                ("use_locking", False),
                ("loss_scale", 1.0),
                ("weight_decay", 0.0),
            ),
        )
    ],
)
