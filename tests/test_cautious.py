"""`cautious=True` on AdamW and Lion (C-Optim, Liang et al. 2024).

Against float64 NumPy loops of the paper's algorithm (the update masked where it disagrees
in sign with the gradient, the rest scaled by numel/(kept + 1); decoupled decay unmasked),
against pytorch_optimizer 4.1.0's `Lion(cautious=True)` and a C-AdamW built from
torch.optim.AdamW's arithmetic and pytorch_optimizer's own `apply_cautious`, over 20 steps
of a small MLP; checkpoints resume bit-exactly; bad arguments change nothing.
"""

import numpy as np
import pytest

import optforge

torch = pytest.importorskip("torch")
pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
import optforge.torch  # noqa: E402  (after the skip: needs torch)

STEPS = 15
SHAPES = [(7,), (3, 5), (2, 3, 11)]


def _cautious(update, grad):
    """The paper's mask: keep update*grad > 0, scale by numel/(kept + 1)."""
    mask = (update * grad > 0).astype(np.float64)
    return update * mask * (mask.size / (mask.sum() + 1))


def c_adamw(w, grads, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False):
    m, v, vmax = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, 1):  # C-AdamW (Liang et al. 2024, Algorithm 2)
        g = -g if maximize else g
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        vmax = np.maximum(vmax, v)
        v_hat = (vmax if amsgrad else v) / (1 - beta2**t)
        u = m / (1 - beta1**t) / (np.sqrt(v_hat) + eps)
        w = w * (1 - lr * weight_decay) - lr * _cautious(u, g)
    return w


def c_lion(w, grads, lr, beta1=0.9, beta2=0.99, weight_decay=0.0):
    m = np.zeros_like(w)
    for g in grads:  # C-Lion: Chen et al. 2023, Algorithm 2, the sign update masked
        u = np.sign(beta1 * m + (1 - beta1) * g)
        w = w * (1 - lr * weight_decay) - lr * _cautious(u, g)
        m = beta2 * m + (1 - beta2) * g
    return w


CASES = [
    ("AdamW", c_adamw, dict(lr=1e-2, weight_decay=0.0)),
    ("AdamW", c_adamw, dict(lr=1e-2)),
    ("AdamW", c_adamw, dict(lr=1e-2, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1, maximize=True)),
    ("AdamW", c_adamw, dict(lr=1e-2, weight_decay=0.05, amsgrad=True)),
    ("AdamW", c_adamw, dict(lr=1e-2, amsgrad=True, maximize=True)),
    ("Lion", c_lion, dict(lr=1e-3)),
    ("Lion", c_lion, dict(lr=1e-3, betas=(0.8, 0.95), weight_decay=0.5)),
]


def _numpy_run(name, kwargs, dtype, shapes=SHAPES, steps=STEPS, seed=7):
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]
    opt = getattr(optforge.optim, name)(
        [optforge.Parameter(v.copy(), f"p{i}") for i, v in enumerate(values)], cautious=True, **kwargs
    )
    for step_grads in grads:
        opt(tuple(step_grads))
    return opt, values, grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, reference, kwargs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_matches_the_papers_algorithm(name, reference, kwargs, dtype):
    opt, values, grads = _numpy_run(name, kwargs, dtype)
    ref_kwargs = dict(kwargs)
    if "betas" in ref_kwargs:
        ref_kwargs.update(zip(("beta1", "beta2"), ref_kwargs.pop("betas")))
    tol = dict(atol=1e-5, rtol=2e-5) if dtype == np.float32 else dict(atol=1e-9, rtol=0)
    for i, (p, w0) in enumerate(zip(opt.parameters, values)):
        expected = reference(w0.astype(np.float64), [g[i].astype(np.float64) for g in grads], **ref_kwargs)
        np.testing.assert_allclose(p.data, expected, **tol, err_msg=f"{name} tensor {i}")


