"""optforge.runtime.storage: 16-bit storage conversions and stochastic rounding.

References: ml_dtypes.bfloat16 and np.float16 casts. Both round float64 sources once (checked
below against an exact rounding in Python fractions), so float64 -> 16-bit is compared with them
directly. Bulk checks run the jitted functions over arrays inside njit loops.
"""

import functools
import math
import os
import platform
import subprocess
import sys
import textwrap
import warnings
from bisect import bisect_right
from fractions import Fraction
from pathlib import Path

import ml_dtypes
import numba
import numpy as np
import pytest

from optforge.runtime.storage import STORAGE, functions, rounding_key, rounding_keys, storage_functions

CPU = functions("cpu")
ROOT = Path(__file__).resolve().parent.parent
ALL16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
# name -> (ml_dtypes/NumPy type, exponent-all-ones pattern)
FORMATS = {"bf16": (ml_dtypes.bfloat16, 0x7F80), "f16": (np.float16, 0x7C00)}


# -- helpers ---------------------------------------------------------------------------------------------


@functools.cache
def _loop(name: str, arity: int):
    fn = getattr(CPU, name)
    if arity == 1:

        @numba.njit(cache=False)
        def run(x, out):
            for i in range(x.size):
                out[i] = fn(x[i])

    elif arity == 2:

        @numba.njit(cache=False)
        def run(x, bits, out):
            for i in range(x.size):
                out[i] = fn(x[i], bits[i])

    else:  # a store: (value, key, counter), the counter the index

        @numba.njit(cache=False)
        def run(x, key, out):
            for i in range(x.size):
                out[i] = fn(x[i], key, i)

    return run


def apply(name, x, out_dtype, *extra):
    out = np.empty(x.shape, out_dtype)
    _loop(name, 1 + len(extra) if not name.startswith("store") else 3)(x, *extra, out)
    return out


def reference(fmt: str, x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return x.astype(FORMATS[fmt][0]).view(np.uint16)


def is_nan16(fmt, p):
    return (p & 0x7FFF) > FORMATS[fmt][1]


def assert_same16(fmt, got, want, x=None):
    """Equal bit patterns, except that NaNs need only both be NaN of the same sign."""
    nan = is_nan16(fmt, want)
    assert np.array_equal(is_nan16(fmt, got), nan), "NaN where there should be none, or not NaN"
    assert np.array_equal(got[nan] >> 15, want[nan] >> 15), "NaN sign"
    bad = np.flatnonzero((got != want) & ~nan)
    where = "" if x is None else f" at x={x[bad[:5]]!r}"
    assert bad.size == 0, f"{bad.size} differ{where}: got {got[bad[:5]]}, want {want[bad[:5]]}"


def assert_same_float(got, want):
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(np.signbit(got[nan]), np.signbit(want[nan]))
    ints = {4: np.uint32, 8: np.uint64}[got.itemsize]
    assert np.array_equal(got[~nan].view(ints), want[~nan].view(ints))


def finite_values(fmt) -> np.ndarray:
    """The non-negative finite values of `fmt` in pattern order (increasing), as float64."""
    top = FORMATS[fmt][1]
    return ALL16[:top].view(FORMATS[fmt][0]).astype(np.float64)


def exact_nearest(fmt: str, x: float) -> int | None:
    """The pattern of x rounded to nearest-even in `fmt`, from exact rational arithmetic."""
    if math.isnan(x):
        return None
    sign = 0x8000 if math.copysign(1.0, x) < 0 else 0
    a, values, top = abs(x), _sorted_values(fmt), FORMATS[fmt][1]
    if a == math.inf:
        return sign | top
    i = bisect_right(values, a) - 1
    if values[i] == a:
        return sign | i
    lo = Fraction(values[i])
    hi = Fraction(values[i + 1]) if i + 1 < top else 2 * lo - Fraction(values[i - 1])  # inf as max + ulp
    below, above = Fraction(a) - lo, hi - Fraction(a)
    pick = i if below < above else i + 1 if above < below else (i if i % 2 == 0 else i + 1)
    return sign | pick


@functools.cache
def _sorted_values(fmt):
    return [float(v) for v in finite_values(fmt)]


def midpoints(fmt, dtype) -> np.ndarray:
    """Every midpoint between neighbouring finite values (and max and max + ulp), both signs, with
    the source type's neighbours of each: ties and the values just either side of them."""
    v = finite_values(fmt)
    mids = np.concatenate([(v[:-1] + v[1:]) / 2, [v[-1] + (v[-1] - v[-2]) / 2]]).astype(dtype)
    assert np.array_equal(mids.astype(np.float64)[:-1], (v[:-1] + v[1:]) / 2)  # exact in `dtype`
    near = [mids, np.nextafter(mids, dtype(np.inf)), np.nextafter(mids, dtype(0))]
    both = np.concatenate(near)
    return np.concatenate([both, -both])


def specials(dtype) -> np.ndarray:
    ints = {np.float32: np.uint32, np.float64: np.uint64}[dtype]
    nan_low = {np.float32: 0x7F800001, np.float64: 0x7FF0000000000001}[dtype]  # payload only low bits
    nans = np.array([nan_low, nan_low | (1 << (8 * np.dtype(dtype).itemsize - 1))], ints).view(dtype)
    plain = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 65504, 65519.99, 65520, 65536, 7e4], dtype)
    tiny = np.array([2.0**-24, 2.0**-25, 2.0**-26, 3 * 2.0**-26, 2.0**-14, 2.0**-15, 2.0**-133, 2.0**-134,
                     2.0**-126, 2.0**-127, 2.0**-149, 3.4e38, 3.39e38], dtype)  # fmt: skip
    return np.concatenate([nans, plain, tiny, -tiny, -plain])


