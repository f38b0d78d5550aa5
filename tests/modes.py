"""For the tests that take every class: one with modes (Schedule-Free's train()/eval(), a
spec's `Modes`) steps only in its stepping mode, so they make it there (as its users must)."""

import importlib


def _modes(cls):
    return getattr(importlib.import_module(f"{cls._KERNELS}.cpu.{cls._SPEC}"), "MODES", None)


def ready(opt):
    """`opt`, switched into the mode in which it steps (if its class has modes)."""
    modes = _modes(type(opt))
    if modes is not None:
        getattr(opt, modes.enter)()
    return opt


def stepping(cls):
    """`cls`, or for a class with modes a constructor of it that returns it `ready`."""
    if _modes(cls) is None:
        return cls

    def make(*args, **kwargs):
        return ready(cls(*args, **kwargs))

    make.__name__ = make.__qualname__ = cls.__name__
    return make


def has_modes(cls) -> bool:
    return _modes(cls) is not None