@pytest.mark.parametrize("name, reference, kwargs", [CASES[1], CASES[6]], ids=["AdamW", "Lion"])
def test_masking_changes_the_step(name, reference, kwargs):
    """The flag is not a no-op: the plain algorithm ends elsewhere (so the test above can fail)."""
    opt, values, grads = _numpy_run(name, kwargs, np.float64)
    plain = getattr(optforge.optim, name)(
        [optforge.Parameter(v.copy(), f"p{i}") for i, v in enumerate(values)], **kwargs
    )
    for step_grads in grads:
        plain(tuple(step_grads))
    assert all(np.abs(a.data - b.data).max() > 1e-4 for a, b in zip(opt.parameters, plain.parameters))


def test_a_tensor_of_several_chunks_sums_its_mask_in_order_whatever_the_threads():
    """A tensor larger than a chunk: the mask's mean is summed over chunks in a fixed order, so the
    step matches the float64 loop and is the same bits on one thread and on all of them."""
    import numba

    shapes = [(70_001,), (5,)]  # several chunks of 65536 elements, and a tiny tensor
    results = []
    threads = numba.get_num_threads()
    try:
        for n in sorted({1, threads}):
            numba.set_num_threads(n)
            opt, values, grads = _numpy_run("Lion", dict(lr=1e-3), np.float32, shapes=shapes, steps=4)
            results.append([p.data.copy() for p in opt.parameters])
    finally:
        numba.set_num_threads(threads)
    for i, w0 in enumerate(values):
        expected = c_lion(w0.astype(np.float64), [g[i].astype(np.float64) for g in grads], lr=1e-3)
        np.testing.assert_allclose(results[0][i], expected, atol=1e-5, rtol=2e-5)
        for other in results[1:]:
            assert np.array_equal(other[i], results[0][i])


# --- the torch dialect, over 20 steps of a small MLP -------------------------------------------


class CAdamW(torch.optim.AdamW):
    """torch.optim.AdamW's arithmetic with pytorch_optimizer's `apply_cautious` on its update."""

    def __init__(self, params, cautious=True, **kwargs):
        super().__init__(params, **kwargs)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                grad = -p.grad if group["maximize"] else p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"].item()
                p.mul_(1 - group["lr"] * group["weight_decay"])
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                v = state["exp_avg_sq"]
                if group["amsgrad"]:
                    torch.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
                    v = state["max_exp_avg_sq"]
                denom = (v.sqrt() / (1 - beta2**t) ** 0.5).add_(group["eps"])
                update = state["exp_avg"] / (1 - beta1**t) / denom
                pytorch_optimizer.base.optimizer.BaseOptimizer.apply_cautious(update, grad)
                p.add_(update, alpha=-group["lr"])


def _model(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.Tanh(), torch.nn.Linear(13, 3)).to(dtype)


def _data(dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 7, generator=g, dtype=dtype)
    return x, torch.sin(x[:, :3]) + 0.1 * torch.randn(32, 3, generator=g, dtype=dtype)


def _groups(model, two_groups, first, second):
    params = list(model.parameters())
    if not two_groups:
        return params
    return [{"params": params[:2], **first}, {"params": params[2:], **second}]


def _train(make, dtype, steps=20, two_groups=False, first=None, second=None):
    model = _model(dtype)
    x, y = _data(dtype)
    opt = make(_groups(model, two_groups, first or {}, second or {}))
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()], opt


def _close(got, want, dtype):
    tol = dict(atol=1e-5, rtol=2e-5) if dtype == torch.float32 else dict(atol=1e-9, rtol=0)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol)


