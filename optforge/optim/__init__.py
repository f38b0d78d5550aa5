"""The PyTorch-like dialect of `mindspore.experimental.optim`: `lr`, `betas`, `param_groups`.

The optimizer classes are generated from specs/ (see optforge.generated.optim);
`optforge.optim.lr_scheduler` holds the schedulers that act on `param_groups`.
"""

from optforge.generated.optim import *  # noqa: F403
from optforge.generated.optim import __all__ as _generated
from optforge.optim import lr_scheduler

__all__ = [*_generated, "lr_scheduler"]
