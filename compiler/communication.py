"""What a step adds up over the ranks when its parameters are split: for the docs.

Counted from the same plan the run-time follows (factories.combined_before): per
kernel (per flag variant), its reduction rounds in order and the float64 values each
carries per split parameter. A factored kernel's column and row rounds carry values
only for a matrix whose rows are split (a 2-D parameter split along dimension 0); a
stack of matrices split along dimension 0 holds whole matrices, which stay local.
"""

from __future__ import annotations

from typing import NamedTuple

from optforge.compiler.backends.cpu import launch_context
from optforge.compiler.backends.factories import combined_before, stage_roles
from optforge.compiler.lower import lower
from optforge.compiler.memo import per_spec
from optforge.compiler.spec import Spec, rank_flag


class Rounds(NamedTuple):
    parameters: str  # which parameters' kernel
    values: tuple[str, ...]  # per round, the float64 values a split parameter adds up


def round_values(kind: str, k: dict, matrix: bool) -> str:
    """What a round of `kind` carries per split parameter (`matrix`: a 2-D one, rows split)."""
    if kind == "sums":
        n = len(k["reductions"])
        return f"{n + 1} ({n} sum{'s' * (n > 1)} and the element count)"
    if not matrix:
        return "0 (whole matrices: local)"
    if kind == "columns":
        n = len(k["col_means"])
        return f"{'' if n == 1 else f'{n} x '}columns + 1 (the column sums and the row count)"
    n = len(k["matrix_means"])
    return f"{n} (the sum{'s' * (n > 1)} over its rows)"


def shard_rounds(spec: Spec) -> list[Rounds]:
    """Each kind of parameter's reduction rounds (none for an elementwise spec)."""
    return list(_shard_rounds(spec))


@per_spec  # each of a spec's pages asks (lowering every variant)
def _shard_rounds(spec: Spec) -> list[Rounds]:
    found: dict[Rounds, None] = {}
    for kernel in (k for variant in spec.variants() for k in lower(spec, variant)):
        k = launch_context(spec, kernel)
        kinds = [kind for kind in (combined_before(role, k) for role, _ in stage_roles(k)) if kind]
        if not kinds:
            continue
        if not k["factored"]:
            found[
                Rounds(
                    "every parameter" if rank_flag(spec) is None else "a vector",
                    tuple(round_values(kind, k, False) for kind in kinds),
                )
            ] = None
            continue
        for label, matrix in (("a matrix (2-D)", True), ("a stack of matrices (3-D and more)", False)):
            found[Rounds(label, tuple(round_values(kind, k, matrix) for kind in kinds))] = None
    return list(found)
