"""AdamW (Loshchilov & Hutter, 2019) as torch.optim.AdamW computes it: decoupled weight decay.

Adam's core (specs/adam_torch.py) with `decoupled_decay()`: the update starts from
w*(1 - lr*weight_decay).
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import eps
from optforge.compiler.spec import Export
from optforge.specs.adam_torch import ADAM

# The optim and torch dialects share torch.optim's signature.
SIGNATURE = (
    ("lr", 1e-3),
    ("betas", ("beta1", "beta2")),
    "eps",
    ("weight_decay", 1e-2),
    "amsgrad",
    "maximize",
)
# torch.optim.AdamW's: the same names, keyword-only arguments marked by "*".
TORCH_SIGNATURE = (*SIGNATURE[:-1], "*", "maximize", "foreach", "capturable", "differentiable", "fused")

SPEC = F.compose(
    ADAM,
    F.maximize(),
    F.decoupled_decay(),
    name="adamw",
    title="AdamW",
    source=__file__,
    summary="Adam with decoupled weight decay: the weights shrink by lr*weight_decay each step.",
    references=(
        "Ilya Loshchilov, Frank Hutter. Decoupled Weight Decay Regularization. ICLR 2019. "
        "https://arxiv.org/abs/1711.05101",
    ),
    exports=[
        Export("optim", "AdamW", SIGNATURE),
        Export(
            "torch",
            "AdamW",
            TORCH_SIGNATURE,
            checks=("tensor_hypers",),
            domains={eps: sp.Interval(0, sp.oo)},  # torch: `0.0 <= eps`
        ),
    ],
)
