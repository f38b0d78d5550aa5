"""A float64 reference step evaluated from a spec's rules as written.

Each rule is turned into a NumPy function with `sympy.lambdify` and applied
in order, without any of the compiler's passes, so comparing a generated
kernel with it checks specialisation, hoisting, CSE and printing at once.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from optforge.compiler import spec as S
from optforge.compiler.passes.specialize import specialize


def _l2_norm(x) -> float:
    """`norm(e)` of a spec: the L2 norm over the whole tensor."""
    return float(np.sqrt(np.sum(np.square(np.asarray(x, dtype=np.float64)))))


def _rms(x) -> float:
    """`rms(e)`: the root mean square over the whole tensor."""
    return float(np.sqrt(np.mean(np.square(np.asarray(x, dtype=np.float64)))))


# The spec's reductions in NumPy: a factored variant's arrays keep their shapes
# (row state (..., rows, 1), column state (..., 1, cols)), so broadcasting
# makes a row value times a column value one per element.
REDUCTIONS = {
    "norm": _l2_norm,
    "rms": _rms,
    # A mean of a Piecewise mask arrives as a broadcast scalar where the mask does not vary.
    "mean": lambda x: float(np.mean(np.asarray(x, dtype=np.float64))),
    "row_mean": lambda x: np.mean(x, axis=-1, keepdims=True),
    "col_mean": lambda x: np.mean(x, axis=-2, keepdims=True),
    "matrix_mean": lambda x: np.mean(x, axis=-2, keepdims=True),
    "fma": lambda a, b, c: a * b + c,  # float64: the rounding fma saves is below its precision
}


def reference_step(
    spec: S.Spec,
    variant: dict[sp.Symbol, bool],
    arrays: dict[str, np.ndarray],
    scalars: dict[str, float],
) -> dict[str, np.ndarray]:
    """One step in float64.

    `arrays` maps 'w', 'g' and state symbol names to arrays (a factored
    variant's row and column state in their own shapes); `scalars` maps
    't', 'lr', 'weight_decay', 'grad_scale' and the hyperparameter names to
    numbers. Returns the new value of every array the rules assign.
    """
    env: dict[str, object] = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
    # A callable hyperparameter (or None) is kept as it is: `call` and `given` read it.
    env |= {k: v if v is None or callable(v) else float(v) for k, v in scalars.items()}
    env.setdefault(S.numel.name, float(np.size(arrays["w"])))  # the built-in element count
    updated = {}
    # Rules are evaluated as written, so a local that only one Piecewise branch
    # uses (RAdam's rectification term) may be NaN where that branch is not taken.
    with np.errstate(invalid="ignore", divide="ignore"):
        _evaluate(specialize(spec, variant), env, updated)
    return {k: np.broadcast_to(v, np.shape(arrays[k])).copy() for k, v in updated.items() if k in arrays}


def reference_group_step(
    spec: S.Spec,
    variant: dict[sp.Symbol, bool],
    arrays: list[dict[str, np.ndarray]],
    scalars: list[dict[str, float]],
) -> tuple[list[dict[str, np.ndarray]], dict[str, float]]:
    """One step in float64 of every tensor of a group at once, for a spec with group sums:
    the rules in order over each tensor (`arrays[i]`, `scalars[i]` as `reference_step` takes
    them); a group sum is the sum of its argument over every element of every tensor; the sum
    rules run once, after the last group sum, and the rules after it read their values.
    Returns each tensor's new arrays and the sum rules' targets."""
    envs = [
        {k: np.asarray(v, dtype=np.float64) for k, v in a.items()}
        | {k: v if v is None or callable(v) else float(v) for k, v in s.items()}
        for a, s in zip(arrays, scalars)
    ]
    for env, a in zip(envs, arrays):
        env.setdefault(S.numel.name, float(np.size(a["w"])))
    rules = specialize(spec, variant)
    sums = [i for i, rule in enumerate(rules) if isinstance(rule.expr, S.group_sum)]
    updated: list[dict] = [{} for _ in envs]
    summed: dict[str, object] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for i, rule in enumerate(rules):
            if isinstance(rule.expr, S.group_sum):
                inner = [type(rule)(rule.target, rule.expr.args[0])]
                parts = []
                for env in envs:
                    _evaluate(inner, env, {})
                    parts.append(float(np.sum(env[rule.target.name])))
                for env in envs:
                    env[rule.target.name] = np.float64(sum(parts))
            else:
                for env, out in zip(envs, updated):
                    _evaluate([rule], env, out)
            if sums and i == sums[-1]:  # the sum rules, once, from the step's values and the totals
                step_env = {
                    k: v if v is None or callable(v) else np.float64(v)
                    for k, v in envs[0].items()
                    if v is None or callable(v) or np.ndim(v) == 0
                }
                _evaluate(list(spec.sum_rules), step_env, summed)
                for env in envs:
                    env.update(summed)
    results = [
        {k: np.broadcast_to(v, np.shape(a[k])).copy() for k, v in out.items() if k in a}
        for out, a in zip(updated, arrays)
    ]
    return results, {k: float(v) for k, v in summed.items()}


def _evaluate(rules, env, updated) -> None:
    for rule in rules:
        if rule.expr.has(S.call, S.given):  # a callable hyperparameter at this step: its value
            # `given` first: where it is false, the branch that calls the (None) callable goes.
            given = {
                c: sp.true if env[c.args[0].name] is not None else sp.false for c in rule.expr.atoms(S.given)
            }
            expr = rule.expr.xreplace(given)
            calls = {c: sp.Float(env[c.args[0].name](int(env["t"]))) for c in expr.atoms(S.call)}
            rule = type(rule)(rule.target, expr.xreplace(calls))
        if rule.expr.has(sp.Product):  # a product over the steps so far: evaluate it at this t
            rule = type(rule)(rule.target, rule.expr.subs(S.t, int(env["t"])).doit())
        symbols = sorted(rule.expr.free_symbols, key=lambda s: s.name)
        function = sp.lambdify(symbols, rule.expr, modules=[REDUCTIONS, "numpy"])
        value = np.asarray(function(*(env[s.name] for s in symbols)), dtype=np.float64)
        env[rule.target.name] = value
        updated[rule.target.name] = value


def reference_advance(spec: S.Spec, scalars: dict[str, float]) -> dict[str, float]:
    """The step rules in float64 as written: `scalars` maps 't', 'lr', the hyperparameters
    and each step state (its value before the step) to numbers; returns every step state
    (as the step rules leave it) and every step rule's local."""
    # NumPy floats: a Piecewise evaluates every branch, and one not taken may divide by 0.
    env: dict[str, object] = {k: np.float64(v) for k, v in scalars.items()}
    updated: dict[str, object] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        _evaluate(list(spec.step_rules), env, updated)
    kept = {s.symbol.name: env[s.symbol.name] for s in spec.step_state}  # (one only sum rules write)
    return {k: float(v) for k, v in (kept | updated).items()}
