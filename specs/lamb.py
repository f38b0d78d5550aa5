"""LAMB, as MindSpore's `nn.Lamb` computes it (You et al., 2020).

Weight decay is decoupled: `weight_decay * w` is added to the Adam ratio,
not to the gradient. The layer-wise trust ratio is `||w|| / ||update||`, the
norm of the update actually applied, and 1 when either norm is 0, with no
clipping (MindSpore's Ascend kernels). MindSpore's documentation writes the
denominator as `||w + lambda*w||`; its kernels use the norm of the update.
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import beta1, beta2, eps
from optforge.compiler.spec import REQUIRED, Export, Rule, State, g, lr, norm, t, w, weight_decay

m, v = sp.symbols("m v")
update, trust_ratio = sp.symbols("r trust_ratio")

SPEC = F.compose(
    F.betas(convention="nn"),
    F.epsilon(1e-6, convention="nn"),
    name="lamb",
    title="Lamb",
    source=__file__,
    summary="Layer-wise adaptive moments: Adam's update scaled per tensor by ||w|| / ||update||.",
    references=(
        "Yang You, Jing Li, Sashank Reddi, et al. Large Batch Optimization for Deep Learning: "
        "Training BERT in 76 minutes. ICLR 2020. https://arxiv.org/abs/1904.00962",
    ),
    state=[
        State(m, 0, "moments1", "First moment (running mean of gradients)."),
        State(v, 0, "moments2", "Second moment (running mean of squared gradients)."),
    ],
    rules=[
        Rule(m, beta1 * m + (1 - beta1) * g),
        Rule(v, beta2 * v + (1 - beta2) * g**2),
        Rule(update, m / (1 - beta1**t) / (sp.sqrt(v / (1 - beta2**t)) + eps) + weight_decay * w),
        Rule(
            trust_ratio,
            sp.Piecewise((norm(w) / norm(update), (norm(w) > 0) & (norm(update) > 0)), (1, True)),
        ),
        Rule(w, w - trust_ratio * lr * update),
    ],
    decay="decoupled",
    latex={update: "r", trust_ratio: r"\phi"},
    notes=(
        "The trust ratio's denominator is the norm of the applied update r (MindSpore's kernels); "
        "the documentation writes ||w + lambda*w||.",
        "No clipping of the trust ratio (MindSpore's Ascend kernels); its GPU kernel clips to [0, 10] "
        "and puts eps inside the square root for the norm only.",
    ),
    exports=[
        Export(
            "nn",
            "Lamb",
            (("learning_rate", REQUIRED), "beta1", "beta2", "eps", ("weight_decay", 0.0)),
            example={"learning_rate": 0.01},
        ),
        Export(
            "torch",
            "Lamb",
            (("lr", 1e-3), ("betas", ("beta1", "beta2")), "eps", ("weight_decay", 0.0)),
            state_keys={"moments1": "exp_avg", "moments2": "exp_avg_sq"},
        ),
    ],
)
