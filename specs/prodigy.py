"""Prodigy (Mishchenko and Defazio, 2024) as prodigyopt 1.1.2's `Prodigy` computes it.

Adam whose step size `d` is estimated as it trains: every step it sums, over every tensor
of every param group, the gradient's product with the distance travelled from the start
(`p0 - w`) and the size of a running sum `s` of gradients; `d` grows to their ratio and
never shrinks. The two sums are group sums (`group_sum`): the first element stage updates
the moments and `s` with the old `d` and sums them, the sum rules update `d` on the host
once the sums over every tensor are known, and the second element stage moves the
parameters with the new `d` in `eps*d` (and the old one in `dlr`), as the reference does.
When the sum of |s| is 0 (no gradient yet), the step changes the moments only, as the
reference returns early.
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import beta1, beta2, beta3, eps
from optforge.compiler.spec import (
    Export,
    Flag,
    Hyper,
    Option,
    Rule,
    State,
    StepState,
    fma,
    g,
    group_sum,
    lr,
    w,
    weight_decay,
)

d0, d_coef, growth_rate, use_bias_correction = sp.symbols("d0 d_coef growth_rate use_bias_correction")
decouple, safeguard_warmup = sp.symbols("decouple safeguard_warmup")
d, d_max, d_numerator, k = sp.symbols("d d_max d_numerator k")
b3, bias_correction, dlr = sp.symbols("b3 bias_correction dlr")
numerator, denominator, taken, d_hat = sp.symbols("numerator denominator taken d_hat")
m, v, s, x0, g_eff, w_decayed = sp.symbols("m v s p0 g_eff w_decayed")
no_sum = sp.Eq(denominator, 0)  # nothing to estimate from yet: the reference returns early
frozen = sp.Eq(lr, 0)  # the group's lr

# prodigyopt's Prodigy signature, in its order (all positional-or-keyword).
SIGNATURE = (
    ("lr", 1.0),
    ("betas", ("beta1", "beta2")),
    "beta3",
    "eps",
    ("weight_decay", 0.0),
    "decouple",
    "use_bias_correction",
    "safeguard_warmup",
    "d0",
    "d_coef",
    "growth_rate",
    "fsdp_in_use",
    "slice_p",
)

FSDP = Option(
    "fsdp_in_use",
    False,
    (False, True),
    (False, True),
    "Accepted for the reference's signature: the group sums add every rank's part of a split "
    "tensor (FSDP2's DTensors) whatever it says. Under ZeRO (whole tensors per rank) the "
    "reference's all-reduce of the two sums is not done: each rank estimates d from its own.",
)
SLICE = Option(
    "slice_p",
    1,
    (1,),
    (1,),
    "Every entry takes part in the D estimate (the reference's slice_p > 1, an approximation "
    "on every p-th entry, is refused).",
)
# The reference's wording of its ValueErrors.
MESSAGES = {
    "d0": "Invalid d0 value: {value}",
    "eps": "Invalid epsilon value: {value}",
    "betas[0]": "Invalid beta parameter at index 0: {value}",
    "betas[1]": "Invalid beta parameter at index 1: {value}",
}

SPEC = F.compose(
    F.betas((0.9, 0.999)),
    F.epsilon(1e-8),
    name="prodigy",
    title="Prodigy",
    source=__file__,
    summary="Adam whose step size D is estimated while it trains, from sums over all parameters (lr: 1).",
    references=(
        "Konstantin Mishchenko, Aaron Defazio. Prodigy: An Expeditiously Adaptive Parameter-Free "
        "Learner. ICML 2024. https://arxiv.org/abs/2306.06101",
    ),
    notes=(
        "The D estimate's sums run over every tensor of every param group in one call per stage "
        "(float64 partial sums per chunk, added in a fixed order); the reference adds float32 "
        "per-tensor sums in Python, so `d` agrees to float32 rounding.",
        "Each group computes `d` from its own options and the sums over all groups; the reference "
        "takes group 0's, which is the same when the groups share betas, beta3, d0, d_coef, "
        "growth_rate and use_bias_correction (and their lr, which the reference requires).",
        "Coupled decay (`decouple=False`) is added to the gradient inside the kernel; the "
        "reference adds it to `p.grad` in place, which this class leaves unchanged.",
        "`exp_avg` is kept with `beta1 = 0` too (the reference drops it and steps by the "
        "gradient times d: the same update).",
        "Flags are per optimizer (one kernel variant): `decouple` and `safeguard_warmup` must be "
        "the same in every param group.",
        "Keep the state in bfloat16 or wider, not float16: the moments are d*g and d^2*g^2 with d "
        "from 1e-6, which underflow float16 (its smallest spacing is 6e-8).",
    ),
    hypers=[
        Hyper(
            beta3,
            ("float", "int", "None"),
            None,
            "Decay rate of the running sum s of the D estimate; None: sqrt(beta2).",
            none=-1,
        ),
        Hyper(
            use_bias_correction,
            ("bool",),
            False,
            "Scale the step by Adam's bias correction sqrt(1 - beta2^(k+1)) / (1 - beta1^(k+1)).",
        ),
        Hyper(d0, ("float", "int"), 1e-6, "Initial D estimate."),
        Hyper(d_coef, ("float", "int"), 1.0, "Coefficient of the D estimate (the preferred knob to tune)."),
        Hyper(
            growth_rate,
            ("float", "int"),
            float("inf"),
            "Largest factor by which D may grow per step (inf: unrestricted).",
        ),
    ],
    domains={beta3: sp.Interval(0, sp.oo), d0: sp.Interval.open(0, sp.oo)},
    flags=[
        Flag(
            decouple,
            "Decay the weights directly by weight_decay*dlr (AdamW's), else add it to the gradient.",
            True,
        ),
        Flag(
            safeguard_warmup,
            "Leave lr out of the running sum s (the D estimate's denominator) during warm-up.",
        ),
    ],
    state=[
        State(m, 0, "exp_avg", "First moment (running mean of the gradient times d)."),
        State(v, 0, "exp_avg_sq", "Second moment (running mean of the squared gradient times d^2)."),
        State(
            s,
            0,
            "s",
            "Running sum of the gradients scaled by d/d0 and the step size (the D estimate's denominator).",
        ),
        State(x0, w, "p0", "The parameter at the first step."),
    ],
    step_state=[
        StepState(d, d0, "d", "The D estimate: the step size lr scales."),
        StepState(d_max, d0, "d_max", "The largest D estimate so far."),
        StepState(d_numerator, 0.0, "d_numerator", "Running sum of the D estimate's numerator."),
        StepState(k, 0, "k", "Steps the group has taken."),
    ],
    step_rules=[
        Rule(b3, sp.Piecewise((sp.sqrt(beta2), beta3 < 0), (beta3, True))),
        Rule(
            bias_correction,
            sp.Piecewise(
                (sp.sqrt(1 - beta2 ** (k + 1)) / (1 - beta1 ** (k + 1)), use_bias_correction > 0), (1, True)
            ),
        ),
        Rule(dlr, d * lr * bias_correction),
    ],
    # torch's CPU arithmetic of the reference's operations (see `fma`): grad.add_(p, alpha=decay),
    # exp_avg.mul_(beta1).add_(grad, alpha=), exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=),
    # s.mul_(beta3).add_(grad, alpha=), p.add_(p, alpha=-decay*dlr), p.addcdiv_(exp_avg, denom, value=-dlr).
    rules=[
        Rule(g_eff, sp.Piecewise((g, decouple), (fma(weight_decay, w, g), True))),
        # A group at lr 0 (a warm-up's first step, a frozen group) leaves its moments and s as
        # they are and adds nothing to the sums, as the reference skips it.
        Rule(m, sp.Piecewise((m, frozen), (fma(d * (1 - beta1), g_eff, beta1 * m), True))),
        Rule(v, sp.Piecewise((v, frozen), (fma(d * d * (1 - beta2) * g_eff, g_eff, beta2 * v), True))),
        Rule(
            s,
            sp.Piecewise(
                (s, frozen),
                (fma((d / d0) * sp.Piecewise((d, safeguard_warmup), (dlr, True)), g_eff, b3 * s), True),
            ),
        ),
        Rule(x0, x0),  # the start is kept as it is (no store)
        Rule(numerator, group_sum(sp.Piecewise((0, frozen), (g_eff * (x0 - w), True)))),
        Rule(denominator, group_sum(sp.Piecewise((0, frozen), (sp.Abs(s), True)))),
        # After the group sums `d` and `taken` are the sum rules' (dlr is the step's, from the
        # old d). With beta1 = 0 the reference keeps no exp_avg and steps by the gradient times
        # the new d.
        Rule(w_decayed, sp.Piecewise((fma(-taken * weight_decay * dlr, w, w), decouple), (w, True))),
        Rule(
            w,
            w_decayed
            + (-taken * dlr) * sp.Piecewise((d * g_eff, sp.Eq(beta1, 0)), (m, True)) / (sp.sqrt(v) + d * eps),
        ),
    ],
    sum_rules=[
        Rule(taken, sp.Piecewise((0, no_sum), (1, True))),
        Rule(
            d_numerator,
            sp.Piecewise((d_numerator, no_sum), (b3 * d_numerator + (d / d0) * dlr * numerator, True)),
        ),
        Rule(d_hat, sp.Piecewise((d, no_sum), (d_coef * d_numerator / denominator, True))),
        Rule(d, sp.Piecewise((sp.Max(d, d_hat), sp.Eq(d, d0)), (d, True))),
        Rule(d_max, sp.Max(d_max, d_hat)),
        Rule(d, sp.Piecewise((d, no_sum), (sp.Min(d_max, d * growth_rate), True))),
        Rule(k, k + taken),
    ],
    # One D estimate for the optimizer, as the reference keeps it: from the first group's
    # options, at the largest lr (dlr), written into every group.
    shared_step_state=True,
    decay="decoupled",
    latex={
        d0: r"d_0",
        d_coef: r"d_{\mathrm{coef}}",
        growth_rate: r"\gamma_{\mathrm{growth}}",
        d_max: r"d_{\max}",
        d_numerator: r"r",
        d_hat: r"\hat{d}",
        b3: r"\beta_3'",
        bias_correction: r"\mathrm{bc}",
        dlr: r"d\gamma",
        x0: r"\mathring{w}",
        g_eff: r"\tilde{g}",
        w_decayed: r"\bar{w}",
        numerator: r"\Sigma_{r}",
        denominator: r"\Sigma_{s}",
        taken: r"\tau",
        use_bias_correction: r"\mathrm{bc}_{\mathrm{on}}",
    },
    exports=[
        Export("optim", "Prodigy", SIGNATURE, options=(FSDP, SLICE), messages=MESSAGES),
        Export(
            "torch",
            "Prodigy",
            (*SIGNATURE, ("foreach", True)),
            options=(FSDP, SLICE),
            messages=MESSAGES,
            flat_state=("s", "p0"),  # the reference's p.flatten()[::slice_p]
            optional_state=("exp_avg",),  # the reference keeps none with beta1 = 0
        ),
    ],
)
