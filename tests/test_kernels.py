"""Every generated CPU kernel against the float64 reference evaluated from its spec.

This checks the compiler (specialisation, branches, hoisting, stages, CSE,
printing, chunking) independently of any dialect's argument handling.
"""

import importlib

import numpy as np
import pytest
import sympy as sp

from optforge.compiler.build import load_specs
from optforge.compiler.reference import reference_advance, reference_group_step, reference_step
from optforge.compiler.spec import REQUIRED, is_factored, step_inputs, sum_outputs
from optforge.runtime.chunks import chunk_table
from optforge.runtime.factored import STATE_SHAPES, factored_table
from optforge.runtime.launch import step_arrays

# A spec of matrices (Muon) has a matrix function, which the per-element reference cannot
# evaluate: tests/test_muon.py checks it against torch.optim.Muon instead.
CASES = [
    (spec, variant, dtype)
    for spec in load_specs()
    for variant in spec.variants()
    for dtype in ("float32", "float64")
    if not is_factored(spec, variant) and spec.tensor_rank is None
]
FACTORED_CASES = [
    (spec, variant, dtype)
    for spec in load_specs()
    for variant in spec.variants()
    for dtype in ("float32", "float64")
    if is_factored(spec, variant)
]
# Centered RMSprop's sqrt(v - g_avg**2) cancels when the random state makes the two close:
# float32 then differs from the float64 reference by far more than round-off (torch too).
ILL_CONDITIONED_IN_FLOAT32 = {"rmsprop"}
# SGD's guards are (t == 1 and momentum > 0, momentum > 0): the first without the second cannot hold.
# ASGD averages only after t0 = 1e6 steps by default (test_catalogue_torch runs t0 = 5).
# ADOPT's (clip_lambda None, t == 1) branch: one run has one first step, taken with its
# default clip_lambda; without it the first step's kernel is the same (it does not clip).
ZERO_BETA1 = {"prodigy"}  # a host branch for beta1 == 0
ZERO_LR = {"prodigy"}  # a host branch for lr == 0 (a group that takes no part)
UNREACHABLE = {"sgd": {(True, False)}, "asgd": {(False,)}, "adopt": {(False, True)}}
SIZES = [1, 7, 33, 70001]  # several tensors, odd sizes
CHUNK = 4096  # small, so all but the tiny tensors span several chunks


def case_id(case):
    spec, variant, dtype = case
    flags = "-".join(f"{k}" for k, v in variant.items() if v) or "plain"
    return f"{spec.name}-{flags}-{dtype}"


def hypers_for(spec, t):
    """Defaults, with beta2 = 0.9 where there is one (RAdam's rho_t > 5 then switches
    within a few steps, and float32 host arithmetic stays well conditioned), and
    zero defaults made 0.05 on odd steps (ProximalAdagrad's l1 > 0 switches, and SGD's
    first step has momentum); a callable that may be None (ADOPT's clip_lambda) is None on
    even steps, so both of the kernels `given(h)` chooses between run."""
    hypers = {h.name: 0.5 if h.default is REQUIRED else h.default for h in spec.hypers}
    callables = {h.name for h in spec.hypers if h.is_callable}
    # None: the dtype's epsilon (but a callable's None is no callable)
    hypers = {k: 1e-12 if v is None and k not in callables else v for k, v in hypers.items()}
    if "beta2" in hypers:
        hypers["beta2"] = 0.9
    if t % 2 == 1:
        hypers = {k: 0.05 if v == 0 else v for k, v in hypers.items()}
    else:
        hypers |= {h.name: None for h in spec.hypers if h.is_callable and "None" in h.types}
    if spec.name in ZERO_BETA1 and t in (4, 5):  # its kernel for beta1 = 0 (no momentum) runs too
        hypers["beta1"] = 0.0
    return hypers


def initial_step_state(spec) -> dict:
    """Each step state's value before the first step (a hyperparameter's default for one that
    starts at it: Prodigy's d at d0)."""
    return {
        s.symbol.name: hypers_for(spec, 1)[s.init.name] if isinstance(s.init, sp.Symbol) else s.init
        for s in spec.step_state
    }


