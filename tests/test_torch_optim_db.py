"""PyTorch's own optimizer test material, run against optforge.torch.

`torch.testing._internal.common_optimizers.optim_db` (shipped in the torch
wheel) lists, per torch.optim class, the constructor configs its tests run
(`optim_inputs_func`) and the inputs that must raise (`optim_error_inputs_func`).
For every class optforge.torch shares with torch:

- every config (CPU ones, and CUDA-only ones with `capturable` dropped, since
  optforge steps on the host's schedule) steps torch.optim and optforge.torch
  15 times with the same fixed random gradients on tensors of odd shapes, in
  float32 and float64, and the parameters and state must agree (fp32: 1e-5
  abs + 2e-5 rel, fp64: 1e-10);
- every CPU error input must raise torch's exception type, and match torch's
  regex where it gives one.

`DEVIATIONS` lists what optforge does differently on purpose, with the reason;
each entry is checked to still deviate, so the list cannot go stale.
"""

from __future__ import annotations

import importlib
import re
import warnings

import numba
import pytest
import torch
from torch.testing._internal.common_optimizers import (
    OptimizerErrorEnum,
    _get_optim_inputs_including_global_cliquey_kwargs,
    optim_db,
)

import optforge.torch

STEPS = 15
SHAPES = ((3, 5), (7,), (2, 3, 4), ())  # a matrix, a vector, a stack of matrices, a scalar
# For a class of a spec of matrices (2-D parameters only, as torch.optim.Muon): a wide, a tall
# and a square matrix.
MATRIX_SHAPES = ((3, 5), (7, 4), (6, 6))
TOLERANCE = {torch.float32: {"atol": 1e-5, "rtol": 2e-5}, torch.float64: {"atol": 1e-10, "rtol": 1e-10}}
SHARED = [info for info in optim_db if hasattr(optforge.torch, info.name)]

# (class, error input's desc) -> why optforge raises something else. Checked in
# test_each_deviation_still_deviates: an entry that starts to match torch fails there.
DEVIATIONS = {
    ("Adafactor", "does not support complex parameters"): (
        "optforge refuses complex (and every non-float32/float64) parameter in the constructor, "
        "with a TypeError, for every class: its kernels are compiled for float32 and float64. "
        "torch.optim.Adafactor constructs and raises RuntimeError at the first step."
    ),
    ("Muon", "does not support complex parameters"): (
        "optforge refuses complex parameters in the constructor, with a TypeError, as for every "
        "class; torch.optim.Muon's error input expects its own refusal at another point."
    ),
}


# (class, config's desc) whose float64 run torch computes partly in float32: the config's lr
# (or betas) is a float32 0-d Tensor, and torch.optim's step sizes are Tensor arithmetic on
# it, where optforge computes them in float64 from its value. These float64 runs are held
# to the float32 tolerance, and test_config_matches_torch checks both halves of the reason:
# they miss the float64 one, and with the Tensors made float64 they meet it.
FLOAT32_TENSOR_HYPERS = {
    ("Adam", "Tensor lr with capturable and amsgrad (capturable dropped)"),
    ("Adam", "Tensor lr, Tensor betas, with capturable and amsgrad (capturable dropped)"),
    ("Adam", "Tensor lr, Tensor betas, with capturable (capturable dropped)"),
    ("AdamW", "Tensor lr with capturable and amsgrad (capturable dropped)"),
    ("AdamW", "Tensor lr, Tensor betas, with capturable and amsgrad (capturable dropped)"),
    ("AdamW", "Tensor lr, Tensor betas, with capturable (capturable dropped)"),
    ("NAdam", "decoupled_weight_decay, capturable (capturable dropped)"),
    ("RAdam", "capturable, weight_decay, decoupled_weight_decay, tensor LR (capturable dropped)"),
    ("Muon", "Tensor lr"),
}


@pytest.fixture(autouse=True, scope="module")
def one_numba_thread():
    """Tiny tensors: a parallel launch's thread wake-ups cost more than the work (10 ms a step
    on a busy 2-core machine, against 0.2 ms on one thread); the kernels' results do not
    depend on the thread count (chunks are independent, reductions have a fixed order)."""
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(threads)