def random_floats(dtype, n, rng) -> np.ndarray:
    """Random bit patterns, plus random values spread over the 16-bit formats' binades."""
    ints = {np.float32: np.uint32, np.float64: np.uint64}[dtype]
    bits = rng.integers(0, np.iinfo(ints).max, n, dtype=ints, endpoint=True).view(dtype)
    spread = rng.uniform(1, 2, n) * np.exp2(rng.integers(-150, 130, n)) * rng.choice([-1, 1], n)
    near16 = rng.uniform(1, 2, n) * np.exp2(rng.integers(-26, 17, n))
    with np.errstate(over="ignore"):  # some overflow to inf, on purpose
        return np.concatenate([bits, spread.astype(dtype), near16.astype(dtype)])


# -- widening ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["bf16", "f16"])
def test_widening_every_pattern_is_exact_and_narrows_back(fmt):
    with np.errstate(invalid="ignore"):  # signalling NaNs
        want32 = ALL16.view(FORMATS[fmt][0]).astype(np.float32)
        want64 = ALL16.view(FORMATS[fmt][0]).astype(np.float64)
    got32 = apply(f"{fmt}_to_f32", ALL16, np.float32)
    got64 = apply(f"{fmt}_to_f64", ALL16, np.float64)
    assert_same_float(got32, want32)
    assert_same_float(got64, want64)
    if fmt == "bf16":  # the upper half of a float32, every bit kept (NaN payloads too)
        assert np.array_equal(got32.view(np.uint32), ALL16.astype(np.uint32) << 16)
    else:  # NaNs come back quiet
        nan = np.isnan(got32)
        assert np.all(got32[nan].view(np.uint32) & 0x00400000)
        assert np.all(got64[nan].view(np.uint64) & 0x0008000000000000)
    assert_same16(fmt, apply(f"f32_to_{fmt}", got32, np.uint16), ALL16)
    assert_same16(fmt, apply(f"f64_to_{fmt}", got64, np.uint16), ALL16)


# -- narrowing, round to nearest even -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["bf16", "f16"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_narrowing_matches_the_reference(fmt, dtype, rng):
    name = f"{'f32' if dtype == np.float32 else 'f64'}_to_{fmt}"
    for label, x in [
        ("values", np.concatenate([finite_values(fmt), -finite_values(fmt)]).astype(dtype)),
        ("ties", midpoints(fmt, dtype)),
        ("specials", specials(dtype)),
        ("random", random_floats(dtype, 1_000_000, rng)),
    ]:
        assert_same16(fmt, apply(name, x, np.uint16), reference(fmt, x), x)


