"""8-bit blockwise state inside the CPU kernels (optforge.runtime.blockwise), against references.

Each kernel step reads a state kept as 8-bit codes as ``table[code] * absmax[block]``, steps in
float32 and writes the block back: its new absmax (the largest magnitude of its new values) and
each element's nearest code. The reference here dequantises the stored codes, steps in float64
(the spec's own reference, tests/test_kernels.expected_step) and compares: every absmax with the
largest magnitude of the reference's new block, and every code within one of the reference
value's nearest code. The other arrays follow the float64 reference as with float32 state.
"""

import importlib

import numba
import numpy as np
import pytest

from optforge.compiler.build import load_specs
from optforge.compiler.spec import is_factored
from optforge.runtime.blockwise import flush
from optforge.runtime.chunks import chunk_table
from optforge.runtime.launch import StageBuffers, run_stages
from optforge.runtime.pointers import pointer_table
from optforge.runtime.precision import Precision
from optforge.runtime.quantize import (
    BLOCK,
    BUCKETS,
    MIDPOINT_ROWS,
    MIDPOINTS,
    TABLES,
    ZERO_CODE,
    dequantize_blockwise,
    nearest_codes,
    quantize_blockwise,
)
from tests.test_kernels import (
    ILL_CONDITIONED_IN_FLOAT32,
    advanced,
    expected_step,
    hypers_for,
    initial_step_state,
)

SIZES = [1, 7, 300, 5001]  # one element, a partial block, a block and a bit, several chunks' worth
CHUNK = 1024  # a whole number of blocks, as the generated modules' 65536


def _cases():
    cases = []
    for spec in load_specs():
        if spec.tensor_rank is not None:
            continue
        variant = next(iter(spec.variants()))
        if is_factored(spec, variant):
            continue
        module = importlib.import_module(f"optforge.generated.cpu.{spec.name}")
        compiled = module.VARIANTS[tuple(variant.values())]
        if any(module.INT8_TABLES.get(n) for n in compiled.state):
            cases.append(spec)
    return cases


SPECS = {spec.name: spec for spec in _cases()}


def test_most_specs_have_a_state_that_may_be_kept_as_codes():
    assert {"adam", "adam_torch", "adamw", "lion", "rmsprop", "adagrad", "lamb", "sgd"} <= set(SPECS)


