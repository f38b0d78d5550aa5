"""Rprop (Riedmiller & Braun, 1993) as torch.optim.Rprop and MindSpore's nn.Rprop compute it.

Each element keeps its own step size, grown by etaplus while the gradient keeps its sign
and shrunk by etaminus when it flips (and that step is skipped). These are per-element
conditions, so they stay in the loop as conditional expressions. torch's Rprop has no weight
decay; MindSpore's adds it to the gradient (coupled), so the one spec serves both.
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import g_eff
from optforge.compiler.spec import Constraint, Export, Hyper, Rule, State, lr, w

etaminus, etaplus, step_min, step_max = sp.symbols("etaminus etaplus step_size_min step_size_max")
prev, step_size, agreement, g_kept = sp.symbols("prev step_size agreement g_kept")

# The optim and torch dialects share torch.optim's signature.
SIGNATURE = (
    ("lr", 1e-2),
    ("etas", ("etaminus", "etaplus")),
    ("step_sizes", ("step_size_min", "step_size_max")),
    "maximize",
)
# torch.optim.Rprop's: the same names, keyword-only arguments marked by "*".
TORCH_SIGNATURE = (*SIGNATURE[:-1], "*", "capturable", "foreach", "maximize", "differentiable")

SPEC = F.compose(
    F.maximize(),
    F.nn_prologue(),  # MindSpore's coupled decay; torch's Rprop has none (weight_decay is 0 there)
    name="rprop",
    title="Rprop",
    source=__file__,
    summary="Resilient backpropagation: per-element step sizes driven by the sign of the gradient.",
    references=(
        "Martin Riedmiller, Heinrich Braun. A direct adaptive method for faster backpropagation "
        "learning: the RPROP algorithm. IEEE ICNN 1993. https://doi.org/10.1109/ICNN.1993.298623",
    ),
    hypers=[
        Hyper(etaminus, ("float", "int"), 0.5, "Factor the step size shrinks by when the sign flips."),
        Hyper(etaplus, ("float", "int"), 1.2, "Factor the step size grows by while the sign holds."),
        Hyper(step_min, ("float", "int"), 1e-6, "Smallest step size."),
        Hyper(step_max, ("float", "int"), 50.0, "Largest step size."),
    ],
    domains={etaminus: sp.Interval.open(0, 1), etaplus: sp.Interval.open(1, sp.oo)},
    state=[
        State(prev, 0, "prev", "The previous step's gradient (0 where that step was skipped)."),
        State(step_size, lr, "step_size", "Per-element step size; starts at the learning rate."),
    ],
    rules=[
        Rule(agreement, g_eff * prev),
        Rule(
            step_size,
            sp.Min(
                sp.Max(
                    step_size * sp.Piecewise((etaplus, agreement > 0), (etaminus, agreement < 0), (1, True)),
                    step_min,
                ),
                step_max,
            ),
        ),
        Rule(g_kept, sp.Piecewise((0, agreement < 0), (g_eff, True))),
        Rule(w, w - sp.sign(g_kept) * step_size),
        Rule(prev, g_kept),
    ],
    constraints=[
        Constraint(step_min <= step_max, "ValueError", "step_sizes[0] must not exceed step_sizes[1].")
    ],
    latex={
        etaminus: r"\eta^-",
        etaplus: r"\eta^+",
        step_min: r"\Delta_{\min}",
        step_max: r"\Delta_{\max}",
        step_size: r"\Delta",
        g_kept: r"g'",
    },
    notes=(
        "One spec feeds both dialects: optim.Rprop (torch's, with no weight decay) and nn.Rprop "
        "(MindSpore's, whose weight decay is added to the gradient and whose `etas` and `step_sizes` "
        "must be tuples of floats).",
    ),
    exports=[
        Export("optim", "Rprop", SIGNATURE),
        Export(
            "torch",
            "Rprop",
            TORCH_SIGNATURE,
            messages={  # torch checks 0 < etas[0] < 1 < etas[1] at once
                "etas[0]": "Invalid eta values: {etas[0]}, {etas[1]}",
                "etas[1]": "Invalid eta values: {etas[0]}, {etas[1]}",
            },
        ),
        Export(
            "nn",
            "Rprop",
            (
                ("learning_rate", 0.1),
                ("etas", ("etaminus", "etaplus")),
                ("step_sizes", ("step_size_min", "step_size_max")),
                ("weight_decay", 0.0),
            ),
            types={n: ("float",) for n in ("etaminus", "etaplus", "step_size_min", "step_size_max")},
        ),
    ],
)
