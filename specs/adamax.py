"""Adamax (Kingma & Ba, 2015, section 7) as torch.optim.Adamax computes it: the infinity norm."""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import beta1, beta2, eps, g_eff
from optforge.compiler.spec import Export, Rule, State, fma, lr, t, w

m, u = sp.symbols("m u")

# The optim and torch dialects share torch.optim's signature.
SIGNATURE = (("lr", 2e-3), ("betas", ("beta1", "beta2")), "eps", ("weight_decay", 0.0), "maximize")
# torch.optim.Adamax's: the same names, keyword-only arguments marked by "*".
TORCH_SIGNATURE = (*SIGNATURE[:-1], "foreach", "*", "maximize", "differentiable", "capturable")

SPEC = F.compose(
    F.betas(docs=(None, "Decay rate of the infinity norm.")),
    F.epsilon(1e-8, "Added to |g| for numerical stability."),
    F.torch_prologue(),
    name="adamax",
    title="Adamax",
    source=__file__,
    summary="Adam with the infinity norm: steps scaled by a decaying maximum of |g|.",
    references=(
        "Diederik P. Kingma, Jimmy Ba. Adam: A Method for Stochastic Optimization. ICLR 2015, "
        "section 7.1. https://arxiv.org/abs/1412.6980",
    ),
    state=[
        State(m, 0, "exp_avg", "First moment (running mean of gradients)."),
        State(u, 0, "exp_inf", "Decaying infinity norm of the gradients."),
    ],
    rules=[
        # torch's operations, fused where its CPU kernels are (see `fma`): lerp_ (weight < 0.5),
        # addcmul_ and add_(alpha=) each one fma.
        Rule(m, fma(1 - beta1, g_eff - m, m)),
        Rule(u, sp.Max(beta2 * u, sp.Abs(g_eff) + eps)),
        Rule(w, w - lr / (1 - beta1**t) * m / u),
    ],
    exports=[
        Export("optim", "Adamax", SIGNATURE),
        Export(
            "torch",
            "Adamax",
            TORCH_SIGNATURE,
            domains={eps: sp.Interval(0, sp.oo)},  # torch: `0.0 <= eps`
        ),
    ],
)
