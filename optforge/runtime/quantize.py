"""8-bit blockwise storage of optimizer state: dynamic code tables, per-element codecs, block helpers.

A quantised state keeps, per block of `BLOCK` (256) consecutive elements, one float32 `absmax` (the
largest magnitude in the block) and one uint8 code per element: an index into a sorted 256-entry
table of values in [-1, 1]. An element reads as ``table[code] * absmax``, is updated in float32 and
written back as the code nearest to ``x / absmax`` under the block's new absmax (the format of
Dettmers et al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022, and of bitsandbytes).

The tables: the "dynamic" map (Dettmers 2015, "8-Bit Approximations for Parallelism in Deep
Learning"). Its bit pattern is a sign bit (signed table only), then e zero bits, a one, and the
remaining bits a linear fraction: e is a decimal exponent. As values, decade e (e = 0..6) holds the
midpoints of n_e equal bins of [0.1, 1], times 10**-e, with n_e = 2**(6 - e) in the signed table
(each also negated) and 2**(7 - e) in the unsigned one; then 0 and 1. That is 2*127 + 2 and
254 + 2 = 256 entries. A table of 256 values symmetric about 0 that holds 0 has an odd size, so the
signed table cannot hold both 1 and -1: it holds 1, and its most negative value is -0.99296875
(the block's largest magnitude, when negative, reads back 0.7 % small). The codes are indices
into the sorted table, not the bit patterns. Each entry is the float32 nearest to its exact
decimal value (ties to even), computed from rationals, so the tables depend on no floating-point
library; bitsandbytes' `create_dynamic_map` computes the same values in float32 arithmetic and
differs in the last bit or two of some entries (72 of the signed, 100 of the unsigned: at most
2 units in the last place, 1.5e-7 relative; tests/test_quantize.py).

Accuracy (`relative_error_bounds`): a value of magnitude in [10**-k, 10**-(k-1)) * absmax reads
back within a relative error of

    decade k      1 (top)   2        3        4        5        6        7
    signed        6.2 %     11.0 %   18.0 %   27.6 %   46.6 %   71.1 %   450 %
    unsigned      3.3 %     6.2 %    11.0 %   18.0 %   27.6 %   46.6 %   225 %

(decade 7: below the smallest nonzero entry, 5.5e-7 signed and 3.25e-7 unsigned, x reads back
as that entry, of its sign, below 1e-7 too; the top decade holds 64 entries signed, 128
unsigned), plus the two
float32 roundings of x / absmax and table[code] * absmax (2**-23 relative together). The absolute
error is at most half the gap between the two codes around x / absmax, times absmax: at most
0.00703 * absmax (signed), 0.00352 * absmax (unsigned). Optimizer moments tolerate this (the
paper's argument): an element's error is relative to its block's largest value, and an error
written at one step decays with the moment's own rate (beta) at the next, so it stays bounded;
`compiler/passes/sign.py` decides which states may be stored this way, and in which table.

Nearest code: `quantize` counts the midpoints below x (a binary search: 8 comparisons, no data-
dependent branch). `MIDPOINTS[kind][i]` is the exact midpoint of entries i and i+1 rounded down to
float32, so for every float32 x, ``x > MIDPOINTS[i]`` is exactly "x is nearer entry i+1 than entry
i, or as near and the midpoint is not a float32": a float32 x exactly halfway between two entries
takes the LOWER entry (the more negative value); anything else takes the nearest entry, but for
the two points around 0, which keep the sign (above). Values
outside the table's range take its end codes; NaN takes code 0.

Nonzero values: nearest, but for one exception, x never reads back as 0 unless it is 0. Below half
the smallest nonzero entry, nearest would be 0, and bitsandbytes writes 0 there. We write the
smallest entry of x's sign instead, an absolute error below that entry times absmax. The reason
is Adam's denominator: a second moment 1e-7 of its block's largest that read back as 0 (while
the first moment, in its own block, did not) would step the parameter by m / eps; read back as
the smallest entry, the step only gets smaller.

Special blocks: an all-zero block has absmax 0; its elements are written as the code of 0 (not
0 / 0) and read back as exact zeros. A block holding NaN has absmax NaN (`absmax_update` and
NumPy's max propagate it) and every element of it reads back NaN; a block holding +-inf (and no
NaN) has absmax inf and every element reads back NaN or +-inf. So, unlike float32 state, where a
non-finite value stays in its own element, the whole block is poisoned: absmax scales every
element, and a finite code scaled by a non-finite absmax cannot read back finite. We keep it so
rather than clamp: the state that float32 storage would hold at that element is already
non-finite (and so is the parameter that reads it), and a clamped block would hide it behind
finite codes. Other blocks are untouched. (`skip_nonfinite=True` never writes such a step.) A tail
block shorter than 256 elements is an ordinary block of its length.

The per-element functions (`quantize`, `dequantize`, `ratio`, `absmax_update`) are
``numba.njit(inline="always")`` functions written in the subset numba's CPU and CUDA targets both
compile: generated CPU loops call them as they are, and so do a real GPU's kernels (numba-cuda
compiles a called @njit function as a device function). The CUDA simulator cannot pass its
arrays to a CPU function, so CUDA code takes them from `cuda_functions()`, which gives the same
Python source as simulator device functions there.
The tables are arguments (NumPy or device arrays), never globals. `quantize_blockwise` and
`dequantize_blockwise` are the host side in vectorised NumPy; they give the same bits as the
per-element functions.
"""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

