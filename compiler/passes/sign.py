"""Proving a state's sign from its update rule, with SymPy's assumptions (issue 17).

8-bit blockwise storage (optforge/runtime/quantize.py) has an unsigned table, twice as fine as the
signed one, for states that never go negative (Adam's second moment). Choosing it is only sound if
the state is non-negative at every step, whatever the gradients; this pass proves that, or says
it cannot ("any"). It never guesses: a state is "nonnegative" only where SymPy returned True.

The proof is an induction over steps, for all states of one flag variant at once. Start from the
states whose initial value is provably >= 0 (or <= 0); assume each holds that sign before a step;
a state keeps its place if its new value, as an expression of the old values (the rules inlined
in order), is provably of that sign under the assumptions; drop the others and repeat until none
drops (a greatest fixpoint: AMSGrad's `max(v_max, v)` is non-negative because v is). What remains
holds at every step: true initially, and kept by every step given all the others.

Assumptions, each sound for what the symbol can hold:
- the gradient, the parameter, lr, weight_decay, grad_scale: real, nothing more;
- t, the step counter (1 at the first update): ``1 + k`` with k a non-negative integer;
- a hyperparameter with a declared domain (an Interval; the widest over the spec and its exports'
  overrides): one case per part of it, each proven separately: its interior as an expression of
  a positive symbol p that SymPy can reason with ((a, b) -> a + (b - a) p/(1 + p), so ``b - x =
  (b - a)/(1 + p) > 0``; (a, oo) -> a + p; (-oo, b) -> b - p) and each closed finite end as its
  value (beta in [0, 1) is the cases p/(1 + p) and 0); without a domain: real;
- a state assumed >= 0: a non-negative symbol (<= 0: minus one; both: 0); the others real;
- a norm or RMS: non-negative; a row, column or matrix mean: the sign of what it averages;
- ``b**e`` with b >= 1 and e <= 0 (Adafactor's ``t**beta2_decay``) lies in (0, 1]: it becomes
  1/(1 + q) with q >= 0 (q = b**-e - 1), which SymPy then uses.
`fma(a, b, c)` is `a*b + c`. Where SymPy cannot decide the expression as written, its `cancel`,
`factor` and expanded-numerator forms are tried (any True is a proof: each is the same function
where the original is defined); then the same with each largest subexpression of merely real
symbols (``(g*grad_scale + weight_decay*w)**2``) as one symbol of its proven sign, which is
sound because the claim then holds for every such value; and a denominator proven >= 0 is
taken as > 0.

What is proven is the sign of the real value wherever it is finite. A value that is not finite
(a zero denominator: Adadelta with eps = 0 and a zero gradient) poisons its block in either table,
so it does not bear on the choice. Rounding is not modelled: float32 arithmetic can turn a value
proven >= 0 into a negative one of rounding size at most (``v + (1 - b)*(g**2 - v)`` near 0);
written to the unsigned table that takes the code of 0, an error far below the table's own.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping

import sympy as sp

from optforge.compiler import spec as S
from optforge.compiler.memo import per_spec
from optforge.compiler.passes.specialize import specialize

NONNEGATIVE = "nonnegative"
NONPOSITIVE = "nonpositive"
ANY = "any"

_REAL_INPUTS = (S.g, S.w, S.lr, S.weight_decay, S.grad_scale)
_LARGE = 400  # count_ops above which the costly normal forms (cancel, factor) are not tried


def _assumed(name: str, **assumptions) -> sp.Symbol:
    """The symbol standing for `name` under `assumptions` in a proof.

    Not a Dummy: the same quantity gets the same symbol in every proof, so equal cases are
    equal expressions and `is_nonnegative` answers each once (a spec's flag variants share most
    of their cases: MARS's 64 took a minute). The prefix keeps these apart from a spec's own
    symbols, which carry no assumptions (a Symbol's assumptions are part of its identity).
    """
    return sp.Symbol(f"_sign_{name}", **assumptions)


# --- one expression --------------------------------------------------------------------------


def _forms(expr: sp.Expr):
    """`expr`, then equal forms SymPy's assumptions may see through."""
    yield expr
    if sp.count_ops(expr) > _LARGE:
        return
    for rewrite in (sp.cancel, sp.factor, _expanded_numerator):
        try:
            yield rewrite(expr)
        except (sp.PolynomialError, sp.CoercionFailed, NotImplementedError, TypeError, ValueError):
            continue


def _expanded_numerator(expr: sp.Expr) -> sp.Expr:
    numerator, denominator = sp.fraction(sp.together(expr))
    return sp.expand(numerator) / denominator


def _positive_denominators(expr: sp.Expr) -> sp.Expr:
    """Each ``b**e`` with e < 0 and b >= 0 but not provably > 0, with b a positive symbol: the
    value is then unchanged or not finite (the module's docstring)."""
    swap = {}
    for power in expr.atoms(sp.Pow):
        base, exponent = power.args
        if exponent.is_negative and base.is_positive is not True and is_nonnegative(base):
            swap[power] = _assumed(f"d[{base}]", positive=True) ** exponent
    return expr.xreplace(swap) if swap else expr


@functools.lru_cache(maxsize=None)
def is_nonnegative(expr: sp.Expr) -> bool:
    """Whether SymPy proves `expr` >= 0 wherever it is finite (symbols carry their assumptions).

    Piecewise: every branch, and the last one's condition True (else the value may be
    undefined); Max: one argument; Min: all; otherwise SymPy's `is_nonnegative` on `_forms`.
    """
    expr = sp.piecewise_fold(sp.sympify(expr))
    if isinstance(expr, sp.Piecewise):
        return expr.args[-1].cond == sp.true and all(is_nonnegative(e) for e, _ in expr.args)
    if isinstance(expr, sp.Max):
        return any(is_nonnegative(a) for a in expr.args)
    if isinstance(expr, sp.Min):
        return all(is_nonnegative(a) for a in expr.args)
    if any(form.is_nonnegative for form in _forms(expr)):
        return True
    rewritten = _positive_denominators(expr)
    return rewritten != expr and any(form.is_nonnegative for form in _forms(rewritten))


def _unit_powers(expr: sp.Expr) -> sp.Expr:
    """Each ``b**e`` with b >= 1 and e <= 0 as 1/(1 + q), q >= 0 (the same q for the same power)."""
    swap = {}
    for power in expr.atoms(sp.Pow):
        base, exponent = power.args
        if exponent.is_number:
            continue  # SymPy reasons about numeric powers itself (sqrt, squares, 1/x)
        if is_nonnegative(base - 1) and is_nonnegative(-exponent):
            swap[power] = 1 / (1 + _assumed(f"q[{power}]", nonnegative=True))
    return expr.xreplace(swap) if swap else expr


# --- the assumptions -------------------------------------------------------------------------


def interval_cases(interval: sp.Interval, name: str = "p") -> list[sp.Expr]:
    """Expressions covering `interval` between them, each of one positive symbol (named after
    `name`) or a number: the interior (if any) and each closed finite end."""
    lo, hi = interval.start, interval.end
    cases = []
    if lo < hi:
        p = _assumed(f"p[{name}]", positive=True)
        if lo.is_finite and hi.is_finite:
            cases.append(lo + (hi - lo) * p / (1 + p))
        elif lo.is_finite:
            cases.append(lo + p)
        elif hi.is_finite:
            cases.append(hi - p)
        else:
            cases.append(_assumed(name, real=True))
    if not interval.left_open and lo.is_finite:
        cases.append(lo)
    if not interval.right_open and hi.is_finite and hi != lo:
        cases.append(hi)
    return cases


def widest(intervals) -> sp.Interval:
    """The smallest interval holding every one of `intervals` (their union may have gaps)."""
    intervals = list(intervals)
    lo = min(i.start for i in intervals)
    hi = max(i.end for i in intervals)
    left_open = all(i.left_open for i in intervals if i.start == lo)
    right_open = all(i.right_open for i in intervals if i.end == hi)
    return sp.Interval(lo, hi, left_open, right_open)


def _inputs(expr: sp.Expr, signs: Mapping[sp.Symbol, set], domains: Mapping) -> list[dict]:
    """The substitutions (one per case of the hyperparameters in `expr`) that give every free
    symbol of `expr` its assumptions. `signs[s]` holds the signs state s is assumed to have."""
    base = {S.t: 1 + _assumed("k", integer=True, nonnegative=True)}
    for s in _REAL_INPUTS:
        base[s] = _assumed(s.name, real=True)
    for s, held in signs.items():
        if {NONNEGATIVE, NONPOSITIVE} <= held:
            base[s] = sp.Integer(0)
        elif held:
            x = _assumed(s.name, nonnegative=True)
            base[s] = x if NONNEGATIVE in held else -x
        else:
            base[s] = _assumed(s.name, real=True)
    free = sorted(expr.free_symbols - base.keys(), key=str)
    split = [s for s in free if s in domains]
    for s in free:
        if s not in domains:
            base[s] = _assumed(s.name, real=True)
    choices = [interval_cases(domains[s], s.name) for s in split]
    return [base | dict(zip(split, values)) for values in itertools.product(*choices)]


def _generalised(expr: sp.Expr, free: set) -> sp.Expr:
    """`expr` with each largest subexpression of the symbols `free` only (those known to be real
    and nothing more: gradient, parameter, a state of unknown sign) as one symbol of the sign it
    is proven to have.

    Sound: the proof then holds for every value of that sign, the subexpression's among them.
    It lets SymPy see ``(g*grad_scale + weight_decay*w)**2`` as one non-negative number, where
    `cancel` would expand it into terms of unknown sign.
    """
    if not isinstance(expr, sp.Expr) or isinstance(expr, sp.Symbol) or not expr.free_symbols:
        return expr.func(*(_generalised(a, free) for a in expr.args)) if expr.args else expr
    if expr.free_symbols <= free:
        if is_nonnegative(expr):
            return _assumed(f"u[{expr}]", nonnegative=True)
        if is_nonnegative(-expr):
            return -_assumed(f"u[{-expr}]", nonnegative=True)
        return _assumed(f"u[{expr}]", real=True)
    return expr.func(*(_generalised(a, free) for a in expr.args))


def _means_as_symbols(expr: sp.Expr) -> sp.Expr:
    """Norms and RMS as non-negative symbols, means as symbols of their argument's sign (the
    argument already under the assumptions)."""
    swap = {}
    for r in expr.atoms(*S.REDUCTIONS):
        if isinstance(r, (S.norm, S.rms)) or is_nonnegative(r.args[0]):
            swap[r] = _assumed(str(r), nonnegative=True)
        elif is_nonnegative(-r.args[0]):
            swap[r] = -_assumed(str(-r), nonnegative=True)
        else:
            swap[r] = _assumed(str(r), real=True)
    return expr.xreplace(swap) if swap else expr


def proves(expr: sp.Expr, sign: str, signs: Mapping[sp.Symbol, set], domains: Mapping) -> bool:
    """Whether `expr` (of old states, inputs and hyperparameters) has `sign` in every case."""
    expr = S.unfused(sp.sympify(expr))
    # Only what `expr` reads bears on the answer: flag variants that differ elsewhere share it.
    read = sorted(expr.free_symbols, key=str)
    return _proves(
        expr,
        sign,
        tuple((s, frozenset(signs[s])) for s in read if s in signs),
        tuple((s, domains[s]) for s in read if s in domains),
    )


@functools.lru_cache(maxsize=None)
def _proves(expr: sp.Expr, sign: str, signs: tuple, domains: tuple) -> bool:
    signs, domains = dict(signs), dict(domains)
    target = expr if sign == NONNEGATIVE else -expr
    for values in _inputs(expr, signs, domains):
        case = _unit_powers(_means_as_symbols(target.xreplace(values)))
        # Generalise over the symbols known to be real only (not the hyperparameters' p, t's k,
        # a state assumed >= 0: their relations are what a proof needs).
        merely_real = {d for d in case.free_symbols if d.is_nonnegative is None and d.is_nonpositive is None}
        if not (is_nonnegative(case) or is_nonnegative(_generalised(case, merely_real))):
            return False
    return True


# --- states ----------------------------------------------------------------------------------


def prove_signs(
    updates: Mapping[sp.Symbol, sp.Expr],
    domains: Mapping[sp.Symbol, sp.Interval] | None = None,
    initial: Mapping[sp.Symbol, object] | None = None,
) -> dict[sp.Symbol, str]:
    """The sign of each state, from its update (new value as an expression of the old values,
    the gradient, hyperparameters, ...) and its initial value (0 where not given): the
    greatest fixpoint of the module's docstring. "nonnegative" (also for a state proven 0),
    "nonpositive" or "any"."""
    domains = dict(domains or {})
    initial = dict(initial or {})
    signs = {}
    for s in updates:
        start = sp.sympify(initial.get(s, 0))
        signs[s] = {sign for sign in (NONNEGATIVE, NONPOSITIVE) if proves(start, sign, {}, domains)}
    changed = True
    while changed:
        changed = False
        for s, expr in updates.items():
            for sign in sorted(signs[s]):
                if not proves(expr, sign, signs, domains):
                    signs[s].discard(sign)
                    changed = True
    return {
        s: NONNEGATIVE if NONNEGATIVE in held else NONPOSITIVE if held else ANY for s, held in signs.items()
    }


def variant_updates(spec: S.Spec, variant: Mapping[sp.Symbol, bool]) -> dict[sp.Symbol, sp.Expr]:
    """Each state of `variant` -> its new value in terms of the values before the step: the
    variant's rules (flags fixed) inlined in order, `fma` written out. Computed once per spec
    object and variant (inlining rebuilds every Max and Min: the int8 pass asks per page)."""
    return dict(_variant_updates(spec, tuple(sorted(variant.items(), key=lambda item: str(item[0])))))


@per_spec
def _variant_updates(spec: S.Spec, variant: tuple) -> dict[sp.Symbol, sp.Expr]:
    variant = dict(variant)
    current: dict[sp.Symbol, sp.Expr] = {}
    for rule in specialize(spec, variant):
        current[rule.target] = S.unfused(sp.sympify(rule.expr)).xreplace(current)
    return {s.symbol: current[s.symbol] for s in spec.state if S.active(s.when, variant)}


def hyper_domains(spec: S.Spec) -> dict[sp.Symbol, sp.Interval]:
    """Each hyperparameter's domain: the widest of the spec's and its exports' overrides (a proof
    must hold for every generated class)."""
    domains = {}
    for h in spec.hypers:
        found = [spec.domains[h.symbol]] if h.symbol in spec.domains else []
        found += [e.domains[h.symbol] for e in spec.exports if h.symbol in e.domains]
        if found:
            domains[h.symbol] = widest(found)
    return domains


def spec_signs(spec: S.Spec) -> dict[str, str]:
    """State name -> its sign over every flag variant in which it exists: a sign holds only if it
    holds in each of them. Computed once per spec object."""
    return dict(_spec_signs(spec))


@per_spec
def _spec_signs(spec: S.Spec) -> dict[str, str]:
    domains = hyper_domains(spec)
    initial = {s.symbol: s.init for s in spec.state}
    found: dict[str, set] = {s.name: set() for s in spec.state}
    for variant in spec.variants():
        updates = variant_updates(spec, variant)
        for symbol, sign in prove_signs(updates, domains, initial).items():
            found[next(s.name for s in spec.state if s.symbol == symbol)].add(sign)
    return {name: signs.pop() if len(signs) == 1 else ANY for name, signs in found.items()}


def state_sign(spec: S.Spec, state: str | sp.Symbol) -> str:
    """The sign of one state of `spec` (by its public name or its symbol)."""
    return spec_signs(spec)[state_of(spec, state).name]


def state_of(spec: S.Spec, state: str | sp.Symbol) -> S.State:
    for s in spec.state:
        if state in (s.name, s.symbol):
            return s
    raise S.SpecError(f"{spec.where}: no state '{state}' (states: {', '.join(s.name for s in spec.state)})")
