"""Adversarial tests of the nn and optim dialects: what a training loop can hand an optimizer.

Each input gets one of two outcomes, asserted for every class: the reference's result
(the same steps taken with plain, fresh arrays), or a clear exception with every parameter
and state byte unchanged (full state dicts compared before and after). The torch dialect's
are in test_torch_*.py.
"""

import threading

import numpy as np
import pytest

import optforge
from optforge.compiler.build import load_specs
from tests.modes import stepping

MODULES = {"nn": optforge.nn, "optim": optforge.optim}
# A spec of matrices (Muon: 2-D parameters only; these tests step vectors and stacks too) is
# checked by tests/test_muon.py.
EXPORTS = [
    e for spec in load_specs() for e in spec.exports if e.dialect in MODULES and spec.tensor_rank is None
]
CLASSES = [
    pytest.param(
        stepping(getattr(MODULES[e.dialect], e.class_name)), e.example, id=f"{e.dialect}.{e.class_name}"
    )
    for e in EXPORTS
]
OPTIM_CLASSES = [c for c in CLASSES if c.id.startswith("optim.")]
SHAPES = [(3, 4), (5,), (2, 3, 2)]


def parameters(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return [optforge.Parameter(rng.standard_normal(s).astype(dtype), f"layer{i}.weight")
            for i, s in enumerate(SHAPES)]  # fmt: skip


def gradients(steps, dtype=np.float32, seed=1):
    rng = np.random.default_rng(seed)
    return [[(rng.standard_normal(s) * 0.3).astype(dtype) for s in SHAPES] for _ in range(steps)]


def everything(opt) -> dict:
    """Every byte a refused call must leave alone: parameters and the full state dict."""
    sd = {key: np.array(value, copy=True) for key, value in opt.state_dict().items()}
    return {**sd, **{f"data/{i}": p.data.copy() for i, p in enumerate(opt.parameters)}}


def assert_unchanged(before: dict, opt) -> None:
    after = everything(opt)
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)


def stepped(cls, kwargs, grads, params=None):
    opt = cls(params or parameters(), **kwargs)
    for g in grads:
        opt(tuple(g))
    return opt


# -- parameters whose data is replaced --


@pytest.mark.parametrize("cls, kwargs", CLASSES)
def test_data_replaced_by_an_array_of_the_same_shape_is_followed(cls, kwargs):
    grads = gradients(5)
    reference = stepped(cls, kwargs, grads)
    opt = stepped(cls, kwargs, grads[:2])
    old = [p.data for p in opt.parameters]
    kept = [a.copy() for a in old]
    for p in opt.parameters:
        p.data = p.data.copy()  # MindSpore's set_data: the same values in new memory
    for g in grads[2:]:
        opt(tuple(g))
    for p, q in zip(opt.parameters, reference.parameters):
        np.testing.assert_array_equal(p.data, q.data)
    for a, b in zip(old, kept):  # the orphaned arrays are no longer written
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cls, kwargs", CLASSES)
def test_data_replaced_by_another_shape_is_refused_and_changes_nothing(cls, kwargs):
    grads = gradients(3)
    opt = stepped(cls, kwargs, grads[:1])
    p = opt.parameters[1]
    original = p.data
    p.data = np.zeros(2, np.float32)  # the old table covers 5 elements: no read past 2
    before = everything(opt)
    with pytest.raises(ValueError, match="was replaced by a float32\\[2\\]"):
        opt(tuple(grads[1][:1]) + (np.zeros(2, np.float32),) + tuple(grads[1][2:]))
    with pytest.raises(ValueError, match="was replaced"):
        opt(tuple(grads[1]))
    assert_unchanged(before, opt)
    p.data = original  # back to the shape the state was made for: steps again
    assert opt(tuple(grads[2]))


def test_a_huge_table_over_a_small_new_array_is_refused_not_a_crash():
    """The reviews' segfault: a Parameter of 2M elements given 1,000 new ones."""
    p = optforge.Parameter(np.zeros(2_000_000, np.float32), "big")
    opt = optforge.nn.Adam([p], learning_rate=0.1)
    opt((np.ones(2_000_000, np.float32),))
    p.data = np.zeros(1_000, np.float32)
    with pytest.raises(ValueError, match="state is for a float32\\[2000000\\]"):
        opt((np.ones(1_000, np.float32),))
    np.testing.assert_array_equal(p.data, 0)


