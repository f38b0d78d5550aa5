"""Schedule-Free AdamW (Defazio et al., 2024) as schedulefree.AdamWScheduleFree 1.4.1 computes it.

No learning-rate schedule: the parameters `w` hold y, an interpolation between the averaged
iterate x and the base sequence z, and each step moves y towards z by the averaging weight
ckp1 before the gradient step. What the reference keeps per param group between steps (its
step count `k`, the largest scheduled learning rate `lr_max`, the sum of the averaging
weights `weight_sum`, and `scheduled_lr`) is step-level state, updated by the step rules on
the host before the kernels run. `eval()` sets the parameters to x (`w <- lerp(w, z,
1 - 1/beta1)`) and `train()` back to y (`w <- lerp(w, z, 1 - beta1)`); `step()` outside
train mode raises the reference's `Exception`.
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import beta1, beta2, eps
from optforge.compiler.spec import Export, Hyper, Modes, Rule, State, StepState, Transition, g, lr, w
from optforge.compiler.spec import weight_decay as wd

warmup_steps, r, weight_lr_power = sp.symbols("warmup_steps r weight_lr_power")
k, scheduled_lr, lr_max, weight_sum = sp.symbols("k scheduled_lr lr_max weight_sum")
sched, bias_correction2, weight, ckp1 = sp.symbols("sched bias_correction2 weight ckp1")
z, v, d = sp.symbols("z v d")

# schedulefree's AdamWScheduleFree signature, in its order (all positional-or-keyword).
SIGNATURE = (
    ("lr", 0.0025),
    ("betas", ("beta1", "beta2")),
    "eps",
    ("weight_decay", 0.0),
    "warmup_steps",
    "r",
    "weight_lr_power",
)

MESSAGE = (
    "Optimizer was not in train mode when step is called. Please insert .train() and .eval() "
    "calls on the optimizer. See documentation for details."
)

SPEC = F.compose(
    F.betas(
        (0.9, 0.999),
        (
            "Interpolation between the averaged iterate and the base sequence z (y = lerp(z, x, beta1)).",
            "Decay rate of the running mean of squared gradients.",
        ),
        domain=sp.Interval.open(0, 1),  # 1 - 1/beta1 (eval) needs beta1 > 0
    ),
    F.epsilon(1e-8, domain=sp.Interval(0, sp.oo)),
    name="schedulefree",
    title="ScheduleFreeAdamW",
    source=__file__,
    summary="Schedule-Free AdamW: no learning-rate schedule; train() before stepping, eval() to evaluate.",
    references=(
        "Aaron Defazio, Xingyu Alice Yang, Harsh Mehta, Konstantin Mishchenko, Ahmed Khaled, Ashok "
        "Cutkosky. The Road Less Scheduled. NeurIPS 2024. https://arxiv.org/abs/2405.15682",
    ),
    notes=(
        "The parameters hold y while training (train mode) and x after `eval()`; save checkpoints "
        "in either mode, as the reference does (`train_mode` is saved with each group).",
        "Each step's step-level values are computed in float64 on the host, as the reference "
        "does with Python floats; `ckp1` is 0 while `weight_sum` is 0 (the reference's "
        "ZeroDivisionError branch).",
        "`beta1 = 0` is refused (the reference's `eval()` divides by it); so are a negative lr, "
        "eps, weight_decay or warmup_steps, and betas outside (0, 1), which the reference does not check.",
        "`train()` and `eval()` step host tensors only so far: on parameters in device memory that "
        "have state they raise NotImplementedError and change nothing (steps run on the device).",
    ),
    hypers=[
        Hyper(warmup_steps, ("int",), 0, "Steps of linear learning-rate warmup."),
        Hyper(r, ("float", "int"), 0.0, "Polynomial weighting of the average: weight (k+1)**r."),
        Hyper(
            weight_lr_power,
            ("float", "int"),
            2.0,
            "The averaging weights are lr_max raised to this power (0: no weighting).",
        ),
    ],
    domains={warmup_steps: sp.Interval(0, sp.oo)},
    state=[
        State(z, w, "z", "The base sequence z (starts as a copy of the parameter)."),
        State(v, 0, "exp_avg_sq", "Second moment (running mean of squared gradients)."),
    ],
    step_state=[
        StepState(k, 0, "k", "Steps the group has taken."),
        StepState(scheduled_lr, 0.0, "scheduled_lr", "The learning rate of the last step, warmup applied."),
        StepState(lr_max, -1.0, "lr_max", "The largest scheduled learning rate so far."),
        StepState(weight_sum, 0.0, "weight_sum", "The sum of the averaging weights so far."),
    ],
    step_rules=[
        Rule(sched, sp.Piecewise(((k + 1) / warmup_steps, k < warmup_steps), (1, True))),
        Rule(bias_correction2, 1 - beta2 ** (k + 1)),
        Rule(scheduled_lr, lr * sched),
        Rule(lr_max, sp.Max(scheduled_lr, lr_max)),
        Rule(weight, (k + 1) ** r * lr_max**weight_lr_power),
        Rule(weight_sum, weight_sum + weight),
        Rule(ckp1, sp.Piecewise((weight / weight_sum, sp.Ne(weight_sum, 0)), (0, True))),
        Rule(k, k + 1),
    ],
    rules=[
        Rule(v, beta2 * v + (1 - beta2) * g * g),
        # The normalised gradient, with the weight decay taken at y.
        Rule(d, g / (sp.sqrt(v / bias_correction2) + eps) + wd * w),
        Rule(w, w + ckp1 * (z - w) + scheduled_lr * (beta1 * (1 - ckp1) - 1) * d),
        Rule(z, z - scheduled_lr * d),
    ],
    modes=Modes(
        key="train_mode",
        enter=Transition("train", [Rule(w, w + (1 - beta1) * (z - w))], "Set the parameters to y, to step."),
        leave=Transition(
            "eval", [Rule(w, w + (1 - 1 / beta1) * (z - w))], "Set the parameters to x, to evaluate."
        ),
        initial=False,
        error="Exception",
        message=MESSAGE,
    ),
    decay="decoupled",
    latex={
        ckp1: r"c_{k+1}",
        bias_correction2: r"\mathrm{bc}_2",
        warmup_steps: r"T_{\mathrm{warmup}}",
        weight_lr_power: r"p",
        scheduled_lr: r"\gamma_{\mathrm{sched}}",
        lr_max: r"\gamma_{\max}",
        weight_sum: r"W",
        weight: r"\omega",
        sched: r"\mathrm{sched}",
    },
    exports=[
        Export("optim", "ScheduleFreeAdamW", SIGNATURE),
        Export(
            "torch",
            "ScheduleFreeAdamW",
            (*SIGNATURE, ("foreach", True)),
            step_state=False,  # the reference keeps its step count `k` in the group, no `step` per parameter
            aliases=("AdamWScheduleFree",),  # schedulefree's own name
        ),
    ],
)
