"""Adadelta (Zeiler, 2012) as torch.optim.Adadelta computes it."""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import g_eff
from optforge.compiler.spec import Export, Hyper, Rule, State, fma, lr, w

rho, eps = sp.symbols("rho eps")
sq, acc_delta, ratio, delta = sp.symbols("sq acc_delta ratio delta")

# The optim and torch dialects share torch.optim's signature.
SIGNATURE = (("lr", 1.0), "rho", "eps", ("weight_decay", 0.0), "maximize")
# torch.optim.Adadelta's: the same names, keyword-only arguments marked by "*".
TORCH_SIGNATURE = (*SIGNATURE[:-1], "foreach", "*", "capturable", "maximize", "differentiable")

SPEC = F.compose(
    F.torch_prologue(),
    name="adadelta",
    title="Adadelta",
    source=__file__,
    summary="Steps scaled by the ratio of running RMS of updates and of gradients.",
    references=(
        "Matthew D. Zeiler. ADADELTA: An Adaptive Learning Rate Method. 2012. https://arxiv.org/abs/1212.5701",
    ),
    hypers=[
        Hyper(rho, ("float", "int"), 0.9, "Decay rate of the running averages."),
        Hyper(eps, ("float", "int"), 1e-6, "Added inside the square roots for numerical stability."),
    ],
    domains={rho: sp.Interval(0, 1), eps: sp.Interval(0, sp.oo)},
    state=[
        State(sq, 0, "square_avg", "Running average of squared gradients."),
        State(acc_delta, 0, "acc_delta", "Running average of squared updates."),
    ],
    rules=[
        # torch's operations, fused where its CPU kernels are (see `fma`): lerp_ (weight < 0.5),
        # addcmul_ and add_(alpha=) each one fma.
        Rule(sq, fma((1 - rho) * g_eff, g_eff, rho * sq)),
        # delta.div_(std).mul_(grad): the ratio first, then the gradient.
        Rule(ratio, sp.sqrt(acc_delta + eps) / sp.sqrt(sq + eps)),
        Rule(delta, ratio * g_eff),
        Rule(acc_delta, fma((1 - rho) * delta, delta, rho * acc_delta)),
        Rule(w, fma(-lr, delta, w)),
    ],
    latex={eps: r"\epsilon", sq: "v", acc_delta: "u", delta: r"\Delta"},
    exports=[Export("optim", "Adadelta", SIGNATURE), Export("torch", "Adadelta", TORCH_SIGNATURE)],
)
