"""Every spec's kernels under precision policies, against the float64 reference of its spec.

A policy changes only how arrays are loaded and stored (optforge.runtime.precision): each
step here starts from the stored values, widened exactly, and every stored result must be
the float64 reference's value rounded to its storage: to nearest even (within one unit in
the last place of the storage type, since the kernel computes in float32, not float64), or
stochastically (one of the two neighbours). A float32 master copy follows the reference as
float32 state does, and the parameter is its nearest 16-bit value, exactly.
"""

import importlib

import numpy as np
import pytest

from optforge.compiler.build import load_specs
from optforge.compiler.spec import is_factored
from optforge.runtime.chunks import chunk_table
from optforge.runtime.factored import STATE_SHAPES, factored_table
from optforge.runtime.launch import StageBuffers, run_stages
from optforge.runtime.pointers import pointer_table
from optforge.runtime.precision import Precision, numpy_dtype
from optforge.runtime.storage import rounding_keys
from tests.test_kernels import (
    ILL_CONDITIONED_IN_FLOAT32,
    advanced,
    expected_step,
    hypers_for,
    initial_step_state,
)

# A spec of matrices (Muon) has a matrix function the per-element reference cannot evaluate.
SPECS = {spec.name: spec for spec in load_specs() if spec.tensor_rank is None}


def default_variant(spec):
    return next(iter(spec.variants()))


# (name, parameter storage, state storage, stochastic, master): between them every load
# and store conversion (bfloat16 and float16, nearest and stochastic, from float32 and
# float64) in every kind of kernel.
POLICIES = {
    "bf16-params-sr-f16-state": ("bfloat16", "float16", True, False),
    "f16-params-master-bf16-state": ("float16", "bfloat16", False, True),
    "f64-params-bf16-state": ("float64", "bfloat16", False, False),
    "bf16-params-sr-bf16-state": ("bfloat16", "bfloat16", True, False),
}
# Prodigy's moments are d*g and d^2*g^2 with d from 1e-6: in float16 state they underflow (its
# smallest spacing is 6e-8) and its second stage divides by sqrt(v), which is then 0 (the spec's
# notes say so). bfloat16 state has float32's range: it takes the float16 state's place here.
UNDERFLOWS_IN_FLOAT16 = {"prodigy"}
# A later stage of a multi-stage kernel (Lamb's update after its norms) reads the state the
# first stage stored, rounded to its storage (the first stage overwrote the old state, so it
# cannot be recomputed): the parameter's update then differs from the reference's, made from
# the unrounded state, by a few of the state's relative spacings of the update's terms (which
# may cancel: bounded here by a fraction of the tensor's largest update).
UPDATE_SLACK = {"bfloat16": 0.03, "float16": 0.004}
# Every spec under the first two; the float64 one on a flat, a two-stage and a factored spec.
CASES = [(name, policy) for name in SPECS for policy in list(POLICIES)[:2]]
CASES = [
    (n, "bf16-params-sr-bf16-state" if n in UNDERFLOWS_IN_FLOAT16 and p == "bf16-params-sr-f16-state" else p)
    for n, p in CASES
]
CASES += [(name, "f64-params-bf16-state") for name in ("adam_torch", "lamb", "adafactor")]
SIZES = [1, 7, 33, 5001]
MATRICES = [(1, 1), (3, 5), (2, 4, 7), (40, 130)]
CHUNK = 1024


def widen(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).astype(np.float64)


def ulp(stored: np.ndarray) -> np.ndarray:
    """The spacing at each stored value, away from zero (from its bit pattern)."""
    bits = stored.view(np.uint16 if stored.dtype.itemsize == 2 else np.uint32)
    up = (bits + 1).view(stored.dtype)
    return np.abs(widen(up) - widen(stored))


def check_rounded(got, reference, what: str, stochastic: bool, slack=0.0, nearest_check=True) -> None:
    """`got` (stored) is `reference` rounded to its storage type, give or take `slack`.

    Within one spacing of the storage type, bar the float32 arithmetic's own error (a
    millionth of the tensor's scale: where terms cancel it exceeds a spacing of the small
    result) and a few elements in a thousand whose float32 and float64 values are on either
    side of a discontinuity (Lion's sign of a momentum that cancels exactly in float64).
    On large tensors, most values are the nearest of the float32 result (inputs on a 16-bit
    grid make near-ties common, which float32 and float64 may break either way); under
    stochastic rounding, as many are as the fractions of a spacing predict.
    """
    error = np.abs(widen(got) - reference)
    bound = ulp(got) * (1 + 1e-6) + 1e-6 * np.abs(reference).max() + slack
    within = np.mean(error <= bound)
    assert within >= (1.0 if got.size < 1000 else 0.995), (
        f"{what}: {1 - within:.2%} are more than a spacing off"
    )
    if not nearest_check or got.size < 1000:
        return
    rounded = reference.astype(np.float32)
    same = widen(rounded.astype(got.dtype)) == widen(got)
    if not stochastic:
        assert np.mean(same) > 0.99, f"{what}: only {np.mean(same):.1%} of the values are the nearest"
        return
    # bfloat16: the value below in magnitude truncates float32's low half; a value rounds to the
    # nearest with probability max(f, 1 - f), f its distance from below as a fraction of a spacing
    assert got.dtype.name == "bfloat16"
    below = (rounded.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32).astype(np.float64)
    spacing = ulp(below.astype(got.dtype))
    fraction = np.abs(widen(rounded) - below) / spacing
    p = np.maximum(fraction, 1 - fraction)
    expected, sigma = p.sum(), np.sqrt((p * (1 - p)).sum())
    assert abs(same.sum() - expected) <= 6 * sigma + 0.002 * got.size, (
        f"{what}: {same.sum()} nearest values where stochastic rounding gives {expected:.0f} +- {sigma:.0f}"
    )


