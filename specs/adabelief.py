"""AdaBelief (Zhuang et al., 2020): Adam whose second moment tracks (g - m)^2, the "belief" in g."""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import beta1, beta2, eps, g_eff
from optforge.compiler.spec import Export, Rule, State, lr, t, w

m, s = sp.symbols("m s")

# The optim and torch dialects share torch.optim's signature.
SIGNATURE = (("lr", 1e-3), ("betas", ("beta1", "beta2")), "eps", ("weight_decay", 0.0))

SPEC = F.compose(
    F.betas(docs=(None, "Decay rate of the running mean of (g - m)^2.")),
    F.epsilon(1e-16, "Added to s each step and to the denominator."),
    F.nn_prologue(),  # coupled decay, unfused as the authors' code adds it
    name="adabelief",
    title="AdaBelief",
    source=__file__,
    summary="Adam with the second moment of (g - m): large steps where the gradient is as expected.",
    references=(
        "Juntang Zhuang, Tommy Tang, Yifan Ding, et al. AdaBelief Optimizer: Adapting Stepsizes by "
        "the Belief in Observed Gradients. NeurIPS 2020, Algorithm 2. https://arxiv.org/abs/2010.07468",
    ),
    state=[
        State(m, 0, "exp_avg", "First moment (running mean of gradients)."),
        State(s, 0, "exp_avg_var", "Running mean of (g - m)^2, plus eps each step."),
    ],
    rules=[
        Rule(m, beta1 * m + (1 - beta1) * g_eff),
        Rule(s, beta2 * s + (1 - beta2) * (g_eff - m) ** 2 + eps),
        # sqrt(s)/sqrt(1 - beta2^t), as the authors' code: s/(1 - beta2^t) is ~g^2 at t = 1 and
        # overflows float32 for |g| > 1.8e19, where its square root does not.
        Rule(w, w - lr * (m / (1 - beta1**t)) / (sp.sqrt(s) / sp.sqrt(1 - beta2**t) + eps)),
    ],
    exports=[Export("optim", "AdaBelief", SIGNATURE), Export("torch", "AdaBelief", SIGNATURE)],
)
