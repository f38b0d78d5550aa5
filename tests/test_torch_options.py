"""optforge.torch as a drop-in for torch.optim: constructors, options, group keys, state layout.

Every refused call is checked to leave the optimizer as it was (its full state
dict, parameters included, compared before and after).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
from dataclasses import replace

import numpy as np
import pytest
import sympy
import torch

import optforge.optim
import optforge.torch
from optforge.compiler.spec import Export
from optforge.generated.host import radam as radam_mindspore
from optforge.generated.host import radam_torch
from tests.test_torch_optim_db import CASES, SHARED, one_numba_thread  # noqa: F401 (autouse)

NAMES = [info.name for info in SHARED]
# Flags optforge's classes have beyond torch's constructor: name -> {flag: default}.
OWN_FLAGS = {"AdamW": {"cautious": False}}


def _matrices_only(name) -> bool:
    """A class of a spec of matrices (2-D parameters only, as torch.optim.Muon)."""
    ours = getattr(optforge.torch, name, None) if name else None
    if ours is None or not hasattr(ours, "_SPEC"):
        return False
    return getattr(importlib.import_module(f"{ours._KERNELS}.cpu.{ours._SPEC}"), "TENSOR_RANK", None) == 2


def _params(dtype=torch.float32, seed=0, name=None):
    generator = torch.Generator().manual_seed(seed)
    shapes = ((3, 5), (7, 4)) if _matrices_only(name) else ((3, 5), (7,))
    return [torch.randn(s, generator=generator, dtype=dtype).requires_grad_() for s in shapes]


def _step(opt, params, seed):
    generator = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
    opt.step()


def _snapshot(opt, params):
    return copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in params], len(opt.param_groups)


def _assert_unchanged(before, opt, params):
    state, values, groups = before
    assert len(opt.param_groups) == groups
    torch.testing.assert_close(opt.state_dict(), state, rtol=0, atol=0)
    for p, v in zip(params, values):
        assert torch.equal(p.detach(), v)


@pytest.mark.parametrize("name", NAMES)
def test_the_signature_is_torchs(name):
    """Every keyword of torch 2.13's constructor, in its order, of its kind, with its default;
    optforge adds only its keyword-only skip_nonfinite and precision options, and AdamW its
    keyword-only `cautious` flag (C-Optim's masked update, default off: torch's arithmetic)."""
    want = inspect.signature(getattr(torch.optim, name)).parameters
    got = dict(inspect.signature(getattr(optforge.torch, name)).parameters)
    for own in ("skip_nonfinite", "state_dtype", "master_weights", "stochastic_rounding"):
        assert got.pop(own).kind is inspect.Parameter.KEYWORD_ONLY
    for own, default in OWN_FLAGS.get(name, {}).items():
        parameter = got.pop(own)
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.default is default
    assert list(got) == list(want)
    for key, parameter in want.items():
        assert got[key].kind == parameter.kind, key
        if parameter.default is not inspect.Parameter.empty:
            assert got[key].default == parameter.default, key


@pytest.mark.parametrize("name", NAMES)
def test_implementation_options_that_change_nothing_are_accepted(name):
    cls = getattr(optforge.torch, name)
    keywords = inspect.signature(cls).parameters
    reference = _params(torch.float64, name=name)
    opt = cls(reference)
    _step(opt, reference, 1)
    for key, values in (("foreach", (None, False, True)), ("fused", (None, False, True))):
        if key not in keywords:
            continue
        for value in values:
            params = _params(torch.float64, name=name)
            other = cls(params, **{key: value})
            _step(other, params, 1)
            for p, r in zip(params, reference):
                assert torch.equal(p, r), (key, value)
    for key in ("capturable", "differentiable"):
        if key in keywords:
            cls(_params(name=name), **{key: False})


@pytest.mark.parametrize("name", NAMES)
def test_implementation_options_it_cannot_honour_are_refused(name):
    cls = getattr(optforge.torch, name)
    keywords = inspect.signature(cls).parameters
    for key in ("capturable", "differentiable"):
        if key in keywords:
            with pytest.raises(ValueError, match=f"{key}=True is not supported"):
                cls(_params(), **{key: True})
            with pytest.raises(TypeError, match=f"'{key}' must be a bool"):
                cls(_params(), **{key: 1})
    for key in ("foreach", "fused"):
        if key in keywords:
            with pytest.raises(TypeError, match=f"'{key}' must be a bool or None"):
                cls(_params(), **{key: "yes"})
    if "fused" in keywords:  # torch's own RuntimeErrors, in its words
        with pytest.raises(RuntimeError, match="`fused` and `foreach` cannot be `True` together"):
            cls(_params(), fused=True, foreach=True)
        with pytest.raises(RuntimeError, match="`fused` does not support `differentiable`"):
            cls(_params(), fused=True, differentiable=True)


def _trained(name, dtype=torch.float32, **kwargs):
    params = _params(dtype)
    opt = getattr(optforge.torch, name)(params, **kwargs)
    _step(opt, params, 1)
    return opt, params


@pytest.mark.parametrize(
    ("group", "match"),
    [
        ({"capturable": True}, "capturable=True is not supported"),
        ({"differentiable": True}, "differentiable=True is not supported"),
        ({"momentum": 0.9}, "'momentum', an option of torch.optim optimizers"),
        ({"lr_decay": 0.1}, "'lr_decay', an option of torch.optim optimizers"),
        ({"amsgrad": True}, "flags must be the same in every group"),
        ({"decoupled_weight_decay": True}, "flags must be the same in every group"),
    ],
)
def test_add_param_group_refuses_what_it_would_ignore_and_changes_nothing(group, match):
    opt, params = _trained("Adam")
    before = _snapshot(opt, params)
    extra = torch.zeros(4, requires_grad=True)
    with pytest.raises(ValueError, match=match):
        opt.add_param_group({"params": [extra], **group})
    _assert_unchanged(before, opt, params)


def test_add_param_group_keeps_keys_that_are_no_optimizer_option():
    """torch keeps a scheduler's or a user's own keys in a group; so does optforge."""
    opt, _ = _trained("Adam")
    opt.add_param_group({"params": [torch.zeros(4, requires_grad=True)], "name": "head", "foreach": True})
    assert opt.param_groups[-1]["name"] == "head"


def _torch_checkpoint(name, **kwargs):
    params = _params()
    opt = getattr(torch.optim, name)(params, **kwargs)
    _step(opt, params, 1)
    return opt.state_dict()


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda g: g.update(decoupled_weight_decay=True), "decoupled_weight_decay=True, but the optimizer"),
        (lambda g: g.update(amsgrad=True), "amsgrad=True, but the optimizer"),
        (lambda g: g.update(capturable=True), "capturable=True is not supported"),
        (lambda g: g.update(momentum=0.9), "'momentum', an option of torch.optim optimizers"),
        (lambda g: g.pop("eps"), "has no 'eps'"),
    ],
)
def test_a_checkpoint_with_an_option_it_would_ignore_is_refused_before_anything_changes(edit, match):
    checkpoint = _torch_checkpoint("Adam", weight_decay=0.1)
    edit(checkpoint["param_groups"][0])
    opt, params = _trained("Adam", weight_decay=0.1)
    before = _snapshot(opt, params)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(checkpoint)
    _assert_unchanged(before, opt, params)


def test_a_decoupled_torch_adam_checkpoint_continues_as_torch_does():
    checkpoint = _torch_checkpoint("Adam", weight_decay=0.1, decoupled_weight_decay=True)
    torch_params, ours_params = _params(), _params()
    reference = torch.optim.Adam(torch_params, weight_decay=0.1, decoupled_weight_decay=True)
    reference.load_state_dict(checkpoint)
    ours = optforge.torch.Adam(ours_params, weight_decay=0.1, decoupled_weight_decay=True)
    ours.load_state_dict(checkpoint)
    for seed in (2, 3):
        _step(reference, torch_params, seed)
        _step(ours, ours_params, seed)
    for a, b in zip(ours_params, torch_params):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_an_older_checkpoint_without_flags_means_their_defaults():
    """torch's own `__setstate__` reads a missing flag as its default; so does optforge."""
    checkpoint = _torch_checkpoint("Adam")
    for key in ("amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused"):
        del checkpoint["param_groups"][0][key]
    opt, _ = _trained("Adam")
    opt.load_state_dict(checkpoint)
    assert opt.param_groups[0]["amsgrad"] is False and opt.param_groups[0]["fused"] is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("name", "kwargs"), [("Adam", {}), ("Adam", {"amsgrad": True}), ("RAdam", {})])
