"""Composable spec fragments: the pieces many optimizers share, declared once.

A `Fragment` holds declarations (hyperparameters with their domains, flags, state, rules,
LaTeX, constraints) and, for the gradient fragments, its part in the effective gradient.
`compose(*fragments, **fields)` expands them into one ordinary `Spec`: the fragments are
spec-level, so the compiler sees the same Hypers, Flags, States and Rules a hand-written
spec declares and still fuses everything into one kernel per stage.

The effective gradient is built in one fixed order whatever the order of the fragments,
the order torch and MindSpore apply them:

    g_eff = decay(scale(sign(g)))

- sign: `maximize()`, the flag `maximize` and `g -> -g` when it is set;
- scale: `loss_scale()`, `g -> g*grad_scale` (the dialect's 1/loss_scale);
- decay: `coupled_decay()` (`g + weight_decay*w`, or its `fma`), `decoupled_decay()`
  (the weights shrink: `w_decayed = w*(1 - lr*weight_decay)`) or `switched_decay(flag)`
  (coupled, or decoupled when the flag is set: torch's `decoupled_weight_decay`).

`nn_prologue()` is MindSpore nn's effective gradient, `g*grad_scale + weight_decay*w`, and
`torch_prologue()` torch.optim's (maximize, loss scale, fused coupled decay). Coupled decay
needs the loss scale: a spec whose decay is coupled has the rule `g*grad_scale +
weight_decay*w` (spec.py's check), because the nn run-time undoes both together.
The gradient fragments' rules come first: `g_eff`, then `w_decayed`. A core reads the
symbols `g_eff` and `w_decayed` of this module; where no fragment defines one, it stands for
`g` or `w` itself, so one core serves with and without each transform (AdamW is Adam's core
plus `decoupled_decay()`).

Every other declaration keeps the order of the fragments (then the spec's own, given as
`compose`'s keyword arguments), because that order is the kernels' argument order and the
documentation's. A fragment applied twice, or two fragments (or a fragment and the spec)
declaring one name, is a `SpecError` naming the spec's file and the fragments.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import sympy as sp

from optforge.compiler.spec import (
    Flag,
    Hyper,
    Rule,
    Spec,
    SpecError,
    fma,
    g,
    grad_scale,
    lr,
    mean,
    numel,
    source_where,
    w,
    weight_decay,
)

# The symbols the fragments declare or define; a core reads them.
g_eff = sp.Symbol("g_eff")  # the effective gradient
w_decayed = sp.Symbol("w_decayed")  # the parameter after decoupled decay: a core's update starts from it
maximize_flag = sp.Symbol("maximize")
beta1, beta2, beta3 = sp.symbols("beta1 beta2 beta3")
eps = sp.Symbol("eps")

MAXIMIZE_DOC = "Maximize the objective: step along the gradient."
DECOUPLED_DOC = "Decay the weights directly (AdamW's arithmetic) instead of adding to the gradient."
FIXED_DOC = "With decoupled decay, shrink the weights by weight_decay alone, not scaled by the learning rate."
NESTEROV_DOC = "Use Nesterov momentum."
EPS_DOC = "Added to the denominator for numerical stability."
# The betas' accepted types, domains and documentation: torch.optim's (a beta may be 0, a NumPy
# float is accepted) and MindSpore nn's (floats in the open interval).
BETAS = {
    "torch": (
        ("float", "numpy.floating"),
        sp.Interval.Ropen(0, 1),
        (
            "Decay rate of the running mean of gradients.",
            "Decay rate of the running mean of squared gradients.",
        ),
    ),
    "nn": (
        ("float",),
        sp.Interval.open(0, 1),
        ("Exponential decay rate of the first moment.", "Exponential decay rate of the second moment."),
    ),
}
EPS_TYPES = {"torch": ("float", "int"), "nn": ("float",)}
DECAY_KINDS = ("coupled", "decoupled", "switched")
PROLOGUE_LATEX = {g_eff: r"\tilde{g}", w_decayed: r"\bar{w}"}


@dataclass(frozen=True)
class Decay:
    """How weight decay enters: `kind` "coupled" (added to the gradient), "decoupled" (the
    weights shrink by lr*weight_decay) or "switched" (coupled, decoupled when `flag` is set);
    `fused`: the coupled sum is one `fma(weight_decay, w, g)` (torch's grad.add(param, alpha=))."""

    kind: str
    fused: bool = False
    flag: sp.Symbol | None = None
    # A second flag: where it is set, decoupled decay does not scale by lr, w*(1 - weight_decay)
    # (pytorch_optimizer's `fixed_decay`).
    fixed: sp.Symbol | None = None


@dataclass(frozen=True)
class Fragment:
    """A piece of a spec. Its declarations are those of `Spec` (see spec.py); `sign`, `scale`
    and `decay` are its part in the effective gradient (see the module's docstring)."""

    name: str  # named in errors, e.g. "maximize"
    hypers: tuple = ()
    domains: dict = field(default_factory=dict)
    flags: tuple = ()
    state: tuple = ()
    rules: tuple = ()
    latex: dict = field(default_factory=dict)
    constraints: tuple = ()
    sign: sp.Symbol | None = None  # a flag: the gradient is negated where it is set
    scale: bool = False  # the gradient is multiplied by grad_scale
    decay: Decay | None = None

    def __post_init__(self):
        for name in ("hypers", "flags", "state", "rules", "constraints"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.decay is not None and self.decay.kind not in DECAY_KINDS:
            raise SpecError(
                f"fragment '{self.name}': decay kind must be one of {DECAY_KINDS}, got {self.decay.kind!r}"
            )
        if self.decay is not None and (self.decay.kind == "switched") != (self.decay.flag is not None):
            raise SpecError(f"fragment '{self.name}': a switched decay, and only it, names its flag")
        if self.decay is not None and self.decay.fixed is not None and self.decay.kind != "switched":
            raise SpecError(f"fragment '{self.name}': only a switched decay has a fixed-decay flag")

    @property
    def flag(self) -> sp.Symbol:
        """The symbol of the fragment's one flag (maximize's, nesterov's), for a core's rules."""
        if len(self.flags) != 1:
            raise SpecError(f"fragment '{self.name}' declares {len(self.flags)} flags, not one")
        return self.flags[0].symbol


# --- the effective gradient ----------------------------------------------------------------


def maximize(doc: str = MAXIMIZE_DOC) -> Fragment:
    """torch's `maximize`: a flag, and the effective gradient's sign flips where it is set."""
    return Fragment("maximize", flags=[Flag(maximize_flag, doc)], sign=maximize_flag)


cautious_flag = sp.Symbol("cautious")
cautious_mask = sp.Symbol("mask")
CAUTIOUS_DOC = (
    "Cautious update (C-Optim): zero the coordinates whose update disagrees in sign with the "
    "gradient and scale the others by numel/(kept + 1)."
)


def cautious_rules(update: sp.Symbol, base: sp.Expr, step: sp.Expr, grad: sp.Expr = g_eff) -> list[Rule]:
    """C-Optim's masked update (Liang et al. 2024), `when=cautious`: the parameter becomes
    `base - step*update*mask*numel/(sum(mask) + 1)` with `mask = update*grad > 0`, the scale
    written `1/(mean(mask) + 1/numel)` (the same number: the mean's float64 sum of 0s and 1s
    is exact). pytorch_optimizer's `apply_cautious` computes `update*grad > 0` as written, so
    a product that underflows to 0 masks the coordinate; so does this rule. The mask is
    written `max(sign(update*grad), 0)`, the same 0 or 1, so that it reads the states through
    a sign, not a branch condition: 8-bit signed storage keeps every sign it does not round
    to 0 (passes/int8.py, rule 4, as for Lion's `sign(c)`), so AdamW's and Lion's moments keep
    their 8-bit tables. A spec declares the flag itself (`Flag(cautious_flag, CAUTIOUS_DOC)`)
    and limits its other update of `w` to `~cautious_flag`."""
    mask = cautious_mask
    return [
        Rule(mask, sp.Max(sp.sign(update * grad), 0), when=cautious_flag),
        Rule(w, base - step * update * mask / (mean(mask) + 1 / numel), when=cautious_flag),
    ]


def loss_scale() -> Fragment:
    """The effective gradient is `g*grad_scale`: the dialect's 1/loss_scale (1 in optim and torch)."""
    return Fragment("loss_scale", scale=True)


def coupled_decay(fused: bool = False) -> Fragment:
    """L2 decay added to the gradient: `g + weight_decay*w`; `fused=True` writes it
    `fma(weight_decay, w, g)`, rounded once, as torch's CPU kernels compute grad.add(param, alpha=)."""
    return Fragment("coupled_decay", decay=Decay("coupled", fused=fused))


def decoupled_decay() -> Fragment:
    """AdamW's decay: the core's update starts from `w_decayed = w*(1 - lr*weight_decay)`."""
    return Fragment("decoupled_decay", decay=Decay("decoupled"))


def switched_decay(
    name: str = "decoupled_weight_decay",
    doc: str = DECOUPLED_DOC,
    fused: bool = False,
    fixed: str | None = None,
    fixed_doc: str = FIXED_DOC,
) -> Fragment:
    """A flag choosing the decay per kernel variant: coupled (as `coupled_decay(fused)`), or
    decoupled (as `decoupled_decay()`) where it is set; torch's `decoupled_weight_decay`.

    `fixed` names a second flag (pytorch_optimizer's `fixed_decay`): where both are set the
    decoupled decay is not scaled by the learning rate, `w_decayed = w*(1 - weight_decay)`;
    with coupled decay it changes nothing, as in pytorch_optimizer."""
    flag = sp.Symbol(name)
    flags = [Flag(flag, doc)]
    fixed_flag = None
    if fixed is not None:
        fixed_flag = sp.Symbol(fixed)
        flags.append(Flag(fixed_flag, fixed_doc))
    return Fragment(
        "switched_decay",
        flags=flags,
        decay=Decay("switched", fused=fused, flag=flag, fixed=fixed_flag),
    )


def nn_prologue() -> Fragment:
    """MindSpore nn's effective gradient: the loss scale undone and coupled L2 decay added,
    `g*grad_scale + weight_decay*w` (what its kernels compute, unfused)."""
    return Fragment("nn_prologue", scale=True, decay=Decay("coupled"))


def torch_prologue() -> tuple[Fragment, ...]:
    """torch.optim's effective gradient: `maximize`, the loss scale, and coupled decay fused as
    torch's CPU kernels compute grad.add(param, alpha=weight_decay)."""
    return (maximize(), loss_scale(), coupled_decay(fused=True))


# --- hyperparameters -----------------------------------------------------------------------


def betas(
    defaults: tuple = (0.9, 0.999),
    docs: tuple | None = None,
    *,
    convention: str = "torch",
    types: tuple | None = None,
    domain: sp.Interval | None = None,
) -> Fragment:
    """The decay rates beta1, beta2 (, beta3, ...), one per default, with their domain.

    `convention` "torch" (types float and NumPy floats, domain [0, 1)) or "nn" (floats,
    (0, 1)); `types` and `domain` override it. `docs` gives each beta's doc; a None entry
    (or no `docs`, for a pair) takes the convention's. SymPy prints beta1 as beta_1 in
    the docs, so no LaTeX is needed.
    """
    if convention not in BETAS:
        raise SpecError(f"fragment 'betas': convention must be one of {tuple(BETAS)}, got {convention!r}")
    default_types, default_domain, default_docs = BETAS[convention]
    docs = (None,) * len(defaults) if docs is None else tuple(docs)
    if len(docs) != len(defaults) or not defaults:
        raise SpecError(f"fragment 'betas': {len(defaults)} defaults but {len(docs)} docs")
    if None in docs[len(default_docs) :]:
        raise SpecError(f"fragment 'betas': give the doc of beta{len(default_docs) + 1} and after")
    symbols = [sp.Symbol(f"beta{i}") for i in range(1, len(defaults) + 1)]
    hypers = [
        Hyper(sym, types or default_types, default, doc if doc is not None else default_docs[i])
        for i, (sym, default, doc) in enumerate(zip(symbols, defaults, docs))
    ]
    return Fragment("betas", hypers=hypers, domains={sym: domain or default_domain for sym in symbols})


def epsilon(
    default: float = 1e-8,
    doc: str = EPS_DOC,
    *,
    convention: str = "torch",
    name: str = "eps",
    domain: sp.Interval = sp.Interval.open(0, sp.oo),
) -> Fragment:
    """The stabilising constant `eps` (or `name`), printed as epsilon; accepted types by
    `convention` ("torch": float or int, "nn": float); `domain` (0, oo) unless given."""
    if convention not in EPS_TYPES:
        raise SpecError(
            f"fragment 'epsilon': convention must be one of {tuple(EPS_TYPES)}, got {convention!r}"
        )
    sym = sp.Symbol(name)
    return Fragment(
        "epsilon",
        hypers=[Hyper(sym, EPS_TYPES[convention], default, doc)],
        domains={sym: domain},
        latex={sym: r"\epsilon"},
    )


# --- flags ---------------------------------------------------------------------------------


def nesterov(name: str = "nesterov", doc: str = NESTEROV_DOC) -> Fragment:
    """The Nesterov flag; a core picks its look-ahead with `lookahead(fragment.flag, ...)`."""
    return Fragment("nesterov", flags=[Flag(sp.Symbol(name), doc)])


def lookahead(
    flag: sp.Symbol, ahead: sp.Expr, plain: sp.Expr, unless: sp.Symbol | None = None
) -> sp.Piecewise:
    """Nesterov's look-ahead `ahead` in the variants that set `flag` (and not `unless`: MindSpore's
    Adam ignores use_nesterov with use_amsgrad), `plain` in the others."""
    condition = flag if unless is None else flag & ~unless
    return sp.Piecewise((ahead, condition), (plain, True))


# --- composition ---------------------------------------------------------------------------

OWN = "<the spec>"  # the name of the fragment of the spec's own declarations
_DECLARATIONS = ("hypers", "flags", "state", "rules", "constraints", "domains", "latex")


def compose(*parts: Fragment | Iterable, **fields) -> Spec:
    """The `Spec` of `parts` (fragments, or sequences of them) and `fields` (Spec's other
    arguments; its `hypers`, `flags`, `state`, `rules`, `constraints`, `domains` and `latex`
    are the spec's own declarations, after the fragments'). `decay` follows from the decay
    fragment where there is one."""
    where = source_where(fields.get("source", "<spec>"))
    fragments = list(_flatten(parts, where))
    own = {name: fields.pop(name) for name in _DECLARATIONS if name in fields}
    fragments.append(Fragment(OWN, **own))

    def fail(message: str) -> None:
        raise SpecError(f"{where}: {message}")

    def label(fragment: Fragment) -> str:
        return "the spec" if fragment.name == OWN else f"fragment '{fragment.name}'"

    roles = {}
    for fragment in fragments:
        for role, present in (("sign", fragment.sign), ("scale", fragment.scale), ("decay", fragment.decay)):
            if present is None or present is False:
                continue
            if role in roles:
                fail(f"{label(fragment)}: the gradient's {role} is already given by {label(roles[role])}")
            roles[role] = fragment

    declared: dict[str, Fragment] = {}
    merged: dict[str, dict] = {"domains": {}, "latex": {}}
    for fragment in fragments:
        for kind in ("hypers", "flags", "state"):
            for item in getattr(fragment, kind):
                name = getattr(item.symbol, "name", str(item.symbol))
                if declared.get(name, fragment) is not fragment:
                    fail(f"{label(fragment)}: '{name}' is already declared by {label(declared[name])}")
                declared[name] = fragment
        for kind in ("domains", "latex"):
            for sym, value in getattr(fragment, kind).items():
                if sym in merged[kind] and merged[kind][sym] != value:
                    fail(f"{label(fragment)}: its {kind} of '{sym}' differs from another fragment's")
                merged[kind][sym] = value

    decay = roles.get("decay").decay if "decay" in roles else None
    prologue = _prologue(roles.get("sign"), "scale" in roles, decay)
    defined = {
        rule.target: roles.get("decay") or roles.get("scale") or roles.get("sign") for rule in prologue
    }
    assigned = {rule.target for fragment in fragments for rule in fragment.rules}
    for fragment in fragments:
        for rule in fragment.rules:
            if rule.target in defined:
                fail(
                    f"{label(fragment)}: rule {rule} assigns '{rule.target}', which "
                    f"{label(defined[rule.target])} defines"
                )
    # A core's g_eff and w_decayed stand for g and w where no fragment (and no rule) defines them.
    stand_ins = {
        sym: plain for sym, plain in ((g_eff, g), (w_decayed, w)) if sym not in defined.keys() | assigned
    }
    rules = list(prologue)
    for fragment in fragments:
        rules += [
            Rule(r.target, sp.sympify(r.expr).xreplace(stand_ins), r.when) if stand_ins else r
            for r in fragment.rules
        ]
    latex = {sym: value for sym, value in merged["latex"].items() if sym not in stand_ins}
    for rule in prologue:
        latex.setdefault(rule.target, PROLOGUE_LATEX[rule.target])

    if decay is not None:
        kind = "decoupled" if decay.kind == "decoupled" else "coupled"
        if fields.setdefault("decay", kind) != kind:
            fail(f"decay={fields['decay']!r}, but {label(roles['decay'])} makes it {kind!r}")
    return Spec(
        hypers=[h for f in fragments for h in f.hypers],
        flags=[x for f in fragments for x in f.flags],
        state=[s for f in fragments for s in f.state],
        rules=rules,
        constraints=[c for f in fragments for c in f.constraints],
        domains=merged["domains"],
        latex=latex,
        **fields,
    )


def _prologue(sign: Fragment | None, scale: bool, decay: Decay | None) -> list[Rule]:
    """The rules of g_eff = decay(scale(sign(g))) and, for decoupled decay, of w_decayed."""
    grad = g
    if sign is not None:
        grad = sp.Piecewise((-grad, sign.sign), (grad, True))
    if scale:
        grad = grad * grad_scale
    if decay is not None and decay.kind != "decoupled":
        coupled = fma(weight_decay, w, grad) if decay.fused else grad + weight_decay * w
        grad = coupled if decay.kind == "coupled" else sp.Piecewise((grad, decay.flag), (coupled, True))
    rules = [Rule(g_eff, grad)] if grad != g else []
    if decay is not None and decay.kind == "decoupled":
        rules.append(Rule(w_decayed, w * (1 - lr * weight_decay)))
    elif decay is not None and decay.kind == "switched":
        decayed = w * (1 - lr * weight_decay)
        if decay.fixed is not None:
            decayed = sp.Piecewise((w * (1 - weight_decay), decay.fixed), (decayed, True))
        rules.append(Rule(w_decayed, sp.Piecewise((decayed, decay.flag), (w, True))))
    return rules


def _flatten(parts, where: str):
    for part in parts:
        if isinstance(part, Fragment):
            yield part
        elif isinstance(part, Iterable) and not isinstance(part, str):
            yield from _flatten(part, where)
        else:
            raise SpecError(f"{where}: compose takes fragments (or sequences of them), got {part!r}")
