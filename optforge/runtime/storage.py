"""TEMPORARY stand-in (bf16 only, fp16 via numpy in python) until the storage branch lands."""
import numba
import numpy as np
from numba import types
from numba.extending import intrinsic


@intrinsic
def _f32_bits(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(types.uint32))
    return types.uint32(types.float32), codegen


@intrinsic
def _bits_f32(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))
    return types.float32(types.uint32), codegen


@numba.njit
def bf16_to_f32(u):
    return _bits_f32(np.uint32(u) << np.uint32(16))


@numba.njit
def f32_to_bf16(x):
    b = _f32_bits(np.float32(x))
    if (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16((b >> np.uint32(16)) | np.uint32(0x40))
    b = b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))
    return np.uint16(b >> np.uint32(16))


@numba.njit
def f64_to_bf16(x):
    return f32_to_bf16(np.float32(x))


@numba.njit
def rounding_bits(key, counter):
    z = (np.uint64(key) << np.uint64(32)) ^ np.uint64(counter)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return np.uint32((z ^ (z >> np.uint64(31))) >> np.uint64(32))


@numba.njit
def f32_to_bf16_sr(x, bits):
    b = _f32_bits(np.float32(x))
    if (b & np.uint32(0x7FFFFFFF)) >= np.uint32(0x7F800000):
        return f32_to_bf16(x)
    return np.uint16((b + (bits >> np.uint32(16))) >> np.uint32(16))


@numba.njit
def f64_to_bf16_sr(x, bits):
    return f32_to_bf16_sr(np.float32(x), bits)


f16_to_f32 = f32_to_f16 = f64_to_f16 = f32_to_f16_sr = f64_to_f16_sr = None


def rounding_keys(seed, step, tensors):
    t = np.asarray(tensors, dtype=np.uint64)
    z = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(step) * np.uint64(0xD1B54A32D192ED03) + t
    z = (z ^ (z >> np.uint64(33))) * np.uint64(0xFF51AFD7ED558CCD)
    return ((z ^ (z >> np.uint64(33))) >> np.uint64(32)).astype(np.uint32)
