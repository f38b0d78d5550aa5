"""The spec model: what a spec file declares, checked once when it is built.

A spec names its hyperparameters (type, default), their domains (SymPy sets),
the structural flags that select kernel variants, the state kept per element
with its initial value, and ordered update rules written as SymPy
expressions. Rules are sequential, as in the kernels they describe: after
``Rule(m, ...)`` a later rule reading ``m`` reads the new value.

Every mistake in a spec raises one `SpecError` naming the spec file and the
rule (or declaration) at fault.
"""

from __future__ import annotations

import importlib
import itertools
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import sympy as sp

from optforge.compiler import dialects
from optforge.compiler.reserved import is_reserved

# Built-in symbols every spec may use. Their binding-time levels are fixed
# (see passes/levels.py): w, g per element; weight_decay, grad_scale per
# tensor (the dialect fills them, e.g. the nn dialect's beta/gamma rule); t
# and lr once per step.
w = sp.Symbol("w")  # the parameter, one element of it
g = sp.Symbol("g")  # its gradient
t = sp.Symbol("t")  # the step counter: 1 at the first update
lr = sp.Symbol("lr")  # the group's learning rate at this step
weight_decay = sp.Symbol("weight_decay")  # per tensor: 0 where the dialect exempts it
grad_scale = sp.Symbol("grad_scale")  # per tensor: 1/loss_scale in the nn dialect
# Per tensor: its element count (over all ranks of a split tensor). Not an input of the kernels:
# the reduction stage counts the elements with its sums, so only a variant that reduces per tensor
# (norm, rms, mean) may read it, and what reads it is computed after that stage.
numel = sp.Symbol("numel")

BUILTIN_ELEMENT = (w, g)
BUILTIN_STEP = (t, lr)
BUILTIN_TENSOR = (weight_decay, grad_scale)  # inputs the run-time fills per tensor
BUILTIN_COUNTED = (numel,)  # per tensor, from the reduction stage
BUILTINS = BUILTIN_ELEMENT + BUILTIN_STEP + BUILTIN_TENSOR + BUILTIN_COUNTED
# Per tensor, only in a spec of matrices (`Spec.tensor_rank=2`): the parameter's rows and
# columns, which the run-time fills in (Muon's learning-rate adjustment reads its shape).
nrows = sp.Symbol("nrows")
ncols = sp.Symbol("ncols")
MATRIX_TENSOR = (nrows, ncols)

KEYWORD_ONLY = "*"  # in a torch signature: the arguments after it are keyword-only, as in torch

REQUIRED = object()  # marks a signature argument without a default

# Names that moved out of the spec model: dialect policy to dialects.py, the generated code's
# own names to reserved.py. Importing them from here still works, with a DeprecationWarning.
_MOVED = {
    "DIALECT_ARGUMENTS": "optforge.compiler.dialects",
    "RESERVED": "optforge.compiler.reserved",
    "RESERVED_PATTERN": "optforge.compiler.reserved",
}


