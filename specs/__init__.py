"""Optimizer specs: one module per optimizer, each defining `SPEC`.

The compiler (`optforge build`) turns every module listed in `ALL` into
kernels, classes and documentation; nothing here is imported at run time.
"""

ALL = ("adam", "adam_offload", "lamb", "proximal_adagrad", "radam")