def test_new_data_is_checked_like_the_constructor_s():
    p = optforge.Parameter(np.zeros((2, 3), np.float32), "w")
    with pytest.raises(ValueError, match="C-contiguous"):
        p.data = np.zeros((3, 2), np.float32).T
    with pytest.raises(TypeError, match="float32, float64, float16 or bfloat16"):
        p.data = np.zeros((2, 3), np.int32)
    with pytest.raises(TypeError, match="masked array"):
        p.data = np.ma.masked_array(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        p.data = [[0.0] * 3] * 2
    assert p.data.shape == (2, 3) and p.data.dtype == np.float32


# -- gradient layouts and subclasses --


def _layouts(g: np.ndarray) -> dict:
    """The same values in every layout a training loop produces."""
    padded = np.zeros((*g.shape[:-1], 2 * g.shape[-1]), g.dtype)
    padded[..., ::2] = g
    return {
        "fortran": np.asfortranarray(g),
        "strided": padded[..., ::2],
        "transposed": np.ascontiguousarray(g.T).T,
        "matrix-like subclass": g.reshape(g.shape).view(type("Sub", (np.ndarray,), {})),
        "read-only": np.frombuffer(g.tobytes(), g.dtype).reshape(g.shape),
    }


@pytest.mark.parametrize("cls, kwargs", CLASSES)
def test_every_gradient_layout_steps_like_a_plain_array(cls, kwargs):
    grads = gradients(3)
    reference = stepped(cls, kwargs, grads)
    for name in _layouts(grads[0][0]):
        opt = stepped(cls, kwargs, [[_layouts(g)[name] for g in step] for step in grads])
        for p, q in zip(opt.parameters, reference.parameters):
            np.testing.assert_array_equal(p.data, q.data, err_msg=name)


@pytest.mark.parametrize("cls, kwargs", CLASSES)
def test_a_non_contiguous_buffer_refilled_in_place_is_read_each_step(cls, kwargs):
    grads = gradients(4)
    reference = stepped(cls, kwargs, grads)
    buffers = [np.asfortranarray(g) for g in grads[0]]
    opt = cls(parameters(), **kwargs)
    for step in grads:
        for buffer, g in zip(buffers, step):
            buffer[...] = g  # the same objects every step, new values
        opt(tuple(buffers))
    for p, q in zip(opt.parameters, reference.parameters):
        np.testing.assert_array_equal(p.data, q.data)


@pytest.mark.parametrize("cls, kwargs", CLASSES)
def test_a_masked_gradient_is_refused_before_any_tensor_is_stepped(cls, kwargs):
    grads = gradients(2)
    opt = stepped(cls, kwargs, grads[:1])
    before = everything(opt)
    bad = list(grads[1])
    bad[-1] = np.ma.masked_array(bad[-1], mask=np.zeros(bad[-1].shape, bool))
    with pytest.raises(TypeError, match="masked array"):
        opt(tuple(bad))
    assert_unchanged(before, opt)


def test_groups_of_mixed_dtypes_and_layouts_are_checked_before_the_first_group_steps():
    a = optforge.Parameter(np.ones(4, np.float32), "a")
    b = optforge.Parameter(np.ones((2, 2), np.float64), "b")
    opt = optforge.optim.Adam([{"params": [a]}, {"params": [b], "lr": 0.5}])
    before = everything(opt)
    with pytest.raises(TypeError, match="dtype float64"):
        opt((np.ones(4, np.float32), np.ones((2, 2), np.float32)))
    assert_unchanged(before, opt)
    opt((np.ones(4, np.float32)[::1], np.asfortranarray(np.ones((2, 2)))))
    assert opt.global_step == 1


# -- dynamic hyperparameters --


@pytest.mark.parametrize("bad", [np.nan, -1.0, np.inf])
@pytest.mark.parametrize("form", ["array", "list", "0-d"])
def test_nn_learning_rate_arrays_and_iterables_are_range_checked(bad, form):
    values = {"array": np.array([0.1, 0.2, bad]), "list": [0.1, 0.2, bad], "0-d": np.array(bad)}[form]
    with pytest.raises(ValueError, match="learning rate"):
        optforge.nn.Adam(parameters(), learning_rate=values)


class _Schedule(optforge.nn.LearningRateSchedule):
    def __init__(self, bad_at, bad):
        self.bad_at, self.bad = bad_at, bad

    def construct(self, step):
        return self.bad if step == self.bad_at else 0.01


@pytest.mark.parametrize("bad", [np.nan, -0.5, np.inf, "a tenth", None])
@pytest.mark.parametrize("what", ["learning_rate", "weight_decay"])
def test_nn_schedules_are_checked_at_the_step_before_anything_changes(bad, what):
    grads = gradients(3)
    schedule = _Schedule(2, bad)
    kwargs = {"learning_rate": 0.01, "weight_decay": 0.01, what: schedule}
    opt = optforge.nn.Adam(parameters(), **kwargs)
    opt(tuple(grads[0]))
    opt(tuple(grads[1]))
    before = everything(opt)
    with pytest.raises(ValueError, match="schedule returned"):
        opt(tuple(grads[2]))
    assert_unchanged(before, opt)
    assert opt.global_step == 2


@pytest.mark.parametrize(
    "key, value, error",
    [
        ("lr", float("nan"), ValueError),
        ("lr", -1.0, ValueError),
        ("weight_decay", -1.0, ValueError),
        ("weight_decay", float("inf"), ValueError),
        ("weight_decay", "0.1", TypeError),
        ("betas", (float("nan"), 0.999), ValueError),
        ("betas", (0.9, 1.0), ValueError),
        ("betas", (0.9,), ValueError),
        ("betas", 0.9, ValueError),
        ("eps", -1e-8, ValueError),
        ("eps", "1e-8", TypeError),
    ],
)
def test_optim_group_options_changed_between_steps_are_checked_first(key, value, error):
    grads = gradients(2)
    a, b, c = parameters()
    opt = optforge.optim.Adam([{"params": [a]}, {"params": [b, c], "lr": 0.01}], weight_decay=0.01)
    opt(tuple(grads[0]))
    opt.param_groups[1][key] = value  # the second group: the first must not have stepped either
    before = everything(opt)
    with pytest.raises(error):
        opt(tuple(grads[1]))
    assert_unchanged(before, opt)


@pytest.mark.parametrize("cls, kwargs", OPTIM_CLASSES)
def test_optim_group_overrides_are_checked_like_the_arguments(cls, kwargs):
    """A group's own betas/eps/... (not only lr and weight_decay) are validated."""
    opt = cls(parameters(), **kwargs)
    for label, key, index, types, domain in opt._GROUP_CHECKS:
        if domain is None:
            continue
        outside = domain.upper + 1.0 if np.isfinite(domain.upper) else domain.lower - 1.0
        if "float" not in types:  # an int hyperparameter (Schedule-Free's warmup_steps): an int outside
            outside = int(outside)
        value = list(opt.param_groups[0][key]) if index is not None else outside
        if index is not None:
            value[index] = outside
            value = tuple(value)
        with pytest.raises(ValueError, match=label.replace("[", "\\[").replace("]", "\\]")):
            cls([{"params": parameters(), key: value}], **kwargs)


# -- checkpoints: parse, check, then commit --


def _sd(cls, kwargs, steps=2):
    return stepped(cls, kwargs, gradients(steps)).state_dict()


@pytest.mark.parametrize("cls, kwargs", CLASSES)
def test_a_state_dict_missing_any_key_is_refused_or_loads_the_same(cls, kwargs):
    sd = _sd(cls, kwargs)
    full = cls(parameters(), **kwargs)
    full.load_state_dict(sd)
    expected = full.state_dict()
    for key in sd:
        opt = stepped(cls, kwargs, gradients(1, seed=7))
        before = everything(opt)
        truncated = {k: v for k, v in sd.items() if k != key}
        try:
            opt.load_state_dict(truncated)
        except ValueError:
            assert_unchanged(before, opt)
        else:  # an optional key (a parameter's name, a flag of an older checkpoint)
            loaded = opt.state_dict()
            assert loaded.keys() == expected.keys()
            for k in expected:
                np.testing.assert_array_equal(loaded[k], expected[k], err_msg=f"without {key}: {k}")


@pytest.mark.parametrize("cls, kwargs", CLASSES)
def test_a_bad_last_entry_is_refused_before_anything_is_copied(cls, kwargs):
    sd = _sd(cls, kwargs)
    last = [k for k in sd if k.startswith("state/")][-1]
    for bad in (np.array(["x"] * np.size(sd[last])).reshape(np.shape(sd[last])),
                np.asarray(sd[last]).astype(np.float16), "text"):  # fmt: skip
        opt = stepped(cls, kwargs, gradients(1, seed=7))
        before = everything(opt)
        with pytest.raises(ValueError):
            opt.load_state_dict({**sd, last: bad})
        assert_unchanged(before, opt)


@pytest.mark.parametrize("step", [2.5, float("nan"), -1, "2", True, np.array([2])])
def test_a_step_that_is_not_a_count_is_refused(step):
    sd = _sd(optforge.nn.Adam, {"learning_rate": 0.01})
    opt = optforge.nn.Adam(parameters(), learning_rate=0.01)
    before = everything(opt)
    with pytest.raises(ValueError, match="step"):
        opt.load_state_dict({**sd, "step": step})
    assert_unchanged(before, opt)
    opt.load_state_dict({**sd, "step": np.float64(2.0)})  # a whole number in another type
    assert opt.global_step == 2


@pytest.mark.parametrize(
    "cls, saved, loaded",
    [
        (optforge.optim.Adam, {"amsgrad": True}, {}),
        (optforge.optim.Adam, {"maximize": True}, {}),
        (optforge.optim.Adam, {}, {"maximize": True}),
        (optforge.nn.Adam, {"use_nesterov": True}, {}),
        (optforge.optim.SGD, {"momentum": 0.9, "nesterov": True}, {"momentum": 0.9}),
    ],
)
def test_a_state_dict_saved_with_other_flags_is_refused(cls, saved, loaded):
    sd = _sd(cls, saved)
    opt = cls(parameters(), **loaded)
    before = everything(opt)
    with pytest.raises(ValueError, match="saved with|other flags"):
        opt.load_state_dict(sd)
    assert_unchanged(before, opt)
    # Also an older checkpoint without the flags: its extra state is refused.
    old = {k: v for k, v in sd.items() if not k.startswith("flag/")}
    if any(k.endswith("max_exp_avg_sq") for k in old):
        with pytest.raises(ValueError, match="other flags"):
            opt.load_state_dict(old)


@pytest.mark.parametrize("value", [np.array([np.nan, 0.999]), np.array([0.9, 1.5]), np.array([0.9, np.inf])])
def test_an_optim_state_dict_with_an_out_of_domain_option_is_refused(value):
    sd = _sd(optforge.optim.Adam, {})
    opt = optforge.optim.Adam(parameters())
    before = everything(opt)
    with pytest.raises(ValueError, match="betas"):
        opt.load_state_dict({**sd, "group/0/betas": value})
    assert_unchanged(before, opt)


def test_none_options_round_trip_and_a_nan_is_never_taken_for_none():
    a = optforge.Parameter(np.ones((3, 4), np.float32), "a")
    opt = optforge.optim.Adafactor([a])
    assert opt.param_groups[0]["eps"][0] is None
    opt((np.ones((3, 4), np.float32),))
    sd = opt.state_dict()
    fresh = optforge.optim.Adafactor([optforge.Parameter(np.ones((3, 4), np.float32), "a")])
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["eps"] == opt.param_groups[0]["eps"]
    # A NaN where the saved value was not None is refused, not read as None.
    with pytest.raises(ValueError):
        fresh.load_state_dict({**sd, "group/0/eps": np.array([0.1, np.nan])})


# -- use_locking --


def test_locking_optimizers_over_the_same_parameters_share_their_locks():
    params = parameters()
    first = optforge.nn.Adam(params, learning_rate=0.1, use_locking=True)
    second = optforge.nn.ProximalAdagrad(params[1:], learning_rate=0.1, use_locking=True)
    assert set(map(id, second._lock.locks)) <= set(map(id, first._lock.locks))
    done = threading.Event()

    def step_and_checkpoint():
        second(tuple(g for g in gradients(1)[0][1:]))
        second.state_dict()
        done.set()

    with first._lock:  # a step of `first` in progress: `second` must wait for it
        worker = threading.Thread(target=step_and_checkpoint)
        worker.start()
        assert not done.wait(0.3)
        assert second.global_step == 0
    worker.join(10)
    assert done.is_set() and second.global_step == 1


def test_state_dict_and_load_state_dict_take_the_lock():
    opt = optforge.nn.Adam(parameters(), learning_rate=0.01, use_locking=True)
    sd = opt.state_dict()
    results = []
    with opt._lock:
        workers = [threading.Thread(target=lambda: results.append(opt.state_dict())),
                   threading.Thread(target=lambda: results.append(opt.load_state_dict(sd)))]  # fmt: skip
        for w in workers:
            w.start()
        for w in workers:
            w.join(0.2)
        assert not results  # both wait for the lock
    for w in workers:
        w.join(10)
    assert len(results) == 2


# -- factored state over empty tensors, and the kernels' own bounds --


@pytest.mark.parametrize("empty", [(0, 5), (5, 0), (2, 0, 3), (0,)])
def test_adafactor_over_an_empty_tensor_leaves_it_alone(empty):
    rng = np.random.default_rng(3)
    dense = rng.standard_normal((3, 4)).astype(np.float32)
    grads = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(3)]
    alone = optforge.optim.Adafactor([optforge.Parameter(dense.copy(), "w")])
    both = optforge.optim.Adafactor(
        [optforge.Parameter(np.zeros(empty, np.float32), "e"), optforge.Parameter(dense.copy(), "w")]
    )
    for g in grads:
        alone((g,))
        both((np.zeros(empty, np.float32), g))
    np.testing.assert_array_equal(both.parameters[1].data, alone.parameters[0].data)
    for key, value in both.state_dict().items():
        if key.startswith("state/0/"):
            assert np.all(np.asarray(value) == 0), key  # never NaN: nothing to average over