def test_decoupled_weight_decay_computes_what_torch_computes(name, kwargs, dtype):
    tolerance = {"atol": 1e-6, "rtol": 1e-6} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-12}
    options = {"weight_decay": 0.3, "decoupled_weight_decay": True, **kwargs}
    torch_params, ours_params = _params(dtype), _params(dtype)
    reference = getattr(torch.optim, name)(torch_params, **options)
    ours = getattr(optforge.torch, name)(ours_params, **options)
    for seed in range(8):
        _step(reference, torch_params, seed)
        _step(ours, ours_params, seed)
    for a, b in zip(ours_params, torch_params):
        torch.testing.assert_close(a, b, **tolerance)
    if name == "Adam":  # AdamW's arithmetic
        adamw_params = _params(dtype)
        adamw = torch.optim.AdamW(adamw_params, weight_decay=0.3, **kwargs)
        for seed in range(8):
            _step(adamw, adamw_params, seed)
        for a, b in zip(ours_params, adamw_params):
            torch.testing.assert_close(a, b, **tolerance)


def test_radam_maximize_is_torchs():
    torch_params, ours_params = _params(torch.float64), _params(torch.float64)
    reference = torch.optim.RAdam(torch_params, maximize=True, weight_decay=0.1)
    ours = optforge.torch.RAdam(ours_params, maximize=True, weight_decay=0.1)
    for seed in range(8):
        _step(reference, torch_params, seed)
        _step(ours, ours_params, seed)
    for a, b in zip(ours_params, torch_params):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


