"""The printers on exact strings."""

import re

import pytest
import sympy as sp

from optforge.compiler.printers import ElementPrinter, HostPrinter

x, y, eps, lr, t, b = sp.symbols("x y eps lr t b")

F32 = [
    (x / 2, "f32(0.5)*x"),
    (2 * x, "f32(2.0)*x"),
    (-x / 3, "-f32(0.3333333333333333)*x"),
    (1 - x, "f32(1.0) - x"),
    (x**2, "(x*x)"),
    (y / x**2, "y/(x*x)"),
    (1 / x, "f32(1.0)/x"),
    (sp.sqrt(x), "math.sqrt(x)"),
    (1 / sp.sqrt(x), "f32(1.0)/math.sqrt(x)"),
    (y / (sp.sqrt(x) + eps), "y/(eps + math.sqrt(x))"),
    (x ** sp.Rational(3, 2), "x**f32(1.5)"),
    (sp.Max(x, y), "max(x, y)"),
    (sp.Max(x, y, eps), "max(max(eps, x), y)"),
    (sp.Abs(x), "abs(x)"),
    (sp.Float(0.9) * x, "f32(0.9)*x"),
]


@pytest.mark.parametrize("expr, text", F32, ids=[t for _, t in F32])
def test_float32_element_code_has_only_typed_literals(expr, text):
    assert ElementPrinter("float32").doprint(expr) == text


def test_float64_element_code_types_literals_as_f64():
    assert ElementPrinter("float64").doprint(x / 2 + 1) == "f64(1.0) + f64(0.5)*x"


def test_no_bare_float_literal_escapes_into_float32_code():
    expr = (1 - x) * y / 2 + 3 / (x + 1) ** 2 - sp.sqrt(x) / 4 + x**-3
    text = ElementPrinter("float32").doprint(expr)
    stripped = re.sub(r"f32\([^()]*\)", "", text)
    assert not re.search(r"\d", stripped.replace("math.sqrt", "")), text


def test_host_code_is_plain_python_floats():
    assert HostPrinter().doprint(-lr * sp.sqrt(1 - eps**t) / (1 - b**t)) == (
        "-lr*math.sqrt(1 - eps**t)/(1 - b**t)"
    )
    assert HostPrinter().doprint(sp.Max(x, y)) == "max(x, y)"


def test_sign_is_a_conditional_with_zero_at_zero():
    text = ElementPrinter("float32").doprint(sp.sign(x))
    assert text == "(f32(1.0) if x > f32(0.0) else (-f32(1.0) if x < f32(0.0) else x))"
    f32 = __import__("numpy").float32
    for value, expected in [(2.5, 1), (-0.5, -1), (0.0, 0)]:
        assert eval(text, {"f32": f32, "x": f32(value)}) == expected


def test_fma_is_a_call_in_element_code_and_a_sum_on_the_host():
    from optforge.compiler.spec import fma

    assert ElementPrinter("float32").doprint(fma(x, y, eps)) == "fma(x, y, eps)"
    assert ElementPrinter("float32", fma="cuda.fma").doprint(fma(1 - b, y - x, x)) == (
        "cuda.fma(f32(1.0) - b, y - x, x)"
    )
    assert HostPrinter().doprint(fma(x, y, eps)) == "x*y + eps"
    assert fma(0, x, y) == y  # a product a flag makes 0 is not computed at all


def test_kernels_of_a_spec_that_writes_fma_are_compiled_without_contraction():
    from optforge.generated.cpu import adam, adam_torch

    assert adam_torch.FASTMATH == set() and "contract" not in adam_torch.FASTMATH_REDUCTION
    assert adam.FASTMATH == {"contract"}  # MindSpore's Adam states no fused operation
