"""optforge.optim.Adafactor against torch.optim.Adafactor 2.13, its state, checks and checkpoints.

Matrices keep factored second moments (row and column state shaped as torch's
`row_var` and `col_var`), vectors and scalars a full one; both kinds in one
optimizer, in one parameter group or several.
"""

import numpy as np
import pytest

import optforge

torch = pytest.importorskip("torch")

STEPS = 12
# Vectors, a scalar, matrices with a unit dimension, a stack of matrices, and a matrix of
# 150,000 elements, which spans several chunks of rows.
SHAPES = [(7,), (), (3, 5), (6, 1), (1, 6), (2, 4, 3), (300, 500)]
CASES = [
    {},
    {"weight_decay": 0.1},
    {"maximize": True},
    {"lr": 0.5},  # rho = min(lr, 1/sqrt(t)): 1/sqrt(t) from step 5
    {"beta2_decay": -0.5, "eps": (1e-20, 1e-2), "d": 2.0},
    {"lr": 0.02, "eps": (0.5, 0.0), "d": 1.0, "weight_decay": 0.3, "maximize": True},
]
TOL = {np.float32: dict(atol=1e-5, rtol=2e-5), np.float64: dict(atol=1e-12, rtol=1e-10)}


def _pair(kwargs, dtype, seed, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal(s).astype(dtype) for s in shapes]
    ours = optforge.optim.Adafactor(
        [optforge.Parameter(v.copy(), f"p{i}") for i, v in enumerate(values)], **kwargs
    )
    tparams = [torch.tensor(v.copy(), requires_grad=True) for v in values]
    return ours, tparams, torch.optim.Adafactor(tparams, **kwargs), rng


def _step_both(ours, tparams, theirs, grads):
    ours(tuple(grads))
    for p, g in zip(tparams, grads):
        p.grad = torch.from_numpy(g.copy())
    theirs.step()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kwargs", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_matches_torch_optim_adafactor(kwargs, dtype):
    ours, tparams, theirs, rng = _pair(kwargs, dtype, seed=len(str(kwargs)))
    for step in range(STEPS):
        _step_both(ours, tparams, theirs, [rng.standard_normal(s).astype(dtype) for s in SHAPES])
        for i, (mine, reference) in enumerate(zip(ours.parameters, tparams)):
            np.testing.assert_allclose(
                mine.data, reference.detach().numpy(), **TOL[dtype], err_msg=f"{kwargs} p{i} step {step + 1}"
            )
    # The state too, in torch's shapes: factored for matrices, full for vectors and scalars.
    for i, p in enumerate(tparams):
        state = theirs.state[p]
        for name in ("row_var", "col_var", "variance"):
            mine = getattr(ours, name)[i]
            if name not in state:
                assert mine is None
                continue
            assert mine.shape == tuple(state[name].shape)
            np.testing.assert_allclose(mine, state[name].numpy(), **TOL[dtype], err_msg=f"{name} p{i}")


def test_param_groups_with_their_own_options_match_torch():
    rng = np.random.default_rng(3)
    shapes = [(4, 5), (5,), (3, 2, 2), (8,)]
    values = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    ps = [optforge.Parameter(v.copy(), f"p{i}") for i, v in enumerate(values)]
    ts = [torch.tensor(v.copy(), requires_grad=True) for v in values]

    def groups(params):
        return [
            {"params": params[:2]},
            {"params": params[2:], "lr": 0.2, "eps": (1e-6, 1e-2), "d": 1.5, "weight_decay": 0.05},
        ]

    ours = optforge.optim.Adafactor(groups(ps), lr=0.03)
    theirs = torch.optim.Adafactor(groups(ts), lr=0.03)
    for _ in range(STEPS):
        _step_both(ours, ts, theirs, [rng.standard_normal(s).astype(np.float32) for s in shapes])
    for mine, reference in zip(ps, ts):
        np.testing.assert_allclose(mine.data, reference.detach().numpy(), **TOL[np.float32])


def test_eps1_none_is_the_dtypes_machine_epsilon():
    """With g = 0 the estimate is eps1^2, so the update shows which eps1 was used."""
    for dtype in (np.float32, np.float64):
        explicit = optforge.optim.Adafactor(
            [optforge.Parameter(np.ones((3, 4), dtype), "w")], eps=(float(np.finfo(dtype).eps), 1e-3)
        )
        default = optforge.optim.Adafactor([optforge.Parameter(np.ones((3, 4), dtype), "w")])
        g = np.full((3, 4), 1e-9, dtype)
        explicit((g,))
        default((g,))
        np.testing.assert_array_equal(default.parameters[0].data, explicit.parameters[0].data)


