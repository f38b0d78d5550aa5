"""The precision options of every class: state_dtype, master_weights, stochastic_rounding.

What each option keeps and steps, what it refuses (the documented TypeError and ValueError,
with nothing made), checkpoints of 16-bit state resumed bit for bit, and the rounding
itself: nearest rounding loses updates below half a spacing, stochastic rounding keeps them
in expectation, with the same bits on every run and any thread count.
"""

import inspect

import ml_dtypes
import numba
import numpy as np
import pytest
import torch

import optforge
import optforge.optim
import optforge.torch
from optforge import Parameter
from optforge.runtime.row_tensor import RowTensor
from tests.modes import ready

BF16 = np.dtype(ml_dtypes.bfloat16)
OPTIONS = ("state_dtype", "master_weights", "stochastic_rounding")


def classes(module):
    return [c for _, c in inspect.getmembers(module, inspect.isclass) if getattr(c, "_SPEC", "")]


NN = [c for c in classes(optforge.nn) if c.__name__ != "LARS"]
OPTIM = classes(optforge.optim)
TORCH = classes(optforge.torch)


def required(cls) -> dict:
    """What a class needs besides its parameters (nn's learning_rate where it has no default),
    and a momentum where it has one (torch's SGD keeps no state without)."""
    signature = inspect.signature(cls.__init__)
    needed = {
        name: 0.01
        for name, p in signature.parameters.items()
        if p.default is inspect.Parameter.empty and name not in ("self", "params")
    }
    return needed | ({"momentum": 0.9} if "momentum" in signature.parameters else {})


@pytest.mark.parametrize(
    "cls", NN + OPTIM + TORCH, ids=lambda c: f"{c.__module__.split('.')[-2]}.{c.__name__}"
)
def test_every_class_takes_the_options_keyword_only_and_keeps_its_state_as_asked(cls):
    signature = inspect.signature(cls.__init__)
    for name in OPTIONS:
        assert signature.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert [signature.parameters[n].default for n in OPTIONS] == [None, False, False]
    assert all(n in cls.__doc__ for n in OPTIONS)
    if cls in TORCH:
        params = [torch.nn.Parameter(torch.ones(3, 4, dtype=torch.bfloat16))]
        # kahan_sum (StableAdamW) is refused for 16-bit parameters: the plain 16-bit update
        wide_only = {"kahan_sum": False} if "kahan_sum" in signature.parameters else {}
        opt = ready(cls(params, **required(cls), **wide_only, state_dtype="float16"))
        params[0].grad = torch.ones_like(params[0])
        opt.step()
        stored = [t for t in opt.state[params[0]].values() if t.dim() > 0]
        assert stored and all(t.dtype is torch.float16 for t in stored)
        return
    w = Parameter(np.ones((3, 4), np.float32), "w")
    opt = ready(cls([w], **required(cls), state_dtype="bfloat16"))
    states = [a for arrays in opt.state.values() for a in arrays if a is not None]
    assert states and all(a.dtype == BF16 for a in states)


def adam(params, **options):
    return optforge.optim.Adam(params, lr=0.01, **options)


@pytest.mark.parametrize(
    "options, error, words",
    [
        ({"state_dtype": 16}, TypeError, "state_dtype"),
        ({"state_dtype": "half"}, ValueError, "'float32', 'float64', 'bfloat16', 'float16'"),
        ({"state_dtype": {"moment": "bfloat16"}}, ValueError, "'exp_avg', 'exp_avg_sq'"),
        ({"state_dtype": {"exp_avg": 16}}, TypeError, "state_dtype['exp_avg']"),
        ({"master_weights": 1}, TypeError, "master_weights"),
        ({"stochastic_rounding": "yes"}, TypeError, "stochastic_rounding"),
        ({"master_weights": True, "stochastic_rounding": True}, ValueError, "cannot be combined"),
    ],
)
def test_the_options_are_checked_as_documented(options, error, words):
    w = Parameter(np.ones(4, ml_dtypes.bfloat16), "w")
    with pytest.raises(error, match=None) as raised:
        adam([w], **options)
    assert words in str(raised.value)


@pytest.mark.parametrize(
    "dtype, options, words",
    [
        (np.float32, {"master_weights": True}, "for bfloat16 and float16 parameters"),
        (np.float64, {"stochastic_rounding": True}, "for bfloat16 and float16 parameters"),
        (np.float32, {"state_dtype": "float64"}, "wider than the float32"),
        (ml_dtypes.bfloat16, {"state_dtype": {"exp_avg": "float64"}}, "wider than the float32"),
    ],
)
def test_what_the_parameters_cannot_take_is_refused_before_anything_is_made(dtype, options, words):
    w = Parameter(np.ones(4, dtype), "w")
    with pytest.raises(ValueError, match="wider|for bfloat16") as raised:
        adam([w], **options)
    assert words in str(raised.value)


