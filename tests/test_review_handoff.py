"""Adversarial tests of the pointer-table hand-off (optforge.runtime.pointers): the tables own
no memory, so every array a table points at must be alive whenever a kernel may read it, and a
table must point at its own optimizer's arrays (not another's, after a copy)."""

import copy
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import optforge

SHAPES = [(3, 4), (5,)]


def parameters(dtype=np.float32):
    rng = np.random.default_rng(0)
    return [optforge.Parameter(rng.standard_normal(s).astype(dtype), f"p{i}") for i, s in enumerate(SHAPES)]


def gradients(seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return tuple((rng.standard_normal(s) * 0.1).astype(dtype) for s in SHAPES)


def everything(opt) -> dict:
    sd = {key: np.array(value, copy=True) for key, value in opt.state_dict().items()}
    return {**sd, **{f"data/{i}": p.data.copy() for i, p in enumerate(opt.parameters)}}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


SCRIPTS = {
    "optim": """
        import numpy as np, optforge
        p = optforge.Parameter(np.zeros((512, 512), np.float32), "w")
        opt = optforge.optim.SGD([p], lr=0.1, skip_nonfinite=True)
        g = np.asfortranarray(np.full((512, 512), np.nan, np.float32))
        assert opt((g,)) is False and opt.skipped_steps == 1
        assert not p.data.any()
        g[:] = 1.0
        opt((g,))
        assert np.all(p.data == np.float32(-0.1))
        """,
    "torch": """
        import torch, optforge.torch
        p = torch.nn.Parameter(torch.zeros(512, 512))
        opt = optforge.torch.SGD([p], lr=0.1, skip_nonfinite=True)
        p.grad = torch.full((512, 512), float("nan")).t()  # not contiguous: copied for the table
        opt.step()
        assert opt.skipped_steps == 1 and not p.detach().any()
        p.grad = torch.ones(512, 512).t()
        opt.step()
        assert bool((p.detach() == -0.1).all())
        """,
}


@pytest.mark.parametrize("dialect", sorted(SCRIPTS))
def test_skip_nonfinite_reads_a_copied_non_contiguous_gradient_while_it_is_alive(dialect):
    # A gradient that is not C-contiguous is copied into a flat array for the table; the check
    # of skip_nonfinite must read that copy before it is freed. With a low mmap threshold the
    # freed copy is unmapped at once, so a read after the free is a segmentation fault.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    command = [sys.executable, "-c", textwrap.dedent(SCRIPTS[dialect])]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])


COPIED = [
    pytest.param(lambda ps: optforge.optim.Adam(ps, lr=0.01), id="optim.Adam"),
    pytest.param(lambda ps: optforge.nn.Adam(ps, learning_rate=0.01), id="nn.Adam"),
    pytest.param(lambda ps: optforge.optim.Adafactor(ps, lr=0.01), id="optim.Adafactor"),
]


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("make", COPIED)
def test_a_copied_optimizer_steps_its_own_arrays_and_never_the_original_s(make, how):
    opt = make(parameters())
    opt(gradients(1))
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    before = everything(opt)
    twin(gradients(2))
    assert_same(everything(opt), before)  # the copy's step left the original alone
    opt(gradients(2))
    assert_same(everything(twin), everything(opt))  # and it stepped like the original


def test_a_copy_of_a_locking_optimizer_has_its_own_lock_and_arrays():
    opt = optforge.nn.Adam(parameters(), learning_rate=0.01, use_locking=True)
    opt(gradients(1))
    twin = copy.deepcopy(opt)
    assert twin._lock is not None and twin._lock.locks[0] is not opt._lock.locks[0]
    before = everything(opt)
    twin(gradients(2))
    assert_same(everything(opt), before)


def test_a_copy_taken_after_data_of_another_shape_refuses_its_step_like_the_original():
    params = parameters()
    opt = optforge.optim.Adam(params, lr=0.01)
    opt(gradients(1))
    params[1].data = np.zeros(7, np.float32)
    twin = copy.deepcopy(opt)
    before = everything(twin)
    with pytest.raises(ValueError, match="was replaced"):
        twin((gradients(2)[0], np.zeros(7, np.float32)))
    assert_same(everything(twin), before)


def test_step_arrays_refuses_an_array_it_could_only_step_through_a_temporary_copy():
    # `a.reshape(-1)` of a non-contiguous array is a copy: the table pointed at it, the copy was
    # freed when the table was made, and the kernel wrote into freed memory (the caller's array
    # never changed).
    from optforge.generated.cpu import lion
    from optforge.runtime.chunks import chunk_table
    from optforge.runtime.launch import step_arrays

    branch, scalars = lion.VARIANTS[(False,)].step(1, 0.1, (0.9, 0.99), np.dtype(np.float32))
    w = np.asfortranarray(np.ones((4, 3), np.float32))
    g, m = np.ones((4, 3), np.float32), np.zeros((4, 3), np.float32)
    before = w.copy()
    with pytest.raises(ValueError, match="C-contiguous"):
        step_arrays(branch, np.float32, chunk_table([12], 12), [[w], [g], [m]],
                    np.zeros(1, np.float32), np.ones(1, np.float32), scalars)  # fmt: skip
    np.testing.assert_array_equal(w, before)