import numba
import numpy as np

BLOCK = 256  # elements per block (one absmax each)
KINDS = ("signed", "unsigned")
DECADES = 7  # decimal exponents 0..6 (the 7 exponent bits of the dynamic map)


def _nearest_float32(value: Fraction) -> np.float32:
    """The float32 nearest to the rational `value`, ties to even: one rounding, exactly."""
    guess = np.float32(float(value))  # float() rounds once to float64; the float32 may be off by one
    candidates = (np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf)))

    def key(c: np.float32):
        return (abs(Fraction(float(c)) - value), int(np.array(c).view(np.uint32)) & 1)

    return min(candidates, key=key)


def dynamic_map(signed: bool) -> np.ndarray:
    """The 256 sorted float32 entries of the dynamic map (the module's docstring says how)."""
    values = {Fraction(0), Fraction(1)}
    for e in range(DECADES):
        bins = 2 ** (DECADES - 1 - e) if signed else 2 ** (DECADES - e)
        for j in range(bins):
            # The midpoint of bin j of [0.1, 1] split into `bins`, times 10**-e.
            v = (Fraction(1, 10) + Fraction(9, 10) * Fraction(2 * j + 1, 2 * bins)) / 10**e
            values.add(v)
            if signed:
                values.add(-v)
    table = np.array([_nearest_float32(v) for v in sorted(values)], dtype=np.float32)
    assert table.size == 256 and np.all(np.diff(table) > 0)
    return table


def midpoints(table: np.ndarray) -> np.ndarray:
    """The 255 float32 decision points of `quantize`: each exact midpoint of two neighbouring
    entries rounded down to float32, so ``x > mid`` on float32 x is exact (the docstring's rule)."""
    t = table.astype(np.float64)
    exact = (t[:-1] + t[1:]) / 2  # exact: float32 values have 24 bits, float64 holds their sum / 2
    mid = exact.astype(np.float32)
    above = mid.astype(np.float64) > exact
    mid[above] = np.nextafter(mid[above], np.float32(-np.inf))
    # The sign is kept: every positive x is above the point after 0's entry, and every negative
    # one at or below the point before it (the negative float32 nearest 0), so no nonzero value
    # reads back as 0 (the docstring's "Nonzero values").
    zero = int(np.flatnonzero(t == 0)[0])
    mid[zero] = np.float32(0.0)
    if zero > 0:
        mid[zero - 1] = -np.nextafter(np.float32(0), np.float32(1))
    return mid


