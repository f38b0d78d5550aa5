"""AdamWeightDecay, as MindSpore's nn.AdamWeightDecay computes it (the BERT optimizer).

No bias correction, and the decoupled decay `weight_decay * w` is added to the update:
w -= lr * (m / (sqrt(v) + eps) + weight_decay * w).
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import beta1, beta2, eps
from optforge.compiler.spec import Export, Rule, State, g, lr, w, weight_decay

m, v, update = sp.symbols("m v update")

SPEC = F.compose(
    F.betas(convention="nn"),
    F.epsilon(1e-6, convention="nn"),
    name="adam_weight_decay",
    title="AdamWeightDecay",
    source=__file__,
    summary="Adam without bias correction, with decoupled weight decay added to the update.",
    references=(
        "Ilya Loshchilov, Frank Hutter. Decoupled Weight Decay Regularization. ICLR 2019. "
        "https://arxiv.org/abs/1711.05101",
    ),
    state=[
        State(m, 0, "moments1", "First moment (running mean of gradients)."),
        State(v, 0, "moments2", "Second moment (running mean of squared gradients)."),
    ],
    rules=[
        Rule(m, beta1 * m + (1 - beta1) * g),
        Rule(v, beta2 * v + (1 - beta2) * g**2),
        Rule(update, m / (eps + sp.sqrt(v)) + weight_decay * w),
        Rule(w, w - lr * update),
    ],
    decay="decoupled",
    latex={update: "u"},
    notes=("There is no bias correction and no loss scale, as in MindSpore's code.",),
    exports=[
        Export(
            "nn", "AdamWeightDecay", (("learning_rate", 1e-3), "beta1", "beta2", "eps", ("weight_decay", 0.0))
        )
    ],
)
