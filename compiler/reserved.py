"""Names the generated code uses for itself: no symbol of a spec may take one.

The backends' templates name their loop variables, tables and helpers (`chunk`, `elem`,
`f32`, ...) and the passes invent names for what they hoist and reduce (s0, u0, x0, y0,
h0: hoisted and common values; norm0, row_mean0: reductions; `*_c`, `*_new`: an array's
chunk view and an element's new value). These belong to the code generators, which own
this list; spec.py's checks read it to refuse a clashing symbol with the spec's file named.
"""

from __future__ import annotations

import re

RESERVED = {
    "chunk", "tensor", "elem", "row", "rows", "row_len", "start", "stop", "partials", "sums",
    "chunks", "arrays", "scalars", "math", "np", "numba", "f32", "f64", "Variant", "Branch",
    "cuda", "config", "float64", "launch", "grid", "chunk_slot", "thread", "width", "block_sums",
    "THREADS", "SLOTS", "size", "sizes", "matrix", "col", "cols", "first", "table", "scratch", "base",
    "part", "shaped", "tables", "matrices", "tensors",
}  # fmt: skip
RESERVED_PATTERN = re.compile(
    r"(s|u|x|y|z|h|sum|norm|rms|mean|row_mean|col_mean|matrix_mean|row_sum|col_sum|matrix_sum)\d+"
    r"|.*_(c|m|tensors|per_tensor|tensor|new|of|late|rows|cols|per_matrix)"
)


def is_reserved(name: str) -> bool:
    """Whether the generated code may use `name` for itself."""
    return name in RESERVED or RESERVED_PATTERN.fullmatch(name) is not None