TABLES = {"signed": dynamic_map(True), "unsigned": dynamic_map(False)}
MIDPOINTS = {kind: midpoints(table) for kind, table in TABLES.items()}
# The code of 0 in each table: what an all-zero block is written as.
ZERO_CODE = {kind: int(np.flatnonzero(table == 0)[0]) for kind, table in TABLES.items()}

# Nearest codes by lookup (the kernels' `flush`, optforge.runtime.blockwise): a float32's top
# 16 bits (sign, exponent, 7 bits of mantissa) name a bucket of values: within [0.5, 1) a
# bucket is 2**-8 wide, and the closest two midpoints (the unsigned table's top decade) are
# 0.0053 apart, 1.35 bucket widths; below, buckets narrow with the octave faster than the
# midpoints close in. So a bucket holds at most one midpoint (`buckets` asserts it):
# the code of a value is its bucket's smallest code, plus one if it is above the midpoint
# after that code. One lookup and one comparison instead of eight dependent comparisons; the
# index is a shift (a clamped, smaller table costs more instructions than its cache misses).
# Ratios are in [-1, 1] or NaN: the buckets above 1.0 in magnitude hold 0, NaN's code.
BUCKET_BITS = 16


def bucket_index(bits):
    """The bucket of a float32 with bit pattern `bits` (uint32: a NumPy array or scalar, or a
    number in a kernel, where `bucket_index_of` is this function compiled)."""
    return bits >> np.uint32(32 - BUCKET_BITS)


bucket_index_of = numba.njit(inline="always")(bucket_index)


def buckets(mids: np.ndarray) -> np.ndarray:
    """uint8[2**BUCKET_BITS]: the smallest code of each bucket's values, at most 254 (the code
    after it is the bucket's other one); 0 (NaN's code) where no ratio lies. Checked: no
    bucket's ratios span more than two codes."""
    lows = np.arange(1 << BUCKET_BITS, dtype=np.uint32) << np.uint32(32 - BUCKET_BITS)
    ends = [lows.view(np.float32), (lows | np.uint32((1 << (32 - BUCKET_BITS)) - 1)).view(np.float32)]
    with np.errstate(invalid="ignore"):
        codes = [nearest_codes(e, mids).astype(np.int64) for e in ends]
    ratios = np.abs(ends[0]) <= 1  # a bucket that holds a ratio starts at one
    assert np.all(np.abs(codes[0] - codes[1])[ratios] <= 1), "a bucket holds two midpoints"
    return np.minimum(np.where(ratios, np.minimum(*codes), 0), mids.size - 1).astype(np.uint8)


@numba.njit(inline="always")
def code_by_bucket(r, bits, buckets, midpoint_row):
    """`quantize`'s code of the float32 ratio `r` (bit pattern `bits`, uint32) in [-1, 1] or
    NaN: its bucket's smallest code (`buckets`, a `buckets(mids)` table), plus one if `r` is
    above the midpoint after that code (`midpoint_row`: MIDPOINT_ROWS, the midpoints and a
    +inf, so every code a bucket table holds indexes it). What the kernels' `flush` runs for
    each element (optforge.runtime.blockwise)."""
    base = buckets[bucket_index_of(bits)]
    return np.uint8(base + (r > midpoint_row[base]))


@numba.njit(cache=True)
def _codes_by_bucket(r, buckets, midpoint_row, codes):
    bits = r.view(np.uint32)
    for i in range(r.size):
        codes[i] = code_by_bucket(r[i], bits[i], buckets, midpoint_row)


def nearest_code_by_bucket(r, kind: str) -> np.ndarray:
    """`code_by_bucket` of each float32 ratio of `r` (flat) in the `kind` table: the kernels'
    per-element rule, run on the host (tests compare it with `nearest_codes`)."""
    r = np.ascontiguousarray(r, np.float32).reshape(-1)
    codes = np.empty(r.size, np.uint8)
    _codes_by_bucket(r, BUCKETS[kind], MIDPOINT_ROWS[kind], codes)
    return codes


