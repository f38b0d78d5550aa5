"""Adam as torch.optim.Adam (and mindspore.experimental.optim.Adam) computes it.

Unlike MindSpore's nn.Adam (specs/adam.py), eps is added to the bias-corrected
sqrt(v_hat): w -= lr/(1 - beta1^t) * m / (sqrt(v)/sqrt(1 - beta2^t) + eps).
"""

import sympy as sp

from optforge.compiler.spec import (
    Export,
    Flag,
    Hyper,
    Rule,
    Spec,
    State,
    fma,
    g,
    grad_scale,
    lr,
    t,
    w,
    weight_decay,
)

beta1, beta2, eps = sp.symbols("beta1 beta2 eps")
amsgrad, maximize, decoupled = sp.symbols("amsgrad maximize decoupled_weight_decay")
m, v, vmax, g_eff, w_decayed = sp.symbols("m v v_max g_eff w_decayed")

# The optim and torch dialects share torch.optim's signature.
SIGNATURE = (
    ("lr", 1e-3),
    ("betas", ("beta1", "beta2")),
    "eps",
    ("weight_decay", 0.0),
    "amsgrad",
    "maximize",
)
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

SPEC = Spec(
    name="adam_torch",
    title="Adam",
    source=__file__,
    summary="Adam with PyTorch's arithmetic: eps added to the bias-corrected square root.",
    references=(
        "Diederik P. Kingma, Jimmy Ba. Adam: A Method for Stochastic Optimization. ICLR 2015. "
        "https://arxiv.org/abs/1412.6980",
    ),
    hypers=[
        Hyper(beta1, ("float", "numpy.floating"), 0.9, "Decay rate of the running mean of gradients."),
        Hyper(
            beta2, ("float", "numpy.floating"), 0.999, "Decay rate of the running mean of squared gradients."
        ),
        Hyper(eps, ("float", "int"), 1e-8, "Added to the denominator for numerical stability."),
    ],
    domains={beta1: sp.Interval.Ropen(0, 1), beta2: sp.Interval.Ropen(0, 1), eps: sp.Interval.open(0, sp.oo)},
    flags=[
        Flag(amsgrad, "Divide by the running maximum of the second moment (AMSGrad)."),
        Flag(maximize, "Maximize the objective: step along the gradient."),
        Flag(decoupled, "Decay the weights directly (AdamW's arithmetic) instead of adding to the gradient."),
    ],
    state=[
        State(m, 0, "exp_avg", "First moment (running mean of gradients)."),
        State(v, 0, "exp_avg_sq", "Second moment (running mean of squared gradients)."),
        State(vmax, 0, "max_exp_avg_sq", "Running maximum of the second moment.", when=amsgrad),
    ],
    rules=[
        # torch's kernels, fused where torch's are: grad.add(param, alpha=weight_decay),
        # exp_avg.lerp_(grad, 1 - beta1) (weight < 0.5: beta1 > 0.5) and
        # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2); decoupled decay is
        # AdamW's param.mul_(1 - lr*weight_decay).
        Rule(
            g_eff,
            sp.Piecewise(
                (sp.Piecewise((-g, maximize), (g, True)) * grad_scale, decoupled),
                (fma(weight_decay, w, sp.Piecewise((-g, maximize), (g, True)) * grad_scale), True),
            ),
        ),
        Rule(w_decayed, sp.Piecewise((w * (1 - lr * weight_decay), decoupled), (w, True))),
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
    latex={eps: r"\epsilon", g_eff: r"\tilde{g}", vmax: r"v_{\max}", w_decayed: r"\bar{w}"},
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