def __getattr__(name: str):
    if name in _MOVED:
        warnings.warn(
            f"optforge.compiler.spec.{name} is deprecated: import it from {_MOVED[name]}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Reduction(sp.Function):
    """A value computed from all elements of a tensor (or of a row, column or matrix).

    `LATEX` is its notation, with `%s` for the argument. A reduction of a number folds
    where its value does not depend on the tensor's size (`MEAN`: the mean of c is c, its
    RMS |c|); any other reduction of an expression that does not vary over the tensor is
    refused by the spec checks.
    """

    nargs = 1
    LATEX = "%s"
    MEAN = False

    @classmethod
    def eval(cls, arg):
        if cls.MEAN and arg.is_number:
            return sp.Abs(arg) if cls is rms else arg
        return None

    def _latex(self, printer, exp=None):
        # Under a power SymPy passes the exponent: `norm(e)**2` prints as ||e||^2.
        text = self.LATEX % printer._print(self.args[0])
        return text if exp is None else r"{%s}^{%s}" % (text, exp)


class norm(_Reduction):
    """The L2 norm over one tensor of an element-level expression, e.g. `norm(w)`.

    The compiler computes it in a reduction stage (per-chunk partial sums of
    squares in float64, added per tensor in a fixed order) before the rules
    that use it.
    """

    LATEX = r"\left\| %s \right\|"


class rms(_Reduction):
    """The root mean square over one tensor of an element-level expression: `norm(e)/sqrt(size)`.

    Computed like `norm` (float64 partial sums per chunk), divided by the
    tensor's element count; Adafactor scales its step by the RMS of the
    parameter and clips the RMS of its update.
    """

    LATEX = r"\operatorname{RMS}\left(%s\right)"
    MEAN = True


class mean(_Reduction):
    """The mean over one tensor of an element-level expression: `sum(e)/numel`.

    Computed like `norm` (float64 partial sums of `e` per chunk, added per tensor in a fixed
    order), divided by the tensor's element count: no square, no root. Cautious masking
    (C-Optim) rescales the kept coordinates by `1/(mean(mask) + 1/numel)`.
    """

    LATEX = r"\overline{%s}"
    MEAN = True


class row_mean(_Reduction):
    """The mean of an element-level expression along the last axis: one value per row.

    Only in the variants of a rank flag (see `Flag.rank`): a tensor of shape
    (..., rows, cols) has rows x (leading dimensions) of them. A rule whose
    expression is per row (it reads only `row_mean`s, row-shaped states and
    scalars) updates a row-shaped state.
    """

    LATEX = r"\overline{%s}^{\,\mathrm{row}}"
    MEAN = True


class col_mean(_Reduction):
    """The mean of an element-level expression along the second-to-last axis: one value per column."""

    LATEX = r"\overline{%s}^{\,\mathrm{col}}"
    MEAN = True


class matrix_mean(_Reduction):
    """The mean of a per-row value over the rows of its matrix: one value per matrix.

    A tensor of shape (..., rows, cols) is a stack of matrices; Adafactor
    normalises the outer product of its factors by the mean of the row factor.
    """

    LATEX = r"\overline{%s}^{\,\mathrm{matrix}}"
    MEAN = True


class group_sum(_Reduction):
    """The sum of an element-level expression over every element of every tensor the step
    updates (all param groups, and every rank's part of a split tensor): one number per step.

    Written as a rule's whole expression, `Rule(x, group_sum(e))`, it reads `e` where the rule
    stands (states updated by the rules before it hold their new values). Only the spec's
    `sum_rules` read `x`: host rules that run once the sums are known, and update the step
    state (Prodigy's D estimate). The rules after the last group sum read the values the sum
    rules leave. The compiler sums `e` in the first element stage (float64 partial sums per
    chunk, added per tensor, then over the tensors in a fixed order), the run-time runs the
    sum rules between the stages, and the later element stage reads their values.
    """

    LATEX = r"\sum_{\mathrm{group}} %s"


REDUCTIONS = (norm, rms, mean, row_mean, col_mean, matrix_mean, group_sum)
# Reductions to one value per tensor: a two-stage kernel's first pass sums their arguments.
TENSOR_REDUCTIONS = (norm, rms, mean)


class NewtonSchulz(sp.Function):
    """A matrix function: the Newton-Schulz orthogonalisation of a per-element value seen as
    its tensor's matrix, `NewtonSchulz(x, a, b, c, steps, eps)` (write `newton_schulz`).

    Computed as torch.optim.Muon computes it, on the CPU and on CUDA alike: in bfloat16
    (every product and sum rounded to bfloat16, the matrix products accumulated in float32),
    transposed while it has more rows than columns, divided by max(||x||, eps), then `steps`
    times `B = b*A + c*A@A` (with `A = X@X.T`) and `X = a*X + B@X`. The compiler gives it a
    stage of its own (passes/matrix.py): the element stage before it stores `x` into a scratch
    matrix, the matrix stage transforms the matrix in place, and the element stage after it
    reads the result.
    """

    nargs = 6

    def _latex(self, printer, exp=None):
        x, a, b, c, steps, _ = (printer._print(arg) for arg in self.args)
        text = r"\operatorname{NS}^{(%s,%s,%s)}_{%s}\left(%s\right)" % (a, b, c, steps, x)
        return text if exp is None else r"{%s}^{%s}" % (text, exp)


def newton_schulz(expr, coefficients, steps, eps) -> NewtonSchulz:
    """The Newton-Schulz orthogonalisation of `expr` (see NewtonSchulz): `coefficients` the
    quintic's (a, b, c), `steps` its iterations and `eps` the floor of the norm it first
    divides by, each a number or a hyperparameter. A rule's whole expression: a matrix
    function is one stage, its result a value the later rules read."""
    a, b, c = coefficients
    return NewtonSchulz(expr, a, b, c, steps, eps)


# Matrix functions: each is computed in a stage of its own over its tensor's matrix.
MATRIX_FUNCTIONS = (NewtonSchulz,)
# Functions a state's initial value may apply to the parameter (printed as NumPy calls).
_NUMPY_INIT = (sp.Abs, sp.sign, sp.exp, sp.log, sp.tanh)
_INIT_NAMES = ("Abs", "sign", "exp", "log", "tanh", "powers")


# Functions the kernel printers turn into code Numba compiles on the CPU and CUDA, as float
# functions of floats (`math.*` in the kernels), besides the reductions and Piecewise. Checked
# by class: an undefined `sp.Function("gamma")` is not `sp.gamma`.
def _kernel_functions() -> tuple:
    from sympy.codegen.cfunctions import expm1, log1p, log2, log10

    return (
        sp.Abs, sp.sign, sp.exp, expm1, sp.log, log1p, log2, log10, sp.sin, sp.cos, sp.tan,
        sp.asin, sp.acos, sp.atan, sp.atan2, sp.sinh, sp.cosh, sp.tanh, sp.asinh, sp.acosh,
        sp.atanh, sp.erf, sp.erfc, sp.gamma, sp.loggamma,
    )  # fmt: skip


class fma(sp.Function):
    """`a*b + c` rounded once: the fused multiply-add torch's CPU kernels compute.

    torch 2.13 on an FMA-capable CPU evaluates `x.lerp_(y, weight)` (weight < 0.5)
    as `fma(weight, y - x, x)`, `x.addcmul_(a, b, value=s)` as `fma(s*a, b, x)` and
    `x.add_(y, alpha=s)` as `fma(s, y, x)`. A spec that writes `fma` states where
    its kernels fuse: its kernels are compiled without contraction, so every other
    product is rounded before it is added, as torch's separate operations are.
    """

    nargs = 3

    @classmethod
    def eval(cls, a, b, c):
        # A product a flag makes 0 (NAdam's coupled decay when decoupled) is no product at all.
        if a.is_zero or b.is_zero:
            return c
        return None

    def _latex(self, printer):
        a, b, c = self.args
        return printer._print(sp.Add(sp.Mul(a, b), c))


class rounded_sub(sp.Function):
    """`a - b` computed per element in the kernel's float type, from `a` and `b` each first
    rounded to it: torch's scalar arithmetic inside its kernels. torch's CPU `lerp` with a
    weight >= 0.5 computes `end - (end - start)*(1 - weight)` with `1 - weight` in float32
    for float32 tensors, from the weight rounded to float32; `1 - weight` hoisted to the host
    would be computed in float64 and rounded once. The hoister leaves the subtraction in the
    element code and hoists its operands only."""

    nargs = 2

    def _latex(self, printer):
        a, b = (printer._print(x) for x in self.args)
        if isinstance(self.args[1], sp.Add):
            b = r"\left(%s\right)" % b
        return r"\left(%s - %s\right)" % (a, b)


class call(sp.Function):
    """`call(h)`: the value of the callable hyperparameter `h` at this step, `h(t)`.

    A hyperparameter whose types include "callable" (ADOPT's `clip_lambda`) is a function of
    the step the user passes. Rules read it only through `call(h)` (its value, computed on the
    host once per step, a step-level scalar like any other) and `given(h)` (whether it is not
    None); the generated host code calls it with the step counter t (an int, 1 at the first update).
    """

    nargs = 1

    def _latex(self, printer, exp=None):
        text = r"%s(t)" % printer._print(self.args[0])
        return text if exp is None else r"{%s}^{%s}" % (text, exp)


class given(sp.logic.boolalg.BooleanFunction):
    """`given(h)`: the optional callable hyperparameter `h` is not None.

    A step-level condition: a `Piecewise` on it becomes a kernel chosen on the host
    (passes/branches.py), so the variant without `h` has no trace of it in its loop.
    """

    nargs = 1

    @classmethod
    def eval(cls, arg):
        return None

    def _latex(self, printer):
        return r"%s \neq \mathrm{None}" % printer._print(self.args[0])


@dataclass(frozen=True)
class StepFunction:
    """The default of a callable hyperparameter: `expr`, an expression of the step `t`.

    The generated class's signature holds it as `lambda step: <expr>` (its `repr`), as a
    reference implementation writes such a default (`lambda step: step**0.25`). Calling it
    evaluates the expression at `step` (the compiler's own checks and reference use it).
    """

    expr: object

    def __call__(self, step) -> float:
        return float(sp.sympify(self.expr).subs(t, step))

    def __repr__(self) -> str:
        from optforge.compiler.printers import HostPrinter

        step = sp.Symbol("step")
        return f"lambda step: {HostPrinter().doprint(sp.sympify(self.expr).xreplace({t: step}))}"


CALLABLE = "callable"  # the Hyper type of a function of the step (see `call`)


def unfused(expr: sp.Expr) -> sp.Expr:
    """`expr` with each `fma(a, b, c)` written `a*b + c`: its value, for the checks that compare values."""
    return expr.replace(fma, lambda a, b, c: a * b + c).replace(rounded_sub, lambda a, b: a - b)


# Reductions whose value is per row, per column or per matrix: only a factored
# (rank-flagged) kernel computes them.
FACTORED_REDUCTIONS = (row_mean, col_mean, matrix_mean)
STATE_SHAPES = ("element", "row", "col")


class SpecError(Exception):
    """A spec that cannot be compiled; the message names the file and the rule."""


@dataclass(frozen=True)
class Hyper:
    """A scalar hyperparameter: constant over the run, set in the constructor."""

    symbol: sp.Symbol
    types: tuple[str, ...]  # accepted Python types by name: "float", "int", "bool", "callable"
    default: object
    doc: str
    # What an argument of None stands for in the rules, for a hyperparameter whose types
    # include "None": None (the default) is the machine epsilon of the parameter's dtype
    # (Adafactor's eps1); a number outside the hyperparameter's domain lets the rules tell
    # None apart from every value a user may give (AdEMAMix's t_alpha_beta3=None: no
    # warm-up, written `Piecewise((..., t_alpha_beta3 < 0), ...)` with none=-1).
    none: float | None = None

    @property
    def name(self) -> str:
        return self.symbol.name

    @property
    def is_callable(self) -> bool:
        """A function of the step (`types` has "callable"): rules read it as `call(h)`, `given(h)`."""
        return CALLABLE in self.types


@dataclass(frozen=True)
class Choice:
    """A flag taken as a named option, as torch takes Muon's `adjust_lr_fn`: the argument
    `argument` (default `default`) sets the flag for a value in `on`, clears it for one in
    `off`, and is a ValueError (`message`, with `{value}`) for any other value."""

    argument: str
    default: object
    on: tuple
    off: tuple
    message: str


@dataclass(frozen=True)
class Flag:
    """A structural switch: each value gives its own kernel, never a run-time branch.

    With `rank` set the flag is not an argument: the run-time sets it per
    tensor, True for tensors of at least `rank` dimensions (Adafactor's
    `factored`: matrices keep row and column factors, vectors a full
    second moment). Its True variant is compiled to a factored kernel, which
    may use row- and column-shaped state and `row_mean`, `col_mean` and
    `matrix_mean`.
    """

    symbol: sp.Symbol
    doc: str
    default: bool = False
    rank: int | None = None
    choice: Choice | None = None  # a flag a dialect takes as a named option (see Choice)
    # Its True variants step float32 and float64 parameters only: where it is set, a float16
    # or bfloat16 parameter is a ValueError at construction (StableAdamW's kahan_sum, whose
    # 16-bit arithmetic optforge does not implement).
    wide_only: bool = False

    @property
    def name(self) -> str:
        return self.symbol.name


@dataclass(frozen=True)
class State:
    """A tensor kept between steps, shaped like its parameter (`shape="element"`).

    A factored kernel may also keep one value per row (`"row"`: the
    parameter's shape with the last dimension 1) or per column (`"col"`: the
    second-to-last dimension 1), torch's Adafactor `row_var` and `col_var`.
    """

    symbol: sp.Symbol
    # A number, a hyperparameter's symbol, lr (the group's initial learning rate), or an
    # expression of the parameter `w` (and numbers, hyperparameters): `State(z, w)` starts z as
    # a copy of the parameter (Schedule-Free's z, Prodigy's p0), evaluated when the state is made.
    init: object
    name: str  # the public name (MindSpore's attribute, e.g. "moment1")
    doc: str
    when: sp.Expr | None = None  # a flag or its negation (~flag): the state exists only then
    shape: str = "element"  # "element", "row" or "col"


@dataclass(frozen=True)
class StepState:
    """A scalar kept per parameter group between steps (Schedule-Free's `lr_max`, `weight_sum`).

    `init` is its value before the first step: a number (an int keeps the state an int, as a
    step counter is), or a hyperparameter, whose value the optimizer is created with (Prodigy's
    `d` starts at `d0`). The spec's `step_rules` update it once per step and group, on the host,
    before the kernels run; rules (element and step rules) read it like a hyperparameter. The
    dialects keep it in the param group under `name` (as Schedule-Free's reference does), so
    checkpoints save and restore it with the group's options.
    """

    symbol: sp.Symbol
    init: int | float
    name: str  # the param group key
    doc: str


@dataclass(frozen=True)
class Transition:
    """An elementwise rewrite of the parameters run by a method of the class (Schedule-Free's
    `eval()`: `w <- w + (1 - 1/beta1)*(z - w)`): `rules` may read the parameter, the state,
    the hyperparameters and the step state, and assign the parameter and locals (not the
    state). Compiled into fused kernels like the update."""

    method: str  # the method's name, e.g. "eval"
    rules: tuple
    doc: str

    def __post_init__(self):
        object.__setattr__(self, "rules", tuple(self.rules))


@dataclass(frozen=True)
class Modes:
    """Two modes of the optimizer, kept per param group as the bool `key` (`train_mode`):
    `enter` switches a group into the mode in which `step()` may run (True), `leave` out of
    it; each runs its transition over the group's parameters that have state, and only for
    groups not already in that mode. Outside it, `step()` raises `error(message)` before
    anything changes (the reference checks the first group: so does the class)."""

    key: str
    enter: Transition
    leave: Transition
    initial: bool = False
    error: str = "RuntimeError"  # a builtin exception's name
    message: str = "the optimizer is not in the mode in which it steps"


@dataclass(frozen=True)
class Rule:
    """`target <- expr`; `when` (a flag) limits the rule to the variants that set it."""

    target: sp.Symbol
    expr: sp.Expr
    when: sp.Expr | None = None  # a flag or its negation (~flag)

    def __str__(self) -> str:
        cond = f" (when {self.when})" if self.when is not None else ""
        return f"{self.target} <- {self.expr}{cond}"


@dataclass(frozen=True)
class Constraint:
    """A condition on several arguments (hyperparameters and flags) the constructor checks.

    `condition` is a SymPy boolean that must hold; `error` names the exception raised
    (e.g. "ValueError") with `message` when it does not.
    """

    condition: object
    error: str
    message: str


@dataclass(frozen=True)
class Option:
    """A constructor argument that selects no kernel: one of a fixed set of `values`.

    `values` are every value the reference class accepts (another is a ValueError, as
    pytorch_optimizer's `validate_options`); `supported` those this class computes, the
    others are refused with NotImplementedError and `reason` (MARS's mars_type "lion" and
    "shampoo", a `cautious=True` that needs a per-tensor mean the spec language lacks). The
    value is kept in the defaults and each param group, where it is checked the same way.
    """

    name: str
    default: object
    values: tuple
    supported: tuple
    doc: str
    reason: str = ""


@dataclass(frozen=True)
class Export:
    """A class generated from the spec in one dialect, with its signature.

    `signature` lists the constructor's arguments after `params`, in order:
    a name (default from the spec's hyperparameter or flag) or a
    `(name, default)` pair; the default may be `REQUIRED`. `example` gives
    the arguments of the documentation's example (required ones at least).
    `types` overrides a hyperparameter's accepted types in this dialect
    (MindSpore's nn.Rprop takes only floats where torch.optim.Rprop takes ints too).

    The torch dialect writes state dicts in torch's layout: `state_keys` renames
    a state there (Lamb's `moments1` is `exp_avg`), `optional_state` lists the
    states torch leaves out or sets to None (SGD's buffer without momentum; on
    loading they start at their initial value), and `extra_state` gives
    step-level values torch keeps per parameter, as expressions of t and the
    hyperparameters (NAdam's `mu_product`), so its own optimizer can load ours.
    A torch signature marks torch's keyword-only arguments with "*" and may name
    torch's implementation options (`foreach`, `fused`, `capturable`,
    `differentiable`). `messages` gives torch's wording of the ValueError for an
    argument outside its domain, keyed by the argument's label (``"etas[0]"``;
    ``{value}`` is the value given), where torch's differs from
    ``Invalid <name> value: <value>``; `checks` names torch's own cross-argument
    checks (optforge.torch.options) the class runs. `kept_when` gives, per state,
    a condition on the hyperparameters under which torch keeps it (SGD's buffer:
    ``momentum > 0``); where a group's values make it false, the state is neither
    allocated nor shown. `step_state=False`: torch keeps no ``step`` per
    parameter (SGD). `domains` overrides a hyperparameter's domain in this
    dialect (torch.optim.Adam takes eps = 0, mindspore.experimental.optim's does not).
    `group_step=True` (torch dialect): the reference keeps its step count per param group
    (pytorch_optimizer's ``group["step"]``): ``state_dict()`` writes each group's (the largest
    of its parameters'), and a saved parameter state without ``step`` takes its group's, so
    state dicts move both ways.
    """

    dialect: str
    class_name: str
    signature: tuple
    example: dict = field(default_factory=dict)
    types: dict = field(default_factory=dict)  # hyper name -> accepted type names
    state_keys: dict = field(default_factory=dict)  # state name -> torch's key
    optional_state: tuple = ()  # torch keys that may be missing or None
    extra_state: dict = field(default_factory=dict)  # torch key -> expression of t and hypers
    messages: dict = field(default_factory=dict)  # argument label -> torch's error message
    checks: tuple = ()  # names of torch's cross-argument checks (optforge.torch.options)
    kept_when: dict = field(default_factory=dict)  # state name -> condition on hypers
    step_state: bool = True  # torch keeps state[p]["step"]
    aliases: tuple = ()  # other names the dialect's package gives the class (the reference's own)
    domains: dict = field(default_factory=dict)  # hyper symbol -> this dialect's Interval (torch's)
    group_step: bool = False  # torch dialect: the reference keeps `step` per param group too
    # torch dialect: the torch keys of states the reference keeps flattened (Prodigy's `s` and
    # `p0`): `state[p]` shows them 1-D, and a loaded one may be 1-D (or, for a state that starts
    # as the parameter, a 0-d zero: the reference's start of an all-zero parameter)
    flat_state: tuple = ()
    options: tuple = ()  # Option arguments the signature may name
    # hyper name -> an expression of the other arguments: a group option the constructor
    # computes, not an argument (MARS's lr_1d_factor = lr_1d/lr, as pytorch_optimizer keeps it)
    derived: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Spec:
    name: str
    title: str
    source: str
    hypers: tuple[Hyper, ...]
    flags: tuple[Flag, ...]
    state: tuple[State, ...]
    rules: tuple[Rule, ...]
    domains: dict = field(default_factory=dict)  # hyper symbol -> sympy Set
    exports: tuple[Export, ...] = ()
    summary: str = ""
    references: tuple[str, ...] = ()
    # For the documentation: LaTeX for symbols SymPy would print poorly (eps, g_eff, ...),
    # notes on where we follow MindSpore's code rather than its documentation.
    latex: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    constraints: tuple[Constraint, ...] = ()
    # How the dialect's weight decay enters: "coupled" (added to the gradient by
    # a rule g*grad_scale + weight_decay*w) or "decoupled" (used by the rules
    # directly). Grad centralization needs to know which.
    decay: str = "coupled"
    # How a row-sparse gradient steps: "rows" (only the rows it names change),
    # "dense" (every row steps, untouched rows with a zero gradient), or None.
    sparse: str | None = None
    # AdamOffload: compute the update into a state, then add it to the
    # parameter in a stage of its own (the only one that touches the parameter).
    separate_apply: bool = False
    # Arithmetic of the host code: "float64", or "float32" where MindSpore does
    # its step-level scalars in float32 and the numbers depend on it (RAdam's rho_t).
    host_dtype: str = "float64"
    # Step-level state (StepState) and the host rules that update it, once per step and
    # group before the kernels: in order, each reading t, lr, hyperparameters, step state
    # and earlier targets; a target that is no step state is a step-level local the
    # element rules may read (Schedule-Free's ckp1).
    step_state: tuple[StepState, ...] = ()
    step_rules: tuple[Rule, ...] = ()
    # Host rules run once the group sums are known (`group_sum`), between the element stages:
    # each reads t, lr, hyperparameters, step state, the step rules' locals, the group sums and
    # earlier sum rules' targets, and updates a step state or defines a local. The element
    # rules after the last group sum read their values.
    sum_rules: tuple[Rule, ...] = ()
    # One step state for the whole optimizer, as Prodigy's reference keeps its D estimate: the
    # step and sum rules run once per step from the first param group's options, with `lr` the
    # largest of the groups' (a group whose lr is neither that nor 0 refuses the step, as the
    # reference's RuntimeError), and every group holds the result. False: one per group.
    shared_step_state: bool = False
    modes: Modes | None = None
    # The number of dimensions every parameter must have, or None for any: 2 for a spec of
    # matrices (one with a matrix function), whose classes refuse other parameters.
    tensor_rank: int | None = None

    def __post_init__(self):
        for name in (
            "hypers", "flags", "state", "rules", "exports", "references", "notes", "constraints",
            "step_state", "step_rules", "sum_rules",
        ):  # fmt: skip
            object.__setattr__(self, name, tuple(getattr(self, name)))
        check_spec(self)

    @property
    def where(self) -> str:
        """The spec file as shown in errors, e.g. 'specs/adam.py'."""
        return source_where(self.source)

    def hyper(self, name: str) -> Hyper:
        return next(h for h in self.hypers if h.name == name)

    def variants(self) -> list[dict[sp.Symbol, bool]]:
        """Every combination of flag values, in a fixed order (all False first)."""
        return [
            dict(zip([f.symbol for f in self.flags], values))
            for values in itertools.product((False, True), repeat=len(self.flags))
        ]


def source_where(source: str) -> str:
    """A spec file as errors name it: its folder and name, e.g. 'specs/adam.py'."""
    path = Path(source)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def active(when: sp.Expr | None, variant: dict[sp.Symbol, bool]) -> bool:
    """Whether a `when` (None, a flag, or ~flag) holds in `variant`."""
    if when is None:
        return True
    if isinstance(when, sp.Not):
        return not variant[when.args[0]]
    return variant[when]


def when_flag(when: sp.Expr | None) -> sp.Symbol | None:
    """The flag a `when` tests (the flag of ~flag)."""
    return when.args[0] if isinstance(when, sp.Not) else when


def when_phrase(spec: Spec, when: sp.Expr | None, quote: str = "`") -> str | None:
    """A `when` in words, e.g. "with `amsgrad=True`" or "for tensors of 2 or more dimensions"."""
    if when is None:
        return None
    flag = next(f for f in spec.flags if f.symbol == when_flag(when))
    negated = isinstance(when, sp.Not)
    if flag.rank is not None:
        return f"for tensors of {'fewer than' if negated else 'at least'} {flag.rank} dimensions"
    return f"with {quote}{flag.name}={not negated}{quote}"


def rank_flag(spec: Spec) -> Flag | None:
    """The spec's flag set per tensor by its rank, if it has one."""
    return next((f for f in spec.flags if f.rank is not None), None)


def is_factored(spec: Spec, variant: dict[sp.Symbol, bool]) -> bool:
    """Whether `variant` compiles to a factored kernel: its rank flag is set and it uses what
    only a factored kernel computes (row- or column-shaped state, row_mean, col_mean or
    matrix_mean; Adafactor's matrices). A rank flag that only chooses the rules per tensor
    (MARS's is_2d: the MARS path for matrices, AdamW for vectors) compiles to the flat or
    two-stage kernel of any other variant."""
    flag = rank_flag(spec)
    if flag is None or not variant[flag.symbol]:
        return False
    if any(s.shape != "element" for s in spec.state if active(s.when, variant)):
        return True
    values = {f: sp.true if on else sp.false for f, on in variant.items()}
    return any(
        sp.sympify(r.expr).subs(values).atoms(*FACTORED_REDUCTIONS)
        for r in spec.rules
        if active(r.when, variant)
    )


def check_spec(spec: Spec) -> None:
    """Raise SpecError for the first mistake found in `spec`."""

    def fail(what: str, message: str) -> None:
        raise SpecError(f"{spec.where}: {what}: {message}")

    declared: dict[str, str] = {s.name: "a built-in symbol" for s in BUILTINS}
    kinds = (("hyperparameter", spec.hypers), ("flag", spec.flags), ("state", spec.state))
    for kind, items in kinds + (("step state", spec.step_state),):
        for item in items:
            sym = item.symbol
            if not isinstance(sym, sp.Symbol):
                fail(f"{kind} {sym!r}", "must be declared with a sympy.Symbol")
            if sym.name in declared:
                fail(f"{kind} '{sym.name}'", f"name already used by {declared[sym.name]}")
            declared[sym.name] = f"a {kind}"

    named = [s for items in (spec.hypers, spec.flags, spec.state) for s in (i.symbol for i in items)]
    named += [r.target for r in spec.rules]
    for sym in named:
        if isinstance(sym, sp.Symbol) and is_reserved(sym.name):
            fail(f"symbol '{sym.name}'", "the name is reserved by the generated code; choose another")

    hyper_syms = {h.symbol for h in spec.hypers}
    flag_syms = {f.symbol for f in spec.flags}
    state_syms = {s.symbol for s in spec.state}
    _check_step_state(spec, fail, hyper_syms, flag_syms, state_syms)
    step_syms = set(step_inputs(spec))
    _check_sum_rules(spec, fail, hyper_syms, flag_syms, state_syms, step_syms)

    for sym in spec.latex:
        if not isinstance(sym, sp.Symbol):
            fail(f"latex of {sym!r}", "must be keyed by a sympy.Symbol")

    for h in spec.hypers:
        if h.is_callable:
            if set(h.types) - {CALLABLE, "None"}:
                fail(
                    f"hyperparameter '{h.name}'",
                    f"a callable's types are 'callable' and 'None' only, got {h.types}",
                )
            if h.default is None and "None" not in h.types:
                fail(f"hyperparameter '{h.name}'", "default None needs the type 'None'")
            if h.default is not None and (
                not isinstance(h.default, StepFunction) or sp.sympify(h.default.expr).free_symbols - {t}
            ):
                fail(
                    f"hyperparameter '{h.name}'",
                    f"a callable's default is None or a StepFunction of the step t, got {h.default!r}",
                )
            if h.symbol in spec.domains:
                fail(
                    f"domain of '{h.name}'",
                    "a callable hyperparameter has no domain (its values are the step's)",
                )
        if h.none is not None:
            if "None" not in h.types:
                fail(
                    f"hyperparameter '{h.name}'",
                    "declares what None stands for, but None is not one of its types",
                )
            domain = spec.domains.get(h.symbol)
            if isinstance(h.none, bool) or not isinstance(h.none, (int, float)) or not math.isfinite(h.none):
                fail(f"hyperparameter '{h.name}'", f"none must be a finite number, got {h.none!r}")
            if not isinstance(domain, sp.Interval) or domain.contains(h.none) is not sp.false:
                fail(
                    f"hyperparameter '{h.name}'",
                    f"none={h.none!r} must lie outside its declared domain, so that None cannot be taken "
                    "for a value a user gives",
                )

    for sym, domain in spec.domains.items():
        name = getattr(sym, "name", str(sym))
        if sym not in hyper_syms:
            fail(f"domain of '{name}'", "is not a hyperparameter of this spec (unknown name)")
        if not isinstance(domain, sp.Interval):
            fail(f"domain of '{name}'", f"must be a sympy Interval, got {domain!r}")

    ranked = [f for f in spec.flags if f.rank is not None]
    if len(ranked) > 1:
        fail("flags", f"at most one flag may have a rank, got {[f.name for f in ranked]}")
    for f in spec.flags:
        c = f.choice
        if c is not None and (c.default not in c.on + c.off or (c.default in c.on) != f.default):
            fail(
                f"flag '{f.name}'",
                "its choice's default must be one of its values, meaning the flag's default",
            )
    for f in ranked:
        if not (isinstance(f.rank, int) and f.rank >= 2) or f.default:
            fail(f"flag '{f.name}'", "a rank flag needs an int rank >= 2 and default False")
        if f.wide_only:
            fail(f"flag '{f.name}'", "a rank flag is set per tensor: it cannot refuse 16-bit parameters")
    for s in spec.state:
        if s.when is not None and when_flag(s.when) not in flag_syms:
            fail(f"state '{s.name}'", f"'when' must be a flag or ~flag, got {s.when}")
        if s.shape not in STATE_SHAPES:
            fail(f"state '{s.name}'", f"shape must be one of {STATE_SHAPES}, got {s.shape!r}")
        if s.shape != "element" and (not ranked or s.when != ranked[0].symbol):
            fail(f"state '{s.name}'", f"a {s.shape}-shaped state needs when=<the rank flag>")
        if not (isinstance(s.init, (int, float)) or s.init in hyper_syms or s.init == lr):
            init = sp.sympify(s.init)
            if init.free_symbols - hyper_syms - {w} or init.atoms(sp.Function) - init.atoms(*_NUMPY_INIT):
                fail(
                    f"state '{s.name}'",
                    "initial value must be a number, a hyperparameter, lr, or an expression of the "
                    f"parameter w, numbers and hyperparameters (with {', '.join(_INIT_NAMES)}), "
                    f"got {s.init!r}",
                )
            if w in init.free_symbols and s.shape != "element":
                fail(f"state '{s.name}'", f"a {s.shape}-shaped state cannot start from the parameter w")

    for i, rule in enumerate(spec.rules, 1):
        where = f"rule {i} ({rule})"
        if not isinstance(rule.target, sp.Symbol):
            fail(where, "the target must be a symbol")
        if rule.when is not None and when_flag(rule.when) not in flag_syms:
            fail(where, f"'when' must be a flag or ~flag, got {rule.when}")
        if rule.target in hyper_syms | flag_syms or rule.target in BUILTINS and rule.target != w:
            fail(where, f"cannot assign to '{rule.target}': only the parameter, state and locals can be")
        if rule.target in step_syms:
            fail(
                where,
                f"cannot assign to '{rule.target}': it is step-level (a step state or a step rule's "
                "local); only `step_rules` assign it",
            )

    for variant in spec.variants():
        _check_variant(spec, variant, fail, hyper_syms | step_syms, flag_syms, state_syms)
        # (the group sums' targets are no element values: only the sum rules read them)

    uses_matrix = any(sp.sympify(r.expr).atoms(*MATRIX_FUNCTIONS) for r in spec.rules)
    reads_shape = any(sp.sympify(r.expr).free_symbols & set(MATRIX_TENSOR) for r in spec.rules)
    if spec.tensor_rank not in (None, 2):
        fail("tensor_rank", f"must be None or 2, got {spec.tensor_rank!r}")
    if (uses_matrix or reads_shape) and spec.tensor_rank != 2:
        what = "a matrix function" if uses_matrix else "'nrows' and 'ncols'"
        fail("tensor_rank", f"{what} needs a spec of matrices: declare tensor_rank=2")
    if spec.tensor_rank is not None and ranked:
        fail("tensor_rank", "a spec of matrices has no rank flag (every tensor is a matrix)")
    if uses_matrix and spec.separate_apply:
        fail("separate_apply", "a spec with a matrix function cannot apply its update separately")
    if spec.decay not in ("coupled", "decoupled"):
        fail("decay", f"must be 'coupled' or 'decoupled', got {spec.decay!r}")
    if spec.sparse not in (None, "rows", "dense"):
        fail("sparse", f"must be None, 'rows' or 'dense', got {spec.sparse!r}")
    if spec.host_dtype not in ("float32", "float64"):
        fail("host_dtype", f"must be 'float32' or 'float64', got {spec.host_dtype!r}")
    for c in spec.constraints:
        unknown = sorted(str(s) for s in sp.sympify(c.condition).free_symbols - hyper_syms - flag_syms)
        if unknown:
            fail(f"constraint {c.condition}", f"names {unknown}, which are not hyperparameters or flags")
    plain = {f.symbol: sp.false for f in spec.flags}
    if spec.decay == "coupled" and not any(
        sp.expand(unfused(sp.sympify(r.expr)).subs(plain) - (g * grad_scale + weight_decay * w)) == 0
        for r in spec.rules
    ):
        fail("decay", "'coupled' needs a rule `g*grad_scale + weight_decay*w` (the effective gradient)")

    for export in spec.exports:
        known = {h.name for h in spec.hypers} | {f.name for f in spec.flags}
        known |= set(dialects.DIALECT_ARGUMENTS.get(export.dialect, ()))
        known |= {f.choice.argument for f in spec.flags if f.choice is not None}
        for option in export.options:
            if not isinstance(option, Option):
                fail(f"export {export.class_name}", f"options must be Option, got {option!r}")
            if option.name in known:
                fail(f"export {export.class_name}", f"option '{option.name}' is already an argument")
            if option.default not in option.supported or not set(option.supported) <= set(option.values):
                fail(
                    f"export {export.class_name}",
                    f"option '{option.name}': its default must be supported, and what is supported "
                    "must be among its values",
                )
            known.add(option.name)
        named = {e if isinstance(e, str) else e[0] for e in export.signature}
        for name, expr in export.derived.items():
            if name not in {h.name for h in spec.hypers} or name in named:
                fail(
                    f"export {export.class_name}",
                    f"derived '{name}' must be a hyperparameter not in the signature",
                )
            unknown = sorted(str(s) for s in sp.sympify(expr).free_symbols if s.name not in named)
            if unknown:
                fail(f"export {export.class_name}", f"derived '{name}' reads {unknown}, not arguments")
        if export.dialect not in dialects.DIALECT_ARGUMENTS:
            fail(f"export {export.class_name}", f"unknown dialect '{export.dialect}'")
        if ranked and export.dialect in dialects.ELEMENTWISE_DIALECTS:
            others = sorted(set(dialects.DIALECT_ARGUMENTS) - set(dialects.ELEMENTWISE_DIALECTS))
            only = " and ".join(others)
            fail(f"export {export.class_name}", f"a spec with a rank flag exports to {only} only")
        if export.group_step and export.dialect != "torch":
            fail(f"export {export.class_name}", "group_step is for the torch dialect (torch's state dicts)")
        if export.dialect == "nn" and any(f.wide_only for f in spec.flags):
            fail(f"export {export.class_name}", "a wide_only flag is for the optim and torch dialects")
        if KEYWORD_ONLY in export.signature and export.dialect not in dialects.KEYWORD_ONLY_DIALECTS:
            fail(f"export {export.class_name}", "only a torch signature has keyword-only arguments ('*')")
        for entry in export.signature:
            if entry == KEYWORD_ONLY:
                continue
            arg = entry if isinstance(entry, str) else entry[0]
            if ranked and arg == ranked[0].name:
                fail(
                    f"export {export.class_name}", f"'{arg}' is a rank flag, set per tensor: not an argument"
                )
            if isinstance(entry, tuple) and isinstance(entry[1], tuple):  # ("betas", ("beta1", "beta2"))
                unknown = [n for n in entry[1] if n not in known]
                if unknown:
                    fail(f"export {export.class_name}", f"'{arg}' names unknown hyperparameters {unknown}")
                if any(h.is_callable for h in spec.hypers if h.name in entry[1]):
                    fail(f"export {export.class_name}", f"'{arg}' packs a callable hyperparameter")
                continue
            if arg not in known:
                fail(f"export {export.class_name}", f"signature names unknown argument '{arg}'")
        if (spec.step_state or spec.modes) and export.dialect in dialects.ELEMENTWISE_DIALECTS:
            fail(
                f"export {export.class_name}",
                "step state and modes are kept in torch-style param groups: export to optim or torch",
            )
        for alias in export.aliases:
            if not (isinstance(alias, str) and alias.isidentifier()) or alias == export.class_name:
                fail(f"export {export.class_name}", f"alias {alias!r} must be another identifier")
        for name in export.types:
            if name not in {h.name for h in spec.hypers}:
                fail(f"export {export.class_name}", f"types given for unknown hyperparameter '{name}'")
        for name in export.state_keys:
            if name not in {s.name for s in spec.state}:
                fail(f"export {export.class_name}", f"state_keys renames unknown state '{name}'")
        for name, condition in export.kept_when.items():
            if name not in {s.name for s in spec.state}:
                fail(f"export {export.class_name}", f"kept_when names unknown state '{name}'")
            unknown = sorted(str(s) for s in sp.sympify(condition).free_symbols - hyper_syms)
            if unknown:
                fail(f"export {export.class_name}", f"kept_when of '{name}' names {unknown}, not hypers")
        step_level = {t} | hyper_syms
        for key, expr in export.extra_state.items():
            unknown = sorted(str(s) for s in sp.sympify(expr).free_symbols - step_level)
            # A Product's or Sum's own index is bound, not free.
            if unknown:
                fail(f"export {export.class_name}", f"extra state '{key}' names {unknown}, not t or hypers")


def _check_variant(spec, variant, fail, hyper_syms, flag_syms, state_syms) -> None:
    states = {s.symbol for s in spec.state if active(s.when, variant)}
    readable = set(BUILTINS) | hyper_syms | flag_syms | states
    if spec.tensor_rank == 2:
        readable |= set(MATRIX_TENSOR)
    varying = set(BUILTIN_ELEMENT) | states  # what may differ from element to element (or row to row)
    assigned: set[sp.Symbol] = set()
    sums: set[sp.Symbol] = set()  # the group sums' targets
    last_sum = (group_sum_targets(spec) or (None,))[-1]
    label = ", ".join(f"{k}={v}" for k, v in variant.items()) or "no flags"
    flag_values = {flag: sp.true if on else sp.false for flag, on in variant.items()}
    active_exprs = [sp.sympify(r.expr).subs(flag_values) for r in spec.rules if active(r.when, variant)]
    reduces = any(e.atoms(*TENSOR_REDUCTIONS) for e in active_exprs)
    for i, rule in enumerate(spec.rules, 1):
        if not active(rule.when, variant):
            continue
        where = f"rule {i} ({rule})"
        expr = sp.sympify(rule.expr).subs(flag_values)
        if isinstance(expr, group_sum):  # read by the sum rules only
            sums.add(rule.target)
            if rule.target == last_sum:  # the rules after the last one read the sum rules' values
                readable |= set(sum_locals(spec))
        elif expr.free_symbols & sums:
            read = sorted(expr.free_symbols & sums, key=str)[0]
            fail(
                where,
                f"reads the group sum '{read}': only the sum rules read a group sum (they run once "
                "it is known, between the element stages)",
            )
        _check_functions(expr, where, fail, varying)
        _check_matrix_functions(expr, where, fail, varying, hyper_syms)
        _check_callables(spec, expr, where, fail)
        for reduction in expr.atoms(*REDUCTIONS):
            if not _reads(reduction.args[0], varying):
                fail(
                    where,
                    f"{reduction} reduces an expression that does not vary over the tensor (it reads no "
                    "parameter, gradient or state): its value needs no reduction; write it directly",
                )
        if _reads(expr, varying):
            varying.add(rule.target)
        if numel in expr.free_symbols and not reduces:
            fail(
                where,
                f"reads numel, the element count the reduction stage counts, but no rule reduces per "
                f"tensor (norm, rms, mean) when {label}",
            )
        if not is_factored(spec, variant):
            shaped = [c for c in expr.atoms(sp.Function) if isinstance(c, FACTORED_REDUCTIONS)]
            if shaped:
                fail(where, f"{shaped[0]} needs a factored variant (a flag with a rank set), not {label}")
        for sym in sorted(expr.free_symbols, key=str):
            if sym not in readable:
                if sym in state_syms:
                    fail(where, f"reads state '{sym}', which does not exist when {label}")
                fail(where, f"undefined symbol '{sym}'")
        if rule.target in state_syms and rule.target not in states:
            fail(where, f"writes state '{rule.target}', which does not exist when {label}")
        if rule.target in assigned:
            fail(where, f"assigns '{rule.target}' twice (when {label})")
        assigned.add(rule.target)
        readable.add(rule.target)  # a local becomes readable once assigned
    for s in spec.state:
        if s.symbol in states and s.symbol not in assigned:
            fail(f"state '{s.name}'", f"is never written (when {label})")
    if w not in assigned:
        fail("rules", f"never update the parameter 'w' (when {label})")


def step_locals(spec: Spec) -> tuple[sp.Symbol, ...]:
    """The targets of the step rules that are no step state, in order: step-level locals."""
    states = {s.symbol for s in spec.step_state}
    return tuple(dict.fromkeys(r.target for r in spec.step_rules if r.target not in states))


def group_sum_targets(spec: Spec) -> tuple[sp.Symbol, ...]:
    """The targets of the rules that are a group sum (`Rule(x, group_sum(e))`), in order."""
    return tuple(r.target for r in spec.rules if isinstance(sp.sympify(r.expr), group_sum))


def sum_locals(spec: Spec) -> tuple[sp.Symbol, ...]:
    """The targets of the sum rules that are no step state, in order."""
    states = {s.symbol for s in spec.step_state}
    return tuple(dict.fromkeys(r.target for r in spec.sum_rules if r.target not in states))


def sum_outputs(spec: Spec) -> tuple[sp.Symbol, ...]:
    """What the sum rules hand on, in order: each step state's value after them, then their
    locals (the run-time keeps the first, the later element stage may read any)."""
    return tuple(s.symbol for s in spec.step_state) + sum_locals(spec)


def _check_sum_rules(spec: Spec, fail, hyper_syms, flag_syms, state_syms, step_syms) -> None:
    """Group sums and the sum rules: where a group sum may stand, what a sum rule reads and writes."""
    targets = group_sum_targets(spec)
    for i, rule in enumerate(spec.rules, 1):
        expr = sp.sympify(rule.expr)
        found = expr.atoms(group_sum)
        if found and not isinstance(expr, group_sum):
            fail(f"rule {i} ({rule})", "a group sum is a rule's whole expression: Rule(x, group_sum(e))")
        if isinstance(expr, group_sum):
            if rule.when is not None:
                fail(f"rule {i} ({rule})", "a group sum takes no 'when': every variant sums it")
            if rule.target in state_syms | {w} or rule.target in step_syms:
                fail(f"rule {i} ({rule})", "a group sum's target is a new name (the sum rules read it)")
    if targets and not spec.sum_rules:
        fail("sum_rules", f"the group sums {', '.join(map(str, targets))} need sum rules that read them")
    if spec.sum_rules and not targets:
        fail("sum_rules", "sum rules run once the group sums are known, but no rule is a group sum")
    states = {s.symbol for s in spec.step_state}
    readable = {t, lr} | hyper_syms | step_syms | set(targets)
    written: set[sp.Symbol] = set()
    for i, rule in enumerate(spec.sum_rules, 1):
        where = f"sum rule {i} ({rule})"
        if not isinstance(rule.target, sp.Symbol):
            fail(where, "the target must be a symbol")
        if rule.when is not None:
            fail(where, "sum rules take no 'when': a flag's variants share the step-level state")
        if rule.target in hyper_syms | flag_syms | state_syms | set(targets) or rule.target in BUILTINS:
            fail(where, f"cannot assign to '{rule.target}': only step states and new locals can be")
        if rule.target in step_syms - states:
            fail(where, f"cannot assign to '{rule.target}': it is a step rule's local")
        if rule.target in written and rule.target not in states:
            fail(where, f"assigns the local '{rule.target}' twice")
        if is_reserved(rule.target.name):
            fail(where, f"the name '{rule.target}' is reserved by the generated code; choose another")
        expr = sp.sympify(rule.expr)
        _check_functions(expr, where, fail)
        if expr.atoms(*REDUCTIONS):
            fail(where, "a sum rule is computed once per step: it reads the group sums by their names")
        for sym in sorted(expr.free_symbols, key=str):
            if sym not in readable:
                fail(where, f"reads '{sym}': sum rules read t, lr, hyperparameters, step state, the "
                     "step rules' locals, the group sums and earlier sum rules' targets")  # fmt: skip
        written.add(rule.target)
        readable.add(rule.target)


def step_inputs(spec: Spec) -> tuple[sp.Symbol, ...]:
    """What the step rules hand the kernels' host code, in order: each step state's new
    value, then the locals."""
    return tuple(s.symbol for s in spec.step_state) + step_locals(spec)


# Method names a transition may not take: torch.optim.Optimizer's and optforge's own.
_CLASS_METHODS = (
    "step", "zero_grad", "state_dict", "load_state_dict", "add_param_group", "register_step_pre_hook",
    "register_step_post_hook", "float32_state_dict", "params", "state", "param_groups", "defaults",
)  # fmt: skip


def _check_step_state(spec: Spec, fail, hyper_syms, flag_syms, state_syms) -> None:
    """Step states, step rules and modes: what each may read and write."""
    state_names = {s.symbol for s in spec.step_state}
    keys = {"params", "lr", "weight_decay", *(h.name for h in spec.hypers), *(f.name for f in spec.flags)}
    for s in spec.step_state:
        if isinstance(s.init, bool) or not (isinstance(s.init, (int, float)) or s.init in hyper_syms):
            fail(
                f"step state '{s.name}'",
                f"initial value must be a number (int or float) or a hyperparameter, got {s.init!r}",
            )
        if not s.name.isidentifier() or s.name in keys:
            fail(f"step state '{s.name}'", "its group key must be an identifier no argument or option uses")
        keys.add(s.name)
    readable = {t, lr} | hyper_syms | state_names
    written: set[sp.Symbol] = set()
    for i, rule in enumerate(spec.step_rules, 1):
        where = f"step rule {i} ({rule})"
        if not isinstance(rule.target, sp.Symbol):
            fail(where, "the target must be a symbol")
        if rule.when is not None:
            fail(where, "step rules take no 'when': a flag's variants share the step-level state")
        if rule.target in hyper_syms | flag_syms | state_syms or rule.target in BUILTINS:
            fail(where, f"cannot assign to '{rule.target}': only step states and step-level locals can be")
        if rule.target in written and rule.target not in state_names:
            fail(where, f"assigns the local '{rule.target}' twice")
        if is_reserved(rule.target.name):
            fail(where, f"the name '{rule.target}' is reserved by the generated code; choose another")
        expr = sp.sympify(rule.expr)
        _check_functions(expr, where, fail)
        if expr.atoms(*REDUCTIONS):
            fail(where, "a step rule is computed once per group: it cannot read a per-tensor reduction")
        for sym in sorted(expr.free_symbols, key=str):
            if sym not in readable:
                kind = "per-element or per-tensor" if sym in state_syms | set(BUILTINS) else "undefined"
                fail(where, f"reads '{sym}', which is {kind}: step rules read t, lr, hyperparameters, "
                     "step state and earlier step rules' targets")  # fmt: skip
        written.add(rule.target)
        readable.add(rule.target)
    written |= {r.target for r in spec.sum_rules}
    for s in spec.step_state:
        if s.symbol not in written:
            fail(f"step state '{s.name}'", "is never written by a step rule or a sum rule")
    if spec.modes is None:
        return
    modes = spec.modes
    if not isinstance(modes, Modes):
        fail("modes", f"must be a Modes, got {modes!r}")
    if not modes.key.isidentifier() or modes.key in keys:
        fail(
            f"modes '{modes.key}'",
            "its group key must be an identifier no argument, option or step state uses",
        )
    if not isinstance(modes.initial, bool):
        fail(f"modes '{modes.key}'", f"initial must be a bool, got {modes.initial!r}")
    import builtins

    if not isinstance(getattr(builtins, modes.error, None), type) or not issubclass(
        getattr(builtins, modes.error), Exception
    ):
        fail(f"modes '{modes.key}'", f"error must name a builtin exception, got {modes.error!r}")
    if modes.enter.method == modes.leave.method:
        fail(f"modes '{modes.key}'", "its two transitions need two method names")
    for transition in (modes.enter, modes.leave):
        what = f"transition '{transition.method}'"
        if not transition.method.isidentifier() or transition.method.startswith("_"):
            fail(what, "the method name must be a public identifier")
        if transition.method in _CLASS_METHODS:
            fail(what, "the method name is one the optimizer classes already have")
        seen = {w} | state_syms | hyper_syms | state_names
        assigned: set[sp.Symbol] = set()
        for i, rule in enumerate(transition.rules, 1):
            where = f"{what}, rule {i} ({rule})"
            if rule.when is not None:
                fail(where, "transition rules take no 'when'")
            if rule.target in state_syms | hyper_syms | flag_syms | state_names or (
                rule.target in BUILTINS and rule.target != w
            ):
                fail(
                    where, f"cannot assign to '{rule.target}': a transition assigns the parameter and locals"
                )
            expr = sp.sympify(rule.expr)
            _check_functions(expr, where, fail, {w} | state_syms)
            if expr.atoms(*REDUCTIONS):
                fail(where, "a transition is elementwise: it cannot read a reduction")
            for sym in sorted(expr.free_symbols, key=str):
                if sym not in seen:
                    fail(where, f"reads '{sym}': a transition reads the parameter, state, hyperparameters, "
                         "step state and its own earlier targets")  # fmt: skip
            if rule.target in assigned:
                fail(where, f"assigns '{rule.target}' twice")
            assigned.add(rule.target)
            seen.add(rule.target)
        if w not in assigned:
            fail(what, "never assigns the parameter 'w'")


def _check_matrix_functions(expr, where: str, fail, varying: set, hyper_syms: set) -> None:
    """A matrix function must be a rule's whole expression, of a value that varies over the
    tensor and holds no other matrix function or reduction, with step-level parameters."""
    calls = expr.atoms(*MATRIX_FUNCTIONS)
    if not calls:
        return
    if not isinstance(expr, MATRIX_FUNCTIONS):
        fail(where, f"a matrix function must be the rule's whole expression, not part of {expr}")
    argument, *parameters = expr.args
    if argument.atoms(*MATRIX_FUNCTIONS):
        fail(where, "a matrix function of a matrix function: give the inner one a rule of its own")
    if argument.atoms(*REDUCTIONS):
        fail(where, "the argument of a matrix function cannot read a reduction (it is stored before them)")
    if not _reads(argument, varying):
        fail(where, f"{expr.func.__name__} of {argument}, which does not vary over the tensor")
    for p in parameters:
        if not (p.free_symbols <= hyper_syms) or not sp.sympify(p).is_Atom and p.atoms(sp.Function):
            fail(where, f"the matrix function's parameter {p} must be a number or a hyperparameter")


def _check_callables(spec: Spec, expr, where: str, fail) -> None:
    """A callable hyperparameter is read only as `call(h)` or `given(h)`, and those take only one."""
    callables = {h.symbol for h in spec.hypers if h.is_callable}
    for node in expr.atoms(call, given):
        if node.args[0] not in callables:
            fail(where, f"{node} needs a hyperparameter whose types include 'callable', not {node.args[0]}")
    bare = expr.xreplace({node: sp.Dummy() for node in expr.atoms(call)})
    bare = bare.xreplace({node: sp.true for node in bare.atoms(given)})
    for sym in sorted(bare.free_symbols & callables, key=str):
        fail(where, f"reads the callable '{sym}' as a number: write call({sym}) (its value at the step)")


def _reads(expr, varying: set) -> bool:
    """Does `expr` vary over a tensor? Per-tensor reductions (norm, rms, mean, matrix_mean) are
    one value per tensor or matrix; row and column means vary with the row or column."""
    expr = sp.sympify(expr)
    per_tensor = {r: sp.Dummy() for r in expr.atoms(*TENSOR_REDUCTIONS, matrix_mean)}
    plain = expr.xreplace(per_tensor)
    return bool(plain.free_symbols & varying) or bool(plain.atoms(row_mean, col_mean))


# The expression nodes a rule may hold besides symbols, real numbers and the functions above:
# arithmetic, Max/Min, Piecewise with its conditions (comparisons, and/or/not).
_NODES = (
    sp.Add, sp.Mul, sp.Pow, sp.Max, sp.Min, sp.Piecewise, sp.core.relational.Relational, sp.And,
    sp.Or, sp.Not, sp.logic.boolalg.BooleanAtom,
)  # fmt: skip


def _check_functions(expr, where: str, fail, varying: set = frozenset()) -> None:
    """Refuse, naming the rule, what the kernel printers cannot print or Numba cannot compile
    in float arithmetic: an undefined `sp.Function('f')`, `factorial`, a derivative or a
    sum, a complex or infinite constant (`I`, `zoo`, `oo`), a constant such as `pi` (write
    a number). A product (`sp.Product`) is a step-level value only (NAdam's mu_product)."""
    functions = _kernel_functions()
    supported = (
        f"Reductions: {', '.join(r.__name__ for r in REDUCTIONS)}; functions: "
        f"{', '.join(f.__name__ for f in functions)}, fma, Max, Min, Piecewise and arithmetic "
        "(sqrt is a power: x**0.5 or sympy.sqrt(x)); numbers real and finite"
    )
    nodes = sp.preorder_traversal(expr)
    for node in nodes:
        if (
            isinstance(node, sp.Symbol)
            or isinstance(node, (sp.Integer, sp.Rational, sp.Float))
            and (node.is_finite)
        ):
            continue
        if isinstance(node, (call, given)):
            nodes.skip()  # a callable hyperparameter at the step: computed on the host
            continue
        if (
            isinstance(node, _NODES + REDUCTIONS + MATRIX_FUNCTIONS + functions + (fma, rounded_sub))
            or type(node).__name__ == "ExprCondPair"
        ):
            continue
        if isinstance(node, sp.Product) and not _reads(node, varying) and node.is_finite is not False:
            nodes.skip()  # printed on the host (math.prod); its index is bound
            continue
        what = getattr(node.func, "__name__", node.func) if node.args else node
        fail(where, f"{what} is not something the kernels can compute. {supported}")