def relative_error_bounds(table: np.ndarray) -> np.ndarray:
    """Per decade k = 1..7 (|x| / absmax in [10**-k, 10**-(k-1))), the largest relative error
    |table[code] - x| / |x| of rounding x / absmax to its code (the nearest entry, or the
    smallest of its sign: the module's "Nonzero values"), over both signs.

    Between neighbouring magnitudes a < b the error is (x - a) / x up to the midpoint and
    (b - x) / x after it, largest at the midpoint: (b - a) / (a + b). A magnitude beyond the
    largest entry of its sign (-1 in the signed table) rounds to that entry. In float64, without
    the two float32 roundings of x / absmax and table[code] * absmax (2**-23 relative together).
    """
    t = table.astype(np.float64)
    halves = [t[t >= 0], np.sort(-t[t <= 0])] if t[0] < 0 else [t]
    bounds = np.zeros(DECADES)
    for mags in halves:
        a, b = mags[:-1], mags[1:]
        if mags[-1] < 1:  # up to 1, the largest magnitude rounds down to the last entry
            a, b = np.append(a, mags[-1]), np.append(b, np.inf)
        mid = (a + b) / 2
        for k in range(1, DECADES + 1):
            lo, hi = 10.0**-k, 10.0 ** -(k - 1)
            meets = (b > lo) & (a < hi)
            p, q = np.maximum(a[meets], lo), np.minimum(b[meets], hi)
            am, bm, mm = a[meets], b[meets], mid[meets]
            # Rising to the midpoint, falling after it: the sup over [p, q) is at the midpoint if
            # it lies there, else at the end nearer to it.
            with np.errstate(invalid="ignore"):  # the gap up to inf has no midpoint: q <= mm
                err = np.where(q <= mm, 1 - am / q, np.where(p >= mm, bm / p - 1, (bm - am) / (am + bm)))
                # The gap above 0: every x in it reads back as its upper entry (the sign is kept).
                err = np.where(am == 0, bm / p - 1, err)
            bounds[k - 1] = max(bounds[k - 1], err.max(initial=0.0))
    return bounds


# --- per element: numba CPU and CUDA -----------------------------------------------------------


@numba.njit(inline="always")
def dequantize(code, table, absmax):
    """The value of `code` in a block of largest magnitude `absmax`: ``table[code] * absmax``."""
    return np.float32(table[code] * np.float32(absmax))


@numba.njit(inline="always")
def ratio(x, absmax):
    """``x / absmax`` in float32: what `quantize` takes; 0 where absmax is 0 (an all-zero block,
    not 0 / 0) or NaN (the block is poisoned through absmax anyway)."""
    if absmax > 0:
        return np.float32(np.float32(x) / np.float32(absmax))
    return np.float32(0.0)


@numba.njit(inline="always")
def quantize(x_over_absmax, midpoints):
    """The code nearest to `x_over_absmax` (float32): the number of `midpoints` below it, by an
    unrolled binary search over the 255 sorted midpoints. Ties and NaN: the module's docstring."""
    x = np.float32(x_over_absmax)
    lo = 128 * (x > midpoints[127])
    lo += 64 * (x > midpoints[lo + 63])
    lo += 32 * (x > midpoints[lo + 31])
    lo += 16 * (x > midpoints[lo + 15])
    lo += 8 * (x > midpoints[lo + 7])
    lo += 4 * (x > midpoints[lo + 3])
    lo += 2 * (x > midpoints[lo + 1])
    lo += 1 * (x > midpoints[lo])
    return np.uint8(lo)


@numba.njit(inline="always")
def absmax_update(m, x):
    """`m` after seeing element `x`: the running max of |x| in float32, NaN kept once seen
    (a plain `max` forgets a NaN that an ordered comparison meets later)."""
    a = np.float32(abs(x))
    if a > m or a != a:
        return a
    return np.float32(m)


