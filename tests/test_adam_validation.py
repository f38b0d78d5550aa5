"""One test per exception nn.Adam documents (and those MindSpore's code raises where
its documentation is silent); bad step calls raise and change nothing."""

import math

import numpy as np
import pytest

import optforge
from optforge.nn import Adam
from optforge.runtime.nn_optimizer import NNOptimizer


def param(name="w", shape=(3,), dtype=np.float32):
    return optforge.Parameter(np.ones(shape, dtype), name)


@pytest.mark.parametrize("learning_rate", [None, np.float32(0.1), object(), lambda k: 0.1])
def test_learning_rate_of_unsupported_type_is_a_type_error(learning_rate):
    with pytest.raises(TypeError, match=r"For 'Adam', the argument 'learning_rate' must be int, float"):
        Adam([param()], learning_rate=learning_rate)


def test_parameters_element_neither_parameter_nor_dict_is_a_type_error():
    with pytest.raises(
        TypeError, match="all elements of the argument 'parameters' must be 'Parameter' or 'dict'"
    ):
        Adam([1, 2])
    with pytest.raises(TypeError, match="must be 'Parameter' or 'dict'"):
        Adam([param(), {"params": [param("b")]}])


@pytest.mark.parametrize("arg", ["beta1", "beta2", "eps"])
@pytest.mark.parametrize("value", [1, True, np.float32(0.5), "0.5"])
def test_beta_or_eps_not_float_is_a_type_error(arg, value):
    with pytest.raises(
        TypeError,
        match=rf"For 'Adam', the type of '{arg}' should be 'float', but got type '{type(value).__name__}'",
    ):
        Adam([param()], **{arg: value})


@pytest.mark.parametrize("value", [np.float32(2.0), "2.0", None])
def test_loss_scale_not_float_is_a_type_error(value):
    with pytest.raises(TypeError, match=r"For 'Adam', the type of 'loss_scale' should be 'float' or 'int'"):
        Adam([param()], loss_scale=value)


def test_loss_scale_int_is_converted():
    # The documentation's Raises says float; its description of loss_scale (and the code)
    # say an int is converted to float. We follow the description.
    assert Adam([param()], loss_scale=4).loss_scale == 4.0


@pytest.mark.parametrize("value", ["0.1", None, np.float32(0.1)])
def test_weight_decay_not_a_number_is_a_type_error(value):
    with pytest.raises(TypeError, match=r"For 'Adam', the argument 'weight_decay' must be int, float"):
        Adam([param()], weight_decay=value)


@pytest.mark.parametrize("arg", ["use_locking", "use_nesterov", "use_amsgrad"])
def test_flags_not_bool_are_type_errors(arg):
    with pytest.raises(
        TypeError, match=rf"For 'Adam', the type of '{arg}' should be 'bool', but got type 'int'"
    ):
        Adam([param()], **{arg: 1})


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_loss_scale_not_positive_is_a_value_error(value):
    with pytest.raises(
        ValueError, match=rf"For 'Adam', the 'loss_scale' must be float and must > 0, but got '{value}'"
    ):
        Adam([param()], loss_scale=value)


@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_loss_scale_not_finite_is_a_value_error(value):
    with pytest.raises(ValueError, match="the 'loss_scale' must be a legal value"):
        Adam([param()], loss_scale=value)


@pytest.mark.parametrize("value", [0.0, -1e-8])
def test_eps_not_positive_is_a_value_error(value):
    with pytest.raises(
        ValueError, match=rf"For 'Adam', the 'eps' must be float and must > 0, but got '{value}'"
    ):
        Adam([param()], eps=value)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_eps_not_finite_is_a_value_error(value):
    with pytest.raises(ValueError, match=rf"For 'Adam', the 'eps' must be a legal value, but got '{value}'"):
        Adam([param()], eps=value)


@pytest.mark.parametrize("arg", ["beta1", "beta2"])
@pytest.mark.parametrize("value", [0.0, 1.0, -0.5, 1.5, math.nan])
def test_beta_outside_open_unit_interval_is_a_value_error(arg, value):
    with pytest.raises(
        ValueError, match=rf"For 'Adam', the '{arg}' must be in range of \(0.0, 1.0\), but got {value}"
    ):
        Adam([param()], **{arg: value})


def test_betas_just_inside_the_interval_are_accepted():
    Adam([param()], beta1=1e-12, beta2=1 - 1e-12, eps=1e-300)


def test_weight_decay_negative_is_a_value_error():
    with pytest.raises(
        ValueError, match=r"For 'Adam', the 'weight_decay' must be float and must >= 0, but got '-0.1'"
    ):
        Adam([param()], weight_decay=-0.1)


def test_learning_rate_negative_or_not_finite_is_a_value_error():
    with pytest.raises(
        ValueError, match=r"For 'Adam', the 'learning rate' must be float and must >= 0, but got '-0.1'"
    ):
        Adam([param()], learning_rate=-0.1)
    with pytest.raises(ValueError, match="the 'learning rate' must be a legal value, but got 'inf'"):
        Adam([param()], learning_rate=math.inf)


def test_learning_rate_zero_and_bool_are_accepted():
    Adam([param()], learning_rate=0)
    Adam([param()], learning_rate=True)


def test_learning_rate_array_of_two_dimensions_is_a_value_error():
    with pytest.raises(ValueError, match="the dimension of it should be 0 or 1, but got 2"):
        Adam([param()], learning_rate=np.ones((2, 2)))