def _blocks_of(values: np.ndarray) -> np.ndarray:
    padded = np.zeros(-(-values.size // BLOCK) * BLOCK)
    padded[: values.size] = np.abs(values)
    return padded.reshape(-1, BLOCK).max(axis=1)


def check_blockwise(codes, absmax, reference, kind: str, what: str, slack=None) -> None:
    """`codes` and `absmax` are the 8-bit form of `reference` (float64): each absmax is its
    block's largest magnitude (float32's error, or `slack` per element where a later stage
    read the stored state), each code within one of the reference's nearest code."""
    largest = _blocks_of(reference)
    tolerance = 1e-5 * largest + 1e-30 if slack is None else _blocks_of(slack) + 1e-5 * largest + 1e-30
    assert np.all(np.abs(absmax - largest) <= tolerance), f"{what}: absmax off"
    scale = np.repeat(absmax.astype(np.float64), BLOCK)[: reference.size]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(scale > 0, reference / np.where(scale > 0, scale, 1), 0)
    nearest = nearest_codes(ratio.astype(np.float32), MIDPOINTS[kind]).astype(int)
    if slack is None:
        assert np.all(np.abs(codes.astype(int) - nearest) <= 1), f"{what}: a code is more than one off"
    else:  # within the slack's worth of codes: the value itself is checked
        got = dequantize_blockwise(codes, absmax, TABLES[kind]).astype(np.float64)
        gap = 0.0071 * scale + slack + 1e-6 * scale
        assert np.all(np.abs(got - reference) <= gap), f"{what}: a value is off"


def int8_policy(module, compiled) -> tuple[Precision, dict[str, str]]:
    kinds = {n: module.INT8_TABLES.get(n) for n in compiled.state}
    rows = ("float32", "float32", *("int8" if kinds[n] else "float32" for n in compiled.state))
    return Precision("float32", rows), {n: k for n, k in kinds.items() if k}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_int8_state_kernels_match_the_float64_reference(name, rng):
    spec = SPECS[name]
    variant = next(iter(spec.variants()))
    module = importlib.import_module(f"optforge.generated.cpu.{spec.name}")
    compiled = module.VARIANTS[tuple(variant.values())]
    precision, kinds = int8_policy(module, compiled)
    symbol_of = {s.name: s.symbol.name for s in spec.state}
    public = dict(zip((symbol_of[n] for n in compiled.state), compiled.state))
    names = ["w", "g"] + list(public)
    arrays = {n: [rng.uniform(0.1, 1.0, s).astype(np.float32) for s in SIZES] for n in "wg"}
    codes, absmax = {}, {}
    for s in spec.state:
        if s.symbol.name not in public:
            continue
        init = s.init if isinstance(s.init, (int, float)) else hypers_for(spec, 1).get(s.init.name, 0.01)
        values = [np.full(n, init, np.float32) for n in SIZES]
        if s.name in kinds:
            pairs = [quantize_blockwise(v, TABLES[kinds[s.name]]) for v in values]
            codes[s.symbol.name] = [c for c, _ in pairs]
            absmax[s.symbol.name] = [a for _, a in pairs]
        arrays[s.symbol.name] = codes.get(s.symbol.name, values)
    extra = []
    for n in public:
        if public[n] in kinds:
            kind = kinds[public[n]]
            extra += [
                absmax[n],
                *([t] * len(SIZES) for t in (TABLES[kind], MIDPOINT_ROWS[kind], BUCKETS[kind])),
            ]
    table = pointer_table([[a.reshape(-1) for a in arrays[n]] for n in names] + extra)
    chunks = chunk_table(SIZES, CHUNK)
    buffers = StageBuffers(np.dtype(np.float32), len(SIZES), chunks)
    weight_decay = rng.uniform(0, 0.2, len(SIZES))
    grad_scale = rng.uniform(0.5, 2, len(SIZES))
    rtol = 1e-3 if spec.name in ILL_CONDITIONED_IN_FLOAT32 else 1e-5
    step_state = initial_step_state(spec)

    def stored(n, i):  # the value a state holds, as the kernel reads it
        if n in codes:
            return dequantize_blockwise(codes[n][i], absmax[n][i], TABLES[kinds[public[n]]]).astype(
                np.float64
            )
        return arrays[n][i].astype(np.float64)

    for t in range(1, 5):
        lr = 0.01 * t
        hypers = hypers_for(spec, t)
        if spec.step_rules:
            step_state, step_values = advanced(spec, t, lr, hypers, step_state)
            hypers |= step_values
        branch = compiled.branches[compiled.branch_key(t, lr, *hypers.values())]
        inputs = [{n: stored(n, i) for n in names} for i in range(len(SIZES))]
        scalars = [
            {"t": t, "lr": lr, **hypers, "weight_decay": weight_decay[i], "grad_scale": grad_scale[i]}
            for i in range(len(SIZES))
        ]
        expected, after_sums, check_sums = expected_step(spec, variant, inputs, scalars, (t, lr, hypers))
        run_stages(
            branch,
            precision,
            chunks,
            table,
            buffers,
            weight_decay.astype(np.float32),
            grad_scale.astype(np.float32),
            [np.float32(s) for s in branch.scalars(t, lr, *hypers.values())],
            after_sums=after_sums,
        )
        step_state = check_sums(step_state, 1e-4)
        staged = len(branch.stages[precision]) > 1
        for i in range(len(SIZES)):
            for n, value in expected[i].items():
                what = f"{spec.name} {n}[{i}] t={t}"
                if n in codes:
                    kind = kinds[public[n]]
                    # a later stage recomputes from the stored (rounded) state: its own slack
                    slack = 0.0071 * np.repeat(_blocks_of(value), BLOCK)[: value.size] if staged else None
                    check_blockwise(codes[n][i], absmax[n][i], value, kind, what, slack)
                elif n == "w" and staged and codes:
                    # A later stage reads the state as the first one stored it (rounded to its
                    # codes; the old values are overwritten, so it cannot recompute them): the
                    # update is off by the codes' error, relative to each block's largest value
                    # (here at most 11% of the largest element update: StableAdamW's, Lamb's 7%).
                    error, step = np.abs(arrays[n][i] - value), np.abs(value - inputs[i][n]).max()
                    assert error.max() <= 0.15 * step + rtol * np.abs(value).max() + 1e-6, what
                else:
                    np.testing.assert_allclose(arrays[n][i], value, rtol=rtol, atol=1e-6, err_msg=what)
        arrays["g"] = [rng.uniform(-1, 1, s).astype(np.float32) for s in SIZES]
        for i, g in enumerate(arrays["g"]):
            table.addresses[1, i] = g.ctypes.data


# -- through the classes: state, checkpoints, threads, special blocks, refusals --

import copy  # noqa: E402

import optforge  # noqa: E402
import optforge.nn  # noqa: E402
import optforge.optim  # noqa: E402
from optforge import Parameter  # noqa: E402
from optforge.runtime.row_tensor import RowTensor  # noqa: E402

SHAPES = [(3, 100), (5001,), (1,), (256,)]


def _params(rng, dtype=np.float32):
    return [Parameter(rng.standard_normal(s).astype(dtype), f"p{i}") for i, s in enumerate(SHAPES)]


def _grads(rng, dtype=np.float32):
    return tuple(rng.standard_normal(s).astype(dtype) for s in SHAPES)


def _snapshot(opt, params):
    return [p.data.copy() for p in params], {k: v for k, v in opt.state_dict().items()}


def test_an_int8_state_is_kept_as_codes_and_absmax_and_follows_float32_state(rng):
    """Adam's moments as codes (signed m, unsigned v) with one absmax per 256 elements; each
    step equals a float32-state step from the dequantised state, re-quantised."""
    params = _params(rng)
    opt = optforge.optim.Adam(params, lr=1e-2, weight_decay=0.1, state_dtype="int8")
    assert opt.state["exp_avg"][1].dtype == np.uint8 and opt.state["exp_avg"][1].shape == (5001,)
    assert opt.state["exp_avg_absmax"][1].shape == (20,) and opt.state["exp_avg_absmax"][0].shape == (2,)
    twins = [Parameter(p.data.copy(), p.name) for p in params]
    plain = optforge.optim.Adam(twins, lr=1e-2, weight_decay=0.1)
    for _ in range(4):
        grads = _grads(rng)
        for i in range(len(SHAPES)):  # the float32 run starts each step from the stored codes
            twins[i].data[...] = params[i].data
            for name, kind in (("exp_avg", "signed"), ("exp_avg_sq", "unsigned")):
                codes, absmax = opt.state[name][i], opt.state[name + "_absmax"][i]
                plain.state[name][i][...] = dequantize_blockwise(codes, absmax, TABLES[kind]).reshape(
                    codes.shape
                )
        opt(grads)
        plain(grads)
        for i in range(len(SHAPES)):
            np.testing.assert_allclose(params[i].data, twins[i].data, rtol=1e-6, atol=1e-7)
            for name, kind in (("exp_avg", "signed"), ("exp_avg_sq", "unsigned")):
                want, want_absmax = quantize_blockwise(plain.state[name][i], TABLES[kind])
                np.testing.assert_allclose(opt.state[name + "_absmax"][i], want_absmax, rtol=1e-6)
                assert np.abs(opt.state[name][i].reshape(-1).astype(int) - want.astype(int)).max() <= 1


def test_resume_is_bit_exact_and_the_float32_state_dict_dequantises(rng):
    params = _params(rng)
    opt = optforge.optim.AdamW(params, lr=1e-2, state_dtype={"exp_avg": "int8"})
    for _ in range(3):
        opt(_grads(rng))
    saved = opt.state_dict()
    assert saved["state/1/exp_avg"].dtype == np.uint8 and "state/1/exp_avg_absmax" in saved
    twins = [Parameter(p.data.copy(), p.name) for p in params]
    again = optforge.optim.AdamW(twins, lr=1e-2, state_dtype={"exp_avg": "int8"})
    again.load_state_dict(saved)
    for _ in range(3):
        grads = _grads(rng)
        opt(grads)
        again(grads)
    for a, b in zip(params, twins):
        np.testing.assert_array_equal(a.data, b.data)
    for key, value in opt.state_dict().items():
        np.testing.assert_array_equal(value, again.state_dict()[key], err_msg=key)
    wide = opt.float32_state_dict()
    assert not any(k.endswith("_absmax") for k in wide)
    assert wide["state/1/exp_avg"].dtype == np.float32 and wide["state/1/exp_avg"].shape == (5001,)
    np.testing.assert_array_equal(
        wide["state/1/exp_avg"],
        dequantize_blockwise(opt.state["exp_avg"][1], opt.state["exp_avg_absmax"][1], TABLES["signed"]),
    )
    np.testing.assert_array_equal(wide["state/1/exp_avg_sq"], opt.state["exp_avg_sq"][1])  # float32 as it is
    copied = copy.deepcopy(opt)  # a copy steps its own codes
    grads = _grads(rng)
    copied(grads)
    opt(grads)
    np.testing.assert_array_equal(copied.state["exp_avg"][1], opt.state["exp_avg"][1])


def test_a_state_dict_of_another_form_is_refused_with_nothing_changed(rng):
    params = _params(rng)
    opt = optforge.optim.Adam(params, lr=1e-2, state_dtype="int8")
    opt(_grads(rng))
    before, saved = _snapshot(opt, params)
    plain = optforge.optim.Adam(_params(rng), lr=1e-2)
    plain(_grads(rng))
    with pytest.raises(ValueError, match="uint8"):
        opt.load_state_dict(plain.state_dict() | {k: v for k, v in saved.items() if k.endswith("_absmax")})
    with pytest.raises(ValueError, match="exp_avg_absmax"):
        opt.load_state_dict({k: v for k, v in saved.items() if k != "state/1/exp_avg_absmax"})
    after, state = _snapshot(opt, params)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    for key in saved:
        np.testing.assert_array_equal(saved[key], state[key])


def test_one_and_two_threads_give_the_same_bytes(rng):
    results = []
    for threads in (1, 2):
        numba.set_num_threads(threads)
        try:
            local = np.random.default_rng(5)
            params = _params(local)
            opt = optforge.optim.Adam(params, lr=1e-2, state_dtype="int8")
            for _ in range(3):
                opt(_grads(local))
            results.append(opt.state_dict())
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for key, value in results[0].items():
        np.testing.assert_array_equal(value, results[1][key], err_msg=key)


def test_zero_and_non_finite_blocks_poison_only_their_own_block(rng):
    """An all-zero block keeps absmax 0 and the code of 0; a NaN gradient in one block makes
    that block's absmax NaN (every element of it reads back NaN), and no other block changes
    from what it would be (optforge.runtime.quantize's docstring)."""
    w = Parameter(np.zeros(1000, np.float32), "w")
    opt = optforge.optim.Adam([w], lr=1e-2, state_dtype="int8")
    twin = Parameter(np.zeros(1000, np.float32), "w")
    clean = optforge.optim.Adam([twin], lr=1e-2, state_dtype="int8")
    g = np.zeros(1000, np.float32)
    g[600:700] = rng.standard_normal(100)
    opt((g,))
    clean((g,))
    assert opt.state["exp_avg_absmax"][0][0] == 0 and np.all(
        opt.state["exp_avg"][0][:256] == ZERO_CODE["signed"]
    )
    bad = g.copy()
    bad[300] = np.nan
    opt((bad,))
    clean((g,))
    absmax = opt.state["exp_avg_absmax"][0]
    assert np.isnan(absmax[1]) and np.isnan(opt.state["exp_avg_sq_absmax"][0][1])
    values = dequantize_blockwise(opt.state["exp_avg"][0], absmax, TABLES["signed"])
    assert np.all(np.isnan(values[256:512]))
    keep = np.r_[0:256, 512:1000]
    np.testing.assert_array_equal(opt.state["exp_avg"][0][keep], clean.state["exp_avg"][0][keep])
    np.testing.assert_array_equal(absmax[[0, 2, 3]], clean.state["exp_avg_absmax"][0][[0, 2, 3]])
    np.testing.assert_array_equal(w.data[keep], twin.data[keep])


def test_skip_nonfinite_leaves_int8_state_as_it_was(rng):
    params = _params(rng)
    opt = optforge.optim.Adam(params, lr=1e-2, state_dtype="int8", skip_nonfinite=True)
    opt(_grads(rng))
    before, saved = _snapshot(opt, params)
    grads = list(_grads(rng))
    grads[1][7] = np.inf
    opt(tuple(grads))
    after, state = _snapshot(opt, params)
    assert opt.skipped_steps == 1
    for key in saved:
        if key.startswith("state/"):
            np.testing.assert_array_equal(saved[key], state[key])


def test_a_state_the_compiler_did_not_prove_sound_is_refused_naming_it(rng):
    with pytest.raises(ValueError, match=r"state 'prev' cannot be kept as 8-bit codes.*snapshot"):
        optforge.optim.Rprop(_params(rng), state_dtype="int8")
    opt = optforge.optim.Rprop(_params(rng), state_dtype={"prev": "float32", "step_size": "float32"})
    assert opt.state["prev"][0].dtype == np.float32


def test_adafactor_keeps_its_unfactored_variance_as_codes_and_refuses_its_factors(rng):
    """A 1-D parameter's variance may be codes; the row and column factors of a 2-D one may not
    (they are not element-shaped), so state_dtype='int8' names them."""
    w = Parameter(rng.standard_normal((8, 16)).astype(np.float32), "w")
    with pytest.raises(ValueError, match=r"state 'row_var' cannot be kept as 8-bit codes.*row-shaped"):
        optforge.optim.Adafactor([w], lr=1e-2, state_dtype="int8")
    v = Parameter(rng.standard_normal(300).astype(np.float32), "v")
    opt = optforge.optim.Adafactor([w, v], lr=1e-2, state_dtype={"variance": "int8"})
    for _ in range(3):
        opt((rng.standard_normal((8, 16)).astype(np.float32), rng.standard_normal(300).astype(np.float32)))
    assert opt.state["variance"][1].dtype == np.uint8 and opt.state["variance_absmax"][1].shape == (2,)
    assert opt.state["row_var"][0].dtype == np.float32 and np.all(np.isfinite(v.data))


def test_row_sparse_gradients_refuse_int8_state_with_nothing_changed(rng):
    w = Parameter(rng.standard_normal((6, 4)).astype(np.float32), "w")
    opt = optforge.nn.ProximalAdagrad([w], state_dtype="int8")
    before, saved = _snapshot(opt, [w])
    g = RowTensor(np.array([1, 3]), rng.standard_normal((2, 4)).astype(np.float32), (6, 4))
    with pytest.raises(TypeError, match="8-bit codes"):
        opt((g,))
    after, state = _snapshot(opt, [w])
    np.testing.assert_array_equal(before[0], after[0])
    for key in saved:
        np.testing.assert_array_equal(saved[key], state[key])
    dense = optforge.nn.Adam([Parameter(w.data.copy(), "w")], state_dtype="int8")  # densified: fine
    dense((g,))


@numba.njit
def _flush_blocks(values, codes, absmax, midpoints, buckets):
    buffer = np.empty(BLOCK, np.float32)
    for first in range(0, values.size, BLOCK):
        last = min(first + BLOCK, values.size)
        buffer[: last - first] = values[first:last]
        flush(buffer, absmax[first // BLOCK :], midpoints, buckets, codes[first:last], np.uint8, last - first)


@pytest.mark.parametrize("kind", ["signed", "unsigned"])
def test_a_kernel_s_blocks_are_the_host_s_codes_bit_for_bit(kind, rng):
    """`flush` writes exactly `quantize_blockwise`'s absmax and codes: zero, NaN and infinite
    blocks, a partial last block, values at every scale."""
    values = (rng.standard_normal(256 * 9 + 77) * 10.0 ** rng.integers(-8, 3, 256 * 9 + 77)).astype(
        np.float32
    )
    if kind == "unsigned":
        values = np.abs(values)
    values[256:512] = 0
    values[600] = np.nan
    values[1279] = np.uint32(0x7F99E3FE).view(np.float32)  # a NaN with a payload, last in its block
    values[900] = np.inf
    codes, absmax = np.zeros(values.size, np.uint8), np.zeros(-(-values.size // BLOCK), np.float32)
    _flush_blocks(values, codes, absmax, MIDPOINT_ROWS[kind], BUCKETS[kind])
    want_codes, want_absmax = quantize_blockwise(values, TABLES[kind])
    np.testing.assert_array_equal(absmax.view(np.uint32), want_absmax.view(np.uint32))  # NaN's bits too
    np.testing.assert_array_equal(codes, want_codes)
