"""ADOPT (Taniguchi et al., 2024) as pytorch_optimizer 4.1.0's `ADOPT` computes it.

The gradient is normalised by the *previous* second moment, clipped to +-clip_lambda(t),
and only then folded into the first moment; the second moment is updated last. The first
step only starts the second moment (v = g^2: no previous one to normalise by), leaving the
parameter (but for decoupled weight decay) and the first moment as they are: `t == 1` is a
step-level condition, so the host picks that step's kernel. `clip_lambda` is a function of
the step (a callable hyperparameter, read as `call(clip_lambda)`); None means no clipping,
another kernel chosen on the host.

pytorch_optimizer applies weight decay at every step, the first included, before the
branch: coupled (`weight_decouple=False`) adds weight_decay*w to the gradient (the second
moment sees it too), decoupled multiplies the weights by 1 - weight_decay*lr, or by
1 - weight_decay with `fixed_decay`.
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import beta1, beta2, eps
from optforge.compiler.spec import (
    Export,
    Flag,
    Hyper,
    Rule,
    State,
    StepFunction,
    call,
    fma,
    g,
    given,
    grad_scale,
    lr,
    t,
    w,
    weight_decay,
)

clip_lambda = sp.Symbol("clip_lambda")
weight_decouple, fixed_decay, maximize = sp.symbols("weight_decouple fixed_decay maximize")
m, v = sp.symbols("m v")
g_eff, w_decayed, n, n_clipped = sp.symbols("g_eff w_decayed u_n u_clipped")
first = sp.Eq(t, 1)

# pytorch_optimizer's operations, fused where torch's CPU kernels are (see `fma`):
# grad.add_(p, alpha=weight_decay), exp_avg.lerp_(normed, 1 - beta1), p.add_(exp_avg, alpha=-lr),
# exp_avg_sq.addcmul_(grad, grad) (step 1) and exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2).
signed = sp.Piecewise((-g, maximize), (g, True)) * grad_scale
RULES = [
    Rule(g_eff, sp.Piecewise((signed, weight_decouple), (fma(weight_decay, w, signed), True))),
    Rule(
        w_decayed,
        sp.Piecewise(
            (w * (1 - weight_decay * sp.Piecewise((1, fixed_decay), (lr, True))), weight_decouple), (w, True)
        ),
    ),
    Rule(n, g_eff / sp.Max(sp.sqrt(v), eps)),
    # torch's clamp_(-c, c): max with -c first, then min with c.
    Rule(
        n_clipped,
        sp.Piecewise(
            (sp.Min(sp.Max(n, -call(clip_lambda)), call(clip_lambda)), given(clip_lambda)), (n, True)
        ),
    ),
    Rule(m, sp.Piecewise((m, first), (fma(1 - beta1, n_clipped - m, m), True))),
    Rule(w, sp.Piecewise((w_decayed, first), (fma(-lr, m, w_decayed), True))),
    Rule(v, sp.Piecewise((fma(g_eff, g_eff, v), first), (fma((1 - beta2) * g_eff, g_eff, beta2 * v), True))),
]

# pytorch_optimizer.ADOPT's arguments, in its order (its **kwargs aside).
SIGNATURE = (
    ("lr", 1e-3),
    ("betas", ("beta1", "beta2")),
    "clip_lambda",
    ("weight_decay", 0.0),
    "weight_decouple",
    "fixed_decay",
    "eps",
    "maximize",
)
# `foreach` (accepted: the step is always the fused kernels) comes before eps, as in pytorch_optimizer.
TORCH_SIGNATURE = (*SIGNATURE[:6], "foreach", *SIGNATURE[6:])

SPEC = F.compose(
    F.betas((0.9, 0.9999)),
    F.epsilon(1e-6, doc="Floor of sqrt(v) in the normalisation.", domain=sp.Interval(0, sp.oo)),
    name="adopt",
    title="ADOPT",
    source=__file__,
    summary="Adam that normalises the gradient by the previous second moment, then clips and averages it.",
    references=(
        "Shohei Taniguchi, Keno Harada, Gouki Minegishi, et al. ADOPT: Modified Adam Can Converge with "
        "Any beta_2 with the Optimal Rate. NeurIPS 2024. https://arxiv.org/abs/2411.02853",
    ),
    hypers=[
        Hyper(
            clip_lambda,
            ("callable", "None"),
            StepFunction(t**0.25),
            "Clipping bound of the normalised gradient as a function of the step (called with the step, "
            "1 at the first update); None: no clipping.",
        ),
    ],
    flags=[
        Flag(weight_decouple, "Decay the weights directly instead of adding weight_decay*w to the gradient."),
        Flag(fixed_decay, "With weight_decouple: decay by weight_decay, not lr*weight_decay."),
        Flag(maximize, F.MAXIMIZE_DOC),
    ],
    state=[
        State(m, 0, "exp_avg", "First moment (running mean of the clipped, normalised gradients)."),
        State(v, 0, "exp_avg_sq", "Second moment (running mean of squared gradients)."),
    ],
    rules=RULES,
    latex={g_eff: r"\tilde{g}", w_decayed: r"\bar{w}", n_clipped: r"\hat{n}", clip_lambda: r"\lambda_c"},
    notes=(
        "The first step only sets v = g^2 (and decays the weights where decay is decoupled), as "
        "pytorch_optimizer does.",
        "clip_lambda is kept as an attribute of the optimizer (pytorch_optimizer's `self.clip_lambda`), "
        "not in the param groups: it is called with the step once per step and is not saved in state dicts.",
    ),
    exports=[
        Export("optim", "ADOPT", SIGNATURE),
        Export("torch", "ADOPT", TORCH_SIGNATURE, example={"lr": 1e-3}, group_step=True),
    ],
)
