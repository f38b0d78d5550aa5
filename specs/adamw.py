"""AdamW (Loshchilov & Hutter, 2019) as torch.optim.AdamW computes it: decoupled weight decay.

Adam's core (specs/adam_torch.py) with `decoupled_decay()`: the update starts from
w*(1 - lr*weight_decay). `cautious=True` is C-AdamW (Liang et al., 2024): the update
u = m_hat/(sqrt(v_hat) + eps) keeps only the coordinates where u*g > 0, scaled by
numel/(kept + 1); the decay is not masked.
"""

import dataclasses

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import (
    CAUTIOUS_DOC,
    beta1,
    beta2,
    cautious_flag,
    cautious_rules,
    eps,
    w_decayed,
)
from optforge.compiler.spec import Export, Flag, Rule, lr, t, w
from optforge.specs.adam_torch import ADAM, amsgrad, m, v, vmax

u = sp.Symbol("u")

# The optim and torch dialects share torch.optim's signature, and add `cautious` last.
SIGNATURE = (
    ("lr", 1e-3),
    ("betas", ("beta1", "beta2")),
    "eps",
    ("weight_decay", 1e-2),
    "amsgrad",
    "maximize",
    "cautious",
)
# torch.optim.AdamW's: the same names, keyword-only arguments marked by "*"; `cautious`
# (not torch's) keyword-only after them.
TORCH_SIGNATURE = (
    *SIGNATURE[:5],
    "*",
    "maximize",
    "foreach",
    "capturable",
    "differentiable",
    "fused",
    "cautious",
)

# Adam's core with its update of w (torch's arithmetic, unchanged) limited to cautious=False,
# and C-AdamW's masked update of the same u where it is set.
_core = ADAM[-1]
_plain = [dataclasses.replace(r, when=~cautious_flag) if r.target == w else r for r in _core.rules]
_v = sp.Piecewise((vmax, amsgrad), (v, True))
_u_hat = m / (1 - beta1**t) / (sp.sqrt(_v) / sp.sqrt(1 - beta2**t) + eps)
CORE = (
    *ADAM[:-1],
    dataclasses.replace(
        _core,
        flags=(*_core.flags, Flag(cautious_flag, CAUTIOUS_DOC)),
        rules=(*_plain, Rule(u, _u_hat, when=cautious_flag), *cautious_rules(u, w_decayed, lr)),
        latex=_core.latex | {u: "u", F.cautious_mask: r"\mu"},
    ),
)

SPEC = F.compose(
    CORE,
    F.maximize(),
    F.decoupled_decay(),
    name="adamw",
    title="AdamW",
    source=__file__,
    summary="Adam with decoupled weight decay: the weights shrink by lr*weight_decay each step.",
    references=(
        "Ilya Loshchilov, Frank Hutter. Decoupled Weight Decay Regularization. ICLR 2019. "
        "https://arxiv.org/abs/1711.05101",
        "Kaizhao Liang, Lizhang Chen, Bo Liu, Qiang Liu. Cautious Optimizers: Improving Training "
        "with One Line of Code. 2024. https://arxiv.org/abs/2411.16085",
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
