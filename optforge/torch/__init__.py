"""optforge's torch.optim front end: `torch.optim.Optimizer` subclasses generated from the specs.

    import optforge.torch
    opt = optforge.torch.AdamW(model.parameters(), lr=1e-3)
    loss.backward(); opt.step(); opt.zero_grad()

CPU tensors are stepped in place through zero-copy NumPy views, CUDA tensors
through ``__cuda_array_interface__``; closures, `zero_grad`, torch's lr
schedulers and `state_dict()` in torch's layout work as with torch.optim.
torch is an optional dependency (``pip install "optforge[torch]"``), imported
only here.
"""

from optforge.torch.optimizer import TorchOptimizer  # noqa: I001  (before the classes that subclass it)
from optforge.generated.torch import *  # noqa: F403
from optforge.generated.torch import __all__ as _generated

__all__ = [*_generated, "TorchOptimizer"]
