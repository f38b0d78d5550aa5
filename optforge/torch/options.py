"""torch.optim's options that are not hyperparameters, and torch's cross-argument checks.

`foreach`, `fused`, `capturable` and `differentiable` choose how torch runs a
step. optforge always runs its fused kernels, so it accepts every value that
means "do what you do anyway" (`foreach`/`fused`: any bool or None;
`capturable` and `differentiable`: False) and refuses the others. The same
rules hold for a param group's values, given or loaded (`check_group_option`).

`OPTIMIZER_OPTIONS` names every keyword of every torch.optim optimizer: a param
group key among them that a class does not have is refused rather than
silently ignored (a torch `Adam(decoupled_weight_decay=True)` checkpoint must
not load into an optimizer that would compute plain Adam).
"""

from __future__ import annotations

import inspect

import torch

IMPLEMENTATION_OPTIONS = ("foreach", "fused", "capturable", "differentiable")


def _optimizer_options() -> frozenset[str]:
    names = set()
    for value in vars(torch.optim).values():
        if isinstance(value, type) and issubclass(value, torch.optim.Optimizer):
            names |= set(inspect.signature(value.__init__).parameters)
    return frozenset(names - {"self", "params", "args", "kwargs"})


OPTIMIZER_OPTIONS = _optimizer_options()


def check_option(cls: str, name: str, value, where: str = "") -> None:
    """One implementation option's value: refused (TypeError, ValueError) unless it means
    what optforge does anyway. `where` names the param group, for a group's value."""
    if name in ("foreach", "fused"):
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"{cls}: {where}'{name}' must be a bool or None, but got {value!r}.")
        return
    if not isinstance(value, bool):
        raise TypeError(f"{cls}: {where}'{name}' must be a bool, but got {value!r}.")
    if value:
        why = {
            "capturable": "its steps cannot be captured in a CUDA graph (the host chooses each step's "
            "kernel and computes its scalars)",
            "differentiable": "its steps are not recorded by autograd",
        }[name]
        raise ValueError(f"{cls}: {where}{name}=True is not supported: {why}; use {name}=False.")


def check_implementation(cls: str, **given) -> None:
    """The constructor's implementation options: torch's own refusals of `fused=True` first
    (torch's exception and words), then each value."""
    if given.get("fused") is True:
        if given.get("differentiable") is True:
            raise RuntimeError("`fused` does not support `differentiable`")
        if given.get("foreach") is True:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
    for name, value in given.items():
        check_option(cls, name, value)


def tensor_hypers(cls: str, defaults: dict) -> None:
    """torch.optim.Adam's (and AdamW's) checks of a Tensor lr and Tensor betas.

    torch's foreach implementation cannot take them unless capturable; optforge
    could, but refuses what torch refuses so that code moving between the two
    meets the same errors.
    """
    foreach, capturable = defaults.get("foreach"), defaults.get("capturable", False)
    lr, betas = defaults["lr"], defaults["betas"]
    if isinstance(lr, torch.Tensor) and foreach and not capturable:
        raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
    tensors = [isinstance(b, torch.Tensor) for b in betas]
    # torch's test, to the letter: an int beta is neither (Adam(betas=(0, 0.9)) is refused).
    if not (all(isinstance(b, float) for b in betas) or all(tensors)):
        raise ValueError("betas must be either both floats or both Tensors")
    for index, is_tensor in enumerate(tensors):
        if is_tensor and foreach and not capturable:
            raise ValueError(
                f"betas[{index}] as a Tensor is not supported for capturable=False and foreach=True"
            )
