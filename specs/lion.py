"""Lion (Chen et al., 2023): the sign of an interpolated momentum, with decoupled weight decay."""

import sympy as sp

from optforge.compiler.spec import Export, Hyper, Rule, Spec, State, g, lr, w, weight_decay

beta1, beta2 = sp.symbols("beta1 beta2")
m, c = sp.symbols("m c")

# The optim and torch dialects share torch.optim's signature.
SIGNATURE = (("lr", 1e-4), ("betas", ("beta1", "beta2")), ("weight_decay", 0.0))

SPEC = Spec(
    name="lion",
    title="Lion",
    source=__file__,
    summary="Evolved sign momentum: steps of equal size in every coordinate.",
    references=(
        "Xiangning Chen et al. Symbolic Discovery of Optimization Algorithms. 2023. "
        "https://arxiv.org/abs/2302.06675",
    ),
    hypers=[
        Hyper(beta1, ("float",), 0.9, "Interpolation factor of the update direction."),
        Hyper(beta2, ("float",), 0.99, "Decay rate of the momentum."),
    ],
    domains={beta1: sp.Interval.Ropen(0, 1), beta2: sp.Interval.Ropen(0, 1)},
    flags=[],
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
