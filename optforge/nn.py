"""MindSpore's `nn` optimizer dialect: `learning_rate`, `beta1`/`beta2`, parameter groups.

The optimizer classes are generated from specs/ (see optforge.generated.nn);
the learning-rate schedules and LARS (a gradient transform in front of another
optimizer, not an update rule) are hand-written run-time helpers.
"""

from optforge.generated.nn import *  # noqa: F403
from optforge.generated.nn import __all__ as _generated
from optforge.runtime.lars import LARS
from optforge.runtime.learning_rate import ExponentialDecayLR, LearningRateSchedule

__all__ = [*_generated, "LARS", "LearningRateSchedule", "ExponentialDecayLR"]