def configs(info) -> list:
    """(desc, kwargs) of every config: the CPU ones, then the CUDA-only ones without
    `capturable` (optforge's step is not capturable; what remains is a CPU config)."""
    cpu = [(oi.desc, dict(oi.kwargs)) for oi in info.optim_inputs_func(device="cpu")]
    known = {desc for desc, _ in cpu}
    cuda = [
        (f"{oi.desc} (capturable dropped)", {k: v for k, v in oi.kwargs.items() if k != "capturable"})
        for oi in info.optim_inputs_func(device="cuda")
        if oi.desc not in known
    ]
    return cpu + cuda


CASES = [(info.name, desc, kwargs) for info in SHARED for desc, kwargs in configs(info)]


# torch's tests also run each CPU config with its "global cliquey" switches: all False, then
# each of `differentiable` and (where torch fuses on the CPU) `fused` True in turn.
CLIQUEY = [
    (info.name, oi.desc, oi.kwargs)
    for info in SHARED
    for oi in _get_optim_inputs_including_global_cliquey_kwargs("cpu", torch.float32, info)
]


def error_inputs(dtype) -> list:
    return [
        (info.name, e) for info in SHARED for e in info.optim_error_inputs_func(device="cpu", dtype=dtype)
    ]


def _float64_tensors(kwargs: dict) -> dict:
    def cast(value):
        if isinstance(value, torch.Tensor):
            return value.to(torch.float64)
        if isinstance(value, tuple):
            return tuple(cast(v) for v in value)
        return value

    return {key: cast(value) for key, value in kwargs.items()}


def _has_tensor(kwargs: dict) -> bool:
    values = [v for value in kwargs.values() for v in (value if isinstance(value, tuple) else (value,))]
    return any(isinstance(v, torch.Tensor) and v.dtype == torch.float32 for v in values)


def _matrices_only(cls) -> bool:
    """Whether `cls` (torch's or ours) steps 2-D parameters only: ours says so in its kernel
    module (TENSOR_RANK), and torch's of the same name refuses what ours refuses."""
    ours = getattr(optforge.torch, cls.__name__, None)
    if ours is None or not hasattr(ours, "_SPEC"):
        return False
    module = importlib.import_module(f"{ours._KERNELS}.cpu.{ours._SPEC}")
    return getattr(module, "TENSOR_RANK", None) == 2


