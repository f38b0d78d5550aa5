"""StableAdamW (Wortsman et al., 2023) as pytorch_optimizer 4.1.0's `StableAdamW` computes it.

AdamW with debiased decay rates instead of bias corrections (pytorch_optimizer's
`debias_beta`: beta_t = beta*(1 - beta^(t-1))/(1 - beta^t), so the first step's moments
are g and g^2), and an update clipped per tensor: the step size is
lr / max(1, RMS(g / sqrt(max(v, eps^2)))), a per-tensor reduction over the new second
moment, so the kernel has two stages. Decoupled decay (`weight_decouple=True`, the
default) shrinks the weights by that clipped step size times weight_decay; coupled adds
weight_decay*w to the gradient.

`kahan_sum` acts only on float16 and bfloat16 parameters (Kahan-compensated updates with
a `kahan_comp` state). optforge does not implement that compensation: with float32 and
float64 parameters `kahan_sum` changes nothing, as in pytorch_optimizer, and 16-bit
parameters need `kahan_sum=False` (a ValueError at construction otherwise).
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import beta1, beta2, eps
from optforge.compiler.spec import Export, Flag, Rule, State, fma, g, grad_scale, lr, rms, t, w, weight_decay

weight_decouple, maximize, kahan_sum = sp.symbols("weight_decouple maximize kahan_sum")
m, v = sp.symbols("m v")
g_eff, beta1_t, beta2_t, step_size, w_decayed = sp.symbols("g_eff beta1_t beta2_t eta w_decayed")

# pytorch_optimizer's debias_beta(beta, t) = (beta^t - beta)/(beta^t - 1), on the host.
debiased = {b: (b**t - b) / (b**t - 1) for b in (beta1, beta2)}
signed = sp.Piecewise((-g, maximize), (g, True)) * grad_scale
# Its operations, fused where torch's CPU kernels are (see `fma`): grad.add_(p, alpha=weight_decay),
# exp_avg.lerp_(grad, 1 - beta1_t), exp_avg_sq.mul_(beta2_t).addcmul_(grad, grad, value=1 - beta2_t).
RULES = [
    Rule(g_eff, sp.Piecewise((signed, weight_decouple), (fma(weight_decay, w, signed), True))),
    Rule(beta1_t, debiased[beta1]),
    Rule(beta2_t, debiased[beta2]),
    Rule(m, fma(1 - beta1_t, g_eff - m, m)),
    Rule(v, fma((1 - beta2_t) * g_eff, g_eff, beta2_t * v)),
    # get_stable_adamw_rms: sqrt(mean(g^2 / max(v, eps^2))), at least 1.
    Rule(step_size, lr / sp.Max(1, rms(g_eff / sp.sqrt(sp.Max(v, eps**2))))),
    Rule(w_decayed, sp.Piecewise((w * (1 - weight_decay * step_size), weight_decouple), (w, True))),
    # p.addcdiv_(exp_avg, (sqrt(v) + eps) / -eta)
    Rule(w, w_decayed - step_size * m / (sp.sqrt(v) + eps)),
]

# pytorch_optimizer.StableAdamW's arguments, in its order (its **kwargs aside).
SIGNATURE = (
    ("lr", 1e-3),
    ("betas", ("beta1", "beta2")),
    ("kahan_sum", True),
    ("weight_decay", 1e-2),
    ("weight_decouple", True),
    "eps",
)
# `foreach` (accepted: the step is always the fused kernels) comes before maximize, as there.
TORCH_SIGNATURE = (*SIGNATURE, "foreach", "maximize")

SPEC = F.compose(
    F.betas((0.9, 0.99)),
    F.epsilon(1e-8, domain=sp.Interval(0, sp.oo)),
    name="stable_adamw",
    title="StableAdamW",
    source=__file__,
    summary="AdamW with debiased decay rates and a per-tensor update clip: lr / max(1, RMS(g/sqrt(v))).",
    references=(
        "Mitchell Wortsman, Tim Dettmers, Luke Zettlemoyer, et al. Stable and low-precision training for "
        "large-scale vision-language models. NeurIPS 2023. https://arxiv.org/abs/2304.13013",
    ),
    flags=[
        Flag(
            kahan_sum,
            "Kahan-summed updates for float16 and bfloat16 parameters; with float32 and float64 ones it "
            "changes nothing. Not implemented for 16-bit parameters: they need kahan_sum=False.",
            wide_only=True,
        ),
        Flag(weight_decouple, "Decay the weights directly instead of adding weight_decay*w to the gradient."),
        Flag(maximize, F.MAXIMIZE_DOC),
    ],
    state=[
        State(m, 0, "exp_avg", "First moment (running mean of gradients)."),
        State(v, 0, "exp_avg_sq", "Second moment (running mean of squared gradients)."),
    ],
    rules=RULES,
    latex={
        g_eff: r"\tilde{g}",
        w_decayed: r"\bar{w}",
        beta1_t: r"\hat{\beta}_1",
        beta2_t: r"\hat{\beta}_2",
        step_size: r"\eta",
    },
    notes=(
        "The decay rates are pytorch_optimizer's debias_beta; there is no other bias correction.",
        "The update's RMS is taken over the new second moment, per tensor, floored at 1.",
        "kahan_sum=True with a float16 or bfloat16 parameter is refused (ValueError): the Kahan "
        "compensation (pytorch_optimizer's kahan_comp state) is not implemented.",
    ),
    exports=[
        Export("optim", "StableAdamW", (*SIGNATURE, "maximize")),
        Export("torch", "StableAdamW", TORCH_SIGNATURE, group_step=True),
    ],
)
