"""The seed optimizers against the numbers MindSpore 2.10 printed (mindspore-semantics.md 10)."""

import numpy as np
import pytest

import optforge
from tests.conftest import MS_TOL, W0, golden_grad
from tests.references.mindspore_adam import adam_trajectory

GOLDEN = {
    "default": (
        dict(learning_rate=0.1),
        1.0,
        [
            [0.400000304, -0.900000155, 1.4000001, -1.9000001, 0.25],
            [0.303482562, -0.873366594, 1.40526319, -1.91627324, 0.175587043],
            [0.261473984, -0.912305295, 1.38168705, -1.90922189, 0.0927305892],
            [0.19394435, -0.928102255, 1.35066998, -1.92769694, 0.0545153022],
            [0.136866376, -0.965016425, 1.36552143, -1.9505353, -0.00887290761],
        ],
    ),
    "nesterov": (
        dict(learning_rate=0.1, use_nesterov=True),
        1.0,
        [
            [0.310000598, -0.8100003, 1.31000018, -1.81000018, 0.25],
            [0.156570688, -0.81932205, 1.36736834, -1.88276446, 0.108615369],
            [0.144855261, -0.905601978, 1.31889427, -1.8573606, -0.0230978187],
            [0.0345064588, -0.904803097, 1.27884877, -1.89773488, -0.0337553695],
            [-0.0168637149, -0.963079572, 1.32718658, -1.92565525, -0.137336761],
        ],
    ),
    "amsgrad": (
        dict(learning_rate=0.1, use_amsgrad=True),
        1.0,
        [
            [0.400000304, -0.900000155, 1.4000001, -1.9000001, 0.25],
            [0.303482562, -0.873366594, 1.40526319, -1.91627324, 0.175587043],
            [0.261473984, -0.912305295, 1.38168705, -1.90922189, 0.0927305892],
            [0.19394435, -0.928102255, 1.35066998, -1.92769694, 0.0545153059],
            [0.136894926, -0.965016425, 1.36552143, -1.9505353, -0.00887290016],
        ],
    ),
    "decay_and_loss_scale": (
        dict(learning_rate=0.05, beta1=0.8, beta2=0.9, eps=1e-3, weight_decay=0.1, loss_scale=4.0),
        4.0,
        [
            [0.451032341, -0.950521529, 1.45034897, -1.95026219, 0.205614388],
            [0.402252078, -0.919251204, 1.43318272, -1.93993497, 0.160931692],
            [0.374123544, -0.921215355, 1.40229392, -1.91530991, 0.115190305],
            [0.335938692, -0.906634152, 1.36720526, -1.90106094, 0.0895611569],
            [0.303092957, -0.904112101, 1.35467196, -1.88562262, 0.0532936268],
        ],
    ),
}
# MindSpore ignores use_nesterov with use_amsgrad: the same numbers.
GOLDEN["amsgrad_and_nesterov"] = (
    dict(learning_rate=0.1, use_amsgrad=True, use_nesterov=True),
    *GOLDEN["amsgrad"][1:],
)


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_adam_matches_mindspore_golden_trajectory(case):
    kwargs, scale, expected = GOLDEN[case]
    p = optforge.Parameter(W0.astype(np.float32), "w")
    opt = optforge.nn.Adam([p], **kwargs)
    for step, row in enumerate(expected, 1):
        assert opt((golden_grad(step, scale),)) is True
        np.testing.assert_allclose(p.asnumpy(), row, **MS_TOL, err_msg=f"{case}, step {step}")


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_reference_port_reproduces_golden_trajectory(case):
    """The NumPy port the other tests lean on is itself checked against MindSpore."""
    kwargs, scale, expected = GOLDEN[case]
    kwargs = dict(kwargs)
    lr = kwargs.pop("learning_rate")
    grads = [golden_grad(s, scale) for s in range(1, 6)]
    got = adam_trajectory(W0, grads, [lr] * 5, **kwargs)
    np.testing.assert_allclose(np.array(got), np.array(expected), atol=2e-7, rtol=0)


