"""Adadelta (Zeiler, 2012) as torch.optim.Adadelta computes it."""

import sympy as sp

from optforge.compiler.spec import Export, Flag, Hyper, Rule, Spec, State, g, grad_scale, lr, w, weight_decay

rho, eps = sp.symbols("rho eps")
maximize = sp.Symbol("maximize")
sq, acc_delta, g_eff, delta = sp.symbols("sq acc_delta g_eff delta")

# The optim and torch dialects share torch.optim's signature.
SIGNATURE = (("lr", 1.0), "rho", "eps", ("weight_decay", 0.0), "maximize")
# torch.optim.Adadelta's: the same names, keyword-only arguments marked by "*".
TORCH_SIGNATURE = (*SIGNATURE[:-1], "foreach", "*", "capturable", "maximize", "differentiable")

SPEC = Spec(
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
    flags=[Flag(maximize, "Maximize the objective: step along the gradient.")],
    state=[
        State(sq, 0, "square_avg", "Running average of squared gradients."),
        State(acc_delta, 0, "acc_delta", "Running average of squared updates."),
    ],
    rules=[
        Rule(g_eff, sp.Piecewise((-g, maximize), (g, True)) * grad_scale + weight_decay * w),
        Rule(sq, rho * sq + (1 - rho) * g_eff**2),
        Rule(delta, sp.sqrt(acc_delta + eps) / sp.sqrt(sq + eps) * g_eff),
        Rule(acc_delta, rho * acc_delta + (1 - rho) * delta**2),
        Rule(w, w - lr * delta),
    ],
    latex={eps: r"\epsilon", g_eff: r"\tilde{g}", sq: "v", acc_delta: "u", delta: r"\Delta"},
    exports=[Export("optim", "Adadelta", SIGNATURE), Export("torch", "Adadelta", TORCH_SIGNATURE)],
)
