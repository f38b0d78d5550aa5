"""ArrayFields (optforge/runtime/pointers.py): a step's gradients checked and read by address in
one compiled call. Every gradient it does not accept must go the per-array way (and be refused,
converted or copied there), so each case a training loop can hand it is checked here."""

import numpy as np
import pytest

import optforge
from optforge.runtime.pointers import ArrayFields, items_readable, layout_matches


class Sub(np.ndarray):
    pass


SHAPES = [(7,), (3, 5), (2, 1, 3), ()]


def fields(dtype=np.float32):
    return ArrayFields([(np.dtype(dtype), s) for s in SHAPES])


def grads(dtype=np.float32):
    return [np.ones(s, dtype) for s in SHAPES]


def test_this_numpy_s_layout_is_the_one_read():
    assert layout_matches()


def test_the_ids_are_read_from_tuples_and_lists_in_place():
    assert items_readable()


class Pair(tuple):  # a tuple subclass (a namedtuple's kind): its ids are built in Python
    pass


@pytest.mark.parametrize("container", [tuple, list, Pair], ids=["tuple", "list", "subclass"])
@pytest.mark.parametrize("at", [None, 0, 3])
def test_every_container_reads_the_same_addresses_and_stops_at_the_same_gradient(container, at):
    gs = grads()
    if at is not None:
        gs[at] = gs[at].astype(np.float64)
    failed, addresses, sizes = fields().scan(container(gs))
    assert failed == (-1 if at is None else at)
    stop = len(gs) if at is None else at
    assert addresses[:stop].tolist() == [g.ctypes.data for g in gs[:stop]]
    assert sizes[:stop].tolist() == [g.size for g in gs[:stop]]


def test_a_list_that_grew_is_read_at_its_items_new_place():
    gs = []
    for _ in range(100):  # its item storage is reallocated as it grows
        gs += grads()
    expected = ArrayFields([(g.dtype, g.shape) for g in gs])
    failed, addresses, _ = expected.scan(gs)
    assert failed == -1 and addresses.tolist() == [g.ctypes.data for g in gs]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_plain_gradients_are_read_with_their_addresses_and_sizes(dtype):
    gs = grads(dtype)
    addresses, sizes = fields(dtype).read(gs)
    assert addresses.tolist() == [g.ctypes.data for g in gs]
    assert sizes.tolist() == [g.size for g in gs]


def test_a_bfloat16_gradient_is_read_too():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    gs = grads(ml_dtypes.bfloat16)
    assert fields(ml_dtypes.bfloat16).read(gs)[1].tolist() == [7, 15, 6, 1]


@pytest.mark.parametrize(
    "wrong",
    [
        lambda g: g.astype(np.float64),  # another dtype
        lambda g: g.astype(">f4"),  # the same kind, other byte order: another descr
        lambda g: g.reshape(-1) if g.ndim > 1 else g.reshape(1, -1),  # another shape, same size
        lambda g: np.repeat(g[..., None], 2, axis=-1)[..., 0],  # strided
        lambda g: g.view(Sub),  # a subclass
        lambda g: g.tolist(),  # not an array
        lambda g: None,
        lambda g: optforge.Parameter(g.copy(), "p"),
    ],
    ids=["dtype", "byte-order", "shape", "strided", "subclass", "list", "none", "parameter"],
)
@pytest.mark.parametrize("at", [0, 1, 2])
def test_any_gradient_that_is_not_plain_sends_the_step_the_per_array_way(wrong, at):
    gs = grads()
    gs[at] = wrong(gs[at])
    assert fields().read(gs) is None
    assert fields().scan(gs)[0] == at  # the scan stops there, not just the layout check


def test_a_fortran_ordered_gradient_is_not_read():
    gs = grads()
    gs[1] = np.asfortranarray(gs[1])
    assert gs[1].shape == (3, 5) and not gs[1].flags.c_contiguous
    assert fields().read(gs) is None and fields().scan(gs)[0] == 1


def test_a_wrong_count_is_not_read():
    assert fields().read(grads()[:-1]) is None
    assert fields().read(grads() + [np.ones(1, np.float32)]) is None


def test_a_transposed_gradient_still_steps_right():
    """Through the nn dialect: the fast path must not take a transposed (not C-contiguous)
    gradient's memory as if it were in row-major order."""
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((3, 5)).astype(np.float32)
    g = rng.standard_normal((5, 3)).astype(np.float32).T  # shape (3, 5), Fortran order
    a = optforge.nn.Adam([optforge.Parameter(w0.copy(), "w")], learning_rate=0.1)
    b = optforge.nn.Adam([optforge.Parameter(w0.copy(), "w")], learning_rate=0.1)
    a((g,))
    b((np.ascontiguousarray(g),))
    np.testing.assert_array_equal(a.parameters[0].data, b.parameters[0].data)
