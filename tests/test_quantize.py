"""8-bit blockwise codes (optforge.runtime.quantize): the tables, the nearest-code search, blocks.

The tables against their documented construction and bitsandbytes' recording
(tests/golden/bitsandbytes_0_50.npz, made by tests/golden/record_bitsandbytes.py); every code
round trip; `quantize` against a brute-force float64 argmin; round-trip errors within the
documented bounds; tail, zero and non-finite blocks; the NumPy block helpers against the
per-element njit functions, bit for bit; the same functions on the CUDA simulator and compiled
to PTX for sm_90.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import numpy as np
import pytest

from optforge.runtime import quantize as Q

GOLDEN = np.load(Path(__file__).parent / "golden" / "bitsandbytes_0_50.npz")
ROOT = Path(__file__).resolve().parent.parent


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Units in the last place between float32 arrays of one sign."""
    return np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))


@numba.njit
def njit_blockwise(x, table, mids, block):
    """The block quantiser written with the per-element functions, as a generated loop would."""
    n = x.size
    blocks = (n + block - 1) // block
    codes = np.empty(n, np.uint8)
    absmax = np.empty(blocks, np.float32)
    out = np.empty(n, np.float32)
    for b in range(blocks):
        start, stop = b * block, min(n, (b + 1) * block)
        m = np.float32(0.0)
        for i in range(start, stop):
            m = Q.absmax_update(m, x[i])
        absmax[b] = m
        for i in range(start, stop):
            codes[i] = Q.quantize(Q.ratio(x[i], m), mids)
            out[i] = Q.dequantize(codes[i], table, m)
    return codes, absmax, out


@numba.njit
def njit_codes(r, mids):
    out = np.empty(r.size, np.uint8)
    for i in range(r.size):
        out[i] = Q.quantize(r[i], mids)
    return out


def sample(rng, n: int) -> np.ndarray:
    """Values over nine decades, both signs."""
    return (rng.standard_normal(n) * 10.0 ** rng.uniform(-8, 1, n)).astype(np.float32)


# --- the tables ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", Q.KINDS)
def test_tables_are_256_sorted_unique_float32_values_in_the_unit_interval_with_0_and_1(kind):
    table = Q.TABLES[kind]
    assert table.dtype == np.float32 and table.shape == (256,)
    assert np.all(np.diff(table) > 0)  # sorted, so unique
    assert 0.0 in table and table[-1] == 1.0 and table[Q.ZERO_CODE[kind]] == 0.0
    assert table[0] >= -1.0
    assert Q.MIDPOINTS[kind].shape == (255,)
    assert np.all(Q.MIDPOINTS[kind] >= table[:-1]) and np.all(Q.MIDPOINTS[kind] < table[1:])
    # Strictly between neighbours, but for the two points around 0, which sit at 0 and at the
    # negative float32 nearest it (no nonzero value reads back as 0).
    zero = Q.ZERO_CODE[kind]
    around = [zero - 1, zero] if zero else [zero]
    inner = np.setdiff1d(np.arange(255), around)
    assert np.all(Q.MIDPOINTS[kind][inner] > table[:-1][inner])
    assert Q.MIDPOINTS[kind][zero] == 0 and (not zero or Q.MIDPOINTS[kind][zero - 1] == -(2.0**-149))


def test_the_signed_table_is_symmetric_but_for_1_and_the_unsigned_one_nonnegative():
    """256 symmetric values holding 0 would be an odd count: the signed table holds 1, not -1."""
    signed, unsigned = Q.TABLES["signed"], Q.TABLES["unsigned"]
    assert signed[0] == np.float32(-0.99296875) and -1.0 not in signed
    np.testing.assert_array_equal(np.sort(-signed[signed < 0]), signed[(signed > 0) & (signed < 1)])
    assert np.sum(signed < 0) == 127 and np.sum(signed > 0) == 128
    assert unsigned[0] == 0.0 and np.all(unsigned >= 0)


