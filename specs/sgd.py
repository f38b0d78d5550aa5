"""SGD with momentum, dampening and Nesterov, as torch.optim.SGD computes it.

The momentum buffer starts as the first gradient itself (no dampening at the first step);
`t == 1` is known on the host, so it selects the kernel, not a per-element branch.
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import g_eff
from optforge.compiler.spec import Constraint, Export, Hyper, Rule, State, fma, lr, t, w

momentum, dampening = sp.symbols("momentum dampening")
NESTEROV = F.nesterov()
nesterov = NESTEROV.flag
buf, direction = sp.symbols("buf d")

# The optim and torch dialects share torch.optim's signature.
SIGNATURE = (("lr", 1e-3), "momentum", "dampening", ("weight_decay", 0.0), "nesterov", "maximize")
# torch.optim.SGD's: the same names, keyword-only arguments marked by "*".
TORCH_SIGNATURE = (*SIGNATURE[:-1], "*", "maximize", "foreach", "differentiable", "fused")

SPEC = F.compose(
    NESTEROV,
    F.torch_prologue(),
    name="sgd",
    title="SGD",
    source=__file__,
    summary="Stochastic gradient descent with optional (Nesterov) momentum.",
    references=(
        "Ilya Sutskever, James Martens, George Dahl, Geoffrey Hinton. On the importance of "
        "initialization and momentum in deep learning. ICML 2013. https://proceedings.mlr.press/v28/sutskever13.html",
    ),
    hypers=[
        Hyper(momentum, ("float", "int"), 0.0, "Momentum factor; 0 for plain SGD."),
        Hyper(dampening, ("float", "int"), 0.0, "Dampening of the gradient in the momentum buffer."),
    ],
    domains={momentum: sp.Interval(0, sp.oo), dampening: sp.Interval(0, sp.oo)},
    state=[State(buf, 0, "momentum_buffer", "Momentum buffer (unused when momentum is 0).")],
    rules=[
        # torch's operations, fused where its CPU kernels are (see `fma`): lerp_ (weight < 0.5),
        # addcmul_ and add_(alpha=) each one fma.
        Rule(
            buf,
            sp.Piecewise(
                (g_eff, (momentum > 0) & sp.Eq(t, 1)),
                (fma(1 - dampening, g_eff, momentum * buf), momentum > 0),
                (buf, True),
            ),
        ),
        Rule(
            direction,
            sp.Piecewise(
                (fma(momentum, buf, g_eff), (momentum > 0) & nesterov), (buf, momentum > 0), (g_eff, True)
            ),
        ),
        Rule(w, fma(-lr, direction, w)),
    ],
    constraints=[
        Constraint(
            ~nesterov | ((momentum > 0) & sp.Eq(dampening, 0)),
            "ValueError",
            "Nesterov momentum requires a momentum and zero dampening.",
        )
    ],
    latex={buf: "b", direction: "d", momentum: r"\mu", dampening: r"\tau"},
    notes=(
        "One spec feeds both dialects: MindSpore's nn.SGD (whose kernel also copies the first gradient into "
        "the buffer) and the PyTorch-like optim.SGD. nn.SGD has no maximize argument.",
    ),
    exports=[
        Export("optim", "SGD", SIGNATURE),
        Export(
            "torch",
            "SGD",
            TORCH_SIGNATURE,
            optional_state=("momentum_buffer",),
            kept_when={"momentum_buffer": momentum > 0},  # torch: `if momentum != 0` (momentum >= 0)
            step_state=False,
        ),
        Export(
            "nn",
            "SGD",
            (
                ("learning_rate", 0.1),
                "momentum",
                "dampening",
                ("weight_decay", 0.0),
                "nesterov",
                ("loss_scale", 1.0),
            ),
        ),
    ],
)
