"""Adam as torch.optim.Adam (and mindspore.experimental.optim.Adam) computes it.

Unlike MindSpore's nn.Adam (specs/adam.py), eps is added to the bias-corrected
sqrt(v_hat): w -= lr/(1 - beta1^t) * m / (sqrt(v)/sqrt(1 - beta2^t) + eps).
`ADAM` is the core, without weight decay or maximize; specs/adamw.py adds decoupled decay.
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import beta1, beta2, eps, g_eff, w_decayed
from optforge.compiler.spec import Export, Flag, Rule, State, fma, lr, t, w

amsgrad = sp.Symbol("amsgrad")
m, v, vmax = sp.symbols("m v v_max")

# torch's operations, fused where its CPU kernels are (see `fma`): exp_avg.lerp_(grad, 1 - beta1)
# (weight < 0.5: beta1 > 0.5) and exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2).
ADAM = (
    F.betas(),
    F.epsilon(1e-8),
    F.Fragment(
        "adam",
        flags=[Flag(amsgrad, "Divide by the running maximum of the second moment (AMSGrad).")],
        state=[
            State(m, 0, "exp_avg", "First moment (running mean of gradients)."),
            State(v, 0, "exp_avg_sq", "Second moment (running mean of squared gradients)."),
            State(vmax, 0, "max_exp_avg_sq", "Running maximum of the second moment.", when=amsgrad),
        ],
        rules=[
            Rule(m, fma(1 - beta1, g_eff - m, m)),
            Rule(v, fma((1 - beta2) * g_eff, g_eff, beta2 * v)),
            Rule(vmax, sp.Max(vmax, v), when=amsgrad),
            Rule(
                w,
                w_decayed
                - lr
                / (1 - beta1**t)
                * m
                / (sp.sqrt(sp.Piecewise((vmax, amsgrad), (v, True))) / sp.sqrt(1 - beta2**t) + eps),
            ),
        ],
        latex={vmax: r"v_{\max}"},
    ),
)
REFERENCE = (
    "Diederik P. Kingma, Jimmy Ba. Adam: A Method for Stochastic Optimization. ICLR 2015. "
    "https://arxiv.org/abs/1412.6980"
)

# The optim and torch dialects share torch.optim's signature.
SIGNATURE = (("lr", 1e-3), ("betas", ("beta1", "beta2")), "eps", ("weight_decay", 0.0), "amsgrad", "maximize")
# torch.optim.Adam's: the same names, keyword-only arguments marked by "*", and
# decoupled_weight_decay (AdamW's arithmetic), which mindspore.experimental.optim.Adam lacks.
TORCH_SIGNATURE = (
    *SIGNATURE[:-1],
    "*",
    "foreach",
    "maximize",
    "capturable",
    "differentiable",
    "fused",
    "decoupled_weight_decay",
)

SPEC = F.compose(
    ADAM,
    F.maximize(),
    F.loss_scale(),
    # torch: grad.add(param, alpha=weight_decay), or AdamW's param.mul_(1 - lr*weight_decay).
    F.switched_decay(fused=True),
    name="adam_torch",
    title="Adam",
    source=__file__,
    summary="Adam with PyTorch's arithmetic: eps added to the bias-corrected square root.",
    references=(REFERENCE,),
    exports=[
        Export("optim", "Adam", SIGNATURE),
        Export(
            "torch",
            "Adam",
            TORCH_SIGNATURE,
            checks=("tensor_hypers",),
            domains={eps: sp.Interval(0, sp.oo)},  # torch: `0.0 <= eps`
        ),
    ],
)
