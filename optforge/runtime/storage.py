"""16-bit storage for kernels that compute in float32 or float64: exact conversions, stochastic rounding.

Parameters, gradients and optimizer state may be stored as bfloat16 or float16 while a kernel
computes in float32 (or float64 for float64 parameters). Numba's CPU target has no half-precision
arithmetic or type (numba#8138), so a 16-bit array is handed to a kernel as its `np.uint16` bit
patterns and these functions convert element by element:

    w = load(w_c[i])                      # uint16 -> float32/float64, exact
    w_c[i] = store(value, key, counter)   # float32/float64 -> uint16, one rounding

The general conversions are integer arithmetic on the bit patterns (in uint64, so plain Python
on NumPy scalars agrees with compiled code); the common cases have fast paths in uint32 (float32
<-> bfloat16 and float16: twice the vector lanes), whose few floating-point operations are exact
on normal numbers, so flush-to-zero cannot change a bit. The same Python source is jitted for
the CPU (`numba.njit`) and as numba-cuda device functions and gives the same bits on both by
construction; run as plain Python on NumPy scalars (the CUDA simulator) it gives them too. On a
CPU with F16C, float32 <-> float16 are the hardware's conversions instead (IEEE's rounding, the
same bits: the tests compare them with the Python and simulator paths).

Rounding to nearest, ties to even, is done once from the source value (float64 -> bfloat16 is not
rounded through float32: that double rounding gets ties wrong). The magnitude's bits `v` are
shifted right by `t`, the bits the target cannot hold: for a normal result `v` is the magnitude
with its exponent rebiased to the target's and `t` the difference in mantissa widths; for a
subnormal (or the smallest normal) result `v` is the significand with its implicit bit and `t`
grows by one per binade below. `(v + 2**(t-1) - 1 + lsb) >> t`, `lsb` the lowest kept bit, is
round-half-even; a carry out of the mantissa moves the exponent up (or a subnormal to the smallest
normal), and everything at or beyond the overflow threshold saturates to infinity, as IEEE does
(float16: |x| >= 65520 -> inf). NaN becomes a quiet NaN of the same sign keeping the top payload
bits; zero keeps its sign.

Stochastic rounding uses the same `v` and `t`: it rounds the magnitude up with probability
`rem / 2**t` (the dropped bits `rem` as a fraction of an ulp), truncated to 32 bits of fraction
(exact when `t <= 32`, e.g. float32 -> bfloat16 or float16 normals) by comparing 32 random bits with
it: results are always one of the two neighbours of x, exact values are unchanged, and E[result] = x
to within 2**-32 ulp. Above the largest finite value infinity counts as the next value up: float16
x in (65504, 65536) rounds to inf with probability (x - 65504) / 32, |x| >= 65536 (bfloat16: >= 2**128)
to inf always, just as round-to-nearest overflows to inf.

The random bits come from `rounding_bits(key, counter)`: counter-based, so every run and every
thread count gives the same bits; `key` (one uint32 per tensor per step) is made on the host by
`rounding_key(seed, step, tensor)`.

`functions(target)` gives every function for one target ("cpu", "cuda", "python"); CUDA versions
are made (and numba.cuda imported) only when asked for. `storage_functions(storage, compute,
stochastic, target)` picks a kernel's (load, store, view dtype) by the registry `STORAGE`.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba import types
from numba.extending import intrinsic

U = np.uint64
# The fast paths compute in uint32, casting every result back: Numba widens uint32 arithmetic
# to 64 bits, which would halve the lanes of every vector instruction.
_W = np.uint32
_ZERO, _ONE, _T_MAX, _B32 = U(0), U(1), U(63), U(32)
_SIGN16 = U(0x8000)


class _Format(NamedTuple):
    width: int
    mant: int  # stored mantissa bits
    bias: int
    exp_bits: int


_F64 = _Format(64, 52, 1023, 11)
_F32 = _Format(32, 23, 127, 8)
_BF16 = _Format(16, 7, 127, 8)
_F16 = _Format(16, 10, 15, 5)
_FLOAT = {32: (np.float32, np.uint32), 64: (np.float64, np.uint64)}


# -- bit casts, one per target: the functions below call bitcast(x, np.uint32) and the like ----------


def _bitcast_codegen(typingctx, x, ty):
    """A number as the NumPy scalar type `ty` of the same width, bits unchanged (LLVM bitcast)."""
    if not isinstance(ty, types.NumberClass) or not isinstance(x, (types.Integer, types.Float)):
        return None
    to = ty.instance_type
    if to.bitwidth != x.bitwidth:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(to))

    return to(x, ty), codegen


_cpu_bitcast = intrinsic(_bitcast_codegen)


# float32 <-> float16 by LLVM's fptrunc and fpext, which x86's F16C instructions (vcvtps2ph,
# vcvtph2ps) carry out: rounding to nearest even, NaNs quieted keeping their top payload bits,
# as the integer code does. Used only where Numba compiles for a host that has F16C; elsewhere
# LLVM would call a runtime function that Numba's JIT may not link.
@intrinsic
def _half_bits(typingctx, x):
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], llvm_ir.HalfType()), llvm_ir.IntType(16))

    return types.uint16(x), codegen


@intrinsic
def _half_value(typingctx, u):
    if u != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], llvm_ir.HalfType()), llvm_ir.FloatType())

    return types.float32(u), codegen


def _hardware_half(jit):
    @jit
    def f32_to_f16(x):
        return _half_bits(np.float32(x))

    @jit
    def f16_to_f32(u):
        return _half_value(np.uint16(u))

    return f32_to_f16, f16_to_f32


def _has_f16c() -> bool:
    """Whether Numba compiles for a CPU with F16C (the host's, unless NUMBA_CPU_NAME says other)."""
    from llvmlite import binding

    if numba.config.CPU_NAME is not None:
        return "+f16c" in (numba.config.CPU_FEATURES or "")
    return bool(binding.get_host_cpu_features().get("f16c", False))


def _numpy_bitcast(x, ty):
    """Plain Python (the CUDA simulator): NumPy's scalar view."""
    return x.view(ty)


# -- conversions, made per target by `jit` and `bitcast` ----------------------------------------------


def _widening(src: _Format, dst: _Format, jit, bitcast):
    """uint16 bits of `src` -> the float of `dst`, exactly (NaN: quiet, sign and payload kept)."""
    float_t, int_t = _FLOAT[dst.width]
    emax = U((1 << src.exp_bits) - 1)
    src_mant, mant_mask, shift = U(src.mant), U((1 << src.mant) - 1), U(dst.mant - src.mant)
    sign_shift, dst_mant = U(dst.width - 16), U(dst.mant)
    rebias = U(dst.bias - src.bias)
    dst_inf, quiet = U(((1 << dst.exp_bits) - 1) << dst.mant), U(1 << (dst.mant - 1))
    sub_ulp = float_t(2.0 ** (1 - src.bias - src.mant))  # a normal number in `dst`

    @jit
    def widen(u):
        h = U(u)
        sign = (h & _SIGN16) << sign_shift
        e = (h >> src_mant) & emax
        m = h & mant_mask
        if e == emax:
            bits = dst_inf | (m << shift) | (quiet if m != _ZERO else _ZERO)
        elif e == _ZERO:  # zero or subnormal: m * 2**-24 (float16), exact and normal in `dst`
            bits = U(bitcast(float_t(np.int32(m)) * sub_ulp, int_t))
        else:
            bits = ((e + rebias) << dst_mant) | (m << shift)
        return bitcast(int_t(sign | bits), float_t)

    return widen


def _float32_from_float16(jit, bitcast):
    """float16 -> float32, exactly, branch-free (the same bits as `_widening`): the exponent
    and mantissa shift into place and the exponent is rebiased; infinity and NaN (exponent
    all ones) get float32's all-ones exponent, the quiet bit set on a NaN; a subnormal,
    whose bits are then those of 2**-14 * (1 + m / 1024) but should be 2**-14 * m / 1024,
    is mended by subtracting 2**-14 exactly (both are normal float32 numbers). In uint32."""
    shifted_exp, s13, s16 = _W(0x7C00 << 13), _W(13), _W(16)
    rebias = _W((127 - 15) << 23)
    to_inf = _W((128 - 16) << 23)  # rebiased a second time: exponent 255
    quiet, mantissa, one_normal = _W(1 << 22), _W(0x7FFFFF), _W(1 << 23)
    magic = np.float32(2.0**-14)

    @jit
    def widen(u):
        h = _W(u)
        o = _W(_W(h & _W(0x7FFF)) << s13)
        e = _W(o & shifted_exp)
        o = _W(o + rebias)
        special = _W(o + to_inf)
        special = _W(special | quiet) if _W(special & mantissa) != _W(0) else special
        sub = _W(bitcast(bitcast(_W(o + one_normal), np.float32) - magic, np.uint32))
        bits = special if e == shifted_exp else (sub if e == _W(0) else o)
        return bitcast(_W(bits | _W(_W(h & _W(0x8000)) << s16)), np.float32)

    return widen


def _narrowings(src: _Format, dst: _Format, jit, bitcast):
    """(nearest(x), stochastic(x, bits)): float of `src` -> uint16 bits of `dst`, rounded once."""
    float_t, int_t = _FLOAT[src.width]
    abs_mask, sign_shift = U((1 << (src.width - 1)) - 1), U(src.width - 16)
    src_inf = U(((1 << src.exp_bits) - 1) << src.mant)
    src_mant, mant_mask, implicit = U(src.mant), U((1 << src.mant) - 1), U(1 << src.mant)
    s, d = src.mant - dst.mant, src.bias - dst.bias
    shift, rebias = U(s), U(d << src.mant)
    last_low = U(d + 1)  # the largest source exponent whose result's exponent field is 0 or 1
    t_low = U(s + 1 + d)  # t = t_low - e below that
    dst_inf, dst_mant = U(((1 << dst.exp_bits) - 1) << dst.mant), U((1 << dst.mant) - 1)
    quiet = U(1 << (dst.mant - 1))
    t_frac = U(32 + 63)  # past this the dropped fraction is below 2**-32 ulp

    @jit
    def split(x):
        """The result's sign bit, whether x is NaN and the NaN's bits, and the value `v` whose
        lowest `t` bits are to be rounded away."""
        u = U(bitcast(float_t(x), int_t))
        a = u & abs_mask
        sign = (u >> sign_shift) & _SIGN16
        nan_bits = sign | dst_inf | quiet | ((a >> shift) & dst_mant)
        e = a >> src_mant
        if e > last_low:  # a normal result: rebias the exponent, drop `s` mantissa bits
            v = a - rebias
            t = shift
        else:  # subnormal (or smallest normal) result; source subnormals scale as exponent 1
            v = (a & mant_mask) | (implicit if e != _ZERO else _ZERO)
            t = t_low - max(e, _ONE)
        return sign, a > src_inf, nan_bits, v, t

    @jit
    def nearest(x):
        sign, nan, nan_bits, v, t = split(x)
        t = min(t, _T_MAX)  # t > 63 only for tiny results, v < 2**53: 63 rounds to 0 as t would
        q = (v + ((_ONE << (t - _ONE)) - _ONE) + ((v >> t) & _ONE)) >> t
        return np.uint16(nan_bits if nan else sign | min(q, dst_inf))

    @jit
    def stochastic(x, bits):
        sign, nan, nan_bits, v, t = split(x)
        tc = min(t, _T_MAX)
        q = v >> tc
        rem = v & ((_ONE << tc) - _ONE)
        # rem / 2**t as a 32-bit fraction, truncated: shifted down when t > 32, up when t < 32
        frac = (rem >> (min(t, t_frac) - min(t, _B32))) << (_B32 - min(t, _B32))
        q = q + _ONE if U(bits) < frac else q
        return np.uint16(nan_bits if nan else sign | min(q, dst_inf))

    if (src, dst) == (_F32, _BF16):
        return _bfloat16_from_float32(jit, bitcast)
    if (src, dst) == (_F32, _F16):
        return _float16_from_float32(jit, bitcast), stochastic
    return nearest, stochastic


def _bfloat16_from_float32(jit, bitcast):
    """float32 -> bfloat16, the common case, in a few integer operations: the two share their
    exponent range, so the general path's rebias, subnormal and overflow cases all come out of
    rounding float32's upper half (a carry out of the mantissa moves the exponent up, to
    infinity past the largest finite value). The bits are the general path's: nearest adds
    0x7FFF and the lowest kept bit (ties to even); stochastic rounds up when the upper 16 of
    the 32 random bits are below the 16 dropped ones (`bits < rem * 2**16`, as `frac` above).
    In uint32, every result cast back (see `_W`): twice the lanes of uint64 per vector."""
    abs_mask, exp_mask, low = _W(0x7FFFFFFF), _W(0x7F800000), _W(0xFFFF)
    quiet, half, s16, one = _W(0x0040), _W(0x7FFF), _W(16), _W(1)

    # Selects, not early returns: the loops that call these stay vectorised.
    @jit
    def nearest(x):
        u = bitcast(np.float32(x), np.uint32)
        nan = _W(u & abs_mask) > exp_mask  # NaN: quiet, sign and top payload bits kept
        rounded = _W(_W(u + half) + _W(_W(u >> s16) & one)) >> s16
        return np.uint16(_W(_W(u >> s16) | quiet) if nan else rounded)

    @jit
    def stochastic(x, bits):
        u = bitcast(np.float32(x), np.uint32)
        nan = _W(u & abs_mask) > exp_mask
        up = _W(_W(_W(bits) >> s16) < _W(u & low))
        return np.uint16(_W(_W(u >> s16) | quiet) if nan else _W(_W(u >> s16) + up))

    return nearest, stochastic


def _float16_from_float32(jit, bitcast):
    """float32 -> float16 to nearest, branch-free, the same bits as the general path: a normal
    result rebiases the exponent and rounds 13 bits off (ties to even; a carry past the largest
    finite value gives infinity); a subnormal one is rounded by float32 addition itself, adding
    2**-1 (whose spacing is float16's smallest subnormal) and reading the low bits, which
    rounds to nearest even exactly since both terms and the result are normal floats. In
    uint32 (see `_W`)."""
    abs_mask, sign_bit, s16 = _W(0x7FFFFFFF), _W(0x8000), _W(16)
    f32_inf, overflow = _W(0x7F800000), _W((127 + 16) << 23)  # |x| >= 2**16: infinity
    smallest_normal = _W(113 << 23)  # 2**-14
    rebias, round_bits, s13, one = _W((1 << 32) - ((127 - 15) << 23)), _W(0xFFF), _W(13), _W(1)
    magic, magic_f = _W(126 << 23), np.float32(0.5)  # 0.5, as bits and as a float32
    inf16, quiet16, payload = _W(0x7C00), _W(0x0200), _W(0x03FF)

    @jit
    def nearest(x):
        u = bitcast(np.float32(x), np.uint32)
        a = _W(u & abs_mask)
        sign = _W(_W(u >> s16) & sign_bit)
        normal = _W(_W(_W(a + rebias) + round_bits) + _W(_W(a >> s13) & one)) >> s13  # mod 2**32
        low = _W(min(a, smallest_normal))  # the subnormal candidate from a finite value, always
        tiny = _W(bitcast(bitcast(low, np.float32) + magic_f, np.uint32) - magic)
        big = _W(inf16 | quiet16 | _W(_W(a >> s13) & payload)) if a > f32_inf else inf16
        q = big if a >= overflow else (tiny if a < smallest_normal else normal)
        return np.uint16(_W(sign | q))

    return nearest


# -- counter-based random bits -------------------------------------------------------------------------

# The bits of an element: lowbias32 (Chris Wellons' hash-prospector, 2018: two xorshift-multiply
# rounds, a bijection on 32 bits with low bias) of the tensor's key plus the element's counter
# times the odd 32-bit golden ratio. In uint32 a vector instruction takes 16 of them on AVX-512
# (a 64-bit hash's multiplies take 8, and AVX2 has none). The per-step keys come from
# SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number generators", OOPSLA
# 2014), hashed per tensor with lowbias32 too, so two tensors' counters start at unrelated points.
_H1, _H2 = 0x7FEB352D, 0x846CA68B
_KEY_STEP = 0x9E3779B9  # the 32-bit golden-ratio increment
_M64, _M32 = (1 << 64) - 1, (1 << 32) - 1


def _rounding_bits(jit):
    h1, h2, golden = _W(_H1), _W(_H2), _W(_KEY_STEP)
    s15, s16 = _W(15), _W(16)

    @jit
    def rounding_bits(key, counter):
        """32 random bits for element `counter` (int64, >= 0) of the tensor of `key` (uint32).

        The elements of a tensor, up to 2**32 of them, get distinct hash inputs (the golden ratio
        is odd) and so distinct bits (lowbias32 is a bijection); larger counters fold their high
        half into the key."""
        c = U(counter)
        x = _W(_W(_W(key) ^ _W(_W(c >> _B32) * h2)) + _W(_W(c) * golden))
        x = _W(_W(x ^ _W(x >> s16)) * h1)
        x = _W(_W(x ^ _W(x >> s15)) * h2)
        return _W(x ^ _W(x >> s16))

    return rounding_bits


def _lowbias32(x: int) -> int:
    x = ((x ^ (x >> 16)) * _H1) & _M32
    x = ((x ^ (x >> 15)) * _H2) & _M32
    return x ^ (x >> 16)


def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _step_key(seed: int, step: int) -> int:
    """32 bits per (seed, step): SplitMix64 seeded with `seed`, its first output seeding a second one
    read at index step + 1."""
    first = _mix64((seed + 0x9E3779B97F4A7C15) & _M64)
    return _mix64((first + (step + 1) * 0x9E3779B97F4A7C15) & _M64) >> 32


def rounding_key(seed: int, step: int, tensor: int) -> np.uint32:
    """The key of tensor `tensor` (its index, >= 0) at step `step` of a run seeded with `seed`.

    Made on the host once per tensor per step: lowbias32 of a Weyl sequence from the step's
    hash, so the keys of one step's tensors differ (for up to 2**32 tensors) and look unrelated.
    Keys of different steps are unrelated hashes (32 bits: two of about 2**16 steps' keys may
    coincide, which only repeats bits for different values)."""
    step_key = _step_key(int(seed) & _M64, int(step) & _M64)
    return np.uint32(_lowbias32((step_key + int(tensor) * _KEY_STEP) & _M32))


def rounding_keys(seed: int, step: int, tensors: np.ndarray) -> np.ndarray:
    """`rounding_key(seed, step, t)` for every t in `tensors`, as a uint32 array of their shape."""
    base = U(_step_key(int(seed) & _M64, int(step) & _M64))
    with np.errstate(over="ignore"):  # arithmetic mod 2**32 and 2**64, as intended
        x = (base + np.asarray(tensors).astype(U) * U(_KEY_STEP)).astype(np.uint32)
        x = (x ^ (x >> np.uint32(16))) * np.uint32(_H1)
        x = (x ^ (x >> np.uint32(15))) * np.uint32(_H2)
        return x ^ (x >> np.uint32(16))


# -- everything for one target ---------------------------------------------------------------------------


def _build(jit, bitcast, hardware_half: bool = False) -> SimpleNamespace:
    f = SimpleNamespace()

    @jit
    def bf16_to_f32(u):
        """bfloat16 is float32's upper half: exact, every bit kept (a signalling NaN too)."""
        return bitcast(np.uint32(U(u) << U(16)), np.float32)

    f.bf16_to_f32 = bf16_to_f32
    f.f16_to_f32 = _float32_from_float16(jit, bitcast)
    f.bf16_to_f64 = _widening(_BF16, _F64, jit, bitcast)
    f.f16_to_f64 = _widening(_F16, _F64, jit, bitcast)
    f.f32_to_bf16, f.f32_to_bf16_sr = _narrowings(_F32, _BF16, jit, bitcast)
    f.f32_to_f16, f.f32_to_f16_sr = _narrowings(_F32, _F16, jit, bitcast)
    if hardware_half:  # the CPU's own conversions: the same bits (IEEE's), fewer instructions
        f.f32_to_f16, f.f16_to_f32 = _hardware_half(jit)
    f.f64_to_bf16, f.f64_to_bf16_sr = _narrowings(_F64, _BF16, jit, bitcast)
    f.f64_to_f16, f.f64_to_f16_sr = _narrowings(_F64, _F16, jit, bitcast)
    f.rounding_bits = rounding_bits = _rounding_bits(jit)

    @jit
    def load_plain(value):
        return value

    @jit
    def store_plain(value, key, counter):
        """Storage of the compute type (or float64 storage): the array assignment casts."""
        return value

    f.load_plain, f.store_plain = load_plain, store_plain
    # Every store is store(value, key, counter): nearest ones ignore key and counter.
    for name in ("bf16", "f16"):
        for compute in ("f32", "f64"):
            nearest = getattr(f, f"{compute}_to_{name}")
            stochastic = getattr(f, f"{compute}_to_{name}_sr")
            setattr(f, f"store_{compute}_to_{name}", _store(nearest, jit))
            setattr(f, f"store_{compute}_to_{name}_sr", _store_stochastic(stochastic, rounding_bits, jit))
    return f


def _store(nearest, jit):
    @jit
    def store(value, key, counter):
        return nearest(value)

    return store


def _store_stochastic(stochastic, rounding_bits, jit):
    @jit
    def store(value, key, counter):
        return stochastic(value, rounding_bits(key, counter))

    return store


def _quiet(function):
    """Plain Python on NumPy scalars: the uint64 arithmetic wraps on purpose (the hash's multiplies),
    which NumPy would warn about."""

    @functools.wraps(function)
    def run(*args):
        with np.errstate(over="ignore"):
            return function(*args)

    return run


@functools.cache
def functions(target: str = "cpu") -> SimpleNamespace:
    """Every function above for `target`, made once:

    "cpu"     numba.njit(inline="always"): inlined into the calling kernel's IR
    "cuda"    numba.cuda.jit(device=True, inline="always"), the bit cast a numba-cuda intrinsic;
              under NUMBA_ENABLE_CUDASIM the simulator's device functions, run as Python
    "python"  the plain functions, on NumPy scalars

    A kernel binds the ones it calls to names (global or closed over) and calls those.
    """
    if target == "cpu":
        return _build(numba.njit(inline="always"), _cpu_bitcast, hardware_half=_has_f16c())
    if target == "python":
        return _build(_quiet, _numpy_bitcast)
    if target == "cuda":
        from numba import config, cuda

        if config.ENABLE_CUDASIM:
            return _build(lambda function: cuda.jit(device=True)(_quiet(function)), _numpy_bitcast)
        from numba.cuda.extending import intrinsic as cuda_intrinsic

        return _build(cuda.jit(device=True, inline="always"), cuda_intrinsic(_bitcast_codegen))
    raise ValueError(f"target is 'cpu', 'cuda' or 'python', not {target!r}")


def __getattr__(name: str):
    """The CPU functions as module attributes: `from optforge.runtime.storage import f32_to_bf16`."""
    made = functions("cpu")
    if name.startswith("_") or not hasattr(made, name):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(made, name)


# -- the registry ---------------------------------------------------------------------------------------


class Storage(NamedTuple):
    """A storage kind: the element type of the array a kernel indexes, its size, and per compute type
    the names (in `functions(target)`) of its load and its nearest and stochastic stores."""

    name: str
    view_dtype: type
    itemsize: int
    loads: dict  # compute dtype name -> load
    nearest: dict  # compute dtype name -> store(value, key, counter)
    stochastic: dict  # likewise; a missing compute type has no stochastic store


def _half(name: str, short: str) -> Storage:
    return Storage(
        name,
        np.uint16,
        2,
        {"float32": f"{short}_to_f32", "float64": f"{short}_to_f64"},
        {"float32": f"store_f32_to_{short}", "float64": f"store_f64_to_{short}"},
        {"float32": f"store_f32_to_{short}_sr", "float64": f"store_f64_to_{short}_sr"},
    )


_PLAIN = {"float32": "load_plain", "float64": "load_plain"}
_AS_IS = {"float32": "store_plain", "float64": "store_plain"}
STORAGE = {
    # float32 storage of float64 values: the array assignment rounds to nearest; no stochastic store.
    "float32": Storage("float32", np.float32, 4, _PLAIN, _AS_IS, {"float32": "store_plain"}),
    "float64": Storage("float64", np.float64, 8, _PLAIN, _AS_IS, _AS_IS),
    "bfloat16": _half("bfloat16", "bf16"),
    "float16": _half("float16", "f16"),
}


def storage_functions(storage: str, compute, stochastic: bool = False, target: str = "cpu") -> tuple:
    """(load, store, view_dtype) for arrays of `storage` in a kernel computing in `compute`
    (np.float32 or np.float64): `x = load(x_c[i])`, `x_c[i] = store(value, key, counter)`, with
    x_c the array viewed as `view_dtype`."""
    kind = STORAGE[storage]
    compute = np.dtype(compute).name
    stores = kind.stochastic if stochastic else kind.nearest
    if compute not in kind.loads or compute not in stores:
        rounding = "stochastic" if stochastic else "nearest"
        raise ValueError(f"no {rounding} {storage} storage for {compute} kernels")
    made = functions(target)
    return getattr(made, kind.loads[compute]), getattr(made, stores[compute]), kind.view_dtype