@pytest.mark.parametrize("name, policy", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_kernels_under_a_policy_match_the_reference_rounded_to_storage(name, policy, rng):
    spec = SPECS[name]
    variant = default_variant(spec)
    factored = is_factored(spec, variant)
    module = importlib.import_module(f"optforge.generated.cpu.{spec.name}")
    compiled = module.VARIANTS[tuple(variant.values())]
    param, state, stochastic, master = POLICIES[policy]
    compute = "float64" if param == "float64" else "float32"
    symbol_of = {s.name: s.symbol.name for s in spec.state}
    names = ["w", "g"] + [symbol_of[n] for n in compiled.state]
    storage = {"w": param, "g": param} | {n: state for n in names[2:]}
    rows = ("float32" if master else param, param, *(state for _ in names[2:]))
    precision = Precision(compute, rows + ((param,) if master else ()), stochastic, master)
    shapes = MATRICES if factored else [(n,) for n in SIZES]
    kinds = dict(zip(names[2:], compiled.shapes or ("element",) * len(compiled.state)))
    arrays = {n: [rng.uniform(0.1, 1.0, s).astype(numpy_dtype(storage[n])) for s in shapes] for n in "wg"}
    for s in spec.state:
        if s.symbol.name in names:
            init = s.init if isinstance(s.init, (int, float)) else hypers_for(spec, 1).get(s.init.name, 0.01)
            arrays[s.symbol.name] = [
                np.full(STATE_SHAPES[kinds[s.symbol.name]](shape), init, numpy_dtype(state))
                for shape in shapes
            ]
    masters = [widen(w).astype(np.float32) for w in arrays["w"]] if master else None
    weight_decay = rng.uniform(0, 0.2, len(shapes))
    grad_scale = np.ones(len(shapes)) if factored else rng.uniform(0.5, 2, len(shapes))
    chunks = factored_table(shapes, CHUNK) if factored else chunk_table(SIZES, CHUNK)
    table_rows = [masters if master else arrays["w"], *(arrays[n] for n in names[1:])]
    table = pointer_table(
        [[a.reshape(-1) for a in row] for row in table_rows + ([arrays["w"]] if master else [])]
    )
    buffers = StageBuffers(np.dtype(compute), len(shapes), chunks)
    scalar = np.dtype(compute).type
    tol = dict(rtol=1e-5, atol=1e-6)
    if spec.name in ILL_CONDITIONED_IN_FLOAT32:
        tol = dict(rtol=1e-3, atol=1e-6)
    step_state = initial_step_state(spec)
    for t in range(1, 5):
        lr = 0.01 * t
        hypers = hypers_for(spec, t)
        if spec.step_rules:  # step-level state (Schedule-Free's): the kernels read its values
            step_state, step_values = advanced(spec, t, lr, hypers, step_state)
            hypers |= step_values
        branch = compiled.branches[compiled.branch_key(t, lr, *hypers.values())]
        inputs = [{n: widen(arrays[n][i]) for n in names} for i in range(len(shapes))]
        if master:
            for i, m in enumerate(masters):
                inputs[i]["w"] = widen(m)
        scalars = [
            {"t": t, "lr": lr, **hypers, "weight_decay": weight_decay[i], "grad_scale": grad_scale[i]}
            for i in range(len(shapes))
        ]
        expected, after_sums, check_sums = expected_step(spec, variant, inputs, scalars, (t, lr, hypers))
        table.keys[:] = rounding_keys(7, t, np.arange(len(shapes)))
        run_stages(
            branch,
            precision,
            chunks,
            table,
            buffers,
            weight_decay.astype(compute),
            grad_scale.astype(compute),
            [scalar(s) for s in branch.scalars(t, lr, *hypers.values())],
            after_sums=after_sums,
        )
        step_state = check_sums(step_state, 1e-4)  # the sums of rounded state
        staged = len(branch.stages[precision]) > 1
        for i in range(len(shapes)):
            for n, value in expected[i].items():
                what = f"{spec.name} {n}[{i}] t={t}"
                # the update's own error where a later stage read rounded state
                slack = (
                    UPDATE_SLACK[state] * np.abs(value - inputs[i][n]).max() if n == "w" and staged else 0.0
                )
                if n == "w" and master:
                    assert np.all(
                        np.abs(masters[i] - value) <= tol["atol"] + tol["rtol"] * np.abs(value) + slack
                    )
                    np.testing.assert_array_equal(arrays["w"][i], masters[i].astype(arrays["w"][i].dtype))
                elif n == "w" and compute == "float64":
                    assert np.all(np.abs(arrays[n][i] - value) <= 1e-12 * np.abs(value) + 1e-15 + slack), what
                else:
                    check_rounded(
                        arrays[n][i], value, what, stochastic and n == "w", slack, nearest_check=not staged
                    )
        arrays["g"] = [rng.uniform(-1, 1, s).astype(numpy_dtype(param)) for s in shapes]
        for i, g in enumerate(arrays["g"]):
            table.addresses[1, i] = g.ctypes.data


def test_a_policy_compiles_its_own_stages_and_the_plain_key_shares_todays():
    """The default policy is today's kernels (the dtype's name picks them); a policy's stages
    are made for it once and shared by every batch with that policy."""
    module = importlib.import_module("optforge.generated.cpu.adam_torch")
    branch = module.VARIANTS[(False, False, False)].branches[()]
    policy = Precision("float32", ("bfloat16", "bfloat16", "float32", "float32"), True, False)
    assert branch.stages[policy] == branch.stages[Precision(*policy)]
    assert branch.stages[policy] != branch.stages["float32"]
    assert Precision("float32", ("float32",) * 4).plain
    assert not policy.plain
