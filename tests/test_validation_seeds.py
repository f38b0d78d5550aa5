"""Every exception the seed pages document, with its documented type, for ProximalAdagrad,
Lamb, AdamOffload and RAdam (Adam's are in test_adam_validation.py); where a page is silent,
what MindSpore's code does. Messages name the class, the argument and the value."""

import math

import numpy as np
import pytest

import optforge
from optforge.nn import AdamOffload, Lamb, ProximalAdagrad
from optforge.optim import RAdam


def params():
    return [optforge.Parameter(np.ones(3, np.float32), "w")]


# (class, required kwargs)
NN = {
    "ProximalAdagrad": (ProximalAdagrad, {}),
    "Lamb": (Lamb, {"learning_rate": 0.1}),
    "AdamOffload": (AdamOffload, {}),
}


@pytest.mark.parametrize("name", sorted(NN))
@pytest.mark.parametrize("lr", [None, np.float32(0.1), object()])
def test_nn_learning_rate_of_unsupported_type_is_a_type_error(name, lr):
    cls, base = NN[name]
    with pytest.raises(TypeError, match=rf"For '{name}', the argument 'learning_rate' must be int, float"):
        cls(params(), **(base | {"learning_rate": lr}))


@pytest.mark.parametrize("name", sorted(NN))
def test_nn_parameters_element_of_wrong_type_is_a_type_error(name):
    cls, base = NN[name]
    with pytest.raises(TypeError, match="must be 'Parameter' or 'dict'"):
        cls([1.0], **base)


@pytest.mark.parametrize("name", sorted(NN))
@pytest.mark.parametrize("wd", ["0.1", None])
def test_nn_weight_decay_not_a_number_is_a_type_error(name, wd):
    cls, base = NN[name]
    with pytest.raises(TypeError, match=rf"For '{name}', the argument 'weight_decay' must be int, float"):
        cls(params(), **(base | {"weight_decay": wd}))


@pytest.mark.parametrize("name", sorted(NN))
def test_nn_weight_decay_negative_is_a_value_error(name):
    cls, base = NN[name]
    with pytest.raises(
        ValueError, match=rf"For '{name}', the 'weight_decay' must be float and must >= 0, but got '-0.5'"
    ):
        cls(params(), **(base | {"weight_decay": -0.5}))


@pytest.mark.parametrize("name", ["ProximalAdagrad", "AdamOffload"])
@pytest.mark.parametrize(
    "value, kind, message",
    [
        (np.float32(1.0), TypeError, "the type of 'loss_scale' should be 'float' or 'int'"),
        (0.0, ValueError, "the 'loss_scale' must be float and must > 0, but got '0.0'"),
        (-2.0, ValueError, "the 'loss_scale' must be float and must > 0, but got '-2.0'"),
    ],
)
def test_nn_loss_scale_checks(name, value, kind, message):
    cls, base = NN[name]
    with pytest.raises(kind, match=message):
        cls(params(), **(base | {"loss_scale": value}))


@pytest.mark.parametrize("arg", ["accum", "l1", "l2"])
@pytest.mark.parametrize("value", [0, 1, True, np.float32(0.1)])
def test_proximal_adagrad_accum_l1_l2_not_float_are_type_errors(arg, value):
    """The page: TypeError if not float; an int 0 too."""
    with pytest.raises(
        TypeError,
        match=rf"For 'ProximalAdagrad', the type of '{arg}' should be 'float', "
        rf"but got type '{type(value).__name__}'",
    ):
        ProximalAdagrad(params(), **{arg: value})


@pytest.mark.parametrize("arg", ["accum", "l1", "l2"])
@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf])
def test_proximal_adagrad_accum_l1_l2_negative_or_not_finite_are_value_errors(arg, value):
    with pytest.raises(ValueError, match=rf"For 'ProximalAdagrad', the '{arg}' must be"):
        ProximalAdagrad(params(), **{arg: value})


def test_proximal_adagrad_accepts_zero_accum_l1_l2():
    ProximalAdagrad(params(), accum=0.0, l1=0.0, l2=0.0)


def test_proximal_adagrad_use_locking_not_bool_is_a_type_error():
    with pytest.raises(TypeError, match="the type of 'use_locking' should be 'bool'"):
        ProximalAdagrad(params(), use_locking=1)


@pytest.mark.parametrize("name", ["Lamb", "AdamOffload"])
@pytest.mark.parametrize("arg", ["beta1", "beta2", "eps"])
@pytest.mark.parametrize("value", [1, np.float32(0.5)])
def test_betas_and_eps_not_float_are_type_errors(name, arg, value):
    cls, base = NN[name]
    with pytest.raises(TypeError, match=rf"For '{name}', the type of '{arg}' should be 'float'"):
        cls(params(), **(base | {arg: value}))


@pytest.mark.parametrize("name", ["Lamb", "AdamOffload"])
@pytest.mark.parametrize("arg", ["beta1", "beta2"])
@pytest.mark.parametrize("value", [0.0, 1.0, math.nan])
def test_betas_outside_open_unit_interval_are_value_errors(name, arg, value):
    cls, base = NN[name]
    with pytest.raises(ValueError, match=rf"For '{name}', the '{arg}' must be in range of \(0.0, 1.0\)"):
        cls(params(), **(base | {arg: value}))


@pytest.mark.parametrize("name", ["Lamb", "AdamOffload"])
@pytest.mark.parametrize("value", [0.0, -1e-6])
def test_eps_not_positive_is_a_value_error(name, value):
    cls, base = NN[name]
    with pytest.raises(ValueError, match=rf"For '{name}', the 'eps' must be float and must > 0"):
        cls(params(), **(base | {"eps": value}))