def test_checkpoint_resumes_bit_identically_with_eps1_none(tmp_path):
    grads = [
        tuple(np.random.default_rng(s).standard_normal(shape).astype(np.float32) for shape in SHAPES)
        for s in range(10)
    ]

    def make():
        rng = np.random.default_rng(0)
        return optforge.optim.Adafactor(
            [
                optforge.Parameter(rng.standard_normal(s).astype(np.float32), f"p{i}")
                for i, s in enumerate(SHAPES)
            ]
        )

    straight = make()
    for g in grads:
        straight(g)
    first = make()
    for g in grads[:5]:
        first(g)
    np.savez(tmp_path / "ckpt.npz", **first.state_dict())
    resumed = make()
    for p, q in zip(resumed.parameters, first.parameters):
        p.data[...] = q.data
    resumed.load_state_dict(np.load(tmp_path / "ckpt.npz"))
    assert resumed.param_groups[0]["eps"] == (None, 1e-3)  # None survives the float64 file
    for g in grads[5:]:
        resumed(g)
    for p, q in zip(resumed.parameters, straight.parameters):
        np.testing.assert_array_equal(p.data, q.data)


def test_state_dict_has_only_each_tensors_own_state():
    opt = optforge.optim.Adafactor([optforge.Parameter(np.ones((2, 3), np.float32), "m"),
                                    optforge.Parameter(np.ones(4, np.float32), "v")])  # fmt: skip
    sd = opt.state_dict()
    assert sd["state/0/row_var"].shape == (2, 1) and sd["state/0/col_var"].shape == (1, 3)
    assert sd["state/1/variance"].shape == (4,)
    assert "state/0/variance" not in sd and "state/1/row_var" not in sd
    sd["state/0/row_var"] = np.zeros((3, 1), np.float32)
    with pytest.raises(ValueError, match="row_var' has shape"):
        opt.load_state_dict(sd)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"lr": 0.0}, ValueError, "lr must be greater than 0"),
        ({"lr": "0.1"}, ValueError, "lr must be int, float"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay"),
        ({"weight_decay": "0"}, TypeError, "weight_decay"),
        ({"beta2_decay": 0.1}, ValueError, "beta2_decay"),
        ({"beta2_decay": "x"}, TypeError, "beta2_decay"),
        ({"eps": (-1e-3, 1e-3)}, ValueError, r"eps\[0\]"),
        ({"eps": ("a", 1e-3)}, TypeError, r"eps\[0\]"),
        ({"eps": (None, -1.0)}, ValueError, r"eps\[1\]"),
        ({"eps": (None, None)}, TypeError, r"eps\[1\]"),
        ({"eps": (None,)}, IndexError, "eps"),
        ({"eps": (None, 1e-3, 1.0)}, ValueError, "eps"),
        ({"eps": 1e-3}, TypeError, "eps"),
        ({"d": 0.5}, ValueError, "'d'"),
        ({"d": None}, TypeError, "'d'"),
        ({"maximize": 1}, TypeError, "maximize"),
    ],
)
def test_each_documented_exception(kwargs, error, match):
    with pytest.raises(error, match=match):
        optforge.optim.Adafactor([optforge.Parameter(np.ones((2, 2), np.float32), "w")], **kwargs)


@pytest.mark.parametrize(
    "grads, error",
    [
        (lambda g: g[:-1], ValueError),  # one too few
        (lambda g: [g[0], g[1].reshape(-1, 2), g[2]], ValueError),  # a matrix's shape
        (lambda g: [g[0], g[1], g[2].astype(np.float64)], TypeError),  # a dtype
        (lambda g: g[0], TypeError),  # not a tuple
    ],
)
def test_a_bad_step_changes_nothing(grads, error):
    rng = np.random.default_rng(1)
    shapes = [(5,), (4, 6), (2, 3, 2)]
    opt = optforge.optim.Adafactor(
        [optforge.Parameter(rng.standard_normal(s).astype(np.float32), f"p{i}") for i, s in enumerate(shapes)]
    )
    good = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    opt(tuple(good))

    def snapshot():
        arrays = [p.data.copy() for p in opt.parameters]
        return arrays + [a.copy() for arrays in opt.state.values() for a in arrays if a is not None]

    before, step = snapshot(), opt.global_step
    with pytest.raises(error):
        opt(grads(good))
    assert opt.global_step == step
    for a, b in zip(snapshot(), before):
        np.testing.assert_array_equal(a, b)
