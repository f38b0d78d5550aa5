"""optforge's Muon against torch.optim.Muon (torch 2.13), element by element.

20 steps of a small MLP's 2-D weights (its biases are not Muon's: torch refuses them), in
float32 and float64: Nesterov both ways, both learning-rate adjustments, weight decay,
momentum on both sides of 0.5 (torch's lerp rounds differently there), two param groups,
matrices taller and wider than long, a checkpoint resumed bit for bit; and the errors.
"""

import numpy as np
import pytest
import torch

import optforge
import optforge.torch as ot
from optforge.runtime.matrix import newton_schulz

TOL = {torch.float32: dict(atol=1e-5, rtol=2e-5), torch.float64: dict(atol=1e-9, rtol=1e-9)}


def _model(dtype):
    torch.manual_seed(0)
    # 7 -> 13 -> 5: one weight wider than tall (13x7 is taller; 5x13 is wider), odd sizes
    return torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.Tanh(), torch.nn.Linear(13, 5)).to(dtype)


def _data(dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 7, generator=g, dtype=dtype)
    return x, torch.sin(x[:, :5]) + 0.1 * torch.randn(32, 5, generator=g, dtype=dtype)


def _weights(model):
    return [p for p in model.parameters() if p.ndim == 2]


def _train(cls, dtype, steps=20, groups=None, **kwargs):
    model = _model(dtype)
    x, y = _data(dtype)
    weights = _weights(model)
    params = weights if groups is None else [dict(params=[w], **g) for w, g in zip(weights, groups)]
    opt = cls(params, **kwargs)
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    return weights, opt


BOTH = [
    dict(lr=0.02),
    dict(lr=0.02, nesterov=False),
    dict(lr=0.02, adjust_lr_fn="original"),
    dict(lr=0.01, adjust_lr_fn="match_rms_adamw"),
    # momentum < 0.5 and = 0.5: torch's lerp takes its other branch (weight >= 0.5)
    dict(lr=0.02, weight_decay=0.0, momentum=0.3),
    dict(lr=0.02, momentum=0.5),
    dict(lr=0.02, momentum=0.8, nesterov=False, weight_decay=0.05),
    dict(lr=0.02, ns_coefficients=(3.0, -3.2, 1.2), ns_steps=3, eps=1e-5),
    dict(lr=0.02, ns_steps=0),
]
CASES = [(dtype, kwargs) for dtype in (torch.float32, torch.float64) for kwargs in BOTH]


@pytest.mark.parametrize("dtype, kwargs", CASES, ids=[f"{str(d)[6:]}-{i}" for i, (d, _) in enumerate(CASES)])
def test_matches_torch(dtype, kwargs):
    ours, opt = _train(ot.Muon, dtype, **kwargs)
    theirs, ref = _train(torch.optim.Muon, dtype, **kwargs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, **TOL[dtype])
    for p, q in zip(_weights_of(opt), _weights_of(ref)):
        torch.testing.assert_close(
            opt.state[p]["momentum_buffer"], ref.state[q]["momentum_buffer"], **TOL[dtype]
        )
    assert not np.array_equal(ours[0].detach().numpy(), _model(dtype)[0].weight.detach().numpy())