class CudaFunctions(NamedTuple):
    dequantize: object
    ratio: object
    quantize: object
    absmax_update: object


def cuda_functions() -> CudaFunctions:
    """The per-element functions for CUDA kernels. On a GPU these are the njit functions
    themselves (numba-cuda compiles a called @njit function as a device function, and
    `cuda.compile_ptx` needs no GPU for them, where a ``cuda.jit(device=True)`` one asks for the
    current device); on the CUDA simulator, which runs kernels as Python, the same Python source
    as simulator device functions. Bind them to globals or closure variables of the kernel
    (``dequantize, ratio, quantize, absmax_update = cuda_functions()``): numba types a call
    through a tuple of @njit functions read inside a kernel as a call to the CPU function."""
    functions = (dequantize, ratio, quantize, absmax_update)
    if not numba.config.ENABLE_CUDASIM:
        return CudaFunctions(*functions)
    from numba import cuda

    return CudaFunctions(*(cuda.jit(device=True)(f.py_func) for f in functions))


# --- per block, host side: NumPy ---------------------------------------------------------------


def _blocks(x: np.ndarray, block: int) -> np.ndarray:
    """`x` flat, zero-padded to whole blocks, as (blocks, block); padding never raises an absmax."""
    n = x.size
    padded = np.zeros(-(-n // block) * block, np.float32)
    padded[:n] = x
    return padded.reshape(-1, block)


def nearest_codes(r: np.ndarray, mids: np.ndarray) -> np.ndarray:
    """`quantize` of each element of `r` (float32 ratios x / absmax), vectorised: uint8 codes."""
    r = np.asarray(r, np.float32)
    codes = np.searchsorted(mids, r, side="left")  # the number of midpoints strictly below r
    codes[np.isnan(r)] = 0  # searchsorted sorts NaN last; `quantize`'s comparisons are all False
    return codes.astype(np.uint8)


def quantize_blockwise(
    x: np.ndarray, table: np.ndarray, block: int = BLOCK, mids: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`x` (float32, any shape, read flat) as (codes uint8[n], absmax float32[ceil(n / block)]):
    the same bits as `absmax_update`, `ratio` and `quantize` element by element."""
    x = np.asarray(x, np.float32).reshape(-1)
    mids = midpoints(table) if mids is None else mids
    blocks = _blocks(x, block)
    absmax = np.max(np.abs(blocks), axis=1) if blocks.size else np.zeros(0, np.float32)
    absmax[np.isnan(absmax)] = np.float32(np.nan)  # one NaN bit pattern, as the kernels write
    scale = absmax[:, None]
    with np.errstate(invalid="ignore"):
        # `ratio`: x / absmax where absmax > 0, else 0.
        r = np.where(scale > 0, blocks / np.where(scale > 0, scale, np.float32(1)), np.float32(0))
    return nearest_codes(r, mids).reshape(-1)[: x.size], absmax.astype(np.float32)


def dequantize_blockwise(
    codes: np.ndarray, absmax: np.ndarray, table: np.ndarray, block: int = BLOCK
) -> np.ndarray:
    """float32[n]: ``table[code] * absmax[i // block]`` for element i, as `dequantize` computes."""
    codes = np.asarray(codes, np.uint8).reshape(-1)
    scale = np.repeat(np.asarray(absmax, np.float32), block)[: codes.size]
    with np.errstate(invalid="ignore"):
        return table[codes] * scale


BUCKETS = {kind: buckets(mids) for kind, mids in MIDPOINTS.items()}
# The kernels' midpoint rows: +inf after the last midpoint, so every uint8 a bucket table
# holds indexes in range (and 255 stays 255) without a bound check per element.
MIDPOINT_ROWS = {kind: np.append(mids, np.float32(np.inf)) for kind, mids in MIDPOINTS.items()}