LION = [
    dict(lr=1e-2),
    dict(lr=3e-3, betas=(0.8, 0.95), weight_decay=0.3),
]
ADAMW = [
    dict(lr=1e-2),
    dict(lr=1e-2, weight_decay=0.0),
    dict(lr=1e-2, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1, amsgrad=True),
    dict(lr=1e-2, maximize=True),
    dict(lr=1e-2, amsgrad=True, maximize=True),
]
REFERENCES = {"Lion": lambda params, **kw: pytorch_optimizer.Lion(params, **kw), "AdamW": CAdamW}
CLASS_CASES = [("Lion", kw) for kw in LION] + [("AdamW", kw) for kw in ADAMW]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "name, kwargs", CLASS_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CLASS_CASES)]
)
def test_torch_dialect_matches_the_reference_on_an_mlp(name, kwargs, dtype):
    ours, opt = _train(lambda p: getattr(optforge.torch, name)(p, cautious=True, **kwargs), dtype)
    theirs, ref = _train(lambda p: REFERENCES[name](p, cautious=True, **kwargs), dtype)
    _close(ours, theirs, dtype)
    state, ref_state = opt.state_dict()["state"], ref.state_dict()["state"]
    for k in state:  # the reference's state names and values (Lion keeps no step per parameter)
        assert set(state[k]) - {"step"} == set(ref_state[k]) - {"step"}
        for key in set(ref_state[k]) - {"step"}:
            _close([state[k][key]], [ref_state[k][key]], dtype)


@pytest.mark.parametrize("name", ["Lion", "AdamW"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_two_param_groups_with_their_own_hyperparameters(name, dtype):
    first = dict(lr=1e-2, betas=(0.8, 0.9), weight_decay=0.2)
    second = dict(lr=3e-3, weight_decay=0.0)
    ours, _ = _train(
        lambda p: getattr(optforge.torch, name)(p, cautious=True),
        dtype,
        two_groups=True,
        first=first,
        second=second,
    )
    theirs, _ = _train(
        lambda p: REFERENCES[name](p, cautious=True), dtype, two_groups=True, first=first, second=second
    )
    _close(ours, theirs, dtype)


@pytest.mark.parametrize("name", ["Lion", "AdamW"])
def test_the_optim_dialect_matches_the_torch_dialect(name):
    """optforge.optim's class runs the same kernels: the same bits as optforge.torch's."""
    rng = np.random.default_rng(3)
    values = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(6)]
    a = getattr(optforge.optim, name)(
        [optforge.Parameter(v.copy(), f"p{i}") for i, v in enumerate(values)], lr=1e-2, cautious=True
    )
    tensors = [torch.tensor(v, requires_grad=True) for v in values]
    b = getattr(optforge.torch, name)(tensors, lr=1e-2, cautious=True)
    for step in grads:
        a(tuple(step))
        for p, g in zip(tensors, step):
            p.grad = torch.tensor(g)
        b.step()
    for p, q in zip(a.parameters, tensors):
        assert np.array_equal(p.data, q.detach().numpy())


@pytest.mark.parametrize("name", ["Lion", "AdamW"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_checkpoint_resume_is_bit_exact(name, dtype):
    kwargs = dict(lr=1e-2, weight_decay=0.1, cautious=True)
    model = _model(dtype)
    x, y = _data(dtype)

    def steps(opt, model, n):
        for _ in range(n):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()

    straight = getattr(optforge.torch, name)(model.parameters(), **kwargs)
    steps(straight, model, 20)

    resumed_model = _model(dtype)
    first = getattr(optforge.torch, name)(resumed_model.parameters(), **kwargs)
    steps(first, resumed_model, 10)
    checkpoint = first.state_dict()
    assert all(g["cautious"] is True for g in checkpoint["param_groups"])
    fresh = getattr(optforge.torch, name)(resumed_model.parameters(), **kwargs)
    fresh.load_state_dict(checkpoint)
    steps(fresh, resumed_model, 10)
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        for key, value in straight.state[p].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(fresh.state[q][key])), key


def test_a_checkpoint_of_the_other_flag_is_refused_and_changes_nothing():
    model = _model(torch.float32)
    opt = optforge.torch.Lion(model.parameters(), lr=1e-2, cautious=True)
    x, y = _data(torch.float32)
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    checkpoint = opt.state_dict()
    other = optforge.torch.Lion(model.parameters(), lr=1e-2)
    before = other.state_dict()
    with pytest.raises(ValueError, match="cautious"):
        other.load_state_dict(checkpoint)
    torch.testing.assert_close(other.state_dict(), before, rtol=0, atol=0)


# --- unhappy paths ------------------------------------------------------------------------------


def _snapshot(params):
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("name", ["Lion", "AdamW"])
@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(lr=-1e-3), ValueError),
        (dict(betas=(1.0, 0.99)), ValueError),
        (dict(betas=(0.9, -0.1)), ValueError),
        (dict(weight_decay=-0.1), ValueError),
        (dict(cautious="yes"), TypeError),
        (dict(cautious=1), TypeError),
    ],
)
def test_invalid_arguments_raise(name, kwargs, error):
    """pytorch_optimizer's Lion raises ValueError for bad betas and weight decay (its negative lr is
    its own NegativeLRError, which optforge's Lion keeps a ValueError, as torch.optim's classes)."""
    model = _model(torch.float32)
    with pytest.raises(error):
        getattr(optforge.torch, name)(model.parameters(), **{"cautious": True, **kwargs})
    if name == "Lion" and "cautious" not in kwargs and "lr" not in kwargs:
        with pytest.raises(ValueError):
            pytorch_optimizer.Lion(model.parameters(), **kwargs)


