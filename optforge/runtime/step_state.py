"""Step-level state and modes: what a spec's `StepState`s, step rules and `Modes` need at run time.

A kernel module of such a spec has `STEP_STATE` ((group key, initial value) of each step
state), `STEP` (the host's `advance`: the step rules) and, with modes, `MODES` and
`TRANSITIONS` (optforge.runtime.kernels). The step state and the mode live in the param
groups, as Schedule-Free's reference keeps `k`, `lr_max` and `train_mode`: checkpoints save
them with the groups' options, and a loaded state dict restores them. Both dialects' bases
take this mixin; nothing here names a spec.
"""

from __future__ import annotations

import importlib
import sys


class StepStateMixin:
    """Step state and modes over `self._mode_groups()` (the groups that hold them)."""

    _SPEC = ""
    _KERNELS = "optforge.generated"

    def _kernel_module(self):
        """The spec's CPU kernel module (a step asks for it: the import system's lookup,
        with its locks, costs ten times the dict's)."""
        name = f"{self._KERNELS}.cpu.{self._SPEC}"
        return sys.modules.get(name) or importlib.import_module(name)

    def _mode_groups(self) -> list[dict]:
        """The groups that hold the step state and the mode."""
        return self.param_groups

    def _group_extras(self, defaults: dict) -> dict:
        """The param group entries the spec keeps besides its options: each step state at its
        initial value (a hyperparameter's name: its value in `defaults`, the constructor's, so
        a group that sets its own keeps the constructor's start), and the mode (e.g. `k`,
        `lr_max`, ..., `train_mode`)."""
        module = self._kernel_module()
        extras = {
            key: float(defaults[init]) if isinstance(init, str) else init
            for key, init in getattr(module, "STEP_STATE", ())
        }
        modes = getattr(module, "MODES", None)
        if modes is not None:
            extras[modes.key] = modes.initial
        return extras

    def _check_mode(self) -> None:
        """Refuse a step outside the stepping mode with the spec's exception, before anything
        changes. The first group decides, as Schedule-Free's reference decides."""
        modes = getattr(self._kernel_module(), "MODES", None)
        if modes is not None and not self._mode_groups()[0][modes.key]:
            raise modes.error(modes.message)

    def _advance(self, t: int, lrs: list, hypers: list) -> list[tuple] | None:
        """Each group's step rules (the module's STEP) from its step state before the step:
        (each step state's new value, then the step-level locals), or None without step
        state. Computed before anything changes: values that break them refuse the step."""
        groups = self._mode_groups()
        return self._advance_values([t] * len(groups), lrs, hypers, groups)

    def _advance_values(
        self, ts: list, lrs: list, hypers: list, groups: list[dict], shared: bool = True
    ) -> list[tuple] | None:
        """`_advance` of `groups`, group `g` at step `ts[g]` (`shared=False`: each group's own,
        whatever the module says)."""
        module = self._kernel_module()
        advance = getattr(module, "STEP", None)
        if advance is None:
            return None
        if shared and getattr(module, "SHARED_STEP_STATE", False) and groups:
            # One estimate for the optimizer: from the first group's options and step state,
            # at the largest lr (a group may set 0 instead), held by every group.
            top = max(lrs)
            odd = [g for g, lr in enumerate(lrs) if lr not in (top, 0.0)]
            if odd:
                raise RuntimeError(
                    f"For '{type(self).__name__}', setting different lr values in different parameter "
                    f"groups is only supported for values of 0 (param group {odd[0]} has lr "
                    f"{lrs[odd[0]]}, the largest is {top}); the step was not taken."
                )
            [first] = self._advance_values(ts[:1], [top], hypers[:1], groups[:1], shared=False)
            return [first] * len(groups)
        keys = [key for key, _ in module.STEP_STATE]
        # A hyperparameter left at None is the number the spec declares for it (NONE_VALUES),
        # as the kernels' host code reads it (a rule tests for it).
        stand_ins = getattr(module, "NONE_VALUES", None)
        result = []
        for g, (t, group) in enumerate(zip(ts, groups)):
            values = hypers[g]
            if stand_ins is not None:
                values = tuple(s if h is None and s is not None else h for h, s in zip(values, stand_ins))
            try:
                result.append(tuple(advance(t, lrs[g], *values, *(group[key] for key in keys))))
            except (ArithmeticError, ValueError, TypeError) as error:
                raise ValueError(
                    f"For '{type(self).__name__}', the step-level state of param group {g} cannot be "
                    f"advanced at step {t} ({error}); the step was not taken."
                ) from None
        return result

    def _commit_step_state(self, advanced: list[tuple] | None) -> None:
        """Keep each group's new step state under its key, each value of its initial value's
        type (an int counter stays an int)."""
        if advanced is None:
            return
        module = self._kernel_module()
        for group, values in zip(self._mode_groups(), advanced):
            for (key, init), value in zip(module.STEP_STATE, values):
                group[key] = int(value) if isinstance(init, int) else float(value)

    def _switch_mode(self, method: str) -> None:
        """A mode method (`train()`, `eval()`): the spec's transition `method` over the
        parameters of every group not in the mode it switches to, then every group's mode set."""
        modes = self._kernel_module().MODES
        into = method == modes.enter
        groups = [g for g, group in enumerate(self._mode_groups()) if bool(group[modes.key]) != into]
        self._transition_groups(method, groups)
        for group in self._mode_groups():
            group[modes.key] = into

    def _transition_groups(self, method: str, groups: list[int]) -> None:
        """Run transition `method` over the parameters (with state) of `groups`."""
        raise NotImplementedError
