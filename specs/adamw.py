"""AdamW (Loshchilov & Hutter, 2019) as torch.optim.AdamW computes it: decoupled weight decay."""

import sympy as sp

from optforge.compiler.spec import Export, Flag, Hyper, Rule, Spec, State, fma, g, lr, t, w, weight_decay

beta1, beta2, eps = sp.symbols("beta1 beta2 eps")
amsgrad, maximize = sp.symbols("amsgrad maximize")
m, v, vmax, g_eff, w_decayed = sp.symbols("m v v_max g_eff w_decayed")

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

SPEC = Spec(
    name="adamw",
    title="AdamW",
    source=__file__,
    summary="Adam with decoupled weight decay: the weights shrink by lr*weight_decay each step.",
    references=(
        "Ilya Loshchilov, Frank Hutter. Decoupled Weight Decay Regularization. ICLR 2019. "
        "https://arxiv.org/abs/1711.05101",
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
    ],
    state=[
        State(m, 0, "exp_avg", "First moment (running mean of gradients)."),
        State(v, 0, "exp_avg_sq", "Second moment (running mean of squared gradients)."),
        State(vmax, 0, "max_exp_avg_sq", "Running maximum of the second moment.", when=amsgrad),
    ],
    rules=[
        # torch's operations, fused where its CPU kernels are (see `fma`): grad.add(param, alpha=),
        # lerp_ (weight < 0.5), addcmul_ and add_(alpha=) each one fma.
        Rule(g_eff, sp.Piecewise((-g, maximize), (g, True))),
        Rule(w_decayed, w * (1 - lr * weight_decay)),
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
    decay="decoupled",
    latex={eps: r"\epsilon", g_eff: r"\tilde{g}", vmax: r"v_{\max}", w_decayed: r"\bar{w}"},
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
