"""Review findings on the precision policy (torch dialect)."""

import copy

import pytest
import torch

import optforge.torch


@pytest.mark.parametrize(
    "dtype, options",
    [
        (torch.bfloat16, {"master_weights": True}),
        (torch.float16, {"state_dtype": "float32"}),
        (torch.bfloat16, {"state_dtype": "float32"}),
    ],
)
def test_torch_load_state_dict_keeps_state_wider_than_the_parameter_exactly(dtype, options):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(64, dtype=dtype))
    opt = optforge.torch.Adam([p], lr=1e-3, **options)
    for _ in range(3):
        p.grad = (torch.randn(64) * 1e-3).to(dtype)
        opt.step()
    q = torch.nn.Parameter(p.detach().clone())
    other = optforge.torch.Adam([q], lr=1e-3, **options)
    other.load_state_dict(copy.deepcopy(opt.state_dict()))
    for key, value in opt.state[p].items():
        assert other.state[q][key].dtype == value.dtype
        assert torch.equal(other.state[q][key], value), key
    g = (torch.randn(64) * 1e-3).to(dtype)
    p.grad, q.grad = g.clone(), g.clone()
    opt.step()
    other.step()
    assert torch.equal(p.view(torch.int16), q.view(torch.int16))


@pytest.mark.parametrize("options", [{"master_weights": True}, {"stochastic_rounding": True}])
def test_torch_a_cohort_of_float32_parameters_steps_when_others_are_16_bit(options):
    half = torch.nn.Parameter(torch.randn(4, dtype=torch.bfloat16))
    full = torch.nn.Parameter(torch.randn(4))
    opt = optforge.torch.Adam([half, full], **options)
    full.grad = torch.ones(4)  # only the float32 parameter has a gradient at first
    opt.step()
    half.grad = torch.ones(4, dtype=torch.bfloat16)
    opt.step()
    half.grad = None  # and again, after both stepped together
    opt.step()
    assert int(opt.state[full]["step"]) == 3 and int(opt.state[half]["step"]) == 1


def test_torch_master_weights_with_only_float32_parameters_is_still_refused_by_the_class():
    full = torch.nn.Parameter(torch.randn(4))
    opt = optforge.torch.Adam([full], master_weights=True)
    full.grad = torch.ones(4)
    with pytest.raises(ValueError, match="For 'Adam', master_weights=True is for bfloat16"):
        opt.step()


def test_replacing_one_parameters_data_keeps_the_other_master_copies():
    import ml_dtypes
    import numpy as np

    import optforge.optim
    from optforge import Parameter

    bf16 = ml_dtypes.bfloat16
    rng = np.random.default_rng(0)
    a = Parameter(rng.standard_normal(16).astype(bf16), "a")
    b = Parameter(rng.standard_normal(16).astype(bf16), "b")
    opt = optforge.optim.SGD([a, b], lr=1e-4, master_weights=True)
    for _ in range(3):
        opt((np.ones(16, bf16), np.ones(16, bf16)))
    kept = opt.state["master_param"][1].copy()
    assert not np.array_equal(kept, b.data.astype(np.float32))  # more than b's 16 bits
    new = rng.standard_normal(16).astype(bf16)
    a.data = new  # only a's data is replaced
    opt((np.zeros(16, bf16), np.zeros(16, bf16)))
    assert np.array_equal(opt.state["master_param"][1], kept)
    assert np.array_equal(opt.state["master_param"][0], new.astype(np.float32))
