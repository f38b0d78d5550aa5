"""Muon (Jordan et al., 2024) as torch.optim.Muon computes it: orthogonalised momentum for matrices.

Each step keeps a momentum buffer, blends it with the gradient (Nesterov), orthogonalises
the blend by Newton-Schulz iterations (a matrix function: a stage of its own between the
element stages, see compiler/passes/matrix.py), and applies it with decoupled weight decay
and a learning rate scaled by the matrix's shape. Only 2-D parameters (`tensor_rank=2`).
"""

import sympy as sp

from optforge.compiler import fragments as F
from optforge.compiler.fragments import w_decayed
from optforge.compiler.spec import (
    Choice,
    Export,
    Flag,
    Hyper,
    Rule,
    State,
    fma,
    g,
    lr,
    ncols,
    newton_schulz,
    nrows,
    rounded_sub,
    w,
)

momentum, eps, ns_steps = sp.symbols("momentum eps ns_steps")
ns_a, ns_b, ns_c = sp.symbols("a_ns b_ns c_ns")
nesterov, match_rms_adamw = sp.symbols("nesterov match_rms_adamw")
m, u, o = sp.symbols("m u o")


def lerp(start, end, weight):
    """torch's CPU `start.lerp(end, weight)` (an FMA-capable CPU): `fma(weight, end - start,
    start)` for weight < 0.5, else `fma(start - end, 1 - weight, end)` with `1 - weight` in
    the tensors' float type (`rounded_sub`); which one is a step-level condition, chosen on
    the host."""
    return sp.Piecewise(
        (fma(weight, end - start, start), weight < 0.5),
        (fma(start - end, rounded_sub(1, weight), end), True),
    )


# torch.optim.Muon's `_adjust_lr`: the learning rate scaled by the matrix's shape, Keller
# Jordan's sqrt(max(1, rows/cols)), or Moonshot's 0.2*sqrt(max(rows, cols)) (match_rms_adamw).
ratio = sp.Piecewise(
    (sp.Float(0.2) * sp.sqrt(sp.Max(nrows, ncols)), match_rms_adamw),
    (sp.sqrt(sp.Max(1, nrows / ncols)), True),
)

# torch.optim.Muon's signature, in both dialects.
SIGNATURE = (
    ("lr", 1e-3),
    ("weight_decay", 0.1),
    "momentum",
    "nesterov",
    ("ns_coefficients", ("a_ns", "b_ns", "c_ns")),
    "eps",
    "ns_steps",
    "adjust_lr_fn",
)

SPEC = F.compose(
    F.decoupled_decay(),
    name="muon",
    title="Muon",
    source=__file__,
    summary="Momentum orthogonalised by Newton-Schulz iterations, for the 2-D parameters of hidden layers.",
    references=(
        "Keller Jordan, Yuchen Jin, Vlado Boza, et al. Muon: An optimizer for hidden layers in neural "
        "networks. 2024. https://kellerjordan.github.io/posts/muon/",
        "Jingyuan Liu, Jianlin Su, Xingcheng Yao, et al. Muon is Scalable for LLM Training. 2025. "
        "https://arxiv.org/abs/2502.16982",
    ),
    hypers=[
        Hyper(momentum, ("float", "int"), 0.95, "Momentum factor."),
        Hyper(ns_a, ("float", "int"), 3.4445, "Newton-Schulz coefficient a (of X)."),
        Hyper(ns_b, ("float", "int"), -4.7750, "Newton-Schulz coefficient b (of X X^T)."),
        Hyper(ns_c, ("float", "int"), 2.0315, "Newton-Schulz coefficient c (of (X X^T)^2)."),
        Hyper(eps, ("float", "int"), 1e-7, "Floor of the norm the matrix is first divided by."),
        Hyper(
            ns_steps, ("int",), 5, "Number of Newton-Schulz iterations (fewer than 100, as torch requires)."
        ),
    ],
    domains={momentum: sp.Interval(0, sp.oo), ns_steps: sp.Interval.Ropen(0, 100)},
    flags=[
        Flag(nesterov, "Orthogonalise the Nesterov blend of gradient and momentum, not the momentum.", True),
        Flag(
            match_rms_adamw,
            "How the learning rate is scaled by the matrix's shape: 'match_rms_adamw' by "
            "0.2*sqrt(max(rows, cols)) (Moonshot's), None or 'original' by sqrt(max(1, rows/cols)).",
            choice=Choice(
                "adjust_lr_fn",
                None,
                on=("match_rms_adamw",),
                off=(None, "original"),
                message="Adjust learning rate function {value} is not supported",
            ),
        ),
    ],
    state=[State(m, 0, "momentum_buffer", "Momentum buffer.")],
    rules=[
        # torch: buf.lerp_(grad, 1 - momentum); update = grad.lerp(buf, momentum) if nesterov else buf
        Rule(m, lerp(m, g, 1 - momentum)),
        Rule(u, F.lookahead(nesterov, lerp(g, m, momentum), m)),
        Rule(o, newton_schulz(u, (ns_a, ns_b, ns_c), ns_steps, eps)),
        # param.mul_(1 - lr*weight_decay); param.add_(update, alpha=-adjusted_lr): one fma
        Rule(w, fma(-lr * ratio, o, w_decayed)),
    ],
    tensor_rank=2,
    latex={ns_a: "a", ns_b: "b", ns_c: "c", ns_steps: "k", eps: r"\epsilon", u: r"\widetilde{B}", o: "O"},
    notes=(
        "Newton-Schulz runs in bfloat16, as torch.optim.Muon computes it on every device: products "
        "accumulated in float32 and rounded to bfloat16 after every operation.",
        "Flags are per optimizer (one kernel variant): `nesterov` and `adjust_lr_fn` must be the same "
        "in every param group.",
    ),
    exports=[
        Export("optim", "Muon", SIGNATURE),
        # torch keeps no step per parameter: its state is the momentum buffer only
        Export(
            "torch",
            "Muon",
            SIGNATURE,
            step_state=False,
            messages={
                "lr": "Learning rate should be >= 0 but is: {value}",
                "weight_decay": "weight decay should be >= 0 but is: {value}",
                "momentum": "momentum should be >= 0 but is: {value}",
            },
        ),
    ],
)
