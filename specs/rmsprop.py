"""RMSprop (Hinton, 2012) as torch.optim.RMSprop computes it, plain or centered, with momentum."""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import g_eff
from optforge.compiler.spec import Export, Flag, Hyper, Rule, State, fma, lr, w

alpha, eps, momentum = sp.symbols("alpha eps momentum")
centered = sp.Symbol("centered")
sq, g_avg, buf, denom = sp.symbols("sq g_avg buf denom")

# The optim and torch dialects share torch.optim's signature.
SIGNATURE = (("lr", 1e-2), "alpha", "eps", ("weight_decay", 0.0), "momentum", "centered", "maximize")
# torch.optim.RMSprop's: the same names, in its order (all positional).
TORCH_SIGNATURE = (*SIGNATURE[:-1], "capturable", "foreach", "maximize", "differentiable")

# The flag `centered` comes before the torch prologue's `maximize` (the kernels' variant order).
RMSPROP = F.Fragment(
    "rmsprop",
    hypers=[
        Hyper(alpha, ("float", "int"), 0.99, "Decay rate of the running average of squared gradients."),
        Hyper(eps, ("float", "int"), 1e-8, "Added to the denominator for numerical stability."),
        Hyper(momentum, ("float", "int"), 0.0, "Momentum factor; 0 for none."),
    ],
    domains={alpha: sp.Interval(0, sp.oo), eps: sp.Interval(0, sp.oo), momentum: sp.Interval(0, sp.oo)},
    flags=[
        Flag(centered, "Normalize by an estimate of the gradient's variance instead of its second moment.")
    ],
    state=[
        State(sq, 0, "square_avg", "Running average of squared gradients."),
        State(g_avg, 0, "grad_avg", "Running average of gradients.", when=centered),
        State(buf, 0, "momentum_buffer", "Momentum buffer (unused when momentum is 0)."),
    ],
    rules=[
        # torch's operations, fused where its CPU kernels are (see `fma`): lerp_ (weight < 0.5),
        # addcmul_ and add_(alpha=) each one fma.
        Rule(sq, fma((1 - alpha) * g_eff, g_eff, alpha * sq)),
        Rule(g_avg, fma(1 - alpha, g_eff - g_avg, g_avg), when=centered),
        Rule(denom, sp.sqrt(sp.Piecewise((fma(-g_avg, g_avg, sq), centered), (sq, True))) + eps),
        # momentum > 0 is known per step: the host picks the kernel.
        Rule(buf, sp.Piecewise((momentum * buf + g_eff / denom, momentum > 0), (buf, True))),
        Rule(w, sp.Piecewise((fma(-lr, buf, w), momentum > 0), (w - lr * g_eff / denom, True))),
    ],
    latex={eps: r"\epsilon", sq: "v", g_avg: r"\bar{g}", buf: "b", denom: "d"},
)

SPEC = F.compose(
    RMSPROP,
    F.torch_prologue(),
    name="rmsprop",
    title="RMSprop",
    source=__file__,
    summary="Steps scaled by the root of a running average of squared gradients.",
    references=(
        "Geoffrey Hinton. Neural Networks for Machine Learning, lecture 6e. 2012. "
        "https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf",
    ),
    exports=[
        Export("optim", "RMSprop", SIGNATURE),
        Export(
            "torch",
            "RMSprop",
            TORCH_SIGNATURE,
            optional_state=("momentum_buffer", "grad_avg"),
            kept_when={"momentum_buffer": momentum > 0},  # torch: `if group["momentum"] > 0`
        ),
    ],
)
