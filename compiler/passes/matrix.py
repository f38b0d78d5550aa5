"""Matrix functions: each `newton_schulz(x, ...)` rule becomes a stage of its own.

A matrix function reads all of its tensor's elements at once, as a matrix, so it cannot
be computed per element: the element pass before it stores its argument into a scratch
matrix shaped like the parameter, a per-tensor matrix stage (ir.MATRIX) overwrites that
matrix with the result, and the element pass after it (PASS3) reads the result from it.
The checks of spec.py make each one a rule's whole expression (`o = newton_schulz(u, ...)`),
of a value that varies over the tensor, with step-level parameters; this pass names the
argument (`matrix0_of`) and the scratch matrix (`matrix0`).
"""

from __future__ import annotations

import sympy as sp

from optforge.compiler.ir import Array, Assignment, MatrixFunction
from optforge.compiler.spec import MATRIX_FUNCTIONS, SpecError


def extract_matrix_functions(
    assignments: list[Assignment], where: str = "<spec>"
) -> tuple[list[Assignment], list[MatrixFunction]]:
    """(the assignments without their matrix functions, the matrix functions in order).

    `o = NewtonSchulz(u, a, b, c, steps, eps)` becomes `matrix0_of = u` in the assignments
    (the value the element pass stores) and a MatrixFunction computing `o` from it; the
    rules after it read `o` as an element value of the pass after the matrix stage.
    """
    rewritten, found = [], []
    for a in assignments:
        calls = a.expr.atoms(*MATRIX_FUNCTIONS)
        if not calls:
            rewritten.append(a)
            continue
        if not isinstance(a.expr, MATRIX_FUNCTIONS):
            raise SpecError(f"{where}: a matrix function must be the whole expression of '{a.target}'")
        argument, *parameters = a.expr.args
        if argument.atoms(*MATRIX_FUNCTIONS):
            raise SpecError(f"{where}: '{a.target}' is a matrix function of a matrix function")
        name = f"matrix{len(found)}"
        of = sp.Symbol(f"{name}_of")
        rewritten.append(Assignment(of, argument))
        found.append(
            MatrixFunction(
                a.target, of, type(a.expr), tuple(parameters), Array(sp.Symbol(name), name, "scratch")
            )
        )
    return rewritten, found
