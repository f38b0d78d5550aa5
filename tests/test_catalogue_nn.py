"""The nn-dialect catalogue beyond the golden recordings: Momentum's Nesterov form (which
MindSpore 2.10's CPU kernel ignores) against its documented formula, and argument checks."""

import numpy as np
import pytest

import optforge


def test_momentum_nesterov_follows_the_documented_formula():
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal(9)
    grads = [rng.standard_normal(9) for _ in range(12)]
    p = optforge.Parameter(w0.copy(), "w")
    opt = optforge.nn.Momentum([p], learning_rate=0.01, momentum=0.8, use_nesterov=True)
    w, accum = w0.copy(), np.zeros(9)
    for g in grads:
        opt((g.copy(),))
        accum = 0.8 * accum + g
        w = w - 0.01 * (g + 0.8 * accum)
    np.testing.assert_allclose(p.data, w, rtol=1e-12)


@pytest.mark.parametrize(
    "cls, kwargs, kind, message",
    [
        (
            optforge.nn.Momentum,
            dict(learning_rate=0.1, momentum=1),
            TypeError,
            "the type of 'momentum' should be 'float'",
        ),
        (
            optforge.nn.Momentum,
            dict(learning_rate=0.1, momentum=-0.1),
            ValueError,
            "'momentum' must be float and must >= 0",
        ),
        (optforge.nn.Adagrad, dict(accum=1), TypeError, "the type of 'accum' should be 'float'"),
        (optforge.nn.Adagrad, dict(update_slots=1), TypeError, "the type of 'update_slots' should be 'bool'"),
        (optforge.nn.RMSProp, dict(epsilon=0.0), ValueError, "'epsilon' must be float and must > 0"),
        (optforge.nn.RMSProp, dict(centered="no"), TypeError, "the type of 'centered' should be 'bool'"),
        (optforge.nn.AdaMax, dict(beta1=1.0), ValueError, r"'beta1' must be in range of \(0.0, 1.0\)"),
        (optforge.nn.Adadelta, dict(rho=1.5), ValueError, r"'rho' must be in range of \[0.0, 1.0\]"),
        (optforge.nn.Rprop, dict(etas=[0.5, 1.2]), TypeError, "etas must be a tuple"),
        (
            optforge.nn.Rprop,
            dict(step_sizes=(1e-6,)),
            ValueError,
            "step_sizes must be a tuple with the size of 2",
        ),
        (optforge.nn.Rprop, dict(etas=(0.5, 2)), TypeError, "the type of 'etaplus' should be 'float'"),
        (
            optforge.nn.Rprop,
            dict(etas=(1.0, 1.2)),
            ValueError,
            r"'etaminus' must be in range of \(0.0, 1.0\)",
        ),
        (optforge.nn.Rprop, dict(etas=(0.5, 1.0)), ValueError, "'etaplus' must be float and must > 1"),
        (optforge.nn.Rprop, dict(step_sizes=(1.0, 0.5)), ValueError, r"step_sizes\[0\] must not exceed"),
        (optforge.nn.ASGD, dict(lambd=0), TypeError, "the type of 'lambd' should be 'float'"),
        (optforge.nn.ASGD, dict(t0=-1.0), ValueError, "'t0' must be float and must >= 0"),
    ],
)
def test_documented_argument_checks(cls, kwargs, kind, message):
    with pytest.raises(kind, match=message):
        cls([optforge.Parameter(np.ones(3, np.float32), "w")], **kwargs)


def test_momentum_requires_learning_rate_and_momentum():
    p = [optforge.Parameter(np.ones(3, np.float32), "w")]
    with pytest.raises(TypeError, match="momentum"):
        optforge.nn.Momentum(p, learning_rate=0.1)


def test_ftrl_l1_shrinks_toward_zero_as_documented():
    """FTRL-Proximal's closed form (McMahan et al. 2013, Algorithm 1), in float64."""
    rng = np.random.default_rng(5)
    w0 = rng.standard_normal(11)
    grads = [rng.standard_normal(11) for _ in range(12)]
    p = optforge.Parameter(w0.copy(), "w")
    opt = optforge.nn.FTRL([p], learning_rate=0.1, l1=0.5, l2=0.02, lr_power=-0.5)
    w, n, z = w0.copy(), np.full(11, 0.1), np.zeros(11)
    for g in grads:
        opt((g.copy(),))
        sigma = (np.sqrt(n + g * g) - np.sqrt(n)) / 0.1
        n = n + g * g
        z = z + g - sigma * w
        w = np.where(np.abs(z) > 0.5, -(z - np.sign(z) * 0.5) / (np.sqrt(n) / 0.1 + 2 * 0.02), 0.0)
    np.testing.assert_allclose(p.data, w, rtol=1e-10, atol=1e-14)
    assert (p.data == 0).any()  # l1 gives exact zeros
