"""optforge.nn.Adam against the numbers MindSpore 2.10 printed (mindspore-semantics.md 10.2)."""

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
