"""The CUDA backend, on the Numba CUDA simulator (or a real GPU with OPTFORGE_TEST_REAL_CUDA=1).

Every optimizer with its parameters on the device against the same optimizer on the CPU
backend and the published golden numbers; several tensors of odd sizes, float64,
groups larger than one launch, row-sparse gradients on the device, and AdamOffload's
host-resident state.
"""

import numpy as np
import pytest

cuda = pytest.importorskip("numba.cuda")

import optforge  # noqa: E402
from optforge import RowTensor  # noqa: E402
from optforge.runtime.device import DeviceStepper  # noqa: E402
from tests.conftest import MS_TOL, W0, golden_grad  # noqa: E402

SHAPES = [(3,), (2, 5), (37,)]
CASES = [
    (optforge.nn.Adam, dict(learning_rate=0.05, weight_decay=0.1, loss_scale=2.0)),
    (optforge.nn.Adam, dict(learning_rate=0.05, use_nesterov=True)),
    (optforge.nn.Adam, dict(learning_rate=0.05, use_amsgrad=True)),
    (optforge.nn.AdamOffload, dict(learning_rate=0.05, weight_decay=0.1, use_nesterov=True)),
    (optforge.nn.Lamb, dict(learning_rate=0.05, weight_decay=0.1)),
    (optforge.nn.ProximalAdagrad, dict(learning_rate=0.1, l1=0.01, l2=0.02)),
    (optforge.nn.ProximalAdagrad, dict(learning_rate=0.1)),
    (optforge.optim.RAdam, dict(lr=0.05, betas=(0.8, 0.9), weight_decay=0.1)),
]
TOL = {np.float32: dict(rtol=2e-6, atol=1e-7), np.float64: dict(rtol=1e-12, atol=1e-14)}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks of 8 elements: the simulator's small tensors still span several chunks."""
    monkeypatch.setattr(DeviceStepper, "chunk", 8)
    monkeypatch.setattr(DeviceStepper, "offload_chunk", 16)


def pair(cls, kwargs, dtype, shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal(s).astype(dtype) for s in shapes]
    host = [optforge.Parameter(v.copy(), f"p{i}.weight") for i, v in enumerate(values)]
    device = [optforge.Parameter(cuda.to_device(v.copy()), f"p{i}.weight") for i, v in enumerate(values)]
    return cls(host, **kwargs), cls(device, **kwargs), rng


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls, kwargs", CASES, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(CASES)])
def test_device_steps_match_the_cpu_backend(cls, kwargs, dtype):
    on_host, on_device, rng = pair(cls, kwargs, dtype)
    for step in range(7):  # RAdam with betas (0.8, 0.9) rectifies from step 4: both branches
        grads = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
        on_host(tuple(grads))
        device_grads = [cuda.to_device(g) if i % 2 else g for i, g in enumerate(grads)]  # both kinds
        on_device(tuple(device_grads))
        for a, b in zip(on_host.parameters, on_device.parameters):
            np.testing.assert_allclose(b.asnumpy(), a.data, **TOL[dtype], err_msg=f"{a.name} step {step}")


@pytest.mark.parametrize(
    "cls, kwargs, scale, step1, step5",
    [
        (
            optforge.nn.Adam,
            dict(learning_rate=0.1),
            1.0,
            [0.400000304, -0.900000155, 1.4000001, -1.9000001, 0.25],
            [0.136866376, -0.965016425, 1.36552143, -1.9505353, -0.00887290761],
        ),
        (
            optforge.nn.AdamOffload,
            dict(learning_rate=0.05, beta1=0.8, beta2=0.9, eps=1e-3, weight_decay=0.1, loss_scale=4.0),
            4.0,
            [0.451032341, -0.950521529, 1.45034897, -1.95026219, 0.205614388],
            [0.303092957, -0.904112101, 1.35467196, -1.88562262, 0.0532936342],
        ),
        (
            optforge.nn.ProximalAdagrad,
            dict(accum=0.1, learning_rate=0.1, l1=0.05, l2=0.1),
            1.0,
            [0.441462696, -0.908893466, 1.38786459, -1.8749764, 0.227009922],
            [0.272399098, -0.894225478, 1.32309544, -1.8438617, 0.0715680793],
        ),
        (
            optforge.nn.Lamb,
            dict(learning_rate=0.1, weight_decay=0.01),
            1.0,
            [0.3635213, -0.8628417, 1.362162, -1.861483, 0.2496605],
            [-0.2668669, -1.034122, 1.254352, -1.969629, -0.3666835],
        ),
        (
            optforge.optim.RAdam,
            dict(lr=0.1),
            1.0,
            [0.49000001, -0.980000019, 1.47000003, -1.96000004, 0.25],
            [0.440975606, -0.994457662, 1.46190798, -1.97899616, 0.233024001],
        ),
    ],
    ids=["Adam", "AdamOffload", "ProximalAdagrad", "Lamb", "RAdam"],
)
def test_golden_numbers_with_parameters_on_the_device(cls, kwargs, scale, step1, step5):
    p = optforge.Parameter(cuda.to_device(W0.astype(np.float32)), "w")
    opt = cls([p], **kwargs)
    for step in range(1, 6):
        opt((cuda.to_device(golden_grad(step, scale)),))
        if step == 1:
            np.testing.assert_allclose(p.asnumpy(), step1, **MS_TOL)
    np.testing.assert_allclose(p.asnumpy(), step5, **MS_TOL)


