"""RAdam as torch.optim.RAdam computes it (Liu et al., 2020).

The same algorithm as specs/radam.py (MindSpore's), its core with torch's arithmetic and
options: the first moment is torch's lerp; the step-level values (rho_t, the rectification
term, the bias corrections) are Python floats in torch, so this spec's host code is float64,
where MindSpore's is float32 (for some beta2 the two choose different branches near
rho_t = 5); `maximize`; and `decoupled_weight_decay`, which shrinks the weights by
lr*weight_decay (AdamW's decay) instead of adding to the gradient.
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import beta1, g_eff
from optforge.compiler.spec import Export
from optforge.specs.radam import REFERENCE, m, rectified_adam

# torch.optim.RAdam's: the same names, keyword-only arguments marked by "*".
TORCH_SIGNATURE = (
    ("lr", 1e-3),
    ("betas", ("beta1", "beta2")),
    "eps",
    ("weight_decay", 0.0),
    "decoupled_weight_decay",
    "*",
    "foreach",
    "maximize",
    "capturable",
    "differentiable",
)

SPEC = F.compose(
    rectified_adam(m + (g_eff - m) * (1 - beta1), eps_domain=sp.Interval(0, sp.oo)),
    F.switched_decay(),
    F.maximize(),
    F.loss_scale(),
    name="radam_torch",
    title="RAdam",
    source=__file__,
    summary="Rectified Adam with PyTorch's arithmetic: float64 step-level values, maximize, decoupled decay.",
    references=(REFERENCE,),
    notes=(
        "rho_t and the rectification term are computed in float64, as torch does with Python floats; "
        "optforge.optim.RAdam (specs/radam.py) keeps MindSpore's float32.",
    ),
    exports=[Export("torch", "RAdam", TORCH_SIGNATURE)],
)
