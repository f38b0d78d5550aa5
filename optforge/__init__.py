"""optforge: deep-learning optimizers compiled from SymPy specs into fused kernels.

Run-time imports are numpy and numba only. The dialects load on first use,
so `optforge build` can run (and repair) even when generated/ is stale.

    optforge.Parameter          a named array, updated in place
    optforge.RowTensor          a row-sparse gradient
    optforge.nn                 MindSpore's nn dialect: Adam, AdamOffload, Lamb, ProximalAdagrad
    optforge.optim              the PyTorch-like dialect: RAdam, and optim.lr_scheduler
    optforge.Adam, AdamOffload, Lamb, ProximalAdagrad   = optforge.nn.*
    optforge.RAdam              = optforge.optim.RAdam
    optforge.compile_spec       your own spec file, compiled into a per-user cache
"""

from __future__ import annotations

import importlib

from optforge.parameter import Parameter
from optforge.runtime.row_tensor import RowTensor

__version__ = "0.1.0"

_SUBMODULES = ("nn", "optim")
_REEXPORTS = {"Adam": "nn", "AdamOffload": "nn", "Lamb": "nn", "ProximalAdagrad": "nn", "RAdam": "optim"}

__all__ = ["Parameter", "RowTensor", "compile_spec", *_SUBMODULES, *_REEXPORTS]


def __getattr__(name: str):
    if name == "compile_spec":
        from optforge.user_specs import compile_spec

        return compile_spec
    if name in _SUBMODULES:
        return importlib.import_module(f"optforge.{name}")
    if name in _REEXPORTS:
        return getattr(importlib.import_module(f"optforge.{_REEXPORTS[name]}"), name)
    raise AttributeError(f"module 'optforge' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