def test_a_group_larger_than_one_launch():
    shapes = [(i + 1,) for i in range(11)]  # 11 tensors: two launches of up to 8
    on_host, on_device, rng = pair(optforge.nn.Adam, dict(learning_rate=0.01), np.float32, shapes)
    assert len(on_device._batches[0].launch_groups) == 2
    for _ in range(2):
        grads = tuple(rng.standard_normal(s).astype(np.float32) for s in shapes)
        on_host(grads)
        on_device(grads)
    for a, b in zip(on_host.parameters, on_device.parameters):
        np.testing.assert_allclose(b.asnumpy(), a.data, **TOL[np.float32])


def test_mixed_host_and_device_in_one_group_is_refused():
    a = optforge.Parameter(np.ones(3, np.float32), "a")
    b = optforge.Parameter(cuda.to_device(np.ones(3, np.float32)), "b")
    with pytest.raises(
        ValueError, match=r"parameter group 0 mixes device arrays \('b'\) and host arrays \('a'\)"
    ):
        optforge.nn.Adam([a, b])
    optforge.nn.Adam([{"params": [a]}, {"params": [b]}])  # one place per group is fine


def test_device_gradient_for_a_host_parameter_is_refused():
    p = optforge.Parameter(np.ones(3, np.float32), "w")
    opt = optforge.nn.Adam([p])
    with pytest.raises(TypeError, match="the parameter is in host memory"):
        opt((cuda.to_device(np.ones(3, np.float32)),))


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (optforge.nn.ProximalAdagrad, dict(learning_rate=0.1, l1=0.01, weight_decay=0.1)),
        (optforge.nn.Adam, dict(learning_rate=0.01, weight_decay=0.1, loss_scale=2.0)),
    ],
)
def test_row_sparse_gradients_on_the_device(cls, kwargs):
    shapes = [(12, 3), (5,)]
    on_host, on_device, rng = pair(cls, kwargs, np.float32, shapes)
    for _ in range(3):
        indices = rng.integers(0, 12, size=5)
        values = rng.standard_normal((5, 3)).astype(np.float32)
        dense = rng.standard_normal(5).astype(np.float32)
        on_host((RowTensor(indices, values, (12, 3)), dense))
        on_device((RowTensor(indices, values, (12, 3)), dense))
    for a, b in zip(on_host.parameters, on_device.parameters):
        np.testing.assert_allclose(b.asnumpy(), a.data, **TOL[np.float32])


def test_adam_offload_keeps_its_state_in_host_memory():
    on_host, on_device, rng = pair(optforge.nn.AdamOffload, dict(learning_rate=0.01), np.float32)
    assert all(isinstance(m, np.ndarray) for m in on_device.moment1 + on_device.moment2)
    assert all(isinstance(p.data, type(cuda.to_device(np.ones(1)))) for p in on_device.parameters)
    for _ in range(3):
        grads = tuple(rng.standard_normal(s).astype(np.float32) for s in SHAPES)
        on_host(grads)
        on_device(tuple(cuda.to_device(g) for g in grads))
    for name in ("moment1", "moment2"):
        for a, b in zip(getattr(on_host, name), getattr(on_device, name)):
            np.testing.assert_allclose(b, a, **TOL[np.float32])
    for a, b in zip(on_host.parameters, on_device.parameters):
        np.testing.assert_allclose(b.asnumpy(), a.data, **TOL[np.float32])


