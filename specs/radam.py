"""RAdam, as `mindspore.experimental.optim.RAdam` computes it (Liu et al., 2020).

L2 weight decay is added to the gradient. The update is rectified only when
rho_t > 5; rho_t depends on the step alone, so the host chooses the kernel
each step. MindSpore evaluates rho_t and the rectification term in float32,
and near the threshold that changes the numbers (rho_6 is 6.0005 in float32,
5.9942 in float64), so this spec's host arithmetic is float32 too.
`rectified_adam` is the core specs/radam_torch.py shares.
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import beta1, beta2, eps, g_eff, w_decayed
from optforge.compiler.spec import Export, Rule, State, lr, t, w

m, v = sp.symbols("m v")
m_hat, rho_inf, rho_t, rect = sp.symbols("m_hat rho_inf rho_t r_t")
REFERENCE = (
    "Liyuan Liu, Haoming Jiang, Pengcheng He, et al. On the Variance of the Adaptive Learning "
    "Rate and Beyond. ICLR 2020. https://arxiv.org/abs/1908.03265"
)


def rectified_adam(first_moment: sp.Expr, eps_domain: sp.Interval) -> tuple:
    """RAdam's core: `first_moment` is the new m as the reference rounds it (MindSpore's
    m*beta1 + g*(1 - beta1), torch's lerp m + (g - m)*(1 - beta1))."""
    return (
        F.betas(),
        F.epsilon(1e-8, domain=eps_domain),
        F.Fragment(
            "rectified_adam",
            state=[
                State(m, 0, "exp_avg", "First moment (running mean of gradients)."),
                State(v, 0, "exp_avg_sq", "Second moment (running mean of squared gradients)."),
            ],
            rules=[
                Rule(m, first_moment),
                Rule(v, v * beta2 + g_eff**2 * (1 - beta2)),
                Rule(m_hat, m / (1 - beta1**t)),
                Rule(rho_inf, 2 / (1 - beta2) - 1),
                Rule(rho_t, rho_inf - 2 * t * beta2**t / (1 - beta2**t)),
                Rule(
                    rect,
                    sp.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)),
                ),
                Rule(
                    w,
                    sp.Piecewise(
                        (
                            w_decayed - m_hat * lr * sp.sqrt(1 - beta2**t) / (sp.sqrt(v) + eps) * rect,
                            rho_t > 5,
                        ),
                        (w_decayed - m_hat * lr, True),
                    ),
                ),
            ],
            latex={m_hat: r"\hat{m}", rho_inf: r"\rho_\infty", rho_t: r"\rho_t", rect: "r_t"},
        ),
    )


# mindspore.experimental.optim.RAdam's signature (torch.optim's, without maximize and
# decoupled_weight_decay); optforge.torch.RAdam is specs/radam_torch.py, with torch's arithmetic.
SIGNATURE = (("lr", 1e-3), ("betas", ("beta1", "beta2")), "eps", ("weight_decay", 0.0))

SPEC = F.compose(
    rectified_adam(m * beta1 + g_eff * (1 - beta1), eps_domain=sp.Interval.open(0, sp.oo)),
    F.nn_prologue(),
    name="radam",
    title="RAdam",
    source=__file__,
    summary="Rectified Adam: momentum SGD while the variance estimate is unreliable, then rectified Adam.",
    references=(REFERENCE,),
    host_dtype="float32",
    notes=(
        "A learning rate that is not an int, float or 0-d array is a ValueError, as the documentation "
        "says (MindSpore's code raises TypeError for some types).",
        "lr = 0 and eps = 0 are refused, as MindSpore's code does (its documentation only mentions "
        "negative values); a group's lr may be 0.",
        "rho_t and the rectification term are computed in float32, as MindSpore does; rectification "
        "starts at t = 6 with the default betas.",
    ),
    exports=[Export("optim", "RAdam", SIGNATURE)],
)
