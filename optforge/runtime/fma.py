"""`fma(a, b, c)`: `a*b + c` rounded once, in Numba CPU kernels.

The kernels of a spec that writes `fma` (compiler/spec.py) are compiled without
contraction, so the fused operations are exactly the ones the spec states. This
is LLVM's `llvm.fma` intrinsic: one instruction on an FMA-capable CPU, which the
loop vectoriser widens like any other; a correctly rounded library call elsewhere.
"""

from numba import types
from numba.extending import intrinsic


@intrinsic
def fma(typingctx, a, b, c):
    """`a*b + c` with one rounding; the three of one float type."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return a(a, b, c), codegen