def test_lamb_on_the_device_gives_the_same_bits_every_run():
    def run():
        p = optforge.Parameter(cuda.to_device(np.linspace(-1, 1, 70, dtype=np.float32)), "w")
        opt = optforge.nn.Lamb([p], learning_rate=0.01)
        for k in range(3):
            opt((np.cos(np.arange(70, dtype=np.float32) + k),))
        return p.asnumpy()

    np.testing.assert_array_equal(run(), run())


CATALOGUE = [
    (name, kwargs)
    for name, kwargs in [
        ("Adam", {"amsgrad": True, "weight_decay": 0.1}),
        ("AdamW", {}),
        ("Adamax", {}),
        ("Adagrad", {"lr_decay": 0.01}),
        ("Adadelta", {}),
        ("RMSprop", {"centered": True, "momentum": 0.9}),
        ("SGD", {"momentum": 0.9, "nesterov": True}),
        ("NAdam", {}),
        ("Rprop", {}),
        ("ASGD", {"t0": 1.0}),
        ("Lion", {}),
        ("AdaBelief", {}),
        ("Adan", {"weight_decay": 0.02}),
    ]
]


@pytest.mark.parametrize("name, kwargs", CATALOGUE, ids=[n for n, _ in CATALOGUE])
def test_catalogue_on_the_device_matches_the_cpu_backend(name, kwargs):
    cls = getattr(optforge.optim, name)
    on_host, on_device, rng = pair(cls, dict(kwargs, lr=0.01), np.float32)
    for _ in range(3):
        grads = tuple(rng.standard_normal(s).astype(np.float32) for s in SHAPES)
        on_host(grads)
        on_device(grads)
    for a, b in zip(on_host.parameters, on_device.parameters):
        np.testing.assert_allclose(b.asnumpy(), a.data, **TOL[np.float32], err_msg=name)


@pytest.mark.parametrize(
    "kwargs, dtype",
    [(dict(lr=0.05, weight_decay=0.1), np.float32), (dict(lr=0.3, maximize=True), np.float64)],
)
def test_adafactor_factored_and_full_tensors_on_the_device_match_the_cpu_backend(kwargs, dtype):
    """Matrices (a stack of them, one spanning several chunks of rows) step with the factored
    CUDA kernels, the vector and the scalar with the ordinary ones. (Small: the simulator
    runs every thread, and every barrier of a row's sum, in Python.)"""
    shapes = [(5,), (2, 2, 3), (5, 3), ()]
    on_host, on_device, rng = pair(optforge.optim.Adafactor, kwargs, dtype, shapes)
    for step in range(3):
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        on_host(tuple(grads))
        on_device(tuple(cuda.to_device(g) for g in grads))
        for a, b in zip(on_host.parameters, on_device.parameters):
            np.testing.assert_allclose(b.asnumpy(), a.data, **TOL[dtype], err_msg=f"{a.name} step {step}")
    for name in ("row_var", "col_var", "variance"):
        for a, b in zip(getattr(on_host, name), getattr(on_device, name)):
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_allclose(b.copy_to_host(), a, **TOL[dtype], err_msg=name)


@pytest.mark.parametrize("cls, kwargs", CASES[:1] + CASES[3:5], ids=["Adam", "AdamOffload", "Lamb"])
def test_replaced_device_data_is_followed_or_refused(cls, kwargs):
    """`p.data = new` on the device: the same shape is followed, another shape refused."""
    on_host, on_device, rng = pair(cls, kwargs, np.float32)
    grads = [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(3)]
    on_host(tuple(grads[0]))
    on_device(tuple(grads[0]))
    old = on_device.parameters[1].data
    on_device.parameters[1].data = cuda.to_device(old.copy_to_host())
    kept = old.copy_to_host()
    for g in grads[1:]:
        on_host(tuple(g))
        on_device(tuple(g))
    for a, b in zip(on_host.parameters, on_device.parameters):
        np.testing.assert_allclose(b.asnumpy(), a.data, **TOL[np.float32])
    np.testing.assert_array_equal(old.copy_to_host(), kept)  # the orphaned array is left alone
    on_device.parameters[2].data = cuda.to_device(np.zeros(5, np.float32))
    before = on_device.state_dict()
    with pytest.raises(ValueError, match="was replaced by a float32\\[5\\] device array"):
        on_device(tuple(grads[0]))
    for key, value in on_device.state_dict().items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(before[key]), err_msg=key)
