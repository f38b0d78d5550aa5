"""NAdam (Dozat, 2016) as torch.optim.NAdam computes it, with the momentum-decay schedule.

mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay)); the product mu_1 ... mu_t is a
step-level value, computed on the host each step.
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import beta1, beta2, eps, g_eff, w_decayed
from optforge.compiler.spec import Export, Hyper, Rule, State, fma, lr, t, w

psi = sp.Symbol("momentum_decay")
m, v, denom = sp.symbols("m v denom")
i = sp.Symbol("i", integer=True, positive=True)


def mu(step):
    return beta1 * (1 - sp.Rational(1, 2) * sp.Float("0.96") ** (step * psi))


mu_product = sp.Product(mu(i), (i, 1, t))

# The optim and torch dialects share torch.optim's signature.
SIGNATURE = (
    ("lr", 2e-3),
    ("betas", ("beta1", "beta2")),
    "eps",
    ("weight_decay", 0.0),
    "momentum_decay",
    "decoupled_weight_decay",
    "maximize",
)
# torch.optim.NAdam's: the same names, keyword-only arguments marked by "*".
TORCH_SIGNATURE = (*SIGNATURE[:-1], "*", "foreach", "maximize", "capturable", "differentiable")

SPEC = F.compose(
    F.betas(),
    F.epsilon(1e-8, domain=sp.Interval(0, sp.oo)),
    # torch: grad.add(param, alpha=weight_decay), or param.mul_(1 - lr*weight_decay).
    F.switched_decay(
        doc="Decay the weights directly (AdamW-style) instead of adding to the gradient.", fused=True
    ),
    F.maximize(),
    F.loss_scale(),
    name="nadam",
    title="NAdam",
    source=__file__,
    summary="Adam with Nesterov momentum and a momentum-decay schedule.",
    references=(
        "Timothy Dozat. Incorporating Nesterov Momentum into Adam. ICLR 2016 workshop. "
        "https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ",
    ),
    hypers=[Hyper(psi, ("float", "int"), 4e-3, "Momentum decay of the schedule mu_t.")],
    domains={psi: sp.Interval(0, sp.oo)},
    state=[
        State(m, 0, "exp_avg", "First moment (running mean of gradients)."),
        State(v, 0, "exp_avg_sq", "Second moment (running mean of squared gradients)."),
    ],
    rules=[
        # torch's operations, fused where its CPU kernels are (see `fma`): lerp_ (weight < 0.5),
        # addcmul_ and add_(alpha=) each one fma.
        Rule(m, fma(1 - beta1, g_eff - m, m)),
        Rule(v, fma((1 - beta2) * g_eff, g_eff, beta2 * v)),
        Rule(denom, sp.sqrt(v / (1 - beta2**t)) + eps),
        Rule(
            w,
            w_decayed
            - lr * (1 - mu(t)) / (1 - mu_product) * g_eff / denom
            - lr * mu(t + 1) / (1 - mu_product * mu(t + 1)) * m / denom,
        ),
    ],
    latex={psi: r"\psi", denom: "d"},
    exports=[
        Export("optim", "NAdam", SIGNATURE),
        Export("torch", "NAdam", TORCH_SIGNATURE, extra_state={"mu_product": mu_product}),
    ],
)
