"""Optimizer specs: one module per optimizer, each defining `SPEC`.

The compiler (`optforge build`) turns every module listed in `ALL` into
kernels, classes and documentation; nothing here is imported at run time.
"""

ALL = (
    # the seed optimizers (MindSpore)
    "adam",
    "adam_offload",
    "lamb",
    "proximal_adagrad",
    "radam",
    # the MindSpore nn dialect's catalogue
    "momentum",
    "adagrad_nn",
    "rmsprop_nn",
    "adamax_nn",
    "adadelta_nn",
    "adam_weight_decay",
    "ftrl",
    # the PyTorch-like dialect (torch.optim's semantics)
    "adam_torch",
    "radam_torch",
    "adamw",
    "adamax",
    "adagrad",
    "adadelta",
    "rmsprop",
    "sgd",
    "nadam",
    "rprop",
    "asgd",
    # beyond both
    "lion",
    "adabelief",
    "adan",
    "adafactor",
    "schedulefree",
    "muon",
    # pytorch_optimizer's
    "adopt",
    "stable_adamw",
    "ademamix",
    "mars",
    # prodigyopt's
    "prodigy",
)
