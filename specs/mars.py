"""MARS (Yuan et al., 2024), mars_type="adamw", as pytorch_optimizer.MARS (4.1.0) computes it.

A variance-reduced gradient c = g + gamma*beta1/(1 - beta1)*(g - g_prev), divided by its
norm where that exceeds 1, drives AdamW's moments. Parameters of fewer than 2 dimensions
(biases, norms) take plain AdamW instead, with their own `lr_1d`, `betas_1d` and
`weight_decay_1d`, unless `optimize_1d`: the rank flag `is_2d` is set per tensor by the
run-time, and `optimize_1d` makes both kinds take the MARS path.

As pytorch_optimizer's foreach step (its default on CPU tensors): the denominator is
sqrt(v + 1e-15) + eps, divided by sqrt(1 - beta2^t) and multiplied by 1 - beta1^t; weight
decay comes after the update is computed, so a coupled decay (weight_decouple=False) does
not reach this step's update, only the gradient kept as `last_grad` for the next one; the
step size of a 1-D parameter is lr * lr_1d_factor, where lr_1d_factor = lr_1d / lr is
computed once, by the constructor, from its own arguments.
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import beta1, beta2, eps, g_eff
from optforge.compiler.spec import Export, Flag, Hyper, Option, Rule, State, fma, lr, norm, t, w, weight_decay

gamma, lr_1d, lr_1d_factor, weight_decay_1d = sp.symbols("gamma lr_1d lr_1d_factor weight_decay_1d")
beta1_1d, beta2_1d = sp.symbols("beta1_1d beta2_1d")
is_2d, optimize_1d, ams_bound, weight_decouple, fixed_decay = sp.symbols(
    "is_2d optimize_1d ams_bound weight_decouple fixed_decay"
)
m, v, vmax, g_prev = sp.symbols("m v v_max g_prev")
c_raw, c, denom, update = sp.symbols("c_raw c d u")

MIXED = optimize_1d | is_2d  # the MARS path; the others are pytorch_optimizer's optimize_1d (AdamW)


def _path(mars, adamw):
    """The MARS path's value, or the 1-D AdamW path's (decided per variant at compile time)."""
    return sp.Piecewise((mars, MIXED), (adamw, True))


B1, B2 = _path(beta1, beta1_1d), _path(beta2, beta2_1d)
STEP = _path(lr, lr * lr_1d_factor)
DECAY = _path(weight_decay, weight_decay_1d)

MARS_TYPE = Option(
    "mars_type",
    "adamw",
    ("adamw", "lion", "shampoo"),
    ("adamw",),
    "Type of MARS: the optimizer its corrected gradient drives.",
    "only MARS-AdamW is compiled; the Lion and Shampoo variants are not available yet.",
)
CAUTIOUS = Option(
    "cautious",
    False,
    (False, True),
    (False,),
    "Mask momentum updates that disagree with the gradient's sign.",
    "it rescales by a per-tensor mean, which the spec language cannot express yet.",
)

SIGNATURE = (
    ("lr", 3e-3),
    ("betas", ("beta1", "beta2")),
    "gamma",
    "mars_type",
    "optimize_1d",
    "lr_1d",
    ("betas_1d", ("beta1_1d", "beta2_1d")),
    ("weight_decay", 0.0),
    "weight_decay_1d",
    "weight_decouple",
    "fixed_decay",
    "ams_bound",
    "cautious",
    "eps",
    "maximize",
)
DERIVED = {"lr_1d_factor": lr_1d / lr}

SPEC = F.compose(
    F.betas((0.95, 0.99), ("Decay rate of the first moment.", "Decay rate of the second moment.")),
    F.Fragment(
        "mars",
        hypers=[
            Hyper(gamma, ("float", "int"), 0.025, "Strength of the gradient correction."),
            Hyper(
                lr_1d, ("float", "int"), 3e-3, "Learning rate of the 1-D parameters (without optimize_1d)."
            ),
            Hyper(
                lr_1d_factor,
                ("float", "int"),
                1.0,
                "lr_1d / lr, computed by the constructor: the 1-D parameters' step is lr * lr_1d_factor.",
            ),
            Hyper(
                beta1_1d, ("float", "numpy.floating"), 0.9, "Decay rate of the 1-D parameters' first moment."
            ),
            Hyper(
                beta2_1d,
                ("float", "numpy.floating"),
                0.95,
                "Decay rate of the 1-D parameters' second moment.",
            ),
            Hyper(weight_decay_1d, ("float", "int"), 0.1, "Weight decay of the 1-D parameters."),
        ],
        domains={
            gamma: sp.Interval(0, sp.oo),
            lr_1d: sp.Interval(0, sp.oo),
            beta1_1d: sp.Interval.Ropen(0, 1),
            beta2_1d: sp.Interval.Ropen(0, 1),
            weight_decay_1d: sp.Interval(0, sp.oo),
        },
        flags=[
            Flag(optimize_1d, "Let MARS optimize the 1-D parameters too (else they take AdamW)."),
            Flag(weight_decouple, "Decay the weights directly instead of adding to the gradient.", True),
            Flag(fixed_decay, "With decoupled decay, shrink by weight_decay alone, not scaled by the lr."),
            Flag(ams_bound, "Divide by the running maximum of the second moment."),
        ],
    ),
    F.epsilon(1e-8, domain=sp.Interval(0, sp.oo)),  # pytorch_optimizer: eps >= 0
    F.maximize(),
    F.loss_scale(),
    name="mars",
    title="MARS",
    source=__file__,
    summary="Variance-reduced gradients (g + gamma*beta1/(1-beta1)*(g - g_prev), norm-clipped) into AdamW.",
    references=(
        "Huizhuo Yuan, Yifeng Liu, Shuang Wu, Xun Zhou, Quanquan Gu. MARS: Unleashing the Power of "
        "Variance Reduction for Training Large Models. 2024. https://arxiv.org/abs/2411.10438",
    ),
    flags=[Flag(is_2d, "Set for tensors of two or more dimensions: the MARS path.", rank=2)],
    state=[
        State(m, 0, "exp_avg", "First moment (running mean of the corrected gradients)."),
        State(v, 0, "exp_avg_sq", "Second moment (running mean of their squares)."),
        State(g_prev, 0, "last_grad", "The previous step's gradient (with a coupled decay added)."),
        State(vmax, 0, "max_exp_avg_sq", "Running maximum of the second moment.", when=ams_bound),
    ],
    rules=[
        # foreach: (g - g_prev)*k + g, rounded op by op; k on the host.
        Rule(c_raw, _path((g_eff - g_prev) * (gamma * beta1 / (1 - beta1)) + g_eff, g_eff)),
        Rule(c, _path(c_raw / sp.Max(norm(c_raw), 1), c_raw)),
        Rule(m, fma(1 - B1, c - m, m)),
        Rule(v, fma((1 - B2) * c, c, B2 * v)),
        Rule(vmax, sp.Max(vmax, v), when=ams_bound),
        Rule(
            denom,
            (sp.sqrt(sp.Piecewise((vmax, ams_bound), (v, True)) + sp.Float(1e-15)) + eps)
            / sp.sqrt(1 - B2**t)
            * (1 - B1**t),
        ),
        Rule(update, m / denom),
        # Read before the parameter changes: pytorch_optimizer adds a coupled decay to the
        # gradient after the update is computed, and keeps that gradient.
        Rule(g_prev, sp.Piecewise((g_eff, weight_decouple), (fma(DECAY, w, g_eff), True))),
        Rule(
            w,
            fma(
                -STEP,
                update,
                sp.Piecewise(
                    (w * (1 - DECAY * sp.Piecewise((1, fixed_decay), (STEP, True))), weight_decouple),
                    (w, True),
                ),
            ),
        ),
    ],
    decay="decoupled",  # the rules apply weight_decay (and weight_decay_1d) themselves
    latex={
        g_prev: r"g_{\mathrm{prev}}",
        c_raw: r"\tilde{c}",
        vmax: r"v_{\max}",
        beta1_1d: r"\beta_{1}^{\mathrm{1D}}",
        beta2_1d: r"\beta_{2}^{\mathrm{1D}}",
        lr_1d: r"\eta_{\mathrm{1D}}",
        lr_1d_factor: r"\rho_{\mathrm{1D}}",
        weight_decay_1d: r"\lambda_{\mathrm{1D}}",
    },
    notes=(
        "weight_decay is applied by the rules as pytorch_optimizer does: decoupled by default, "
        "coupled (weight_decouple=False) only into the kept last_grad.",
        "The norm of the corrected gradient is summed in float64; pytorch_optimizer's foreach_norm "
        "sums in the parameter's dtype.",
        "mars_type 'lion' and 'shampoo', and cautious=True, are refused (NotImplementedError).",
    ),
    exports=[
        Export("optim", "MARS", SIGNATURE, options=(MARS_TYPE, CAUTIOUS), derived=DERIVED),
        Export("torch", "MARS", (*SIGNATURE, "foreach"), options=(MARS_TYPE, CAUTIOUS), derived=DERIVED),
    ],
)