def test_a_flat_kernel_stops_at_its_arrays_whatever_the_chunk_table_says():
    """The kernels' loop bounds: a table claiming 15 elements of 10-element arrays writes
    only those 10 (memory past them, here the rest of one buffer, is never touched)."""
    from optforge.generated.cpu import adam
    from optforge.runtime.kernels import ChunkTable
    from optforge.runtime.launch import step_arrays

    variant = adam.VARIANTS[(False, False)]
    hypers = tuple(
        optforge.nn.Adam(parameters(), learning_rate=0.1).hypers[h] for h in optforge.nn.Adam._HYPERS
    )
    branch, scalars = variant.step(1, 0.1, hypers, np.dtype(np.float32))
    buffer = np.full(20, 7.0, np.float32)
    w, g, m, v = buffer[:10], np.ones(10, np.float32), np.zeros(10, np.float32), np.zeros(10, np.float32)
    table = ChunkTable(*(np.array([x], np.int64) for x in (0, 0, 15)))
    step_arrays(branch, np.float32, table, [[w], [g], [m], [v]],
                np.zeros(1, np.float32), np.ones(1, np.float32), scalars)  # fmt: skip
    np.testing.assert_array_equal(buffer[10:], 7.0)
    assert np.all(w != 7.0) and np.all(m != 0)


