"""The plan of what is combined between stages (Plan.combine), and the docs' count of what a
step adds up over the ranks (compiler/communication.py), on exact values."""

from optforge.compiler.backends.factories import combined_before, stage_roles
from optforge.compiler.build import load_specs
from optforge.compiler.communication import Rounds, shard_rounds
from optforge.generated.cpu import adafactor, adam, lamb

SPECS = {s.name: s for s in load_specs()}


def test_stage_roles_and_what_is_combined_before_each():
    flat = {"factored": False, "fused": False, "finalize_lines": ["x"]}
    assert stage_roles(flat) == [("stage1", "chunks"), ("finalize", "tensors"), ("stage2", "chunks")]
    assert stage_roles({**flat, "fused": True}) == [("step", "chunks")]
    factored = {"factored": True, "finalize_lines": ["x"], "col_means": ["c"], "matrix_means": []}
    roles = [role for role, _ in stage_roles(factored)]
    assert roles == ["pass1", "lines", "pass2", "finalize", "pass3"]
    assert [combined_before(r, factored) for r in roles] == ["", "columns", "", "sums", ""]
    with_means = {**factored, "matrix_means": [("m", "R")]}
    assert [combined_before(r, with_means) for r in roles] == ["", "columns", "matrices", "sums", ""]


def test_generated_plans_combine_where_the_stages_read():
    (lamb_branch,) = lamb.VARIANTS[()].branches.values()
    assert lamb_branch.plan.combine == ("", "sums", "")
    (factored,) = adafactor.VARIANTS[(False, True)].branches.values()
    assert factored.plan.combine == ("", "columns", "matrices", "sums", "")
    assert all(not b.plan.combine for v in adam.VARIANTS.values() for b in v.branches.values())


def test_shard_rounds_for_the_docs():
    assert shard_rounds(SPECS["adam"]) == []
    assert shard_rounds(SPECS["lamb"]) == [Rounds("every parameter", ("3 (2 sums and the element count)",))]
    sums = "3 (2 sums and the element count)"
    assert shard_rounds(SPECS["adafactor"]) == [
        Rounds("a vector", (sums,)),
        Rounds(
            "a matrix (2-D)",
            ("columns + 1 (the column sums and the row count)", "1 (the sum over its rows)", sums),
        ),
        Rounds("a stack of matrices (3-D and more)", ("0 (whole matrices: local)",) * 2 + (sums,)),
    ]