@pytest.mark.parametrize("name", ["Lion", "AdamW"])
def test_a_param_group_with_another_cautious_is_refused_and_changes_nothing(name):
    """The flag selects a compiled kernel: one value per optimizer (pytorch_optimizer reads it per
    group); a group that asks for the other one is refused before anything changes."""
    model = _model(torch.float32)
    params = list(model.parameters())
    opt = getattr(optforge.torch, name)(params[:2], lr=1e-2, cautious=True)
    before = (opt.state_dict(), len(opt.param_groups))
    with pytest.raises(ValueError, match="cautious"):
        opt.add_param_group({"params": params[2:], "cautious": False})
    assert len(opt.param_groups) == before[1]
    torch.testing.assert_close(opt.state_dict(), before[0], rtol=0, atol=0)
    snapshot = _snapshot(params)
    with pytest.raises(TypeError):
        optforge.optim.Lion([optforge.Parameter(np.zeros(3, np.float32), "p")], cautious=None)
    assert all(torch.equal(a, b) for a, b in zip(snapshot, params))


# --- the kernels' traffic -------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, flags, plain, cautious",
    [
        ("adamw", {}, (4, 3, 0), (7, 3, 0)),  # pass 1: g, m, v in, m, v out; pass 2: w, g, m, v in, w out
        ("adamw", {"amsgrad": True}, (5, 4, 0), (8, 4, 0)),
        ("lion", {}, (3, 2, 0), (5, 2, 0)),  # pass 1 only reads g and m: m is written by pass 2
    ],
)
def test_the_cautious_kernel_is_two_stage_and_moves_these_bytes(spec, flags, plain, cautious):
    from optforge.bench.traffic import accesses, bytes_per_element
    from optforge.compiler.build import load_specs
    from optforge.compiler.ir import FINALIZE
    from optforge.compiler.lower import lower

    assert accesses(spec, flags) == plain
    assert accesses(spec, flags | {"cautious": True}) == cautious
    assert bytes_per_element(spec, np.float32, flags | {"cautious": True}) == 4 * sum(cautious)
    (loaded,) = load_specs([spec])
    variant = {f.symbol: f.name == "cautious" or bool(flags.get(f.name)) for f in loaded.flags}
    (kernel,) = lower(loaded, variant)
    assert any(r.phase == FINALIZE for r in kernel.regions)