@pytest.mark.parametrize(
    "kind, per_decade", [("signed", 2 ** np.arange(6, -1, -1)), ("unsigned", 2 ** np.arange(7, 0, -1))]
)
def test_each_decade_holds_the_linear_fraction_points_the_construction_gives(kind, per_decade):
    table = Q.TABLES[kind].astype(np.float64)
    for e, count in enumerate(per_decade):
        lo, hi = 10.0 ** -(e + 1), 10.0**-e
        inside = table[(table > lo) & (table < hi)]
        assert inside.size == count, (kind, e)
        # The midpoints of `count` equal bins of [0.1, 1], times 10**-e, rounded to float32 once.
        exact = (0.1 + 0.9 * (2 * np.arange(count) + 1) / (2 * count)) * 10.0**-e
        np.testing.assert_array_equal(inside.astype(np.float32), exact.astype(np.float32))


@pytest.mark.parametrize("kind", Q.KINDS)
def test_the_tables_are_bitsandbytes_dynamic_maps_to_two_units_in_the_last_place(kind):
    """bitsandbytes 0.50.2 builds its map in float32 arithmetic, we round each exact value once."""
    theirs = GOLDEN[f"{kind}_table"]
    ours = Q.TABLES[kind]
    assert np.array_equal(np.sign(ours), np.sign(theirs))
    assert ulps(ours, theirs).max() <= 2
    assert np.sum(ours != theirs) == {"signed": 72, "unsigned": 100}[kind]  # the docstring's count
    # Interchangeable codes: each of their entries is nearest to our entry of the same code.
    np.testing.assert_array_equal(Q.nearest_codes(theirs, Q.MIDPOINTS[kind]), np.arange(256))


@pytest.mark.parametrize("kind", Q.KINDS)
def test_blockwise_codes_match_bitsandbytes_nearest_kernel_and_are_never_farther_than_its_cpu_library(kind):
    x = GOLDEN["x"] if kind == "signed" else np.abs(GOLDEN["x"])
    codes, absmax = Q.quantize_blockwise(x, Q.TABLES[kind])
    np.testing.assert_array_equal(absmax, GOLDEN[f"{kind}_absmax_default"])
    golden = GOLDEN[f"{kind}_codes_default"].astype(np.int64)
    # Its codes, but where it wrote 0 for a nonzero value: ours keeps the sign there (the smallest
    # entry of x's sign, the module's "Nonzero values").
    zero = Q.ZERO_CODE[kind]
    kept = (golden == zero) & (x != 0)
    assert kept.sum() > 0
    np.testing.assert_array_equal(codes[~kept], golden[~kept])
    np.testing.assert_array_equal(codes[kept], zero + np.sign(x[kept]).astype(np.int64))
    # Its native CPU library does not always take the nearest code (small values): ours is
    # never farther from x / absmax than its choice.
    r = x / np.repeat(np.where(absmax > 0, absmax, 1), 256)[: x.size]
    table = Q.TABLES[kind].astype(np.float64)
    theirs = GOLDEN[f"{kind}_codes_cpu"]
    assert np.sum((theirs != codes) & ~kept) > 0
    assert np.all((np.abs(table[codes] - r) <= np.abs(table[theirs] - r))[~kept])


def test_entries_are_rounded_to_float32_once():
    """1 + 2**-24 + 2**-60 is nearer 1 + 2**-23 than 1; through float64 it would tie, to 1."""
    from fractions import Fraction

    value = Fraction(1) + Fraction(1, 2**24) + Fraction(1, 2**60)
    assert np.float32(float(value)) == 1.0
    assert Q._nearest_float32(value) == np.float32(1 + 2**-23)
    assert Q._nearest_float32(Fraction(1) + Fraction(1, 2**24)) == 1.0  # a true tie: to even


def test_error_bounds_of_a_small_table_by_hand():
    """Gaps that straddle a decade count only their part inside it: (1/128, 1/8) reaches into
    [0.1, 1) past its midpoint, where x rounds up to 1/8 with an error of at most 1/8 / 0.1 - 1.
    Below 1/128 every x reads back as 1/128 (the sign kept): 1/128 / 10**-k - 1 in decade k."""
    table = np.float32([0, 2**-7, 0.125, 1])
    below = [2.0**-7 * 10.0**k - 1 for k in range(3, 8)]
    expected = [0.875 / 1.125, (0.125 - 2**-7) / (0.125 + 2**-7), *below]
    np.testing.assert_allclose(Q.relative_error_bounds(table), expected, rtol=1e-12)