def expected_step(spec, variant, tensors, scalars, step):
    """The reference's step of every tensor (`reference_step` each; with group sums,
    `reference_group_step` of all at once), the `after_sums` the kernels' run-time calls
    between the stages (the module's AFTER_SUMS at `step` = (t, lr, hypers)), and
    `check(step_state, rtol)`: the generated sum rules' values against the rules as written,
    and the step state they leave (the one given, without group sums)."""
    if not spec.sum_rules:
        expected = [reference_step(spec, variant, a, s) for a, s in zip(tensors, scalars)]
        return expected, None, lambda step_state, rtol: step_state
    expected, summed = reference_group_step(spec, variant, tensors, scalars)
    module = importlib.import_module(f"optforge.generated.cpu.{spec.name}")
    t, lr, hypers = step
    outputs = []

    def after_sums(totals):
        outputs.append(module.AFTER_SUMS(t, lr, *hypers.values(), *totals))
        return outputs[-1]

    def check(step_state, rtol):
        np.testing.assert_allclose(outputs[0], [summed[s.name] for s in sum_outputs(spec)], rtol=rtol)
        return {n: summed[n] for n in step_state}  # continue from the reference's

    return expected, after_sums, check


def advanced(spec, t, lr, hypers, step_state):
    """The generated `advance` (the module's STEP) at step `t`, checked against the step rules
    evaluated as written: (the new step state, every step input by name)."""
    module = importlib.import_module(f"optforge.generated.cpu.{spec.name}")
    values = module.STEP(t, lr, *hypers.values(), *step_state.values())
    expected = reference_advance(spec, {"t": t, "lr": lr, **hypers, **step_state})
    names = [s.name for s in step_inputs(spec)]
    np.testing.assert_allclose(values, [expected[n] for n in names], rtol=1e-15, atol=0)
    by_name = dict(zip(names, values))
    return {n: by_name[n] for n in step_state}, by_name


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_kernel_matches_spec_reference_over_several_steps(case, rng):
    spec, variant, dtype = case
    compiled = importlib.import_module(f"optforge.generated.cpu.{spec.name}").VARIANTS[
        tuple(variant.values())
    ]
    symbol_of = {s.name: s.symbol.name for s in spec.state}
    names = ["w", "g"] + [symbol_of[n] for n in compiled.state]
    # Parameters and gradients random, state from its declared initial value: random state
    # can be unreachable (centered RMSprop's v < g_avg**2 has no square root).
    arrays = {n: [rng.uniform(0.1, 1.0, size).astype(dtype) for size in SIZES] for n in ("w", "g")}
    for s in spec.state:
        if s.symbol.name in names:
            init = s.init if isinstance(s.init, (int, float)) else hypers_for(spec, 1).get(s.init.name, 0.01)
            arrays[s.symbol.name] = [np.full(size, init, dtype=dtype) for size in SIZES]
    per_tensor = {
        "weight_decay": rng.uniform(0, 0.2, len(SIZES)),
        "grad_scale": rng.uniform(0.5, 2, len(SIZES)),
    }
    chunks = chunk_table(SIZES, CHUNK)
    scalar = np.dtype(dtype).type
    branches_seen = set()
    step_state = initial_step_state(spec)
    for t in range(1, 8):
        lr = 0.0 if spec.name in ZERO_LR and t in (3, 5) else 0.01 * t
        hypers = hypers_for(spec, t)
        if spec.step_rules:  # the host's advance against the step rules as written
            step_state, step_values = advanced(spec, t, lr, hypers, step_state)
            hypers |= step_values  # the kernels' host code reads them after the hyperparameters
        key = compiled.branch_key(t, lr, *hypers.values())
        branches_seen.add(key)
        branch = compiled.branches[key]
        tensors = [{n: arrays[n][i] for n in names} for i in range(len(SIZES))]
        scalars = [
            {"t": t, "lr": lr, **hypers, **{k: v[i] for k, v in per_tensor.items()}}
            for i in range(len(SIZES))
        ]
        expected, after_sums, check_sums = expected_step(spec, variant, tensors, scalars, (t, lr, hypers))
        step_arrays(
            branch,
            dtype,
            chunks,
            [arrays[n] for n in names],
            per_tensor["weight_decay"].astype(dtype),
            per_tensor["grad_scale"].astype(dtype),
            [scalar(s) for s in branch.scalars(t, lr, *hypers.values())],
            after_sums=after_sums,
        )
        step_state = check_sums(step_state, 1e-5 if dtype == "float32" else 1e-10)
        # float32: a few ulp of O(1) values (sums of O(1) terms can cancel to small results).
        tol = dict(rtol=2e-6, atol=3e-7) if dtype == "float32" else dict(rtol=1e-12, atol=1e-15)
        if spec.host_dtype == "float32":
            tol = dict(rtol=2e-6, atol=3e-7)
        if dtype == "float32" and spec.name in ILL_CONDITIONED_IN_FLOAT32:
            tol = dict(rtol=1e-3, atol=1e-6)
        for i in range(len(SIZES)):
            for n, value in expected[i].items():
                np.testing.assert_allclose(arrays[n][i], value, **tol, err_msg=f"{n}[{i}] t={t}")
                arrays[n][i][...] = value.astype(dtype)  # continue from the reference's state
        arrays["g"] = [rng.uniform(-1, 1, size).astype(dtype) for size in SIZES]
    # Every host-side branch ran, but for combinations no step can reach.
    assert set(compiled.branches) - branches_seen <= UNREACHABLE.get(spec.name, set())