BETA2_FLIP = 0.998641  # rho_5 is above 5 in float32 arithmetic, below it in float64


def test_radam_takes_torchs_branch_where_float32_would_take_the_other():
    args = (5, 1e-3, 0.9, BETA2_FLIP, 1e-8)
    assert radam_mindspore.branch(*args) != radam_torch.branch(*args)  # the point discriminates
    torch_params, ours_params = _params(torch.float64), _params(torch.float64)
    reference = torch.optim.RAdam(torch_params, betas=(0.9, BETA2_FLIP))
    ours = optforge.torch.RAdam(ours_params, betas=(0.9, BETA2_FLIP))
    for seed in range(6):
        _step(reference, torch_params, seed)
        _step(ours, ours_params, seed)
    for a, b in zip(ours_params, torch_params):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    # The MindSpore dialect keeps MindSpore's float32 choice.
    assert optforge.optim.RAdam is not optforge.torch.RAdam


@pytest.mark.parametrize(("name", "desc", "kwargs"), CASES, ids=[f"{n}-{d}" for n, d, _ in CASES])
def test_state_keys_after_one_and_two_steps_are_torchs(name, desc, kwargs):
    torch_params, ours_params = _params(name=name), _params(name=name)
    reference = getattr(torch.optim, name)(torch_params, **kwargs)
    ours = getattr(optforge.torch, name)(ours_params, **kwargs)
    for seed in (1, 2):
        _step(reference, torch_params, seed)
        _step(ours, ours_params, seed)
        for a, b in zip(ours_params, torch_params):
            assert set(ours.state[a]) == set(reference.state[b]), f"after step {seed}"
        assert ours.state.keys() == {a for a, b in zip(ours_params, torch_params) if b in reference.state}


@pytest.mark.parametrize(("name", "kwargs"), [("SGD", {}), ("SGD", {"nesterov": False}), ("RMSprop", {})])
def test_without_momentum_no_buffer_is_allocated(name, kwargs):
    opt, params = _trained(name, **kwargs)
    engine = opt._cohorts[0].engine
    assert all(array is None for array in engine.state["momentum_buffer"])
    for batch in engine._batches:
        row = 2 + batch.variant.state.index("momentum_buffer")  # the kernels' pointer table
        assert all(np.asarray(b).size == 0 for b in batch.held[row])
        assert not batch.arrays.sizes[row].any()


@pytest.mark.parametrize("name", ["SGD", "RMSprop"])
def test_momentum_raised_from_zero_after_the_first_step_is_refused(name):
    opt, params = _trained(name)
    before = _snapshot(opt, params)
    opt.param_groups[0]["momentum"] = 0.9
    for p in params:
        p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="'momentum_buffer', which was not kept"):
        opt.step()
    opt.param_groups[0]["momentum"] = 0.0
    _assert_unchanged(before, opt, params)


def test_a_group_without_momentum_beside_one_with_it_keeps_torchs_layout():
    torch_params, ours_params = _params(), _params()
    groups = lambda ps: [{"params": [ps[0]], "momentum": 0.9}, {"params": [ps[1]]}]  # noqa: E731
    reference = torch.optim.SGD(groups(torch_params), lr=0.1)
    ours = optforge.torch.SGD(groups(ours_params), lr=0.1)
    for seed in (1, 2, 3):
        _step(reference, torch_params, seed)
        _step(ours, ours_params, seed)
    assert set(ours.state[ours_params[0]]) == {"momentum_buffer"}
    assert ours_params[1] not in ours.state
    for a, b in zip(ours_params, torch_params):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("Adafactor", "Rprop", "SGD")])
def test_eps_zero_is_accepted_where_torch_accepts_it(name):
    """Every class with a scalar eps (Adafactor's is a pair; Rprop and SGD have none)."""
    getattr(torch.optim, name)(_params(name=name), eps=0.0)  # torch: `0.0 <= eps` in every class
    getattr(optforge.torch, name)(_params(name=name), eps=0.0)