def test_ties_go_to_even():
    """Explicit cases, including float64 ties that a float32 intermediate would break."""
    f = CPU
    assert f.f32_to_bf16(np.float32(1 + 2**-8)) == 0x3F80  # tie, down to even
    assert f.f32_to_bf16(np.float32(1 + 3 * 2**-8)) == 0x3F82  # tie, up to even
    assert f.f64_to_bf16(1 + 2**-8 + 2**-40) == 0x3F81  # above the tie: via float32 it would be 0x3F80
    assert f.f64_to_f16(1 + 2**-11 + 2**-40) == 0x3C01
    assert f.f32_to_f16(np.float32(65519.996)) == 0x7BFF and f.f32_to_f16(np.float32(65520)) == 0x7C00
    assert f.f32_to_f16(np.float32(2.0**-25)) == 0 and f.f32_to_f16(np.float32(-3 * 2.0**-25)) == 0x8002


def test_the_references_round_float64_once():
    """ml_dtypes (f64 -> bfloat16) and NumPy (f64 -> float16) against exact rational rounding."""
    rng = np.random.default_rng(7)
    for fmt in ("bf16", "f16"):
        mids = midpoints(fmt, np.float64)
        x = np.concatenate(
            [rng.choice(mids, 4000), specials(np.float64), random_floats(np.float64, 2000, rng)]
        )
        with np.errstate(invalid="ignore"):  # signalling NaNs
            x = (
                x + rng.choice([0.0, 1.0], x.size) * np.where(np.isfinite(x), x, 0) * 2.0**-45
            )  # past ties too
        want = reference(fmt, x)
        got = apply(f"f64_to_{fmt}", x, np.uint16)
        for value, w, g in zip(x.tolist(), want.tolist(), got.tolist()):
            exact = exact_nearest(fmt, value)
            if exact is None:
                assert is_nan16(fmt, np.uint16(w)) and is_nan16(fmt, np.uint16(g))
            else:
                assert w == exact and g == exact, (fmt, value, w, g, exact)


# -- stochastic rounding ----------------------------------------------------------------------------------


def _neighbours(fmt, x):
    """Per x: the magnitude pattern at or below |x| (toward zero), and whether x is exact."""
    mag = reference(fmt, x) & 0x7FFF
    back = np.abs(mag.view(FORMATS[fmt][0]).astype(np.float64))
    a = np.abs(x.astype(np.float64))
    return np.where(back <= a, mag, mag - 1).astype(np.uint16), back == a