def test_the_documented_error_bounds_are_what_the_tables_give():
    documented = {
        "signed": [6.2, 11.0, 18.0, 27.6, 46.6, 71.1, 450],
        "unsigned": [3.3, 6.2, 11.0, 18.0, 27.6, 46.6, 225],
    }
    for kind, percent in documented.items():
        np.testing.assert_allclose(Q.relative_error_bounds(Q.TABLES[kind]) * 100, percent, atol=0.05)
        half_gap = np.diff(Q.TABLES[kind].astype(np.float64)).max() / 2
        assert round(half_gap, 5) == {"signed": 0.00703, "unsigned": 0.00352}[kind]


# --- nearest code ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", Q.KINDS)
def test_every_code_round_trips(kind):
    table, mids = Q.TABLES[kind], Q.MIDPOINTS[kind]
    for absmax in (1.0, 2.0**-20, 3.7, 1e30, 1e-30):
        a = np.float32(absmax)
        for code in range(256):
            value = Q.dequantize(np.uint8(code), table, a)
            assert Q.quantize(Q.ratio(value, a), mids) == code, (absmax, code)


def brute_force(r: np.ndarray, table: np.ndarray) -> np.ndarray:
    """argmin |r - entry| in float64, the first (lower) entry on a tie; NaN to code 0 (and +-inf
    clipped to +-2, whose nearest entries are the ends)."""
    out = np.empty(r.size, np.int64)
    t = table.astype(np.float64)
    for s in range(0, r.size, 4096):
        part = np.clip(r[s : s + 4096].astype(np.float64), -2, 2)
        out[s : s + 4096] = np.argmin(np.abs(part[:, None] - t[None, :]), axis=1)
    # The sign kept (the module's "Nonzero values"): a nonzero r whose nearest is 0 takes the
    # smallest entry of its sign (the unsigned table has none below 0: 0 stays).
    zero = int(np.flatnonzero(t == 0)[0])
    rf = r.astype(np.float64)
    out[(out == zero) & (rf > 0)] = zero + 1
    if zero > 0:
        out[(out == zero) & (rf < 0)] = zero - 1
    out[np.isnan(r)] = 0
    return out


@pytest.mark.parametrize("kind", Q.KINDS)
def test_quantize_is_the_nearest_code_lower_on_a_tie(kind, rng):
    table, mids = Q.TABLES[kind], Q.MIDPOINTS[kind]
    exact_mid = (table[:-1].astype(np.float64) + table[1:]) / 2
    representable = exact_mid[exact_mid.astype(np.float32) == exact_mid].astype(np.float32)
    assert representable.size > 50  # exact ties exist and are tested
    near = exact_mid.astype(np.float32)
    r = np.concatenate(
        [
            rng.uniform(-1.1, 1.1, 20000).astype(np.float32),
            sample(rng, 20000) / np.float32(10),
            table,
            representable,
            near,
            np.nextafter(near, np.float32(np.inf)),
            np.nextafter(near, np.float32(-np.inf)),
            np.float32([0.0, -0.0, 1.0, -1.0, 2.0, -2.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45]),
        ]
    )
    expected = brute_force(r, table)
    np.testing.assert_array_equal(njit_codes(r, mids), expected)
    np.testing.assert_array_equal(Q.nearest_codes(r, mids), expected)
    # A tie takes the lower entry (but for a positive tie with 0, which keeps its sign).
    lower = table[np.searchsorted(table, representable) - 1]
    representable = representable[lower != 0]
    ties = njit_codes(representable, mids)
    np.testing.assert_array_equal(table[ties], lower[lower != 0])


