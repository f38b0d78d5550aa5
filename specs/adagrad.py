"""Adagrad (Duchi, Hazan & Singer, 2011) as torch.optim.Adagrad computes it."""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import g_eff
from optforge.compiler.spec import Export, Hyper, Rule, State, fma, lr, t, w

lr_decay, init, eps = sp.symbols("lr_decay initial_accumulator_value eps")
acc = sp.Symbol("acc")

# The optim and torch dialects share torch.optim's signature.
SIGNATURE = (("lr", 1e-2), "lr_decay", ("weight_decay", 0.0), "initial_accumulator_value", "eps", "maximize")
# torch.optim.Adagrad's: the same names, keyword-only arguments marked by "*".
TORCH_SIGNATURE = (*SIGNATURE[:-1], "foreach", "*", "maximize", "differentiable", "fused")

SPEC = F.compose(
    F.torch_prologue(),
    name="adagrad",
    title="Adagrad",
    source=__file__,
    summary="Per-element steps scaled by the root of the sum of squared gradients.",
    references=(
        "John Duchi, Elad Hazan, Yoram Singer. Adaptive Subgradient Methods for Online Learning and "
        "Stochastic Optimization. JMLR 12, 2011. https://jmlr.org/papers/v12/duchi11a.html",
    ),
    hypers=[
        Hyper(lr_decay, ("float", "int"), 0.0, "Learning rate decay: lr / (1 + (t - 1) * lr_decay)."),
        Hyper(init, ("float", "int"), 0.0, "Initial value of the accumulator."),
        Hyper(eps, ("float", "int"), 1e-10, "Added to the denominator for numerical stability."),
    ],
    domains={lr_decay: sp.Interval(0, sp.oo), init: sp.Interval(0, sp.oo), eps: sp.Interval(0, sp.oo)},
    state=[State(acc, init, "sum", "Sum of squared gradients.")],
    rules=[
        # torch's operations, fused where its CPU kernels are (see `fma`): lerp_ (weight < 0.5),
        # addcmul_ and add_(alpha=) each one fma.
        Rule(acc, fma(g_eff, g_eff, acc)),
        Rule(w, w - lr / (1 + (t - 1) * lr_decay) * g_eff / (sp.sqrt(acc) + eps)),
    ],
    latex={eps: r"\epsilon", init: r"a_0", acc: "a"},
    exports=[Export("optim", "Adagrad", SIGNATURE), Export("torch", "Adagrad", TORCH_SIGNATURE)],
)