def test_row_sparse_and_centralized_gradients_of_16_bit_parameters_are_refused():
    w = Parameter(np.ones((5, 3), ml_dtypes.bfloat16), "w")
    opt = optforge.nn.Adam([w], learning_rate=0.01)
    before = w.data.copy()
    with pytest.raises(TypeError, match="not available for 16-bit parameters"):
        opt((RowTensor(np.array([1]), np.ones((1, 3), ml_dtypes.bfloat16), (5, 3)),))
    assert np.array_equal(w.data.view(np.uint16), before.view(np.uint16))
    with pytest.raises(ValueError, match="grad_centralization"):
        optforge.nn.Adam([{"params": [w], "grad_centralization": True}], learning_rate=0.01)


def test_row_sparse_gradients_step_16_bit_state_of_float32_parameters():
    """The row-sparse kernels load and store through the same policy as the dense ones."""
    rng = np.random.default_rng(3)
    data = rng.standard_normal((6, 5)).astype(np.float32)
    grads = [
        RowTensor(np.array([0, 4, 4]), rng.standard_normal((3, 5)).astype(np.float32), (6, 5))
        for _ in range(3)
    ]
    plain = Parameter(data.copy(), "w")
    half = Parameter(data.copy(), "w")
    a = optforge.nn.ProximalAdagrad([plain], learning_rate=0.1)
    b = optforge.nn.ProximalAdagrad([half], learning_rate=0.1, state_dtype="bfloat16")
    for g in grads:
        a((g,))
        b((g,))
        # the float32 run's state, rounded, is what the bfloat16 one keeps (up to a spacing)
        np.testing.assert_allclose(b.accum[0].astype(np.float32), a.accum[0], rtol=2**-7)
    np.testing.assert_array_equal(half.data[1:4], data[1:4])
    np.testing.assert_allclose(half.data, plain.data, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize(
    "dtype, options",
    [
        (np.float32, {"state_dtype": "bfloat16"}),
        (ml_dtypes.bfloat16, {"stochastic_rounding": True}),
        (np.float16, {"master_weights": True, "state_dtype": {"exp_avg_sq": "float32"}}),
    ],
    ids=["bf16-state", "bf16-params-sr", "f16-params-master"],
)
def test_a_checkpoint_of_16_bit_state_resumes_bit_for_bit(tmp_path, dtype, options):
    rng = np.random.default_rng(5)
    data = rng.standard_normal((9, 7)).astype(dtype)
    grads = [rng.standard_normal((9, 7)).astype(dtype) for _ in range(6)]
    whole = Parameter(data.copy(), "w")
    first = Parameter(data.copy(), "w")
    a = adam([whole], **options)
    b = adam([first], **options)
    for g in grads[:3]:
        a((g,))
        b((g,))
    np.savez(tmp_path / "ckpt.npz", **b.state_dict())
    resumed = Parameter(first.data.copy(), "w")
    c = adam([resumed], **options)
    c.load_state_dict(np.load(tmp_path / "ckpt.npz"))
    for g in grads[3:]:
        a((g,))
        c((g,))
    bits = np.uint16 if np.dtype(dtype).itemsize == 2 else np.uint32
    assert np.array_equal(resumed.data.view(bits), whole.data.view(bits))
    for name, arrays in a.state.items():
        assert np.array_equal(
            np.asarray(arrays[0]).view(np.uint8), np.asarray(c.state[name][0]).view(np.uint8)
        ), name


def test_master_weights_step_a_float32_copy_and_write_its_nearest_value():
    rng = np.random.default_rng(11)
    # values a bfloat16 parameter can hold, so the float32 run starts where the copy does
    data = rng.standard_normal(1000).astype(ml_dtypes.bfloat16).astype(np.float32)
    grads = [rng.standard_normal(1000).astype(np.float32) for _ in range(5)]
    exact = Parameter(data.copy(), "w")
    half = Parameter(data.astype(ml_dtypes.bfloat16), "w")
    a = optforge.optim.AdamW([exact], lr=1e-3)
    b = optforge.optim.AdamW([half], lr=1e-3, master_weights=True, state_dtype="float32")
    for g in grads:
        g = g.astype(ml_dtypes.bfloat16)  # both take the same (bfloat16) gradients
        a((g.astype(np.float32),))
        b((g,))
    master = b.master_param[0]
    assert master.dtype == np.float32
    np.testing.assert_array_equal(half.data, master.astype(ml_dtypes.bfloat16))
    # the copy is float32 training: the same arithmetic on the same values
    np.testing.assert_allclose(master, exact.data, rtol=1e-6, atol=1e-7)


def sgd_tiny_updates(options, steps=2000, n=4096):
    w = Parameter(np.ones(n, ml_dtypes.bfloat16), "w")
    opt = optforge.optim.SGD([w], lr=1e-4, **options)
    g = np.ones(n, ml_dtypes.bfloat16)
    for _ in range(steps):
        opt((g,))
    return w.data.astype(np.float64)


def test_nearest_rounding_loses_tiny_updates_and_stochastic_rounding_keeps_them():
    """A bfloat16 parameter of 1.0 moved 2,000 times by -1e-4: nearest rounding never leaves 1.0
    (half the spacing below 1 is 2**-9), stochastic rounding ends near 0.8 on average."""
    nearest = sgd_tiny_updates({})
    assert np.all(nearest == 1.0)
    stochastic = sgd_tiny_updates({"stochastic_rounding": True})
    assert abs(stochastic.mean() - 0.8) < 0.004
    assert stochastic.std() > 0  # each element takes its own path


def test_stochastic_rounding_gives_the_same_bits_every_run_and_for_any_thread_count():
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = sgd_tiny_updates({"stochastic_rounding": True}, steps=20, n=200_000)
        numba.set_num_threads(threads)
        again = sgd_tiny_updates({"stochastic_rounding": True}, steps=20, n=200_000)
    finally:
        numba.set_num_threads(threads)
    assert np.array_equal(one, again)


def test_torch_bfloat16_parameters_with_master_weights_follow_float32_training():
    torch.manual_seed(0)
    model = torch.nn.Linear(33, 17).to(torch.bfloat16)
    reference = torch.nn.Linear(33, 17)
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    opt = optforge.torch.AdamW(model.parameters(), lr=1e-3, master_weights=True)
    ref = torch.optim.AdamW(reference.parameters(), lr=1e-3)
    x = torch.randn(8, 33)
    for _ in range(5):
        for m, o in ((model, opt), (reference, ref)):
            o.zero_grad()
            m(x.to(m.weight.dtype)).square().mean().backward()
        # the same gradients for both: the bfloat16 model's, widened
        for p, q in zip(model.parameters(), reference.parameters()):
            q.grad = p.grad.float()
        opt.step()
        ref.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        master = opt.state[p]["master_param"]
        assert master.dtype is torch.float32 and opt.state[p]["exp_avg"].dtype is torch.bfloat16
        assert torch.equal(p.data, master.to(torch.bfloat16))
        # float32 training on the same gradients, but for the moments kept in bfloat16
        torch.testing.assert_close(master, q.data, rtol=0, atol=5 * 1e-3 * 2**-7)
    saved = opt.state_dict()
    assert saved["state"][0]["master_param"].dtype is torch.float32


def test_torch_stochastic_rounding_bits_follow_the_parameter_not_its_cohort():
    """A parameter stepped alone (the others had no gradient) rounds with the same bits as when
    stepped with all of them: its key is its index among the parameters, not in its cohort."""
    torch.manual_seed(1)
    values = [torch.randn(5000, dtype=torch.bfloat16) for _ in range(2)]
    grads = [torch.randn(5000, dtype=torch.bfloat16) for _ in range(2)]
    together = [torch.nn.Parameter(v.clone()) for v in values]
    alone = [torch.nn.Parameter(v.clone()) for v in values]
    a = optforge.torch.SGD(together, lr=1e-3, stochastic_rounding=True)
    b = optforge.torch.SGD(alone, lr=1e-3, stochastic_rounding=True)
    for p, q, g in zip(together, alone, grads):
        p.grad = g.clone()
    alone[1].grad = grads[1].clone()  # the first has no gradient: the second steps alone
    a.step()
    b.step()
    assert torch.equal(together[1], alone[1])
    assert not torch.equal(together[1], values[1])


def test_a_float32_state_dict_of_16_bit_state_loads_into_torch_optim():
    """After a run with bfloat16 state, torch.optim's AdamW continues from the widened state
    exactly as it would from its own float32 state of the same values."""
    torch.manual_seed(2)
    model = torch.nn.Linear(9, 5)
    opt = optforge.torch.AdamW(model.parameters(), lr=1e-2, state_dtype="bfloat16")
    x = torch.randn(4, 9)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    saved = opt.float32_state_dict()
    kept = opt.state[model.weight]["exp_avg"]
    assert kept.dtype is torch.bfloat16
    assert saved["state"][0]["exp_avg"].dtype is torch.float32
    assert torch.equal(saved["state"][0]["exp_avg"], kept.float())
    reference = torch.optim.AdamW(model.parameters(), lr=1e-2)
    reference.load_state_dict(saved)
    assert torch.equal(
        reference.state[model.weight]["exp_avg_sq"], opt.state[model.weight]["exp_avg_sq"].float()
    )
    model(x).square().mean().backward()
    reference.step()  # torch steps on from it
    assert opt.state[model.weight]["exp_avg"].dtype is torch.bfloat16  # ours is untouched


def test_the_stages_of_a_dropped_kernel_module_are_not_kept_alive():
    """per_dtype keeps the stages it makes on their factory, not in a table of its own: a
    rebuilt user spec's old module can be collected with them. (Once numba has compiled a
    function, numba itself keeps its environment; that is not ours to drop.)"""
    import gc
    import types
    import weakref

    from optforge.runtime.kernels import per_dtype

    module = types.ModuleType("throwaway")
    exec(
        "import numba\n"
        "def factory(F, S=None):\n"
        "    @numba.njit\n"
        "    def stage(x):\n"
        "        return F(x) + F(1)\n"
        "    return stage\n",
        module.__dict__,
    )
    (stage,) = per_dtype(module.factory)["float32"]
    assert per_dtype(module.factory)["float32"][0] is stage  # made once
    gone = weakref.ref(module.factory)
    del module, stage
    gc.collect()
    assert gone() is None