# --- blocks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", Q.KINDS)
def test_blockwise_round_trip_is_within_the_documented_error(kind, rng):
    table = Q.TABLES[kind]
    x = sample(rng, 256 * 64 + 77)
    x = x if kind == "signed" else np.abs(x)
    codes, absmax = Q.quantize_blockwise(x, table)
    y = Q.dequantize_blockwise(codes, absmax, table)
    scale = np.repeat(absmax, 256)[: x.size].astype(np.float64)
    err = np.abs(y.astype(np.float64) - x)
    rel = np.abs(x) / scale
    roundings = 2.0**-22  # x / absmax and table[code] * absmax, with room
    assert np.all(err <= (np.diff(table.astype(np.float64)).max() / 2 + roundings) * scale)
    bounds = Q.relative_error_bounds(table)
    decade = np.floor(-np.log10(np.maximum(rel, 1e-300))).astype(int)  # |x|/absmax in [10**-(k+1), 10**-k)
    for k in range(7):
        inside = decade == k
        assert inside.sum() > 100, k
        assert np.all(err[inside] <= (bounds[k] + roundings) * np.abs(x[inside])), k
    # Below the smallest entry, the smallest entry of x's sign (0 stays 0).
    smallest = np.abs(table[table != 0]).min()
    tiny = rel < 1e-7
    np.testing.assert_array_equal(y[tiny], (np.sign(x[tiny]) * smallest * scale[tiny]).astype(np.float32))
    # The largest magnitude of a block is exact, but for a negative one in the signed table.
    top = np.array([s * 256 + np.argmax(np.abs(x[s * 256 : (s + 1) * 256])) for s in range(absmax.size)])
    positive = x[top] > 0
    np.testing.assert_array_equal(y[top][positive], x[top][positive])


