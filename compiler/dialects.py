"""Dialect policy the spec checks consult: what a class of each dialect may name and hold.

A spec's exports name the spec's hyperparameters and flags, and the arguments the dialect's
hand-written base owns (validated by the run-time, not generated from the spec). These are
facts about the dialects (optforge.runtime's bases and the exporters in wrappers.py), not
about update rules: they live here, beside the exporters, and spec.py reads them to check
an `Export`.
"""

from __future__ import annotations

# Arguments the dialect bases own (validated by the hand-written run-time),
# which a class signature may interleave with the spec's own arguments.
DIALECT_ARGUMENTS = {
    "nn": ("learning_rate", "weight_decay", "loss_scale", "use_locking"),
    "optim": ("lr", "betas", "weight_decay"),
    # torch.optim's implementation switches (optforge.torch accepts the values that mean
    # "do what you do anyway": its fused kernels are neither foreach, capturable nor differentiable).
    "torch": ("lr", "betas", "weight_decay", "foreach", "fused", "capturable", "differentiable"),
}

# The dialects whose signatures mark keyword-only arguments ("*"), as torch.optim's do.
KEYWORD_ONLY_DIALECTS = ("torch",)

# The dialects whose base applies element-wise gradient transforms (the nn base's loss scale,
# gradient centralization and row-sparse gradients) that a factored launch does not apply:
# a spec with a rank flag cannot export to them.
ELEMENTWISE_DIALECTS = ("nn",)
