"""AdEMAMix (Pagliardini et al., 2024) as pytorch_optimizer.AdEMAMix (4.1.0) computes it.

Adam's two moments plus a slow momentum `m_slow` with its own decay beta3; the update is
(m/(1 - beta1^t) + alpha*m_slow) / (sqrt(v)/sqrt(1 - beta2^t) + eps). With
`t_alpha_beta3` set, alpha rises linearly from 0 and beta3 rises from beta1 over that many
steps (the paper's schedulers); both are step-level values the compiler computes on the
host. Weight decay is pytorch_optimizer's: coupled by default, decoupled with
`weight_decouple`, and not scaled by lr with `fixed_decay` as well.

The rules round as pytorch_optimizer's foreach step does on torch's CPU kernels:
`lerp_` (weights below 0.5, i.e. betas above 0.5) and `addcmul_` fused (see `fma`), and
`foreach_add_(update, slow, alpha=alpha_t)` as one multiply-add.
"""

from dataclasses import replace

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import beta1, beta2, beta3, eps, g_eff, w_decayed
from optforge.compiler.spec import Export, Hyper, Option, Rule, State, fma, lr, t, w

alpha, t_warm = sp.symbols("alpha t_alpha_beta3")
m, v, m_slow = sp.symbols("m v m_slow")
alpha_t, beta3_t, update = sp.symbols("alpha_t beta3_t u")

# pytorch_optimizer's schedulers; t_alpha_beta3=None (here < 0: see Hyper.none) disables them.
# alpha_t = min(t*alpha/T, alpha); beta3_t = min(exp(ln b1 ln b3 / ((1 - t/T) ln b3 + (t/T) ln b1)), b3).
_ratio = t / t_warm
ALPHA_T = sp.Piecewise((alpha, t_warm < 0), (sp.Min(t * alpha / t_warm, alpha), True))
BETA3_T = sp.Piecewise(
    (beta3, t_warm < 0),
    (
        sp.Min(
            sp.exp(sp.log(beta1) * sp.log(beta3) / ((1 - _ratio) * sp.log(beta3) + _ratio * sp.log(beta1))),
            beta3,
        ),
        True,
    ),
)

# pytorch_optimizer's validate_betas: beta1 and beta2 in [0, 1), beta3 in [0, 1].
_THREE = F.betas(
    (0.9, 0.999, 0.9999),
    (
        "Decay rate of the fast momentum.",
        "Decay rate of the running mean of squared gradients.",
        "Decay rate of the slow momentum (its final value when warmed up).",
    ),
)
BETAS = replace(_THREE, domains={**_THREE.domains, beta3: sp.Interval(0, 1)})

SIGNATURE = (
    ("lr", 1e-3),
    ("betas", ("beta1", "beta2", "beta3")),
    ("weight_decay", 0.0),
    "weight_decouple",
    "fixed_decay",
    "alpha",
    "t_alpha_beta3",
    "eps",
    "maximize",
)

# pytorch_optimizer reads these from its **kwargs (group.get); both need a per-tensor mean.
WHY = "it rescales by a per-tensor mean, which the spec language cannot express yet."
CAUTIOUS = Option(
    "cautious", False, (False, True), (False,), "Mask updates that disagree with the gradient.", WHY
)
STABLE = Option(
    "stable_adamw", False, (False, True), (False,), "Divide the update by StableAdamW's RMS of g^2/v.", WHY
)

SPEC = F.compose(
    BETAS,
    F.epsilon(1e-8, domain=sp.Interval(0, sp.oo)),  # pytorch_optimizer: eps >= 0
    F.maximize(),
    F.loss_scale(),
    # pytorch_optimizer's apply_weight_decay: grad.add_(p, alpha=wd), or p.mul_(1 - wd*lr) (1 - wd).
    F.switched_decay(
        "weight_decouple",
        "Apply weight decay to the parameters (decoupled) instead of adding it to the gradient.",
        fused=True,
        fixed="fixed_decay",
    ),
    name="ademamix",
    title="AdEMAMix",
    source=__file__,
    summary="Adam with a fast and a slow momentum mixed: (m_hat + alpha*m_slow) / (sqrt(v_hat) + eps).",
    references=(
        "Matteo Pagliardini, Pierre Ablin, David Grangier. The AdEMAMix Optimizer: Better, Faster, "
        "Older. 2024. https://arxiv.org/abs/2409.03137",
    ),
    hypers=[
        Hyper(alpha, ("float", "int"), 5.0, "Weight of the slow momentum relative to the fast one."),
        Hyper(
            t_warm,
            ("float", "int", "None"),
            None,
            "Steps over which alpha and beta3 warm up (alpha from 0, beta3 from beta1); None: no warm-up.",
            none=-1,
        ),
    ],
    domains={alpha: sp.Interval(0, sp.oo), t_warm: sp.Interval(0, sp.oo)},
    state=[
        State(m, 0, "exp_avg", "Fast momentum (running mean of gradients)."),
        State(v, 0, "exp_avg_sq", "Second moment (running mean of squared gradients)."),
        State(m_slow, 0, "exp_avg_slow", "Slow momentum (running mean of gradients with decay beta3)."),
    ],
    rules=[
        Rule(alpha_t, ALPHA_T),
        Rule(beta3_t, BETA3_T),
        Rule(m, fma(1 - beta1, g_eff - m, m)),
        Rule(v, fma((1 - beta2) * g_eff, g_eff, beta2 * v)),
        Rule(m_slow, fma(1 - beta3_t, g_eff - m_slow, m_slow)),
        Rule(update, fma(alpha_t, m_slow, m / (1 - beta1**t))),
        Rule(w, w_decayed - lr * update / (sp.sqrt(v) / sp.sqrt(1 - beta2**t) + eps)),
    ],
    latex={
        m_slow: r"m_{\mathrm{slow}}",
        alpha_t: r"\alpha_t",
        beta3_t: r"\beta_{3,t}",
        t_warm: r"T_{\alpha,\beta_3}",
        update: "u",
    },
    notes=(
        "t_alpha_beta3=0 is accepted, as pytorch_optimizer accepts it; its first step divides by it "
        "and is refused (ValueError, nothing changed), where pytorch_optimizer raises ZeroDivisionError.",
        "pytorch_optimizer also reads `cautious` and `stable_adamw` from its **kwargs; this class takes "
        "them as keywords and refuses True (NotImplementedError): both rescale by a per-tensor mean.",
    ),
    exports=[
        Export("optim", "AdEMAMix", (*SIGNATURE, "cautious", "stable_adamw"), options=(CAUTIOUS, STABLE)),
        Export(
            "torch",
            "AdEMAMix",
            (*SIGNATURE, "foreach", "*", "cautious", "stable_adamw"),
            options=(CAUTIOUS, STABLE),
        ),
    ],
)
