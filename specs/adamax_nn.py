"""AdaMax, as MindSpore's nn.AdaMax computes it (ApplyAdaMax): eps added to the norm at the end."""

import sympy as sp

from optforge.compiler.spec import Export, Hyper, Rule, Spec, State, g, grad_scale, lr, t, w, weight_decay

beta1, beta2, eps = sp.symbols("beta1 beta2 eps")
m, v, g_eff = sp.symbols("m v g_eff")

SPEC = Spec(
    name="adamax_nn",
    title="AdaMax",
    source=__file__,
    summary="Adam with the infinity norm (MindSpore's form: v = max(beta2*v, |g|), eps at the end).",
    references=(
        "Diederik P. Kingma, Jimmy Ba. Adam: A Method for Stochastic Optimization. ICLR 2015, "
        "section 7.1. https://arxiv.org/abs/1412.6980",
    ),
    hypers=[
        Hyper(beta1, ("float",), 0.9, "Exponential decay rate of the first moment."),
        Hyper(beta2, ("float",), 0.999, "Exponential decay rate of the infinity norm."),
        Hyper(eps, ("float",), 1e-8, "Added to the denominator for numerical stability."),
    ],
    domains={beta1: sp.Interval.open(0, 1), beta2: sp.Interval.open(0, 1), eps: sp.Interval.open(0, sp.oo)},
    flags=[],
    state=[
        State(m, 0, "moment1", "First moment (running mean of gradients)."),
        State(v, 0, "moment2", "Decaying infinity norm of the gradients."),
    ],
    rules=[
        Rule(g_eff, g * grad_scale + weight_decay * w),
        Rule(m, beta1 * m + (1 - beta1) * g_eff),
        Rule(v, sp.Max(beta2 * v, sp.Abs(g_eff))),
        Rule(w, w - lr / (1 - beta1**t) * m / (v + eps)),
    ],
    latex={g_eff: r"\tilde{g}", eps: r"\epsilon"},
    exports=[
        Export(
            "nn",
            "AdaMax",
            (("learning_rate", 0.001), "beta1", "beta2", "eps", ("weight_decay", 0.0), ("loss_scale", 1.0)),
        )
    ],
)