VALUES = (-1.0, 0.0, 0.5, 1.0, 1.5, 100.0, math.inf, math.nan)


def _stricter_on_purpose(name: str, label: str, value) -> bool:
    """Exactly where optforge refuses what torch.optim accepts (README's list): Rprop's step
    sizes whose minimum exceeds the maximum, or is NaN (torch checks neither; an infinite
    maximum is fine); else a value that is not finite, or SGD's negative dampening (torch
    does not check it)."""
    if name == "Rprop" and label.startswith("step_sizes"):
        return not value[0] <= value[1]
    scalars = value if isinstance(value, tuple) else (value,)
    if any(s is not None and not math.isfinite(s) for s in scalars):
        return True
    return (name, label) == ("SGD", "dampening") and value < 0


def _numeric_arguments(name: str):
    for key, parameter in inspect.signature(getattr(torch.optim, name)).parameters.items():
        default = parameter.default
        if key == "params" or isinstance(default, bool) or default is None:
            continue
        if isinstance(default, tuple):
            for i in range(len(default)):
                for v in VALUES:
                    yield f"{key}[{i}]", key, (*default[:i], v, *default[i + 1 :])
        else:
            for v in VALUES:
                yield key, key, v


def _outcome(cls, key, value) -> str:
    try:
        cls([torch.zeros(2, requires_grad=True)], **{key: value})
    except Exception as raised:  # noqa: BLE001  (the type is the outcome)
        return type(raised).__name__
    return "accepted"


@pytest.mark.parametrize("name", NAMES)
def test_values_are_refused_as_torch_refuses_them(name):
    """Over a grid of values for every numeric argument: what torch.optim refuses, optforge
    refuses with the same exception; what torch accepts, optforge accepts, except exactly
    the listed values, which it refuses (so the list cannot go stale either way)."""
    for label, key, value in _numeric_arguments(name):
        want = _outcome(getattr(torch.optim, name), key, value)
        if want == "accepted" and _stricter_on_purpose(name, label, value):
            want = "ValueError"
        got = _outcome(getattr(optforge.torch, name), key, value)
        assert got == want, f"{name}({key}={value!r})"


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_checkpoints_move_between_torch_and_optforge(momentum):
    """torch's SGD keeps no step, and nothing at all without momentum: its checkpoints load
    into optforge's, and optforge's into torch's, and both continue as one run would."""
    run = _params()
    reference = torch.optim.SGD(run, lr=0.1, momentum=momentum)
    for seed in (1, 2):
        _step(reference, run, seed)
    ours_params = [p.detach().clone().requires_grad_() for p in run]
    ours = optforge.torch.SGD(ours_params, lr=0.1, momentum=momentum)
    # A copy: torch's load_state_dict keeps the given tensors (same dtype and device).
    ours.load_state_dict(copy.deepcopy(reference.state_dict()))  # torch -> optforge
    _step(ours, ours_params, 3)
    _step(reference, run, 3)
    again = torch.optim.SGD([p.detach().clone().requires_grad_() for p in ours_params], lr=0.1)
    again.load_state_dict(ours.state_dict())  # optforge -> torch
    assert again.state_dict()["state"].keys() == reference.state_dict()["state"].keys()
    for a, b in zip(ours_params, run):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("betas", [(0, 0.99), (0.9, 0), (np.float32(0.9), 0.99), (0.9, torch.tensor(0.99))])
def test_adam_betas_are_both_floats_or_both_tensors_as_in_torch(betas):
    for module in (torch.optim, optforge.torch):
        with pytest.raises(ValueError, match="betas must be either both floats or both Tensors"):
            module.Adam(_params(), betas=betas)


def test_the_torch_export_options_are_checked_when_a_spec_is_built():
    from optforge.compiler.spec import SpecError
    from optforge.specs import sgd

    spec = sgd.SPEC
    with pytest.raises(SpecError, match="only a torch signature has keyword-only arguments"):
        replace(spec, exports=[Export("optim", "SGD", ("momentum", "*", "nesterov"))])
    with pytest.raises(SpecError, match="kept_when names unknown state 'buffer'"):
        replace(spec, exports=[Export("torch", "SGD", ("momentum",), kept_when={"buffer": True})])
    with pytest.raises(SpecError, match=r"kept_when of 'momentum_buffer' names \['t'\]"):
        torch_export = Export(
            "torch", "SGD", ("momentum",), kept_when={"momentum_buffer": sympy.Symbol("t") > 1}
        )
        replace(spec, exports=[torch_export])
