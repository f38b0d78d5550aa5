"""Arrays a branch leaves as they are: no store, and so no load unless something reads them.

Once a host-side branch is chosen, a state update can collapse to the old
value (RMSprop's `buf <- buf` when momentum is 0). Storing it would move
8 bytes per element for nothing, and the traffic counted from the IR would
not be the traffic the kernel moves.
"""

from __future__ import annotations

import sympy as sp

from optforge.compiler.ir import Assignment


def changed_outputs(outputs: dict[sp.Symbol, sp.Symbol], assignments: list[Assignment]) -> dict:
    """`outputs` (array symbol -> its final SSA value) without the arrays whose final value,
    followed through plain copies, is the array's own input."""
    copies = {a.target: a.expr for a in assignments if isinstance(a.expr, sp.Symbol)}
    result = {}
    for array, value in outputs.items():
        while value in copies and value != array:
            value = copies[value]
        if value != array:
            result[array] = outputs[array]
    return result
