"""Adafactor (Shazeer and Stern, 2018) as torch.optim.Adafactor computes it.

A matrix (a tensor of two or more dimensions, a stack of matrices over its
leading ones) keeps one second-moment value per row and one per column
instead of one per element; their outer product, divided by the mean of
the row factor, estimates the full second moment. A vector keeps it whole.
The step size is relative, alpha = max(eps2, RMS(w)) * min(lr, 1/sqrt(t)),
with RMS(w) taken before the weight decay; the update's RMS is clipped to d.
The decay of the second moment is 1 - t**beta2_decay (the paper's
beta2_hat), so its first step takes the squared gradient as it is.
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import g_eff
from optforge.compiler.spec import (
    Export,
    Flag,
    Hyper,
    Rule,
    State,
    col_mean,
    lr,
    matrix_mean,
    rms,
    row_mean,
    t,
    w,
    weight_decay,
)

beta2_decay, eps1, eps2, d = sp.symbols("beta2_decay eps1 eps2 d")
factored = sp.Symbol("factored")
row_var, col_var, variance = sp.symbols("R C v")
rate, alpha, v_hat, update = sp.symbols("rho alpha v_hat U")

# The optim and torch dialects share torch.optim's signature.
SIGNATURE = (
    ("lr", 1e-2),
    "beta2_decay",
    ("eps", ("eps1", "eps2")),
    "d",
    ("weight_decay", 0.0),
    "maximize",
)
# torch.optim.Adafactor's: the same names, keyword-only arguments marked by "*".
TORCH_SIGNATURE = (*SIGNATURE[:-1], "*", "foreach", "maximize")

SPEC = F.compose(
    F.maximize(),  # torch.optim.Adafactor's gradient: no loss scale, decoupled decay in the update
    name="adafactor",
    title="Adafactor",
    source=__file__,
    summary="Factored second moments: one value per row and per column of each matrix, a relative step.",
    references=(
        "Noam Shazeer, Mitchell Stern. Adafactor: Adaptive Learning Rates with Sublinear Memory Cost. "
        "ICML 2018. https://arxiv.org/abs/1804.04235",
    ),
    hypers=[
        Hyper(
            beta2_decay,
            ("float", "int"),
            -0.8,
            "Exponent of the second moment's decay: a step t averages in t**beta2_decay of g^2.",
        ),
        Hyper(
            eps1,
            ("float", "None"),
            None,
            "Floor of the second-moment estimate (squared) and of the row factor's mean (None: the "
            "machine epsilon of the parameter's dtype)",
        ),
        Hyper(eps2, ("float",), 1e-3, "Floor of RMS(w) in the relative step size."),
        Hyper(d, ("float", "int"), 1.0, "Clipping threshold: the update's RMS is scaled down to at most d."),
    ],
    domains={
        beta2_decay: sp.Interval(-sp.oo, 0),
        eps1: sp.Interval(0, sp.oo),
        eps2: sp.Interval(0, sp.oo),
        d: sp.Interval(1, sp.oo),
    },
    flags=[Flag(factored, "Set for tensors of two or more dimensions: factored second moments.", rank=2)],
    state=[
        State(
            row_var, 0, "row_var", "Row factor of the second moment, shaped (..., rows, 1).", factored, "row"
        ),
        State(col_var, 0, "col_var", "Column factor, shaped (..., 1, cols).", factored, "col"),
        State(variance, 0, "variance", "Second moment of a vector (or scalar) parameter.", ~factored),
    ],
    rules=[
        Rule(rate, sp.Min(lr, 1 / sp.sqrt(t))),
        Rule(alpha, sp.Max(eps2, rms(w)) * rate),
        Rule(row_var, row_var + t**beta2_decay * (row_mean(g_eff**2) - row_var), when=factored),
        Rule(col_var, col_var + t**beta2_decay * (col_mean(g_eff**2) - col_var), when=factored),
        Rule(variance, variance + t**beta2_decay * (g_eff**2 - variance), when=~factored),
        Rule(
            v_hat,
            sp.Piecewise(
                (row_var * col_var / sp.Max(matrix_mean(row_var), eps1), factored), (variance, True)
            ),
        ),
        Rule(update, g_eff / sp.sqrt(sp.Max(v_hat, eps1**2))),
        Rule(w, w * (1 - lr * weight_decay) - alpha / sp.Max(1, rms(update) / d) * update),
    ],
    decay="decoupled",
    latex={
        rate: r"\rho",
        v_hat: r"\hat{v}",
        update: "U",
        eps1: r"\epsilon_1",
        eps2: r"\epsilon_2",
        beta2_decay: r"\beta_{2,\mathrm{decay}}",
    },
    notes=(
        "RMS(w) is taken before the weight decay, and the decay uses lr, not the relative step "
        "(torch.optim.Adafactor).",
        "The update is g / sqrt(max(v_hat, eps1^2)); torch writes rsqrt(clamp(v_hat, eps1^2)) * g.",
    ),
    exports=[
        Export("optim", "Adafactor", SIGNATURE),
        Export(
            "torch",
            "Adafactor",
            TORCH_SIGNATURE,
            # torch.optim.Adafactor's own wording of its checks
            messages={
                "lr": "Learning rate should be >= 0 but is: {value}",
                "beta2_decay": "beta2_decay should be <= 0 but is: {value}",
                "eps[0]": "epsilon1 should be >= 0 but is: {value}",
                "eps[1]": "epsilon2 should be >= 0 but is: {value}",
                "d": "Clipping threshold d should be >= 1 but is: {value}",
                "weight_decay": "weight_decay should be >= 0 but is: {value}",
            },
        ),
    ],
)