def test_an_option_changed_in_place_is_seen_and_lists_become_tuples():
    a, b, c = parameters()
    betas = [0.9, 0.999]
    opt = optforge.optim.Adam([{"params": [a]}, {"params": [b, c], "betas": betas}])
    assert opt.param_groups[1]["betas"] == (0.9, 0.999)  # a copy: the caller's list is not held
    betas[0] = 5.0
    opt(tuple(gradients(1)[0]))
    opt.param_groups[1]["betas"] = [0.9, 0.999]
    opt(tuple(gradients(1)[0]))
    opt.param_groups[1]["betas"][0] = 5.0  # in place: the snapshot of the last check is a copy
    before = everything(opt)
    with pytest.raises(ValueError, match="betas\\[0\\]"):
        opt(tuple(gradients(1)[0]))
    assert_unchanged(before, opt)


def test_step_level_values_of_every_group_are_computed_before_any_kernel_runs():
    a, b, c = parameters()
    opt = optforge.optim.Adam([{"params": [a]}, {"params": [b, c], "lr": 0.01}])
    opt(tuple(gradients(1)[0]))
    before = everything(opt)
    second = opt._batches[1]

    def broken(*args):
        raise ZeroDivisionError("float division by zero")

    second.variant = second.variant._replace(branch=broken)  # group 1's host values fail
    with pytest.raises(ValueError, match="step-level values of param group 1 cannot be computed"):
        opt(tuple(gradients(1)[0]))
    assert_unchanged(before, opt)  # group 0 was not stepped either
