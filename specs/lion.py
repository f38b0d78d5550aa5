"""Lion (Chen et al., 2023): the sign of an interpolated momentum, with decoupled weight decay.

`cautious=True` is C-Lion (Liang et al., 2024), as pytorch_optimizer's `Lion(cautious=True)`:
the sign update keeps only the coordinates where sign(c)*g > 0, scaled by numel/(kept + 1);
the decay is not masked.
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import (
    CAUTIOUS_DOC,
    beta1,
    beta2,
    cautious_flag,
    cautious_mask,
    cautious_rules,
)
from optforge.compiler.spec import Export, Flag, Rule, State, g, lr, w, weight_decay

m, c, u = sp.symbols("m c u")

# The optim and torch dialects share one signature: pytorch_optimizer's first three, and `cautious`.
SIGNATURE = (("lr", 1e-4), ("betas", ("beta1", "beta2")), ("weight_decay", 0.0), "cautious")

SPEC = F.compose(
    F.betas(
        (0.9, 0.99),
        ("Interpolation factor of the update direction.", "Decay rate of the momentum."),
        types=("float",),
    ),
    name="lion",
    title="Lion",
    source=__file__,
    summary="Evolved sign momentum: steps of equal size in every coordinate.",
    references=(
        "Xiangning Chen et al. Symbolic Discovery of Optimization Algorithms. 2023. "
        "https://arxiv.org/abs/2302.06675",
        "Kaizhao Liang, Lizhang Chen, Bo Liu, Qiang Liu. Cautious Optimizers: Improving Training "
        "with One Line of Code. 2024. https://arxiv.org/abs/2411.16085",
    ),
    flags=[Flag(cautious_flag, CAUTIOUS_DOC)],
    state=[State(m, 0, "exp_avg", "Momentum (running mean of gradients).")],
    rules=[
        Rule(c, beta1 * m + (1 - beta1) * g),
        Rule(w, w * (1 - lr * weight_decay) - lr * sp.sign(c), when=~cautious_flag),
        Rule(u, sp.sign(c), when=cautious_flag),
        *cautious_rules(u, w * (1 - lr * weight_decay), lr, grad=g),
        Rule(m, beta2 * m + (1 - beta2) * g),
    ],
    decay="decoupled",
    latex={c: "c", u: "u", cautious_mask: r"\mu"},
    exports=[Export("optim", "Lion", SIGNATURE), Export("torch", "Lion", SIGNATURE)],
)
