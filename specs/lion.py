"""Lion (Chen et al., 2023): the sign of an interpolated momentum, with decoupled weight decay."""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import beta1, beta2
from optforge.compiler.spec import Export, Rule, State, g, lr, w, weight_decay

m, c = sp.symbols("m c")

# The optim and torch dialects share torch.optim's signature.
SIGNATURE = (("lr", 1e-4), ("betas", ("beta1", "beta2")), ("weight_decay", 0.0))

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
    ),
    state=[State(m, 0, "exp_avg", "Momentum (running mean of gradients).")],
    rules=[
        Rule(c, beta1 * m + (1 - beta1) * g),
        Rule(w, w * (1 - lr * weight_decay) - lr * sp.sign(c)),
        Rule(m, beta2 * m + (1 - beta2) * g),
    ],
    decay="decoupled",
    latex={c: "c"},
    exports=[Export("optim", "Lion", SIGNATURE), Export("torch", "Lion", SIGNATURE)],
)