# Matrices and stacks of them; (300, 250) spans several chunks of FACTORED_CHUNK, so the
# columns' sums are added across chunks.
FACTORED_SHAPES = [(1, 1), (3, 5), (2, 4, 7), (6, 1), (300, 250)]
FACTORED_CHUNK = 20000


@pytest.mark.parametrize("case", FACTORED_CASES, ids=[case_id(c) for c in FACTORED_CASES])
def test_factored_kernel_matches_spec_reference_over_several_steps(case, rng):
    spec, variant, dtype = case
    compiled = importlib.import_module(f"optforge.generated.cpu.{spec.name}").VARIANTS[
        tuple(variant.values())
    ]
    assert compiled.factored
    state = {s.name: s for s in spec.state}
    names = ["w", "g"] + [state[n].symbol.name for n in compiled.state]
    shapes = {"w": "element", "g": "element"}
    shapes |= {state[n].symbol.name: kind for n, kind in zip(compiled.state, compiled.shapes)}
    arrays = {n: [rng.uniform(0.1, 1.0, s).astype(dtype) for s in FACTORED_SHAPES] for n in ("w", "g")}
    for n in names[2:]:
        arrays[n] = [np.zeros(STATE_SHAPES[shapes[n]](s), dtype=dtype) for s in FACTORED_SHAPES]
    weight_decay = rng.uniform(0, 0.2, len(FACTORED_SHAPES))
    table = factored_table(FACTORED_SHAPES, FACTORED_CHUNK)
    assert table.chunk_tensor.size > len(FACTORED_SHAPES)  # the large matrix has several chunks
    scalar = np.dtype(dtype).type
    for t in range(1, 6):
        lr = 0.01 * t
        hypers = hypers_for(spec, t)
        branch = compiled.branches[compiled.branch_key(t, lr, *hypers.values())]
        expected = [
            reference_step(
                spec,
                variant,
                {n: arrays[n][i] for n in names},
                {"t": t, "lr": lr, **hypers, "weight_decay": weight_decay[i], "grad_scale": 1.0},
            )
            for i in range(len(FACTORED_SHAPES))
        ]
        step_arrays(
            branch,
            dtype,
            table,
            [arrays[n] for n in names],
            weight_decay.astype(dtype),
            np.ones(len(FACTORED_SHAPES), dtype=dtype),
            [scalar(s) for s in branch.scalars(t, lr, *hypers.values())],
        )
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-15)
        for i in range(len(FACTORED_SHAPES)):
            for n, value in expected[i].items():
                np.testing.assert_allclose(arrays[n][i], value, **tol, err_msg=f"{n}[{i}] t={t}")
                arrays[n][i][...] = value.astype(dtype)
        arrays["g"] = [rng.uniform(-1, 1, s).astype(dtype) for s in FACTORED_SHAPES]
