"""Deferred stores: a state whose old value a later pass reads is written in that pass.

A two-stage kernel's first pass computes what the reduction sums and stores every value it
can already compute. Where a value of a later pass reads a state's old value (directly, or
through a local it recomputes), storing the state's new value in the first pass would leave
the later pass nothing to read: Lion's cautious update needs `sign(beta1*m + (1 - beta1)*g)`
with the old momentum m after the mask's mean, and its `m <- beta2*m + (1 - beta2)*g` can be
computed in pass 1. This pass moves such a store to the last pass that reads the old value,
which then loads the old value and computes the new one; the first pass reads the state
without writing it (fewer bytes than a store the later pass would have to undo).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import sympy as sp

from optforge.compiler.ir import Array, Assignment


def deferred_stores(
    element: Iterable[Assignment],
    phases: Mapping[sp.Symbol, int],
    stores: Mapping[sp.Symbol, Array],
) -> dict[sp.Symbol, int]:
    """{the new value of a state: the phase its store must wait for} for each array stored in
    an earlier phase than a value that reads the array's old value.

    `element` holds the element values (targets) in order, `phases` every value's phase and
    `stores` the final value of each array that changes -> the array. A value of phase `q`
    recomputes the locals of earlier phases it reads and reloads the stored values, as the
    scheduler does (passes/schedule.gather), so only the inputs it reaches that way count.
    """
    defined = {a.target: a for a in element}
    final = {array.symbol: value for value, array in stores.items()}
    result: dict[sp.Symbol, int] = {}
    for a in defined.values():
        at = phases[a.target]
        for old in _inputs_read(a.target, at, defined, phases, stores):
            value = final.get(old)
            if value is not None and phases[value] < at:
                result[value] = max(result.get(value, 0), at)
    return result


def _inputs_read(root, at, defined, phases, stores) -> set[sp.Symbol]:
    """The input symbols a value of phase `at` reads: through its own phase's values and the
    recomputed locals of earlier ones, not through values stored before `at` (reloaded)."""
    seen, found, todo = set(), set(), [root]
    while todo:
        symbol = todo.pop()
        if symbol in seen:
            continue
        seen.add(symbol)
        if symbol != root and symbol in stores and phases.get(symbol, 0) < at:
            continue  # reloaded from what an earlier pass stored
        if symbol in defined:
            todo.extend(defined[symbol].expr.free_symbols)
        else:
            found.add(symbol)
    return found