def _weights_of(opt):
    return [p for g in opt.param_groups for p in g["params"]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_two_groups(dtype):
    groups = [dict(lr=0.03, momentum=0.9, weight_decay=0.2), dict(lr=0.005, momentum=0.3)]
    ours, _ = _train(ot.Muon, dtype, groups=groups, adjust_lr_fn="match_rms_adamw")
    theirs, _ = _train(torch.optim.Muon, dtype, groups=groups, adjust_lr_fn="match_rms_adamw")
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("shape", [(13, 7), (5, 13), (9, 4), (4, 9), (6, 6), (1, 5), (5, 1), (17, 9)])
def test_newton_schulz_bits(shape):
    """The matrix function alone equals torch's bit for bit, tall, wide and square, over many
    matrices (torch's addmm rounds alpha*A@B before its fused beta*C: see runtime/matrix.py).
    Up to about 16 on a side; larger matrices differ now and then by a bfloat16 unit (torch's
    bfloat16 CPU products there round in a way these float32 ones do not reproduce)."""
    from torch.optim._muon import _zeropower_via_newtonschulz

    for seed in range(40):
        g = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 10.0 ** (seed % 5 - 3)
        expected = _zeropower_via_newtonschulz(g, (3.4445, -4.7750, 2.0315), 5, 1e-7).float().numpy()
        x = g.double().numpy().copy()
        newton_schulz(x, 3.4445, -4.7750, 2.0315, 5, 1e-7)
        np.testing.assert_array_equal(x.astype(np.float32), expected)


def test_newton_schulz_zero_matrix_is_zero():
    x = np.zeros((3, 4))
    newton_schulz(x, 3.4445, -4.7750, 2.0315, 5, 1e-7)  # divided by eps, not by 0
    assert np.all(x == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_checkpoint_resume_bit_exact(dtype):
    straight, _ = _train(ot.Muon, dtype, steps=20, lr=0.02, nesterov=False, adjust_lr_fn="match_rms_adamw")
    model = _model(dtype)
    x, y = _data(dtype)

    def steps(opt, n):
        for _ in range(n):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()

    opt = ot.Muon(_weights(model), lr=0.02, nesterov=False, adjust_lr_fn="match_rms_adamw")
    steps(opt, 10)
    saved = opt.state_dict()
    assert set(saved["state"][0]) == {"momentum_buffer"}
    fresh = ot.Muon(_weights(model), lr=0.02, nesterov=False, adjust_lr_fn="match_rms_adamw")
    fresh.load_state_dict(saved)
    steps(fresh, 10)
    for a, b in zip(_weights(model), straight):
        assert torch.equal(a, b)


def test_torch_loads_our_state_dict_and_back():
    ours, opt = _train(ot.Muon, torch.float32, steps=5, lr=0.02)
    ref = torch.optim.Muon(ours, lr=0.02)
    ref.load_state_dict(opt.state_dict())
    back = ot.Muon(ours, lr=0.02)
    back.load_state_dict(ref.state_dict())
    for p in ours:
        assert torch.equal(back.state[p]["momentum_buffer"], opt.state[p]["momentum_buffer"])


def test_optim_dialect_matches_torch():
    """optforge.optim.Muon on optforge Parameters: the same numbers as the torch dialect."""
    model = _model(torch.float64)
    x, y = _data(torch.float64)
    weights = _weights(model)
    params = [optforge.Parameter(w.detach().numpy().copy(), f"w{i}") for i, w in enumerate(weights)]
    opt = optforge.optim.Muon(params, lr=0.02, adjust_lr_fn="match_rms_adamw", nesterov=False)
    ref = torch.optim.Muon(weights, lr=0.02, adjust_lr_fn="match_rms_adamw", nesterov=False)
    for _ in range(20):
        for w, p in zip(weights, params):
            w.data.copy_(torch.from_numpy(p.data))
        ref.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        grads = [w.grad.numpy().copy() for w in weights]
        ref.step()
        opt(grads)
        for w, p in zip(weights, params):
            np.testing.assert_allclose(p.data, w.detach().numpy(), atol=1e-9, rtol=1e-9)
    assert set(opt.state) == {"momentum_buffer"}


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(lr=-1.0), ValueError),
        (dict(momentum=-0.1), ValueError),
        (dict(weight_decay=-0.1), ValueError),
        (dict(adjust_lr_fn="sqrt"), ValueError),
        (dict(ns_coefficients=(1.0, 2.0)), ValueError),
    ],
)
def test_bad_arguments(kwargs, error):
    for cls in (torch.optim.Muon, ot.Muon):
        w = torch.nn.Parameter(torch.randn(3, 4))
        try:
            cls([w], **kwargs)
        except error:
            pass
        else:
            if cls is ot.Muon or "ns_coefficients" not in kwargs:  # torch checks those at step
                raise AssertionError(f"{cls} accepted {kwargs}")


def test_ns_steps_of_100_refused_before_any_change():
    w = torch.nn.Parameter(torch.randn(3, 4))
    with pytest.raises(ValueError):
        ot.Muon([w], ns_steps=100)  # torch raises the same ValueError at its first step


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4)])
def test_non_matrix_parameter_refused(shape):
    for cls in (torch.optim.Muon, ot.Muon):
        with pytest.raises(ValueError, match="2D parameters"):
            cls([torch.nn.Parameter(torch.randn(*shape)), torch.nn.Parameter(torch.randn(3, 3))])


def test_non_matrix_parameter_refused_in_optim_dialect():
    with pytest.raises(ValueError, match="2D parameters"):
        optforge.optim.Muon([optforge.Parameter(np.zeros(5), "b")])


def test_bad_step_leaves_nothing_changed():
    w = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    opt = ot.Muon([w], lr=0.02)
    w.grad = torch.randn(3, 4, dtype=torch.float64)
    opt.step()
    before = (w.detach().clone(), opt.state[w]["momentum_buffer"].clone())
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError):
        opt.step()
    assert torch.equal(w, before[0]) and torch.equal(opt.state[w]["momentum_buffer"], before[1])


def test_group_with_other_adjustment_refused():
    """Flags select the kernel: one adjust_lr_fn per optimizer (a documented limit)."""
    w1, w2 = torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(4, 3))
    with pytest.raises(ValueError, match="adjust_lr_fn"):
        ot.Muon([dict(params=[w1]), dict(params=[w2], adjust_lr_fn="match_rms_adamw")])


def test_device_parameters_refused_before_anything_is_allocated():
    """No CUDA kernels for the matrix stage: the generated CUDA module says why, and the
    run-time refuses device parameters up front (NotImplementedError)."""
    import importlib
    from types import SimpleNamespace

    from optforge.runtime.optimizer import check_kernel_support

    cuda = importlib.import_module("optforge.generated.cuda.muon")
    cpu = importlib.import_module("optforge.generated.cpu.muon")
    assert cuda.VARIANTS == {} and cuda.DEVICE_REFUSED == cpu.DEVICE_REFUSED
    assert "CPU only" in cpu.DEVICE_REFUSED
    on_device = SimpleNamespace(shape=(3, 4), on_device=True)
    with pytest.raises(NotImplementedError, match="CPU only"):
        check_kernel_support(cpu, "Muon", [on_device])
    check_kernel_support(cpu, "Muon", [SimpleNamespace(shape=(3, 4), on_device=False)])