def test_learning_rate_string_is_a_value_error():
    # A str is Iterable; as in MindSpore its characters fail to convert to numbers.
    with pytest.raises(ValueError, match="'learning_rate' must hold numbers"):
        Adam([param()], learning_rate="a")


@pytest.mark.parametrize(
    "params, kind, message",
    [
        (None, ValueError, "the argument parameters can not be None"),
        ([], ValueError, "the argument parameters must not be empty"),
        (5, TypeError, "the argument parameters must be Iterable type"),
    ],
)
def test_parameters_base_checks(params, kind, message):
    with pytest.raises(kind, match=message):
        Adam(params)


def test_group_with_unknown_key_is_a_key_error():
    with pytest.raises(
        KeyError, match=r"the key in group params must be one of in .* but got \['momentum'\]"
    ):
        Adam([{"params": [param()], "momentum": 0.9}])


def test_group_without_params_is_a_key_error():
    with pytest.raises(KeyError, match="needs the key 'params'"):
        Adam([{"lr": 0.1}])


def test_group_params_checks():
    with pytest.raises(ValueError, match="the argument group `params` must not be empty"):
        Adam([{"params": []}])
    with pytest.raises(TypeError, match=r"must be Parameter type, but got <class 'float'> at index 1"):
        Adam([{"params": [param(), 1.0]}])


def test_grad_centralization_not_bool_is_a_type_error():
    with pytest.raises(TypeError, match="the 'grad_centralization' must be bool type, but got <class 'int'>"):
        Adam([{"params": [param()], "grad_centralization": 1}])


def test_order_params_checks():
    a, b = param("a"), param("b")
    with pytest.raises(ValueError, match="should only include the 'order_params' key"):
        Adam([{"params": [a]}, {"order_params": [a], "lr": 0.1}])
    with pytest.raises(ValueError, match="the length of order parameters must be the same"):
        Adam([{"params": [a]}, {"params": [b]}, {"order_params": [a]}])
    with pytest.raises(TypeError, match="'order_params' must be Iterable"):
        Adam([{"params": [a]}, {"order_params": 3}])


def test_parameter_in_two_groups_is_a_runtime_error():
    a = param("a")
    with pytest.raises(RuntimeError, match="the parameter 'a' appears more than once"):
        Adam([{"params": [a]}, {"params": [a]}])


def test_dynamic_learning_rates_of_different_lengths_are_a_value_error():
    with pytest.raises(ValueError, match="must all have the same length"):
        Adam([{"params": [param("a")], "lr": [0.1, 0.2]}], learning_rate=[0.1, 0.2, 0.3])


def test_arguments_are_checked_before_anything_is_allocated(monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("state allocated before validation finished")

    monkeypatch.setattr(NNOptimizer, "_finish_init", must_not_run)
    with pytest.raises(ValueError, match="'beta2'"):
        Adam([param()], beta2=1.0)
    with pytest.raises(TypeError, match="'use_amsgrad'"):
        Adam([param()], use_amsgrad="yes")


# -- bad step calls: raise before anything changes --


def snapshot(opt):
    return (
        [p.asnumpy() for p in opt.parameters],
        {name: [a.copy() for a in arrays] for name, arrays in opt.state.items()},
        opt.global_step,
    )


def assert_unchanged(opt, before):
    params, state, step = before
    for p, data in zip(opt.parameters, params):
        np.testing.assert_array_equal(p.data, data)
    for name, arrays in state.items():
        for got, want in zip(opt.state[name], arrays):
            np.testing.assert_array_equal(got, want)
    assert opt.global_step == step


@pytest.fixture
def stepped():
    """Two groups, two dtypes, one step already taken, so state is non-trivial."""
    a = optforge.Parameter(np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), "a")
    b = optforge.Parameter(np.linspace(0, 1, 5), "b")  # float64
    c = optforge.Parameter(np.ones(4, np.float32), "c")
    opt = Adam([{"params": [a, b], "lr": 0.1}, {"params": [c]}], use_amsgrad=True)
    good = [np.full(p.shape, 0.5, p.dtype) for p in opt.parameters]
    opt(tuple(good))
    return opt, good


@pytest.mark.parametrize(
    "mutate, kind, message",
    [
        (lambda g: g[:-1], ValueError, "expected 3 gradients .* but got 2"),
        (lambda g: g + [g[0]], ValueError, "expected 3 gradients .* but got 4"),
        (
            lambda g: g[:2] + [np.ones(5, np.float32)],
            ValueError,
            r"gradient 2 \(of parameter 'c'\) must have shape \(4,\)",
        ),
        (
            lambda g: g[:2] + [g[2].astype(np.float64)],
            TypeError,
            r"gradient 2 \(of parameter 'c'\) must have dtype float32",
        ),
        (
            lambda g: g[:2] + [g[2].astype(np.int32)],
            TypeError,
            "must have dtype float32 like its parameter, but got int32",
        ),
        (lambda g: g[:2] + [[0.5] * 4], TypeError, "must be a numpy.ndarray"),
        (lambda g: iter(g), TypeError, "the gradients must be a tuple"),
    ],
)
def test_bad_step_call_raises_and_changes_nothing(stepped, mutate, kind, message):
    opt, good = stepped
    before = snapshot(opt)
    with pytest.raises(kind, match=message):
        bad = mutate(list(good))
        opt(tuple(bad) if isinstance(bad, list) else bad)
    assert_unchanged(opt, before)
    assert opt(tuple(good)) is True  # and the optimizer is still usable
