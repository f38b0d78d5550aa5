"""Code printers built on SymPy's `PythonCodePrinter`.

`ElementPrinter` prints loop-body code for a kernel of one float type. In
Numba, as in NumPy, `float32 * 0.5` is float64, so one stray literal would
silently turn a float32 kernel into a float64 one: every number is printed
as a typed literal (`f32(0.5)`), and powers and square roots are printed as
multiplications and `math.sqrt` so no float64 exponent or `1/` sneaks in.
Sums are printed in SymPy's order ("order": "none"); products in the order of
passes/order.py (invariant factors first, then element factors, then the
divisions), which the printer needs to know the invariant symbols for.

`HostPrinter` prints the step-level code that runs once per step on the host
in Python floats (float64).
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.pycode import PythonCodePrinter

from optforge.compiler.passes.order import product_order

# "element": a kernel printed once for both float types, whose factory names the type `F`.
LITERAL_TYPES = {"float32": "f32", "float64": "f64", "element": "F"}


class ElementPrinter(PythonCodePrinter):
    """Element-level code for a `dtype` ("float32", "float64", or "element": the type `F`) kernel.

    `invariant` names the symbols that do not vary per element (the kernel's
    scalars and per-tensor values): a product multiplies them first.
    """

    def __init__(self, dtype: str, invariant=frozenset(), fma: str = "fma"):
        super().__init__({"order": "none", "fully_qualified_modules": True})
        self.literal_type = LITERAL_TYPES[dtype]
        self.invariant = frozenset(invariant)
        self.fma = fma  # the fused multiply-add's name: optforge.runtime.fma's, or cuda.fma

    def _print_fma(self, expr):
        return f"{self.fma}({', '.join(self._print(a) for a in expr.args)})"

    def _print_rounded_sub(self, expr):
        a, b = (self.parenthesize(x, PRECEDENCE["Add"], strict=True) for x in expr.args)
        return f"({a} - {b})"

    def is_invariant(self, expr: sp.Expr) -> bool:
        return expr.free_symbols <= self.invariant

    def _print_Mul(self, expr):
        product = product_order(expr, self.is_invariant)
        level = PRECEDENCE["Mul"]
        factors = [self.parenthesize(f, level) for f in product.invariant + product.factors]
        coefficient = abs(product.coefficient)
        if coefficient != 1 or not factors:
            factors.insert(0, self.literal(coefficient))
        text = "*".join(factors)
        for divisor in product.divisors:
            text += "/" + self.parenthesize(divisor, level, strict=True)
        return f"-{text}" if product.coefficient < 0 else text

    def literal(self, value) -> str:
        return f"{self.literal_type}({float(value)!r})"

    def parenthesize(self, item, level, strict=False):
        # A typed literal is a call, atomic in Python's grammar: never parenthesize it.
        if isinstance(item, sp.Number):
            return self._print(item)
        return super().parenthesize(item, level, strict)

    def _print_Float(self, expr):
        return self.literal(expr)

    def _print_Rational(self, expr):
        return self.literal(expr)

    def _print_Integer(self, expr):
        return self.literal(expr)

    def _print_Half(self, expr):
        return self.literal(expr)

    def _print_Pow(self, expr, rational=False):
        base, exp = expr.args
        b = self.parenthesize(base, PRECEDENCE["Pow"])
        one = self.literal(1)
        if exp == sp.S.Half:
            return f"math.sqrt({self._print(base)})"
        if exp == -sp.S.Half:
            return f"{one}/math.sqrt({self._print(base)})"
        if exp.is_Integer and 2 <= exp <= 4:
            return "(" + "*".join([b] * int(exp)) + ")"
        if exp == -1:
            return f"{one}/{b}"
        if exp.is_Integer and -4 <= exp <= -2:
            return f"{one}/(" + "*".join([b] * int(-exp)) + ")"
        return f"{b}**{self.parenthesize(exp, PRECEDENCE['Pow'])}"

    def _print_Max(self, expr):
        return self._fold("max", expr.args)

    def _print_Min(self, expr):
        return self._fold("min", expr.args)

    def _fold(self, name: str, args) -> str:
        text = self._print(args[0])
        for arg in args[1:]:
            text = f"{name}({text}, {self._print(arg)})"
        return text

    def _print_Abs(self, expr):
        return f"abs({self._print(expr.args[0])})"

    def _print_sign(self, expr):
        # Like MindSpore's Sign: 0 at 0 (and NaN stays NaN). A conditional expression
        # rather than np.sign, which Numba's CUDA target does not provide.
        arg = expr.args[0]
        x = self._print(arg) if arg.is_Symbol else f"({self._print(arg)})"
        one, zero = self.literal(1), self.literal(0)
        return f"({one} if {x} > {zero} else (-{one} if {x} < {zero} else {x}))"


class HostPrinter(PythonCodePrinter):
    """Step-level code, run once per step on the host; `t` is an int.

    With dtype "float64" the values are Python floats. With "float32" (for
    specs whose reference does its step-level arithmetic in float32) they are
    NumPy float32 scalars: literals are typed and square roots use `np.sqrt`,
    which keeps float32, where `math.sqrt` would return a float64.
    """

    def __init__(self, dtype: str = "float64"):
        super().__init__({"order": "none", "fully_qualified_modules": True})
        self.float32 = dtype == "float32"

    def _print_Float(self, expr):
        return f"f32({float(expr)!r})" if self.float32 else super()._print_Float(expr)

    def _print_Rational(self, expr):
        return f"f32({float(expr)!r})" if self.float32 else super()._print_Rational(expr)

    def _print_Integer(self, expr):
        return f"f32({float(expr)!r})" if self.float32 else super()._print_Integer(expr)

    def _print_Half(self, expr):
        return self._print_Rational(expr)

    def _print_Product(self, expr):
        # A product over the steps so far (NAdam's mu_1 * ... * mu_t), evaluated on the host.
        term, (index, first, last) = expr.args
        return (
            f"math.prod({self._print(term)} for {self._print(index)} in "
            f"range({self._print(first)}, {self._print(last)} + 1))"
        )

    def parenthesize(self, item, level, strict=False):
        if self.float32 and isinstance(item, sp.Number):
            return self._print(item)
        return super().parenthesize(item, level, strict)

    def _print_Pow(self, expr, rational=False):
        if self.float32 and expr.exp == sp.S.Half:
            return f"np.sqrt({self._print(expr.base)})"
        if self.float32 and expr.exp == -sp.S.Half:
            return f"f32(1.0)/np.sqrt({self._print(expr.base)})"
        if self.float32 and expr.exp == -1:
            return f"f32(1.0)/{self.parenthesize(expr.base, PRECEDENCE['Pow'])}"
        return super()._print_Pow(expr, rational=rational)

    def _print_Max(self, expr):
        return "max(" + ", ".join(self._print(a) for a in expr.args) + ")"

    def _print_fma(self, expr):
        # Step-level values are float64 (or float32 NumPy scalars): a*b + c, as torch's host code.
        a, b, c = expr.args
        return self._print(sp.Add(sp.Mul(a, b, evaluate=False), c, evaluate=False))

    def _print_Min(self, expr):
        return "min(" + ", ".join(self._print(a) for a in expr.args) + ")"

    def _print_call(self, expr):
        # A callable hyperparameter's value at this step (spec.call): called with the step, an int.
        value = f"{self._print(expr.args[0])}(t)"
        return f"f32({value})" if self.float32 else f"float({value})"

    def _print_given(self, expr):
        return f"({self._print(expr.args[0])} is not None)"
