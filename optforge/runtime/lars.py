"""`LARS`: MindSpore's nn.LARS, a wrapper that rescales each layer's gradient for another optimizer.

LARS is not an update rule of its own but a gradient transform in front of
one (Momentum, usually), so it is written here rather than generated: per
parameter it takes the norms of the weight and of the (unscaled) gradient,
the layer-wise trust ratio

    coeff = coefficient * ||w|| / (||g|| + weight_decay * ||w|| + epsilon)

(clipped to [0, 1] after dividing by the learning rate when `use_clip`),
and hands `coeff * (g + weight_decay * w)` to the wrapped optimizer, whose
own weight decay and loss scale it takes over (MindSpore's LARSUpdate).
Parameters the filter rejects pass with their gradient only unscaled and, as
in MindSpore, no weight decay at all. The norms are taken in float64.
"""

from __future__ import annotations

import math

import numpy as np

from optforge.runtime.checks import check_type
from optforge.runtime.nn_optimizer import NNOptimizer
from optforge.runtime.row_tensor import RowTensor


def default_lars_filter(parameter) -> bool:
    """MindSpore's default: LARS for every parameter but LayerNorm's and biases."""
    return "LayerNorm" not in parameter.name and "bias" not in parameter.name


class LARS:
    """Layer-wise adaptive rate scaling (You, Gitman & Ginsburg, 2017) around an nn optimizer.

    Parameters
    ----------
    optimizer : optforge.nn optimizer
        The optimizer whose gradients LARS rescales. LARS takes over its weight
        decay and loss scale: from now on it applies neither itself.
    epsilon : float, default 1e-05
        Added to the trust ratio's denominator.
    coefficient : float, default 0.001
        The trust coefficient (eta in the paper).
    use_clip : bool, default False
        Clip the trust ratio: ``min(coeff / lr, 1)`` (and at least 0), with the
        wrapped optimizer's learning rate at this step.
    lars_filter : callable, default: not 'LayerNorm' or 'bias' in the name
        Called with each Parameter; LARS rescales those for which it is true.

    Raises
    ------
    TypeError
        If `optimizer` is not an optforge.nn optimizer.
    TypeError
        If `epsilon` or `coefficient` is not a float.
    TypeError
        If `use_clip` is not a bool.
    ValueError
        If `use_clip` is True and the optimizer has both group learning rates and a
        dynamic learning rate.
    ValueError
        If the optimizer's parameters live on a CUDA device (LARS steps host arrays).
    """

    def __init__(
        self, optimizer, epsilon=1e-05, coefficient=0.001, use_clip=False, lars_filter=default_lars_filter
    ):
        if not isinstance(optimizer, NNOptimizer):
            raise TypeError(
                f"For 'LARS', the type of 'optimizer' should be an optforge.nn optimizer, "
                f"but got type '{type(optimizer).__name__}'."
            )
        check_type("LARS", "epsilon", epsilon, ("float",))
        check_type("LARS", "coefficient", coefficient, ("float",))
        check_type("LARS", "use_clip", use_clip, ("bool",))
        if use_clip and optimizer.is_group_lr and any(g.lr.is_dynamic for g in optimizer.groups):
            raise ValueError(
                "For 'LARS', if the argument 'use_clip' is set to True, then the dynamic learning rate "
                "and group learning rate cannot both be true."
            )
        if any(p.on_device for p in optimizer.parameters):
            raise ValueError(
                "For 'LARS', the parameters must be host arrays; device parameters are not supported."
            )
        self.optimizer = optimizer
        self.epsilon = float(epsilon)
        self.coefficient = float(coefficient)
        self.use_clip = use_clip
        self.parameters = optimizer.parameters
        self.lars_flag = tuple(bool(lars_filter(p)) for p in self.parameters)
        # Take over the wrapped optimizer's weight decay and loss scale (MindSpore's LARS does).
        self._decays = list(optimizer._decays)
        self.loss_scale = optimizer.loss_scale
        optimizer._decays = [False] * len(self.parameters)
        optimizer.loss_scale = 1.0

    @property
    def global_step(self) -> int:
        return self.optimizer.global_step

    def get_lr(self):
        return self.optimizer.get_lr()

    @property
    def all_reduce(self):
        """The wrapped optimizer's `all_reduce` (for split parameters): LARS's norms use it too."""
        return self.optimizer.all_reduce

    @all_reduce.setter
    def all_reduce(self, all_reduce) -> None:
        self.optimizer.all_reduce = all_reduce

    def state_dict(self) -> dict:
        """The wrapped optimizer's state dict (LARS itself keeps no state)."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.optimizer.load_state_dict(state_dict)

    def __call__(self, gradients) -> bool:
        lock = self.optimizer._lock
        if lock is None:
            return self._step(gradients)
        with lock:
            return self._step(gradients)

    def _step(self, gradients) -> bool:
        inner = self.optimizer
        grads = inner._check_gradients(gradients)  # every check before anything changes
        for i, g in enumerate(grads):
            if isinstance(g, RowTensor):
                raise TypeError(
                    f"For 'LARS', row-sparse gradients (RowTensor) are not supported, but gradient {i} "
                    f"(of parameter '{self.parameters[i].name}') is one."
                )
        k = inner.global_step
        groups = inner.groups
        wds = [group.weight_decay.at(k, "LARS") for group in groups]
        lrs = [group.lr.at(k, "LARS") for group in groups] if self.use_clip else None
        inv_scale = 1.0 / self.loss_scale
        squares = self._squares(grads, inv_scale)
        new = []
        for i, (p, g) in enumerate(zip(self.parameters, grads)):
            group = inner._group_of[i]
            if not self.lars_flag[i]:
                new.append(g if inv_scale == 1.0 else (g * inv_scale).astype(p.dtype, copy=False))
                continue
            wd = wds[group] if self._decays[i] else 0.0
            new.append(self._rescaled(p.data, g, inv_scale, wd, lrs[group] if lrs else None, squares[i]))
        return inner._step(tuple(new))

    def _squares(self, grads: list, inv_scale: float) -> np.ndarray:
        """Per parameter LARS rescales, (||w||^2, ||g||^2) in float64; for a parameter split
        across ranks (optforge.runtime.shards) added up over them, all in one all-reduce."""
        squares = np.zeros((len(self.parameters), 2))
        for i, (p, g) in enumerate(zip(self.parameters, grads)):
            if self.lars_flag[i]:
                w64 = p.data.reshape(-1).astype(np.float64)
                g64 = g.reshape(-1).astype(np.float64) * inv_scale
                squares[i] = float(np.dot(w64, w64)), float(np.dot(g64, g64))
        split = np.array([p.split is not None and flag for p, flag in zip(self.parameters, self.lars_flag)])
        if split.any():
            if self.optimizer.all_reduce is None:
                raise RuntimeError(
                    "For 'LARS', some parameters are parts of larger tensors (split), and their norms "
                    "need every rank's part: set the wrapped optimizer's `all_reduce` "
                    "(optforge.distributed.torch_all_reduce(group)). Nothing was changed."
                )
            shared = squares[split].reshape(-1)
            self.optimizer.all_reduce(shared)
            squares[split] = shared.reshape(-1, 2)
        return squares

    def _rescaled(self, w: np.ndarray, g: np.ndarray, inv_scale: float, wd: float, lr, squares) -> np.ndarray:
        w64 = w.reshape(-1).astype(np.float64)
        g64 = g.reshape(-1).astype(np.float64) * inv_scale
        w_norm, g_norm = math.sqrt(squares[0]), math.sqrt(squares[1])
        coeff = self.coefficient * w_norm / (g_norm + wd * w_norm + self.epsilon)
        if lr is not None:
            coeff = min(max(coeff / lr, 0.0), 1.0)
        if wd:
            g64 += wd * w64
        g64 *= coeff
        return g64.astype(w.dtype).reshape(w.shape)
