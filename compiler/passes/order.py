"""The order a kernel evaluates a product in.

SymPy keeps a product as one flat Mul whose arguments it sorts, so the order
a spec writes its factors in is lost, and float multiplication is not
associative: `(g*g)*(1 - beta2)` overflows float32 for |g| > 1.8e19 where
`((1 - beta2)*g)*g`, torch's `addcmul(v, g, g, value=1 - beta2)`, does not.
The kernels therefore evaluate every product in one fixed order:

1. the factors that do not vary per element (numbers, hyperparameters and
   hoisted scalars) first, multiplied together as one value;
2. then the element factors left to right, a power `x**n` (2 <= n <= 4) as
   n factors `x`, so a step-level weight scales each one in turn;
3. then the divisions, one by one: by invariant divisors first, then by
   element ones (a power in a divisor stays one divisor: `y/x**2` -> `y/(x*x)`,
   `y/sqrt(x)` -> `y/math.sqrt(x)`).

That is torch's order where torch writes a product of a scalar and tensors
(`addcmul`: `(value*t1)*t2`; `addcdiv`: `(value*t1)/t2`; `x.div(c)`: `x/c`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp

# Integer powers up to this are printed as products (see printers.ElementPrinter).
MAX_EXPANDED_POWER = 4


@dataclass(frozen=True)
class Product:
    """A product in evaluation order: `coefficient * invariant... * factors... / divisors...`."""

    coefficient: sp.Number
    invariant: tuple[sp.Expr, ...]
    factors: tuple[sp.Expr, ...]
    divisors: tuple[sp.Expr, ...]


def product_order(mul: sp.Mul, is_invariant: Callable[[sp.Expr], bool]) -> Product:
    """The factors of `mul` in the order the kernel multiplies and divides them.

    `is_invariant` tells whether a factor does not vary per element. Factors of
    each kind keep SymPy's order among themselves.
    """
    coefficient, rest = mul.as_coeff_mul()
    invariant, factors, invariant_divisors, divisors = [], [], [], []
    for arg in rest:
        base, exp = arg.as_base_exp()
        if exp.is_Number and exp < 0:  # 1/x, 1/x**2, 1/sqrt(x)
            divisor = base if exp == -1 else sp.Pow(base, -exp)
            (invariant_divisors if is_invariant(base) else divisors).append(divisor)
        elif is_invariant(arg):
            invariant.append(arg)
        elif exp.is_Integer and 2 <= exp <= MAX_EXPANDED_POWER:
            factors += [base] * int(exp)
        else:
            factors.append(arg)
    return Product(coefficient, tuple(invariant), tuple(factors), tuple(invariant_divisors + divisors))
