"""Averaged SGD (Polyak & Juditsky, 1992) as torch.optim.ASGD computes it.

eta_t = lr / (1 + lambd*lr*(t-1))^alpha and mu_t = 1 / max(1, t - 1 - t0) are step-level
values; while mu_t is 1 the average is a plain copy, a branch the host chooses.
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import g_eff
from optforge.compiler.spec import Export, Hyper, Rule, State, lr, t, w

lambd, alpha, t0 = sp.symbols("lambd alpha t0")
ax, eta, mu = sp.symbols("ax eta mu")

SPEC = F.compose(
    F.maximize(),
    F.nn_prologue(),  # coupled decay unfused: MindSpore's nn.ASGD and torch's ASGD round alike
    name="asgd",
    title="ASGD",
    source=__file__,
    summary="SGD with a decaying step and a running average of the iterates.",
    references=(
        "Boris T. Polyak, Anatoli B. Juditsky. Acceleration of Stochastic Approximation by "
        "Averaging. SIAM J. Control Optim. 30(4), 1992. https://doi.org/10.1137/0330046",
    ),
    hypers=[
        Hyper(lambd, ("float", "int"), 1e-4, "Decay term."),
        Hyper(alpha, ("float", "int"), 0.75, "Power of the step's decay."),
        Hyper(t0, ("float", "int"), 1e6, "Step from which averaging starts."),
    ],
    domains={lambd: sp.Interval(0, sp.oo), t0: sp.Interval(0, sp.oo)},
    state=[State(ax, 0, "ax", "Running average of the parameter.")],
    rules=[
        Rule(eta, lr / (1 + lambd * lr * (t - 1)) ** alpha),
        Rule(mu, 1 / sp.Max(1, t - 1 - t0)),
        Rule(w, w * (1 - lambd * eta) - eta * g_eff),
        Rule(ax, sp.Piecewise((w, sp.Eq(mu, 1)), (ax + mu * (w - ax), True))),
    ],
    latex={eta: r"\eta", mu: r"\mu", lambd: r"\lambda_{\mathrm{ASGD}}", t0: "t_0"},
    notes=(
        "One spec feeds both dialects: optim.ASGD (torch's) and nn.ASGD (MindSpore's, whose `lambd`, "
        "`alpha` and `t0` must be floats).",
        "torch and MindSpore compute the step size eta of step t at the end of step t-1, from that "
        "step's learning rate; optforge computes it from step t's. The two agree while the learning "
        "rate is constant and differ by one step of lag when a scheduler changes it.",
    ),
    exports=[
        Export("optim", "ASGD", (("lr", 1e-2), "lambd", "alpha", "t0", ("weight_decay", 0.0), "maximize")),
        Export(
            "nn",
            "ASGD",
            (("learning_rate", 0.1), "lambd", "alpha", "t0", ("weight_decay", 0.0)),
            types={n: ("float",) for n in ("lambd", "alpha", "t0")},
        ),
    ],
)