@pytest.mark.parametrize("n", [0, 1, 255, 256, 257, 1000])
def test_a_tail_block_is_a_block_of_its_own_length(n, rng):
    x = sample(rng, n)
    codes, absmax = Q.quantize_blockwise(x, Q.TABLES["signed"])
    assert codes.shape == (n,) and codes.dtype == np.uint8
    assert absmax.shape == (-(-n // 256),) and absmax.dtype == np.float32
    for b in range(absmax.size):
        part = x[b * 256 : (b + 1) * 256]
        assert absmax[b] == np.abs(part).max()
        alone, alone_max = Q.quantize_blockwise(part, Q.TABLES["signed"])
        np.testing.assert_array_equal(codes[b * 256 : (b + 1) * 256], alone)
    assert Q.dequantize_blockwise(codes, absmax, Q.TABLES["signed"]).shape == (n,)


@pytest.mark.parametrize("kind", Q.KINDS)
def test_an_all_zero_block_reads_back_exact_zeros(kind, rng):
    x = sample(rng, 700)
    x = x if kind == "signed" else np.abs(x)
    x[256:512] = 0.0
    x[300] = -0.0
    codes, absmax = Q.quantize_blockwise(x, Q.TABLES[kind])
    assert absmax[1] == 0.0 and np.all(codes[256:512] == Q.ZERO_CODE[kind])
    y = Q.dequantize_blockwise(codes, absmax, Q.TABLES[kind])
    assert np.all(y[256:512] == 0.0) and not np.any(np.signbit(y[256:512]))


@pytest.mark.parametrize("kind", Q.KINDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_value_poisons_its_block_and_no_other(kind, bad, rng):
    x = np.abs(sample(rng, 3 * 256 + 10)) if kind == "unsigned" else sample(rng, 3 * 256 + 10)
    clean_codes, clean_absmax = Q.quantize_blockwise(x, Q.TABLES[kind])
    x[256 + 17] = bad
    codes, absmax = Q.quantize_blockwise(x, Q.TABLES[kind])
    y = Q.dequantize_blockwise(codes, absmax, Q.TABLES[kind])
    assert np.isnan(absmax[1]) if np.isnan(bad) else absmax[1] == np.inf
    assert not np.any(np.isfinite(y[256:512]))
    if np.isnan(bad):
        assert np.all(np.isnan(y[256:512]))
    others = np.r_[0:256, 512 : x.size]
    np.testing.assert_array_equal(codes[others], clean_codes[others])
    np.testing.assert_array_equal(absmax[[0, 2, 3]], clean_absmax[[0, 2, 3]])


def test_absmax_update_keeps_a_nan_once_seen():
    for values in ([1.0, np.nan, 2.0], [np.nan, 3.0], [2.0, 1.0, np.nan], [-np.inf, np.nan, 1.0]):
        m = np.float32(0.0)
        for v in np.float32(values):
            m = Q.absmax_update(m, v)
        assert np.isnan(m), values
    m = np.float32(0.0)
    for v in np.float32([-3.0, 2.0, -np.inf, 1.0]):
        m = Q.absmax_update(m, v)
    assert m == np.inf


def near_midpoints(mids: np.ndarray, absmax: np.float32, block: int = 256) -> np.ndarray:
    """Whole blocks of largest value `absmax` whose other elements are `absmax` times each
    midpoint and its float32 neighbours: x / absmax lands within an ulp or two of a decision
    point, where computing it any other way (x * (1/absmax)) would change codes."""
    scaled = (mids.astype(np.float64) * absmax).astype(np.float32)
    values = np.concatenate([scaled, np.nextafter(scaled, np.inf), np.nextafter(scaled, -np.inf)])
    parts = np.array_split(values, -(-values.size // (block - 1)))
    blocks = [np.concatenate([[absmax], b, np.zeros(block - 1 - b.size, np.float32)]) for b in parts]
    return np.concatenate(blocks).astype(np.float32)


@pytest.mark.parametrize("kind", Q.KINDS)
def test_the_njit_functions_and_the_numpy_helpers_agree_bit_for_bit(kind, rng):
    x = sample(rng, 9 * 256 + 100)
    x = x if kind == "signed" else np.abs(x)
    x[256:512] = 0.0
    x[600], x[1100], x[1400], x[1401] = np.nan, np.inf, -np.inf, np.inf
    x[2000:2010] = np.float32(1e-40)  # subnormal
    table, mids = Q.TABLES[kind], Q.MIDPOINTS[kind]
    x = np.concatenate([near_midpoints(mids, np.float32(3.3)), x])  # whole blocks first
    codes, absmax, y = njit_blockwise(x, table, mids, 256)
    np_codes, np_absmax = Q.quantize_blockwise(x, table)
    np.testing.assert_array_equal(codes, np_codes)
    np.testing.assert_array_equal(absmax.view(np.uint32), np_absmax.view(np.uint32))
    np_y = Q.dequantize_blockwise(np_codes, np_absmax, table)
    np.testing.assert_array_equal(y.view(np.uint32), np_y.view(np.uint32))


# --- CUDA: the simulator and PTX ---------------------------------------------------------------

SIMULATOR_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from numba import cuda
    from optforge.runtime import quantize as Q

    dequantize, ratio, quantize, absmax_update = Q.cuda_functions()
    BLOCK = 64

    @cuda.jit
    def blockwise(x, table, mids, codes, absmax, out):
        b = cuda.blockIdx.x
        i = b * BLOCK + cuda.threadIdx.x
        if cuda.threadIdx.x == 0:
            m = np.float32(0.0)
            for j in range(b * BLOCK, min(x.size, (b + 1) * BLOCK)):
                m = absmax_update(m, x[j])
            absmax[b] = m
        cuda.syncthreads()
        if i < x.size:
            codes[i] = quantize(ratio(x[i], absmax[b]), mids)
            out[i] = dequantize(codes[i], table, absmax[b])

    data = np.load(sys.argv[1])
    x = data["x"]
    result = {}
    for kind in Q.KINDS:
        values = np.concatenate([data[kind], x if kind == "signed" else np.abs(x)])
        blocks = -(-values.size // BLOCK)
        codes = np.zeros(values.size, np.uint8)
        absmax = np.zeros(blocks, np.float32)
        out = np.zeros(values.size, np.float32)
        blockwise[blocks, BLOCK](values, Q.TABLES[kind], Q.MIDPOINTS[kind], codes, absmax, out)
        result |= {f"{kind}_codes": codes, f"{kind}_absmax": absmax, f"{kind}_out": out}
    np.savez(sys.argv[2], **result)
    """
)


def test_the_cuda_simulator_gives_the_same_codes(tmp_path, rng):
    x = sample(rng, 5 * 64 + 9)
    x[64:128] = 0.0
    x[200] = np.nan
    near = {kind: near_midpoints(Q.MIDPOINTS[kind][::5], np.float32(3.3), block=64) for kind in Q.KINDS}
    np.savez(tmp_path / "in.npz", x=x, **near)
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": str(ROOT)}
    script = tmp_path / "sim.py"
    script.write_text(SIMULATOR_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    for kind in Q.KINDS:
        values = np.concatenate([near[kind], x if kind == "signed" else np.abs(x)])
        codes, absmax = Q.quantize_blockwise(values, Q.TABLES[kind], block=64)
        np.testing.assert_array_equal(got[f"{kind}_codes"], codes)
        np.testing.assert_array_equal(got[f"{kind}_absmax"].view(np.uint32), absmax.view(np.uint32))
        y = Q.dequantize_blockwise(codes, absmax, Q.TABLES[kind], block=64)
        np.testing.assert_array_equal(got[f"{kind}_out"].view(np.uint32), y.view(np.uint32))


PTX_SCRIPT = textwrap.dedent(
    """
    import re
    import numpy as np
    from numba import cuda, types
    from optforge.runtime import quantize as Q

    F64_OPS = re.compile(r"\\b(add|sub|mul|div|fma|sqrt|max|min|abs|neg)(\\.\\w+)*\\.f64\\b")

    def make(dequantize, ratio, quantize, absmax_update):
        def requantize(codes, absmax, table, mids, g, new_absmax):
            # A state block's element: dequantise, update in float32, requantise.
            i = cuda.grid(1)
            if i < codes.size:
                v = dequantize(codes[i], table, absmax[0])
                v = np.float32(0.9) * v + np.float32(0.1) * g[i]
                codes[i] = quantize(ratio(v, new_absmax[0]), mids)
                new_absmax[1] = absmax_update(new_absmax[1], v)
        return requantize

    f32 = types.Array(types.float32, 1, "C")
    signature = (types.Array(types.uint8, 1, "C"), f32, f32, f32, f32, f32)
    module = (Q.dequantize, Q.ratio, Q.quantize, Q.absmax_update)
    for label, functions in (("cuda_functions", Q.cuda_functions()), ("module", module)):
        ptx, _ = cuda.compile_ptx(make(*functions), signature, cc=(9, 0))
        assert ".target sm_90" in ptx, ptx[:400]
        assert not F64_OPS.findall(ptx), F64_OPS.findall(ptx)
        assert "div.rn.f32" in ptx  # IEEE division: the bits NumPy computes
        assert "call.uni" not in ptx  # inlined
        print("OK", label, len(ptx))
    """
)


def test_a_kernel_using_the_codecs_compiles_to_ptx_for_sm90(tmp_path):
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0", "PYTHONPATH": str(ROOT)}
    probe = subprocess.run(
        [sys.executable, "-c", "from numba.cuda.cudadrv.nvvm import NVVM; NVVM()"],
        env=env,
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip("NVVM not found (install the `cuda` extra: numba-cuda[cu12])")
    script = tmp_path / "ptx.py"
    script.write_text(PTX_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.split().count("OK") == 2, result.stdout


def test_the_bucket_lookup_gives_quantize_s_code_for_every_ratio():
    """`flush`'s lookup (optforge.runtime.quantize.BUCKETS): for ratios in [-1, 1] and NaN, the
    same code as the binary search, at and beside every midpoint, at every bucket's ends, on
    a dense sweep of float32 bit patterns and at the specials."""
    rng = np.random.default_rng(3)
    # Both ends of every range of float32s that share their top 16 bits.
    ends = (np.arange(1 << 16, dtype=np.uint64) << np.uint64(16)).astype(np.uint32)
    sweep = np.concatenate([ends, ends + 0xFFFF, rng.integers(0, 2**32, 4_000_000, dtype=np.uint32)])
    values = sweep.astype(np.uint32).view(np.float32)
    for kind in Q.KINDS:
        mids = Q.MIDPOINTS[kind]
        near = np.concatenate([mids, np.nextafter(mids, np.float32(2)), np.nextafter(mids, np.float32(-2))])
        r = np.concatenate([values, near, np.float32([0, -0.0, 1, -1, np.nan, -np.nan])])
        r = r[np.isnan(r) | (np.abs(r) <= 1)]
        np.testing.assert_array_equal(Q.nearest_code_by_bucket(r, kind), Q.nearest_codes(r, mids))