@pytest.mark.parametrize("arg", ["use_locking", "use_nesterov"])
def test_adam_offload_flags_not_bool_are_type_errors(arg):
    with pytest.raises(TypeError, match=rf"For 'AdamOffload', the type of '{arg}' should be 'bool'"):
        AdamOffload(params(), **{arg: "yes"})


def test_lamb_accepts_a_callable_weight_decay_and_zero_learning_rate():
    Lamb(params(), learning_rate=0.0, weight_decay=lambda step: 0.01)


# -- RAdam: the page documents ValueError for all of these --


@pytest.mark.parametrize("lr", ["0.1", None, [0.1], np.float32(0.1), np.ones(2)])
def test_radam_lr_of_unsupported_type_is_a_value_error(lr):
    """The page says ValueError; MindSpore's code raises TypeError for some: we follow the page."""
    with pytest.raises(ValueError, match="For RAdam, the lr must be int, float or a 0-d ndarray"):
        RAdam(params(), lr=lr)


@pytest.mark.parametrize("lr", [-0.1, 0.0, np.array(0.0)])
def test_radam_lr_not_positive_is_a_value_error(lr):
    with pytest.raises(ValueError, match=r"For RAdam, the lr must be greater than 0.0, but got -?0\.[01]"):
        RAdam(params(), lr=lr)


@pytest.mark.parametrize("eps", [-1e-8, 0.0])
def test_radam_eps_not_positive_is_a_value_error(eps):
    with pytest.raises(ValueError, match="For 'RAdam', the 'eps' must be float and must > 0"):
        RAdam(params(), eps=eps)


def test_radam_weight_decay_negative_is_a_value_error():
    with pytest.raises(
        ValueError, match="For RAdam, the weight_decay must be greater than or equal to 0.0, but got -0.1"
    ):
        RAdam(params(), weight_decay=-0.1)


@pytest.mark.parametrize(
    "betas, label, value",
    [
        ((1.0, 0.999), "betas\\[0\\]", "1.0"),
        ((0.9, 1.0), "betas\\[1\\]", "1.0"),
        ((-0.1, 0.9), "betas\\[0\\]", "-0.1"),
        ((0.9, math.nan), "betas\\[1\\]", "nan"),
    ],
)
def test_radam_betas_outside_zero_one_are_value_errors(betas, label, value):
    with pytest.raises(
        ValueError, match=rf"For 'RAdam', the '{label}' must be in range of \[0.0, 1.0\), but got {value}"
    ):
        RAdam(params(), betas=betas)


def test_radam_accepts_what_mindspore_accepts():
    RAdam(params(), lr=1, betas=(0.0, 0.0), eps=1, weight_decay=0)  # int lr/eps, betas = 0
    RAdam(params(), betas=[np.float32(0.9), np.float64(0.99)], lr=np.array(0.01))


def test_radam_silent_cases_follow_mindspores_code():
    with pytest.raises(
        TypeError, match=r"For 'RAdam', the type of 'betas\[0\]' should be 'float', but got type 'int'"
    ):
        RAdam(params(), betas=(0, 0.9))
    with pytest.raises(IndexError, match="must hold two values"):
        RAdam(params(), betas=(0.9,))
    with pytest.raises(TypeError, match="the argument 'weight_decay' must be int or float"):
        RAdam(params(), weight_decay="0.1")
    with pytest.raises(ValueError, match="the argument params can not be None"):
        RAdam(None)
    with pytest.raises(ValueError, match="must not be empty"):
        RAdam([])
    with pytest.raises(TypeError, match="must be Iterable"):
        RAdam(3)
    with pytest.raises(TypeError, match="the element in params must be Parameter type"):
        RAdam([1.0])
    p = params()
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        RAdam([{"params": p}, {"params": p}])


def test_radam_group_lr_zero_is_allowed_and_negative_is_not():
    a, b = params(), [optforge.Parameter(np.ones(2), "b")]
    RAdam([{"params": a, "lr": 0.0}, {"params": b}])
    with pytest.raises(ValueError, match="must >= 0"):
        RAdam([{"params": a, "lr": -0.1}])
    with pytest.raises(ValueError, match="weight_decay must be greater than or equal"):
        RAdam([{"params": a, "weight_decay": -1.0}])


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (ProximalAdagrad, {}),
        (Lamb, {"learning_rate": 0.1}),
        (AdamOffload, {}),
        (RAdam, {}),
    ],
)
@pytest.mark.parametrize(
    "bad, kind",
    [
        (lambda g: g[:1], ValueError),
        (lambda g: [g[0], np.ones(3)], ValueError),
        (lambda g: [g[0], g[1].astype(np.float32)], TypeError),
        (lambda g: [g[0], g[1].astype(np.int64)], TypeError),
    ],
)
def test_bad_step_calls_raise_and_change_nothing(cls, kwargs, bad, kind):
    a = optforge.Parameter(np.linspace(0.5, 1.5, 6, dtype=np.float32).reshape(2, 3), "a")
    b = optforge.Parameter(np.linspace(-1, 1, 4), "b")
    opt = cls([a, b], **kwargs)
    good = [np.full((2, 3), 0.3, np.float32), np.full(4, -0.2)]
    opt(tuple(good))
    before = [a.asnumpy(), b.asnumpy()] + [x.copy() for arrays in opt.state.values() for x in arrays]
    with pytest.raises(kind):
        opt(tuple(bad(good)))
    after = [a.data, b.data] + [x for arrays in opt.state.values() for x in arrays]
    for got, want in zip(after, before):
        np.testing.assert_array_equal(got, want)
    assert opt.global_step == 1