def _run(cls, kwargs: dict, dtype, steps: int = STEPS) -> tuple[list, dict]:
    """Parameters after each of `steps` steps, and the final state_dict's state."""
    generator = torch.Generator().manual_seed(0)
    shapes = MATRIX_SHAPES if _matrices_only(cls) else SHAPES
    params = [torch.randn(s, generator=generator, dtype=dtype).requires_grad_() for s in shapes]
    grads = [[torch.randn(s, generator=generator, dtype=dtype) for s in shapes] for _ in range(steps)]
    opt = cls(params, **kwargs)
    history = []
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
        history.append([p.detach().clone() for p in params])
    return history, opt.state_dict()["state"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize(("name", "desc", "kwargs"), CASES, ids=[f"{n}-{d}" for n, d, _ in CASES])
def test_config_matches_torch(name, desc, kwargs, dtype):
    # NAdam has two configs of that desc, one with a Tensor lr: the Tensor makes the difference.
    float32_hypers = dtype == torch.float64 and (name, desc) in FLOAT32_TENSOR_HYPERS and _has_tensor(kwargs)
    tolerance = TOLERANCE[torch.float32 if float32_hypers else dtype]
    _assert_matches(name, kwargs, dtype, tolerance)
    if float32_hypers:
        with pytest.raises(AssertionError, match="not close"):
            _assert_matches(name, kwargs, dtype, TOLERANCE[dtype])
        _assert_matches(name, _float64_tensors(kwargs), dtype, TOLERANCE[dtype])


def test_the_float32_tensor_configs_are_those_with_float32_tensors():
    """The list above names real configs, each with a float32 Tensor lr or betas."""
    with_tensor = {(name, desc) for name, desc, kwargs in CASES if _has_tensor(kwargs)}
    assert FLOAT32_TENSOR_HYPERS <= with_tensor


def _assert_matches(name: str, kwargs: dict, dtype, tolerance: dict) -> None:
    """Parameters after every step, and the final state (same keys, same values), agree."""
    want_history, want_state = _run(getattr(torch.optim, name), kwargs, dtype)
    got_history, got_state = _run(getattr(optforge.torch, name), kwargs, dtype)
    for step, (want, got) in enumerate(zip(want_history, got_history), 1):
        for i, (w, g) in enumerate(zip(want, got)):
            torch.testing.assert_close(g, w, **tolerance, msg=lambda m: f"step {step}, param {i}: {m}")
    assert want_state.keys() == got_state.keys()
    for i in want_state:
        assert want_state[i].keys() == got_state[i].keys(), f"param {i}"
        for key, w in want_state[i].items():
            g = got_state[i][key]
            torch.testing.assert_close(g, w, **tolerance, msg=lambda m: f"param {i} '{key}': {m}")


def _outcome(name: str, error, dtype) -> str:
    """'ok' when optforge raises what the error input asks for, else what happened."""
    oi = error.optimizer_error_input
    params = oi.params
    if params is None:
        params = [torch.nn.Parameter(torch.randn(2, 3, dtype=dtype))]
    cls = getattr(optforge.torch, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch's UserWarning inputs become exceptions
            opt = cls(params, **oi.kwargs)
            if error.error_on == OptimizerErrorEnum.STEP_ERROR:
                opt.step()
    except (Exception, Warning) as raised:
        if isinstance(raised, error.error_type) and re.search(error.error_regex, str(raised)):
            return "ok"
        return f"{type(raised).__name__}: {raised}"
    return "nothing raised"


ERROR_CASES = [(name, e) for name, e in error_inputs(torch.float32)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize(
    ("name", "index"),
    [(name, i) for i, (name, _) in enumerate(ERROR_CASES)],
    ids=[f"{name}-{e.optimizer_error_input.desc}" for name, e in ERROR_CASES],
)
def test_error_input_raises_what_torch_raises(name, index, dtype):
    error = dict(enumerate(error_inputs(dtype)))[index][1]
    if (name, error.optimizer_error_input.desc) in DEVIATIONS:
        pytest.skip("a documented deviation: test_each_deviation_still_deviates checks it")
    assert _outcome(name, error, dtype) == "ok", error.optimizer_error_input.desc


@pytest.mark.parametrize(("name", "desc"), sorted(DEVIATIONS))
def test_each_deviation_still_deviates(name, desc):
    matches = [
        e for n, e in error_inputs(torch.float32) if n == name and e.optimizer_error_input.desc == desc
    ]
    assert matches, "the deviation names an error input optim_db no longer has"
    for error in matches:
        assert _outcome(name, error, torch.float32) != "ok"


def test_every_shared_class_and_config_is_run():
    """The material is what this module says: 12 shared classes, every config of each."""
    assert sorted(info.name for info in SHARED) == sorted(
        ["Adadelta", "Adafactor", "Adagrad", "Adam", "Adamax", "AdamW", "Muon", "NAdam", "RAdam"]
        + ["RMSprop", "Rprop", "SGD"]
    )
    assert len(CASES) >= sum(len(info.optim_inputs_func(device="cpu")) for info in SHARED)


@pytest.mark.parametrize(("name", "desc", "kwargs"), CLIQUEY, ids=[f"{n}-{d}" for n, d, _ in CLIQUEY])
def test_cliquey_switches_change_nothing_or_are_refused(name, desc, kwargs):
    """`differentiable=True` is refused (the step is not recorded by autograd); the other
    switches leave the arithmetic as it is: the same bits as the config without them."""
    cls = getattr(optforge.torch, name)
    if kwargs.get("differentiable"):
        with pytest.raises(ValueError, match="differentiable=True is not supported"):
            cls([torch.zeros(3, requires_grad=True)], **kwargs)
        return
    plain = {k: v for k, v in kwargs.items() if k not in ("foreach", "fused", "differentiable")}
    got, _ = _run(cls, kwargs, torch.float32, steps=3)
    want, _ = _run(cls, plain, torch.float32, steps=3)
    for g, w in zip(got[-1], want[-1]):
        assert torch.equal(g, w)