OTHERS = {
    "adam_offload": (
        optforge.nn.AdamOffload,
        dict(learning_rate=0.1),
        1.0,
        [
            [0.400000304, -0.900000155, 1.4000001, -1.9000001, 0.25],
            [0.303482562, -0.873366594, 1.40526319, -1.91627324, 0.175587028],
            [0.261473984, -0.912305295, 1.38168705, -1.90922189, 0.0927305743],
            [0.19394435, -0.928102255, 1.35066998, -1.92769694, 0.0545152836],
            [0.136866391, -0.965016425, 1.36552143, -1.9505353, -0.00887292251],
        ],
    ),
    "adam_offload_nesterov": (
        optforge.nn.AdamOffload,
        dict(learning_rate=0.1, use_nesterov=True),
        1.0,
        [
            [0.310000598, -0.8100003, 1.31000018, -1.81000018, 0.25],
            [0.156570688, -0.81932205, 1.36736834, -1.88276446, 0.108615369],
            [0.144855246, -0.905601978, 1.31889427, -1.8573606, -0.0230978131],
            [0.0345064476, -0.904803097, 1.27884877, -1.89773488, -0.0337553695],
            [-0.0168637224, -0.963079572, 1.32718658, -1.92565525, -0.137336761],
        ],
    ),
    "adam_offload_decay_and_loss_scale": (
        optforge.nn.AdamOffload,
        dict(learning_rate=0.05, beta1=0.8, beta2=0.9, eps=1e-3, weight_decay=0.1, loss_scale=4.0),
        4.0,
        [
            [0.451032341, -0.950521529, 1.45034897, -1.95026219, 0.205614388],
            [0.402252078, -0.919251204, 1.43318272, -1.93993497, 0.160931692],
            [0.374123544, -0.921215355, 1.40229392, -1.91530991, 0.115190312],
            [0.335938692, -0.906634152, 1.36720526, -1.90106094, 0.0895611644],
            [0.303092957, -0.904112101, 1.35467196, -1.88562262, 0.0532936342],
        ],
    ),
    "proximal_adagrad": (
        optforge.nn.ProximalAdagrad,
        dict(accum=0.1, learning_rate=0.1),
        1.0,
        [
            [0.469848871, -0.946547747, 1.43117523, -1.92155349, 0.25],
            [0.418209106, -0.972367644, 1.48786986, -1.99156749, 0.234382629],
            [0.443209112, -1.03360486, 1.45251453, -1.96459949, 0.204568386],
            [0.372498423, -1.01360488, 1.43510675, -2.00209951, 0.219312578],
            [0.372498423, -1.05074394, 1.49224961, -2.014503, 0.168512523],
        ],
    ),
    "proximal_adagrad_l1_l2": (
        optforge.nn.ProximalAdagrad,
        dict(accum=0.1, learning_rate=0.1, l1=0.05, l2=0.1),
        1.0,
        [
            [0.441462696, -0.908893466, 1.38786459, -1.8749764, 0.227009922],
            [0.367426068, -0.898601592, 1.40849209, -1.91122651, 0.189845398],
            [0.37065959, -0.930636048, 1.34059918, -1.85253692, 0.140922531],
            [0.2860533, -0.882976592, 1.29199684, -1.86053026, 0.136885971],
            [0.272399098, -0.894225478, 1.32309544, -1.8438617, 0.0715680793],
        ],
    ),
    "proximal_adagrad_all": (
        optforge.nn.ProximalAdagrad,
        dict(accum=0.5, learning_rate=0.2, l1=0.01, l2=0.02, weight_decay=0.1, loss_scale=2.0),
        2.0,
        [
            [0.453222305, -0.914520442, 1.38363159, -1.86041939, 0.238756925],
            [0.384312093, -0.90940696, 1.41254127, -1.91468835, 0.213973179],
            [0.395712882, -0.95461899, 1.33033347, -1.83159113, 0.176580101],
            [0.292559922, -0.900098741, 1.27370775, -1.84477746, 0.181759164],
            [0.282394826, -0.919828951, 1.32158077, -1.82018125, 0.120646097],
        ],
    ),
    "radam": (
        optforge.optim.RAdam,
        dict(lr=0.1),
        1.0,
        [
            [0.49000001, -0.980000019, 1.47000003, -1.96000004, 0.25],
            [0.47473684, -0.975789487, 1.47157896, -1.96736848, 0.247368425],
            [0.468795866, -0.984202743, 1.46519518, -1.96463788, 0.242017865],
            [0.452951133, -0.987261772, 1.45775986, -1.9714247, 0.239677072],
            [0.440975606, -0.994457662, 1.46190798, -1.97899616, 0.233024001],
            [0.439449102, -0.994641542, 1.46162081, -1.97880197, 0.23161073],
            [0.437255323, -0.995178938, 1.46198905, -1.97946417, 0.229738787],
            [0.435370684, -0.996661067, 1.46186805, -1.97975659, 0.227196157],
        ],
    ),
    "radam_betas_eps_decay": (
        optforge.optim.RAdam,
        dict(lr=0.1, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1),
        1.0,
        [
            [0.485000014, -0.970000029, 1.45500004, -1.94000006, 0.247500002],
            [0.464527786, -0.956833363, 1.44358337, -1.93033338, 0.242236108],
            [0.454640388, -0.957436502, 1.42273259, -1.90852058, 0.234038413],
            [0.433012128, -0.951204419, 1.400738, -1.89779437, 0.229518667],
            [0.416529685, -0.949946165, 1.39301848, -1.88758826, 0.21971114],
            [0.398593277, -0.939241886, 1.37962604, -1.87266624, 0.202401713],
            [0.372700989, -0.928004444, 1.37000406, -1.86446548, 0.179105222],
            [0.349992245, -0.928082585, 1.35133767, -1.84761, 0.148267806],
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(OTHERS))
def test_seed_optimizer_matches_published_trajectory(case):
    cls, kwargs, scale, expected = OTHERS[case]
    p = optforge.Parameter(W0.astype(np.float32), "w")
    opt = cls([p], **kwargs)
    for step, row in enumerate(expected, 1):
        assert opt((golden_grad(step, scale),)) is True
        np.testing.assert_allclose(p.asnumpy(), row, **MS_TOL, err_msg=f"{case}, step {step}")


def test_radam_first_rectified_step_is_six():
    """MindSpore's float32 rho_t crosses 5 at t = 6 (table in mindspore-semantics.md 4.3)."""
    from optforge.generated.host.radam import branch

    assert [branch(t, 0.1, 0.9, 0.999, 1e-8) for t in range(1, 9)] == [(False,)] * 5 + [(True,)] * 3
    assert branch(7, 0.1, 0.0, 0.0, 1e-8) == (False,)  # beta2 = 0: rho_inf = 1, never rectified


@pytest.mark.parametrize(
    "var, accum, lr, l1, expected",
    [
        (
            [[0.6, 0.4], [0.1, 0.5]],
            [[0.6, 0.5], [0.2, 0.6]],
            0.01,
            0.0,
            [[0.596388459, 0.392964751], [0.0978178233, 0.492815793]],
        ),
        (
            [[0.7, 0.4], [0.1, 0.5]],
            [[0.7, 0.5], [0.2, 0.6]],
            0.02,
            0.1,
            [[0.69099927, 0.3839194], [0.09127129, 0.48383552]],
        ),
        (
            [[0.8, 0.4], [0.1, 0.5]],
            [[0.8, 0.5], [0.2, 0.6]],
            0.03,
            0.0,
            [[0.79046005, 0.3788942], [0.09345347, 0.47844738]],
        ),
        (
            [[0.9, 0.4], [0.1, 0.5]],
            [[0.9, 0.5], [0.2, 0.6]],
            0.04,
            0.1,
            [[0.88391936, 0.3678388], [0.08254258, 0.46767104]],
        ),
    ],
)
def test_proximal_adagrad_kernel_cases_from_mindspore_tests(var, accum, lr, l1, expected):
    """tests/st/ops/cpu/test_apply_proximal_adagrad_op.py, one step from a given accum."""
    p = optforge.Parameter(np.array(var, np.float32), "var")
    opt = optforge.nn.ProximalAdagrad([p], accum=0.1, learning_rate=lr, l1=l1)
    opt.accum[0][...] = np.array(accum, np.float32)
    opt((np.array([[0.3, 0.7], [0.1, 0.8]], np.float32),))
    np.testing.assert_allclose(p.data, expected, rtol=1e-6)
    if l1 == 0.0 and lr == 0.01:
        np.testing.assert_allclose(opt.accum[0], [[0.690000057, 0.99], [0.210000008, 1.24]], rtol=1e-6)
