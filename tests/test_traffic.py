"""Bytes per element that the docs' precision tables give, counted from the kernels' IR."""

from optforge.compiler.build import load_specs
from optforge.compiler.lower import lower
from optforge.compiler.traffic import POLICIES, element_accesses, precision_rows, step_bytes


def test_adam_moves_28_bytes_per_element_in_float32_and_20_with_bfloat16_state():
    (spec,) = load_specs(["adam_torch"])
    rows = {label: (state, moved) for label, state, moved in precision_rows(spec)}
    assert rows["float32 parameters, float32 state"] == ("8", "28")
    assert rows["float32 parameters, bfloat16 state"] == ("4", "20")
    assert rows["bfloat16 parameters, bfloat16 state (stochastic rounding)"] == ("4", "14")
    # master weights: the float32 copy read and written, the parameter written too
    assert rows["bfloat16 parameters, float32 state, master weights"] == ("12", "28")
    # 8-bit state: a byte per element and 4 bytes per 256 for each moment (read and written)
    assert rows["float32 parameters, int8 state (where sound, else float32)"] == ("2.031", "16.06")
    assert rows["bfloat16 parameters, int8 state (where sound), stochastic rounding"] == ("2.031", "10.06")


def test_an_int8_policy_keeps_the_states_that_are_not_sound_in_float32():
    """Rprop's previous gradient and step sizes may not be codes: its int8 row is float32's."""
    (spec,) = load_specs(["rprop"])
    rows = {label: (state, moved) for label, state, moved in precision_rows(spec)}
    assert (
        rows["float32 parameters, int8 state (where sound, else float32)"]
        == rows["float32 parameters, float32 state"]
    )


def test_a_two_stage_kernel_counts_what_each_stage_reads_and_writes():
    """Lamb reads its parameter and moments in both stages (the norms, then the update)."""
    (spec,) = load_specs(["lamb"])
    kernel = lower(spec, next(iter(spec.variants())))[0]
    reads, writes = element_accesses(kernel)
    assert writes == {"param": 1, "moments1": 1, "moments2": 1}
    assert reads == {"param": 2, "grad": 1, "moments1": 2, "moments2": 2}
    assert step_bytes(kernel, POLICIES[0]) == (8, 4 * (sum(reads.values()) + sum(writes.values())))