@pytest.mark.parametrize("fmt", ["bf16", "f16"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_stochastic_rounding_gives_a_neighbour_and_keeps_exact_values(fmt, dtype, rng):
    name = f"{'f32' if dtype == np.float32 else 'f64'}_to_{fmt}_sr"
    top = float(finite_values(fmt)[-1])
    x = random_floats(dtype, 300_000, rng)
    x = x[np.abs(x) <= top]
    exact = np.concatenate([finite_values(fmt), -finite_values(fmt)]).astype(dtype)
    for values in (x, exact):
        bits = rng.integers(0, 1 << 32, values.size, dtype=np.uint32)
        got = apply(name, values, np.uint16, bits)
        lo, is_exact = _neighbours(fmt, values)
        assert np.array_equal(got >> 15, np.signbit(values).astype(np.uint16))
        mag = got & 0x7FFF
        assert np.all((mag == lo) | ((mag == lo + 1) & ~is_exact))
    assert np.array_equal(got, reference(fmt, exact))  # exact values: unchanged
    s = specials(dtype)
    s = s[~np.isfinite(s)]  # inf and NaN as in nearest, even with bits that round everything else up
    assert_same16(fmt, apply(name, s, np.uint16, np.full(s.size, 0xFFFFFFFF, np.uint32)), reference(fmt, s))


def test_stochastic_rounding_compares_the_bits_with_the_dropped_fraction():
    """Rounds away from zero iff bits < the dropped fraction * 2**32: bits 0 always (unless exact),
    bits 2**32 - 1 never."""
    x = np.float32(1 + 2**-9)  # a quarter of a bfloat16 ulp above 1
    up = [int(CPU.f32_to_bf16_sr(x, np.uint32(b))) for b in (0, 2**30 - 1, 2**30, 2**32 - 1)]
    assert up == [0x3F81, 0x3F81, 0x3F80, 0x3F80]
    assert CPU.f32_to_bf16_sr(-x, np.uint32(0)) == 0xBF81
    for fmt in ("bf16", "f16"):
        exact = np.concatenate([finite_values(fmt), -finite_values(fmt)])
        for name, values in ((f"f32_to_{fmt}_sr", exact.astype(np.float32)), (f"f64_to_{fmt}_sr", exact)):
            for b in (0, 0xFFFFFFFF):
                got = apply(name, values, np.uint16, np.full(values.size, b, np.uint32))
                assert np.array_equal(got, reference(fmt, values)), (name, b)


X_SR = [1.0 - 1e-4, 1 + 2**-9, 0.3, -2.7, 1e-30, 3e-7, 1e5, 1 + 2**-20 + 2**-40]


@pytest.mark.parametrize("fmt", ["bf16", "f16"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_stochastic_rounding_is_unbiased(fmt, dtype):
    compute = "f32" if dtype == np.float32 else "f64"
    n = 1 << 16
    key = rounding_key(3, 11, 2)
    for x in X_SR:
        if fmt == "f16" and abs(x) > 65504:
            continue
        value = dtype(x)
        got = apply(f"store_{compute}_to_{fmt}_sr", np.full(n, value), np.uint16, key)
        lo, exact = _neighbours(fmt, np.array([value]))
        if exact[0]:
            assert np.all(got == reference(fmt, np.array([value]))[0])
            continue
        lo_v = float(lo.view(FORMATS[fmt][0]).astype(np.float64)[0])
        hi_v = float((lo + 1).view(FORMATS[fmt][0]).astype(np.float64)[0])
        p = float((Fraction(abs(float(value))) - Fraction(lo_v)) / (Fraction(hi_v) - Fraction(lo_v)))
        up = np.mean((got & 0x7FFF) == lo[0] + 1)
        sigma = math.sqrt(p * (1 - p) / n)
        assert abs(up - p) < 6 * sigma + 2.0**-16, (fmt, compute, x, up, p)
        mean = got.view(FORMATS[fmt][0]).astype(np.float64).mean()
        assert abs(mean - float(value)) < (6 * sigma + 2.0**-16) * (hi_v - lo_v), (fmt, compute, x, mean)


def test_many_small_updates_survive_stochastic_rounding_only():
    """The issue's example: bfloat16 1.0, 2,000 steps of -1e-4. Nearest rounding never moves it
    (half an ulp below 1 is 2**-9 > 1e-4); stochastic rounding ends near 0.8."""

    @numba.njit(cache=False)
    def train(w, keys, store, load):
        for step in range(keys.size):
            for i in range(w.size):
                w[i] = store(load(w[i]) - np.float32(1e-4), keys[step], i)

    keys = np.array([rounding_key(0, step, 0) for step in range(2000)], np.uint32)
    results = {}
    for stochastic in (False, True):
        load, store, view = storage_functions("bfloat16", np.float32, stochastic)
        w = np.full(1024, 0x3F80, view)
        train(w, keys, store, load)
        results[stochastic] = w.view(ml_dtypes.bfloat16).astype(np.float64)
    assert np.all(results[False] == 1.0)
    assert abs(results[True].mean() - 0.8) < 0.005
    assert np.all(np.abs(results[True] - 0.8) < 0.2)  # each element: a random walk of ~0.03


def test_stochastic_rounding_is_reproducible():
    x = np.random.default_rng(1).standard_normal(100_000).astype(np.float32)
    a = apply("store_f32_to_bf16_sr", x, np.uint16, rounding_key(5, 1, 0))
    b = apply("store_f32_to_bf16_sr", x, np.uint16, rounding_key(5, 1, 0))
    c = apply("store_f32_to_bf16_sr", x, np.uint16, rounding_key(5, 1, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_beyond_the_largest_finite_float16_stochastic_rounding_goes_to_inf_as_the_next_value():
    n = 1 << 14
    got = apply("store_f32_to_f16_sr", np.full(n, 65504 + 8, np.float32), np.uint16, np.uint32(9))
    assert set(np.unique(got).tolist()) == {0x7BFF, 0x7C00}
    assert abs(np.mean(got == 0x7C00) - 0.25) < 0.02
    assert np.all(
        apply("store_f32_to_f16_sr", np.full(64, -7e4, np.float32), np.uint16, np.uint32(9)) == 0xFC00
    )


# -- random bits ------------------------------------------------------------------------------------------


def _python_bits(key: int, counter: int) -> int:
    """The bits by the definition, in Python integers: lowbias32 of the key (the counter's high
    half folded in) plus the counter's low half times the 32-bit golden ratio."""
    m = (1 << 32) - 1
    x = ((key ^ (((counter >> 32) * 0x846CA68B) & m)) + (counter & m) * 0x9E3779B9) & m
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & m
    x = ((x ^ (x >> 15)) * 0x846CA68B) & m
    return x ^ (x >> 16)


_RB = CPU.rounding_bits


@numba.njit(cache=False)
def _bits_table(keys, counters):
    rounding_bits = _RB
    out = np.empty((keys.size, counters.size), np.uint32)
    for k in range(keys.size):
        for c in range(counters.size):
            out[k, c] = rounding_bits(keys[k], counters[c])
    return out


def test_rounding_bits_are_lowbias32_and_uniform():
    keys = rounding_keys(2024, 7, np.arange(16))
    bits = _bits_table(keys, np.arange(1 << 18, dtype=np.int64)).ravel()  # 4M
    for k, c in [(0, 0), (1, 0), (0xFFFFFFFF, 123456789), (int(keys[3]), (1 << 40) + 5)]:
        assert int(_bits_table(np.array([k], np.uint32), np.array([c], np.int64))[0, 0]) == _python_bits(k, c)
    n = bits.size
    for shift in (0, 8, 16, 24):  # chi-square of each byte over 256 bins: 255 degrees of freedom
        counts = np.bincount((bits >> shift) & 0xFF, minlength=256)
        chi2 = ((counts - n / 256) ** 2 / (n / 256)).sum()
        assert 255 - 6 * math.sqrt(510) < chi2 < 255 + 6 * math.sqrt(510), (shift, chi2)
    ones = np.array([((bits >> np.uint32(j)) & 1).mean() for j in range(32)])
    assert np.all(np.abs(ones - 0.5) < 6 * 0.5 / math.sqrt(n)), ones
    follow = np.corrcoef(bits[:-1].astype(np.float64), bits[1:].astype(np.float64))[0, 1]
    assert abs(follow) < 6 / math.sqrt(n)


def test_rounding_bits_avalanche():
    """Flipping any one bit of the counter or the key flips each output bit with probability ~1/2."""
    rng = np.random.default_rng(3)
    m = 4096
    keys = rng.integers(0, 1 << 32, m, dtype=np.uint32)
    counters = rng.integers(0, 1 << 32, m, dtype=np.int64)
    base = _pairs(keys, counters)
    outputs = np.arange(32, dtype=np.uint32)
    for j in range(32):
        for flipped in (_pairs(keys, counters ^ (1 << j)), _pairs(keys ^ np.uint32(1 << j), counters)):
            p = (((base ^ flipped)[:, None] >> outputs) & 1).mean(axis=0)
            assert np.all(np.abs(p - 0.5) < 6 * 0.5 / math.sqrt(m)), (j, p)


@numba.njit(cache=False)
def _pairs(keys, counters):
    rounding_bits = _RB
    out = np.empty(keys.size, np.uint32)
    for i in range(keys.size):
        out[i] = rounding_bits(keys[i], counters[i])
    return out


def test_rounding_keys_vectorised_equal_the_scalar_and_differ_within_a_step():
    tensors = np.arange(100_000)
    keys = rounding_keys(42, 3, tensors)
    assert keys.dtype == np.uint32
    assert [int(rounding_key(42, 3, t)) for t in range(0, 100_000, 997)] == keys[::997].tolist()
    assert np.unique(keys).size == tensors.size
    assert rounding_key(42, 4, 0) != keys[0] and rounding_key(43, 3, 0) != keys[0]
    assert rounding_key(2**64 + 42, 3, 5) == keys[5]  # seeds are taken mod 2**64


# -- plain Python, registry, vectorisation -----------------------------------------------------------------


NAMES1 = ["bf16_to_f32", "f16_to_f32", "bf16_to_f64", "f16_to_f64"]
NAMES_N = ["f32_to_bf16", "f32_to_f16", "f64_to_bf16", "f64_to_f16"]


def test_plain_python_on_numpy_scalars_agrees_with_the_cpu():
    py = functions("python")
    rng = np.random.default_rng(5)
    u = np.concatenate([rng.integers(0, 1 << 16, 300).astype(np.uint16), [0x7C01, 0xFE00, 0x0001, 0x8000]])
    x32, x64 = specials(np.float32), specials(np.float64)
    x32 = np.concatenate([x32, random_floats(np.float32, 100, rng)])
    x64 = np.concatenate([x64, random_floats(np.float64, 100, rng)])
    bits = rng.integers(0, 1 << 32, 400, dtype=np.uint32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy overflow warnings from the wrapping arithmetic
        for name in NAMES1:
            want = apply(name, u, np.float64 if name.endswith("64") else np.float32)
            got = np.array([getattr(py, name)(v) for v in u], want.dtype)
            assert_same_float(got, want)
        for name in NAMES_N:
            for sr in ("", "_sr"):
                x = x32 if name.startswith("f32") else x64
                args = (bits[: x.size],) if sr else ()
                want = apply(name + sr, x, np.uint16, *args)
                got = np.array([getattr(py, name + sr)(v, *(b[i] for b in args)) for i, v in enumerate(x)])
                assert np.array_equal(got.astype(np.uint16), want), name + sr
        keys, counters = bits[:50], rng.integers(0, 1 << 40, 50)
        got = [py.rounding_bits(k, c) for k, c in zip(keys, counters)]
        assert got == [_python_bits(int(k), int(c)) for k, c in zip(keys, counters)]
        want = apply("store_f32_to_f16_sr", x32, np.uint16, keys[0])
        got = [py.store_f32_to_f16_sr(v, keys[0], i) for i, v in enumerate(x32)]
        assert np.array_equal(np.array(got, np.uint16), want)


def test_registry():
    assert set(STORAGE) == {"float32", "float64", "bfloat16", "float16"}
    for name, kind in STORAGE.items():
        assert (
            np.dtype(kind.view_dtype).itemsize == kind.itemsize == {"float64": 8, "float32": 4}.get(name, 2)
        )
        for compute in (np.float32, np.float64):
            for stochastic in (False, True):
                if (name, compute, stochastic) == ("float32", np.float64, True):
                    with pytest.raises(ValueError, match="no stochastic float32 storage for float64"):
                        storage_functions(name, compute, stochastic)
                    continue
                load, store, view = storage_functions(name, compute, stochastic)
                assert view is kind.view_dtype and load.py_func and store.py_func
    load, store, view = storage_functions("float16", "float64", True)
    assert (load, store, view) == (CPU.f16_to_f64, CPU.store_f64_to_f16_sr, np.uint16)
    assert storage_functions("float32", np.float32, True)[1] is CPU.store_plain
    with pytest.raises(ValueError, match="target"):
        functions("tpu")
    from optforge.runtime.storage import f32_to_bf16, store_plain

    assert f32_to_bf16 is CPU.f32_to_bf16 and store_plain is CPU.store_plain
    with pytest.raises(ImportError):
        from optforge.runtime.storage import f32_to_bfloat16  # noqa: F401


def test_the_cpu_run_time_does_not_import_numba_cuda():
    code = (
        "import sys, numpy as np\n"
        "from optforge.runtime.storage import storage_functions\n"
        "load, store, _ = storage_functions('bfloat16', np.float32, True)\n"
        "assert store(np.float32(1.0), np.uint32(1), 0) == 0x3F80\n"
        "print(sorted(m for m in sys.modules if m.startswith('numba.cuda')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env("0"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_plain_store_compiles_to_the_same_vectorised_loop_as_no_call():
    store, load = CPU.store_plain, CPU.load_plain

    @numba.njit(cache=False)
    def stored(w, g, key):
        for i in range(w.size):
            w[i] = store(load(w[i]) - np.float32(0.1) * g[i], key, i)

    @numba.njit(cache=False)
    def bare(w, g, key):
        for i in range(w.size):
            w[i] = w[i] - np.float32(0.1) * g[i]

    signature = (numba.float32[::1], numba.float32[::1], numba.uint32)

    def instructions(fn):
        fn.compile(signature)
        lines = fn.inspect_asm(signature).splitlines()
        return [
            line.split()[0] for line in lines if line.startswith("\t") and not line.strip().startswith(".")
        ]

    assert instructions(stored) == instructions(bare)
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert {"vmulps", "mulps"} & set(instructions(stored)), "the loop is not vectorised"


# -- CUDA: the simulator and PTX ---------------------------------------------------------------------------


def _env(cudasim: str) -> dict:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "NUMBA_ENABLE_CUDASIM": cudasim, "PYTHONPATH": path}


SIMULATED = textwrap.dedent(
    """
    import sys
    import warnings

    import numpy as np
    from numba import config, cuda
    from optforge.runtime.storage import functions

    assert config.ENABLE_CUDASIM
    f = functions("cuda")
    w_bf32, w_f32, w_bf64, w_f64 = f.bf16_to_f32, f.f16_to_f32, f.bf16_to_f64, f.f16_to_f64
    n_bf32, n_f32, n_bf64, n_f64 = f.f32_to_bf16, f.f32_to_f16, f.f64_to_bf16, f.f64_to_f16
    s_bf32, s_f32 = f.store_f32_to_bf16_sr, f.store_f32_to_f16_sr
    s_bf64, s_f64 = f.store_f64_to_bf16_sr, f.store_f64_to_f16_sr
    bits = f.rounding_bits

    @cuda.jit
    def kernel(u, x32, x64, key, wide32, wide64, narrow, sr, rnd):
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for i in range(start, u.size, stride):
            wide32[0, i] = w_bf32(u[i])
            wide32[1, i] = w_f32(u[i])
            wide64[0, i] = w_bf64(u[i])
            wide64[1, i] = w_f64(u[i])
            narrow[0, i] = n_bf32(x32[i])
            narrow[1, i] = n_f32(x32[i])
            narrow[2, i] = n_bf64(x64[i])
            narrow[3, i] = n_f64(x64[i])
            sr[0, i] = s_bf32(x32[i], key, i)
            sr[1, i] = s_f32(x32[i], key, i)
            sr[2, i] = s_bf64(x64[i], key, i)
            sr[3, i] = s_f64(x64[i], key, i)
            rnd[i] = bits(key, i)

    data = np.load(sys.argv[1])
    u, x32, x64, key = data["u"], data["x32"], data["x64"], data["key"][0]
    n = u.size
    out = dict(wide32=np.zeros((2, n), np.float32), wide64=np.zeros((2, n), np.float64),
               narrow=np.zeros((4, n), np.uint16), sr=np.zeros((4, n), np.uint16), rnd=np.zeros(n, np.uint32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the device functions run as Python without NumPy warnings
        kernel[2, 64](u, x32, x64, key, *out.values())
    np.savez(sys.argv[2], **out)
    """
)


def test_the_cuda_simulator_gives_the_cpu_bits(tmp_path):
    rng = np.random.default_rng(11)
    n = 640
    s32, s64 = specials(np.float32), specials(np.float64)
    x32 = np.concatenate([s32, midpoints("f16", np.float32)[::97], random_floats(np.float32, n, rng)])[:n]
    x64 = np.concatenate([s64, midpoints("bf16", np.float64)[::89], random_floats(np.float64, n, rng)])[:n]
    u = np.concatenate([[0x7C01, 0xFD00, 0x7F81, 1, 0x8001, 0x03FF], rng.integers(0, 1 << 16, n - 6)]).astype(
        np.uint16
    )
    key = np.array([rounding_key(1, 2, 3)], np.uint32)
    np.savez(tmp_path / "in.npz", u=u, x32=x32, x64=x64, key=key)
    script = tmp_path / "simulated.py"
    script.write_text(SIMULATED)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        capture_output=True, text=True, env=_env("1"), timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    for row, name in enumerate(["bf16_to_f32", "f16_to_f32"]):
        assert np.array_equal(got["wide32"][row].view(np.uint32), apply(name, u, np.float32).view(np.uint32))
    for row, name in enumerate(["bf16_to_f64", "f16_to_f64"]):
        assert np.array_equal(got["wide64"][row].view(np.uint64), apply(name, u, np.float64).view(np.uint64))
    for row, name in enumerate(NAMES_N):
        x = x32 if name.startswith("f32") else x64
        assert np.array_equal(got["narrow"][row], apply(name, x, np.uint16)), name
        assert np.array_equal(got["sr"][row], apply(f"store_{name}_sr", x, np.uint16, key[0])), name
    assert np.array_equal(got["rnd"], _bits_table(key, np.arange(n, dtype=np.int64))[0])


PTX = textwrap.dedent(
    """
    import re
    import numba
    from numba import cuda, types
    from optforge.runtime.storage import functions

    assert not numba.config.ENABLE_CUDASIM
    f = functions("cuda")
    F64_OPS = re.compile(r"\\b(add|sub|mul|div|fma|cvt)(\\.\\w+)*\\.f64\\b")
    scalars = (types.uint16, types.uint32, types.float32, types.float64)
    u16, u32, f32, f64 = (types.Array(t, 1, "C") for t in scalars)
    key = types.uint32
    widen = ("bf16_to_f32", "f16_to_f32", "bf16_to_f64", "f16_to_f64")
    cases = [(n, (u16, f32 if n.endswith("f32") else f64), 1) for n in widen]
    for src in ("f32", "f64"):
        for dst in ("bf16", "f16"):
            x = f32 if src == "f32" else f64
            name = f"{src}_to_{dst}"
            cases += [(name, (x, u16), 1), (name + "_sr", (x, u32, u16), 2)]
            cases += [(f"store_{name}", (x, key, u16), 3), (f"store_{name}_sr", (x, key, u16), 3)]
    cases += [("rounding_bits", (key, u32), 4), ("store_plain", (f32, key, f32), 3)]
    cases += [("load_plain", (f32, f32), 1)]

    def kernel_of(fn, arity):
        if arity == 1:
            def k(x, out):
                i = cuda.grid(1)
                if i < x.size:
                    out[i] = fn(x[i])
        elif arity == 2:
            def k(x, bits, out):
                i = cuda.grid(1)
                if i < x.size:
                    out[i] = fn(x[i], bits[i])
        elif arity == 3:
            def k(x, key, out):
                i = cuda.grid(1)
                if i < x.size:
                    out[i] = fn(x[i], key, i)
        else:
            def k(key, out):
                i = cuda.grid(1)
                if i < out.size:
                    out[i] = fn(key, i)
        return k

    for name, signature, arity in cases:
        ptx, _ = cuda.compile_ptx(kernel_of(getattr(f, name), arity), signature, cc=(9, 0))
        calls = len(re.findall(r"\\bcall(\\.uni)?\\b", ptx))
        print("OK", name, f"calls={calls}", f"f64-ops={len(F64_OPS.findall(ptx))}")
    """
)


def _nvvm_available() -> bool:
    code = "from numba.cuda.cudadrv.nvvm import NVVM; NVVM()"
    return subprocess.run([sys.executable, "-c", code], env=_env("0"), capture_output=True).returncode == 0


def test_every_device_function_compiles_to_ptx_for_sm90_inlined(tmp_path):
    pytest.importorskip("numba.cuda")
    if not _nvvm_available():
        pytest.skip("NVVM not found (install the `cuda` extra: numba-cuda[cu12])")
    script = tmp_path / "ptx.py"
    script.write_text(PTX)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=_env("0"), timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 23 and all(line.startswith("OK ") for line in lines), result.stdout
    for line in lines:
        _, name, calls, f64_ops = line.split()
        assert calls == "calls=0", line  # inlined: no device-function call left
        if "f64" not in name:  # float32 kernels do no float64 arithmetic
            assert f64_ops == "f64-ops=0", line
