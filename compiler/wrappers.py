"""Dialect classes from a spec: signature, checks, docstring, kernel choice.

The checks are generated from the spec's declared types and domains, and so
is the docstring's Raises section: what a class validates and what its
documentation says it validates come from the same declarations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import sympy as sp

from optforge.compiler.render import render_unformatted
from optforge.compiler.spec import KEYWORD_ONLY, REQUIRED, Export, Spec, when_phrase
from optforge.runtime.checks import OPTIMIZER_ATTRIBUTE, Interval

DECAY_WORDS = {
    "coupled": "Coupled: `weight_decay * w` is added to the gradient. ",
    "decoupled": "Decoupled: `weight_decay * w` is added to the update, not to the gradient. ",
}

# The nn dialect's own arguments, validated by optforge.runtime.nn_optimizer.
NN_ARGUMENTS = {
    "learning_rate": (
        "float, int, numpy.ndarray, Iterable or LearningRateSchedule",
        "The learning rate: a number (>= 0); a 0-d array; a 1-D array or iterable whose "
        "i-th value is used at the i-th step (from 0); or a LearningRateSchedule called with "
        "the step (0 at the first update).",
    ),
    "weight_decay": (
        "float, int or callable",
        "Weight decay (>= 0), or a callable of the step. Without groups it skips parameters "
        "whose name contains 'beta' or 'gamma'.",
    ),
    "loss_scale": (
        "float or int",
        "The gradients are divided by it before the update (> 0; an int is converted).",
    ),
    "use_locking": (
        "bool",
        "Lock the parameters: steps, state_dict() and load_state_dict() of every locking "
        "optimizer over the same parameters are serialised, from any thread.",
    ),
}

# (exception, when, the nn argument it concerns or None for every class)
NN_RAISES = (
    ("TypeError", "`learning_rate` is not an int, float, ndarray, Iterable or LearningRateSchedule.", None),
    ("TypeError", "an element of `params` is neither a Parameter nor a dict.", None),
    ("TypeError", "`loss_scale` is not a float or an int.", "loss_scale"),
    ("TypeError", "`weight_decay` is neither a number nor a callable.", None),
    ("ValueError", "`params` is None or empty.", None),
    (
        "ValueError",
        "`learning_rate` is negative or not finite, or a dynamic learning rate has more than one dimension.",
        None,
    ),
    ("ValueError", "`weight_decay` is negative or not finite.", None),
    ("ValueError", "`loss_scale` is not positive or not finite.", "loss_scale"),
    (
        "KeyError",
        "a group dict has a key other than params, lr, weight_decay, grad_centralization, order_params.",
        None,
    ),
    ("RuntimeError", "a parameter appears twice.", None),
)


# optforge's own keyword-only argument of every generated class (both dialects).
SKIP_NONFINITE_DOC = (
    "optforge's option for loss-scaling training: a step whose gradients hold a NaN or an infinity "
    "changes nothing (parameters, state, step count), returns False and is counted in `skipped_steps`. "
    "By default such a step is taken, as MindSpore does."
)
SKIP_NONFINITE_RAISES = ("TypeError", "`skip_nonfinite` is not a bool.")


@dataclass(frozen=True)
class Option:
    """One of optforge's own keyword-only arguments of every generated class."""

    name: str
    default: str
    types: str
    doc: str


# The precision policy (optforge.runtime.precision), in every class of every dialect.
PRECISION_OPTIONS = (
    Option(
        "state_dtype",
        "None",
        "None, str or dict",
        "How the state is stored. None keeps each state in its parameter's dtype; 'float32', "
        "'float64', 'bfloat16', 'float16' or 'int8' stores every state so; a dict from state names to "
        "those stores each state it names so, the others in the parameter's dtype. The step computes "
        "in float32 (float64 for float64 parameters): loads widen exactly, stores round to nearest "
        "even, and no state is wider than that type. bfloat16 arrays are ml_dtypes'. 'int8' keeps "
        "8-bit blockwise codes (a uint8 per element, and a float32 absmax per 256 elements in the "
        "state `<name>_absmax`; in optforge.torch also its code table, `<name>_qmap`) for the "
        "states the compiler proved sound (the docs page lists them); CPU only, and not for "
        "FSDP2's DTensor parameters; `float32_state_dict()` gives the state as float32 values.",
    ),
    Option(
        "master_weights",
        "False",
        "bool",
        "For float16 and bfloat16 parameters: keep a float32 copy of each (the state "
        "`master_param`), step the copy, and write its nearest 16-bit value to the parameter.",
    ),
    Option(
        "stochastic_rounding",
        "False",
        "bool",
        "For float16 and bfloat16 parameters without master weights: round each stored parameter "
        "value up or down at random, up with probability equal to its distance from the value below "
        "over the spacing, so updates smaller than the 16-bit spacing survive in expectation. The "
        "random bits come from a hash of (step, parameter, element): every run gives the same bits, "
        "whatever the number of threads.",
    ),
)
PRECISION_RAISES = (
    (
        "TypeError",
        "`state_dtype` is not None, a str or a dict of str, or `master_weights` or "
        "`stochastic_rounding` is not a bool.",
    ),
    (
        "ValueError",
        "`state_dtype` (or a value of it) is not 'float32', 'float64', 'bfloat16', 'float16' or "
        "'int8', or a key of it is not a state of the class; `master_weights` and "
        "`stochastic_rounding` are both True, or either is True with no float16 or bfloat16 "
        "parameter; a state would be wider than the type its parameter is stepped in; 'int8' names "
        "a state the compiler did not prove sound for 8-bit codes, or is given to optforge.torch; or "
        "a parameter on a CUDA device is given a policy (not available there yet).",
    ),
)


@dataclass(frozen=True)
class Argument:
    name: str
    default: str | None  # Python source of the default, None when required
    types: str
    doc: str
    keyword_only: bool = False


def source(value) -> str:
    """A default as Python source: its repr, but an infinite or NaN float as `math.inf` /
    `math.nan` (the generated modules import math; `inf` is no name)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "math.nan" if math.isnan(value) else ("math.inf" if value > 0 else "-math.inf")
    if isinstance(value, tuple):
        return "(" + ", ".join(source(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def runtime_domain(domain: sp.Interval) -> Interval:
    def number(x):
        return math.inf if x == sp.oo else -math.inf if x == -sp.oo else float(x)

    return Interval(number(domain.start), number(domain.end), bool(domain.left_open), bool(domain.right_open))


def state_docs(spec: Spec, quote: str) -> list[tuple[str, str, str | None]]:
    """(name, doc, when in words or None) of each state, for the class docstrings."""
    return [(s.name, s.doc, when_phrase(spec, s.when, quote)) for s in spec.state]


def _type_words(types: tuple[str, ...]) -> str:
    return " or ".join(types)


def _packed(entry) -> tuple[str, ...] | None:
    """The hyperparameters a packed argument such as ("etas", ("etaminus", "etaplus")) holds."""
    if isinstance(entry, tuple) and isinstance(entry[1], tuple) and all(isinstance(m, str) for m in entry[1]):
        return entry[1]
    return None


def _packed_argument(name: str, hypers: list, kind: str) -> Argument:
    """The documented argument of a packed tuple: its members' defaults and docs joined."""
    doc = " and ".join(f"{h.doc[0].lower()}{h.doc[1:].rstrip('.')}" for h in hypers) + "."
    return Argument(name, source(tuple(h.default for h in hypers)), kind, doc[0].upper() + doc[1:])


def _unpack_line(unpack: str, cls: str, name: str, members: tuple[str, ...]) -> str:
    """`a, b = unpack("Cls", "name", name, 2)`: the generated unpacking of a packed argument."""
    return ", ".join(members) + f' = {unpack}("{cls}", "{name}", {name}, {len(members)})'


def class_context(spec: Spec, export: Export) -> dict:
    arguments, unpack_lines, hyper_names = [], [], []
    types_of = {h.name: export.types.get(h.name, h.types) for h in spec.hypers}
    for entry in export.signature:
        name, default = (entry, None) if isinstance(entry, str) else entry
        members = _packed(entry)
        if members:  # a tuple argument, e.g. etas = (etaminus, etaplus)
            kind = f"tuple of {len(members)} {_type_words(types_of[members[0]])}"
            arguments.append(_packed_argument(name, [spec.hyper(m) for m in members], kind))
            unpack_lines.append(_unpack_line("unpack_tuple", export.class_name, name, members))
            hyper_names += members
            continue
        if name in NN_ARGUMENTS:
            types, doc = NN_ARGUMENTS[name]
            if name == "weight_decay":
                doc = DECAY_WORDS[spec.decay] + doc
        elif name in types_of:
            hyper = spec.hyper(name)
            types, doc = _type_words(types_of[name]), hyper.doc
            default = hyper.default if default is None else default
            hyper_names.append(name)
        else:
            flag = next(f for f in spec.flags if f.name == name)
            types, doc = "bool", flag.doc
            default = flag.default if default is None else default
        arguments.append(Argument(name, None if default is REQUIRED else source(default), types, doc))
    names = [a.name for a in arguments]
    domains = {sym.name: runtime_domain(dom) for sym, dom in spec.domains.items()}
    hypers = [h for h in spec.hypers if h.name in hyper_names]
    raises = [(kind, when) for kind, when, arg in NN_RAISES if arg is None or arg in names]
    for entry in export.signature:
        if _packed(entry):
            raises.append(("TypeError", f"`{entry[0]}` is not a tuple."))
            raises.append(("ValueError", f"`{entry[0]}` does not hold {len(entry[1])} values."))
    for h in hypers:
        raises.append(("TypeError", f"`{h.name}` is not {_type_words(types_of[h.name])}."))
        if h.name in domains:
            raises.append(("ValueError", f"`{h.name}` is not {domains[h.name].describe()}."))
    bools = [n for n in names if n == "use_locking"] + [f.name for f in spec.flags if f.name in names]
    raises += [("TypeError", f"`{n}` is not a bool.") for n in bools]
    raises += [(c.error, f"{c.message[0].lower()}{c.message[1:]}") for c in spec.constraints]
    raises.append(SKIP_NONFINITE_RAISES)
    raises += PRECISION_RAISES
    return {
        "skip_nonfinite_doc": SKIP_NONFINITE_DOC,
        "precision_options": PRECISION_OPTIONS,
        "constraints": constraint_checks(spec, export.class_name),
        "hyper_names": repr(tuple(h.name for h in hypers)),
        "sparse": repr(spec.sparse),
        # A flag this dialect does not expose is pinned to its default.
        "variant_key": _tuple_source([f.name if f.name in names else repr(f.default) for f in spec.flags]),
        "state_init": _state_init_source(spec),
        "source": spec.where,
        "spec": spec,
        "cls": export.class_name,
        "arguments": arguments,
        "unpack_lines": unpack_lines,
        "hypers": [(h.name, types_of[h.name], repr(domains.get(h.name))) for h in hypers],
        "bools": bools,
        "flags": [f.name for f in spec.flags if f.name in names],
        "flag_attributes": _tuple_source([repr(f.name) for f in spec.flags if f.name in names]),
        "state_docs": state_docs(spec, "``"),
        "loss_scale": "loss_scale" if "loss_scale" in names else "1.0",
        "use_locking": "use_locking" if "use_locking" in names else "False",
        "raises": raises,
    }


def _state_init_source(spec: Spec) -> str:
    """The dict display of each state's initial value: a number, a hyperparameter, or a
    function of the parameter's array (`lambda w: ...`, NumPy, evaluated when the state is made)."""
    from sympy.printing.numpy import NumPyPrinter

    # Evaluated per parameter with its group's hyperparameters (a group may override them).
    hypers = {h.symbol: sp.Symbol(f'hypers["{h.name}"]') for h in spec.hypers}

    def source(init) -> str:
        if isinstance(init, (int, float)):
            return repr(float(init))
        if getattr(init, "name", None) == "lr":
            return '"lr"'  # resolved per parameter: its group's initial learning rate
        printer = NumPyPrinter({"fully_qualified_modules": True})
        return f"lambda w, hypers: {printer.doprint(sp.sympify(init).xreplace(hypers))}"

    values = {s.name: source(s.init) for s in spec.state}
    return "{" + ", ".join(f'"{k}": {v}' for k, v in values.items()) + "}"


def _step_source(expr) -> str:
    """The Python source of a StepFunction's expression of the step, as `step`."""
    from optforge.compiler.printers import HostPrinter

    return HostPrinter().doprint(sp.sympify(expr).xreplace({sp.Symbol("t"): sp.Symbol("step")}))


def _tuple_source(items: list[str]) -> str:
    """A tuple display of source snippets: '()', '(a,)', '(a, b)'."""
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


OPTIM_ARGUMENTS = {
    "lr": (
        "float, int or 0-d numpy.ndarray",
        "The learning rate (> 0). Each step reads param_groups[i]['lr'], so a scheduler "
        "from optforge.optim.lr_scheduler (or you) may change it between steps.",
    ),
    "weight_decay": ("float or int", "Weight decay (>= 0)."),
}

OPTIM_RAISES = (
    (
        "ValueError",
        "`lr` is not an int, float or 0-d ndarray, or is not > 0 (the documentation's "
        "type, where MindSpore's code raises a TypeError for some types).",
    ),
    ("ValueError", "`weight_decay` is negative or not finite."),
    ("TypeError", "`weight_decay` is not an int or float."),
    ("ValueError", "`params` is None or empty, or a parameter appears in two groups."),
    ("TypeError", "`params` is not iterable or holds something other than Parameters."),
)


def option_argument(option) -> Argument:
    """The documented argument of an `Option`: its values, and which ones are refused."""
    refused = [v for v in option.values if v not in option.supported]
    doc = option.doc
    if refused:
        doc += f" Only {_words([repr(v) for v in option.supported])}: " + (
            f"{_words([repr(v) for v in refused])} {'is' if len(refused) == 1 else 'are'} refused "
            f"(NotImplementedError): {option.reason}"
        )
    types = "one of " + ", ".join(repr(v) for v in option.values)
    return Argument(option.name, repr(option.default), types, doc)


def option_raises(options) -> list[tuple[str, str]]:
    raises = []
    for o in options:
        raises.append(("ValueError", f"`{o.name}` is not one of {', '.join(repr(v) for v in o.values)}."))
        refused = [repr(v) for v in o.values if v not in o.supported]
        if refused:
            raises.append(("NotImplementedError", f"`{o.name}` is {_words(refused)}: {o.reason}"))
    return raises


def derived_defaults(export: Export) -> str:
    """The defaults-dict entries of an export's derived hyperparameters (`, "k": expr`)."""
    from optforge.compiler.printers import HostPrinter

    printer = HostPrinter()
    return "".join(f', "{name}": {printer.doprint(sp.sympify(e))}' for name, e in export.derived.items())


def optim_class_context(spec: Spec, export: Export) -> dict:
    arguments, checks, hyper_keys, choices, callables, step_defaults = [], [], {}, [], [], []
    options = {o.name: o for o in export.options}
    types_of = {h.name: export.types.get(h.name, h.types) for h in spec.hypers}
    domains = {sym.name: runtime_domain(dom) for sym, dom in spec.domains.items()}
    raises = list(OPTIM_RAISES)
    for entry in export.signature:
        name, default = (entry, None) if isinstance(entry, str) else entry
        if name in OPTIM_ARGUMENTS:
            types, doc = OPTIM_ARGUMENTS[name]
            if name == "weight_decay":
                doc = DECAY_WORDS[spec.decay] + doc
            arguments.append(Argument(name, source(default), types, doc))
            continue
        if name in options:
            arguments.append(option_argument(options[name]))
            continue
        members = _packed(entry)
        if members:  # a pair such as betas = (beta1, beta2)
            hypers = [spec.hyper(m) for m in members]
            arguments.append(_packed_argument(name, hypers, f"tuple of {len(hypers)} floats"))
            for index, h in enumerate(hypers):
                label = f"{name}[{index}]"
                hyper_keys[h.name] = (name, index)
                checks.append((label, h.name, types_of[h.name], repr(domains.get(h.name))))
                raises.append(("TypeError", f"`{label}` is not {_type_words(types_of[h.name])}."))
                if h.name in domains:
                    raises.append(("ValueError", f"`{label}` is not {domains[h.name].describe()}."))
            continue
        chosen = next((f for f in spec.flags if f.choice is not None and f.choice.argument == name), None)
        if chosen is not None:  # a flag taken as a named option (Muon's adjust_lr_fn)
            c = chosen.choice
            values = ", ".join(repr(v) for v in c.on + c.off)
            arguments.append(
                Argument(
                    name,
                    repr(c.default),
                    " or ".join(sorted({type(v).__name__ for v in c.on + c.off})),
                    f"One of {values}. {chosen.doc}",
                )
            )
            choices.append(
                (name, chosen.name, repr(tuple(c.on)), repr(tuple(c.on + c.off)), _f_string(c.message, name))
            )
            raises.append(("ValueError", f"`{name}` is not one of {values}."))
            continue
        flag = next((f for f in spec.flags if f.name == name), None)
        if flag is not None:
            arguments.append(
                Argument(name, repr(flag.default if default is None else default), "bool", flag.doc)
            )
            raises.append(("TypeError", f"`{name}` is not a bool."))
            continue
        h = spec.hyper(name)
        if h.is_callable and h.default is not None:
            # A module-level function, not a lambda: the optimizer pickles (torch.save, deepcopy).
            function = f"default_{name}"
            step_defaults.append((function, name, _step_source(h.default.expr)))
            doc = f"{h.doc} Default: `{h.default!r}` (`{function}`)."
            arguments.append(Argument(name, function, _type_words(types_of[name]), doc))
        else:
            arguments.append(
                Argument(
                    name,
                    source(h.default if default is None else default),
                    _type_words(types_of[name]),
                    h.doc,
                )
            )
        if h.is_callable:
            # A function of the step is no group option (a lambda neither saves nor compares):
            # the optimizer keeps it as an attribute, as the reference implementations do.
            hyper_keys[h.name] = (name, OPTIMIZER_ATTRIBUTE)
            callables.append((name, types_of[name]))
            raises.append(("TypeError", f"`{name}` is not {_type_words(types_of[name])}."))
            continue
        hyper_keys[h.name] = (name, None)
        checks.append((name, name, types_of[name], repr(domains.get(h.name))))
        raises.append(("TypeError", f"`{name}` is not {_type_words(types_of[name])}."))
        if h.name in domains:
            raises.append(("ValueError", f"`{name}` is not {domains[h.name].describe()}."))
    for name in export.derived:  # computed by the constructor, kept in each group
        hyper_keys[name] = (name, None)
    raises += option_raises(export.options)
    unpack_lines = [
        _unpack_line("unpack_pair", export.class_name, entry[0], _packed(entry))
        for entry in export.signature
        if _packed(entry)
    ]
    flag_names = [f.name for f in spec.flags]
    bools = [a.name for a in arguments if a.name in flag_names]
    chosen_flags = [flag for _, flag, *_ in choices]
    variant_key = _tuple_source(
        [f.name if f.name in bools + chosen_flags else repr(f.default) for f in spec.flags]
    )
    own = [name for name, _ in callables]
    raises += [
        (
            "ValueError",
            f"`{f.name}=True` comes with a float16 or bfloat16 parameter (not implemented for them).",
        )
        for f in spec.flags
        if f.wide_only and f.name in bools
    ]
    raises += [(c.error, f"{c.message[0].lower()}{c.message[1:]}") for c in spec.constraints]
    raises.append(SKIP_NONFINITE_RAISES)
    raises += PRECISION_RAISES
    return {
        "skip_nonfinite_doc": SKIP_NONFINITE_DOC,
        "precision_options": PRECISION_OPTIONS,
        "constraints": constraint_checks(spec, export.class_name),
        "source": spec.where,
        "spec": spec,
        "cls": export.class_name,
        "arguments": arguments,
        "checks": checks,
        "unpack_lines": unpack_lines,
        "group_keys": ", ".join(f"``{a.name}``" for a in arguments if a.name not in bools + own),
        # (name, types) of each callable hyperparameter: checked, then kept as an attribute.
        "callables": callables,
        # (function, hyperparameter, return expression) of each callable's default.
        "step_defaults": step_defaults,
        "hyper_names": repr(tuple(h.name for h in spec.hypers)),
        "hyper_keys": repr(tuple(hyper_keys[h.name] for h in spec.hypers)),
        # Re-checked on every group: at construction, add, load and (when changed) each step.
        "group_checks": [(label, *hyper_keys[name], types, domain) for label, name, types, domain in checks],
        "flag_attributes": _tuple_source([repr(n) for n in bools + chosen_flags]),
        "choices": choices,
        # The flags whose set variants refuse 16-bit parameters (Flag.wide_only).
        "wide_only": _tuple_source([repr(f.name) for f in spec.flags if f.wide_only and f.name in bools]),
        "sparse": repr(spec.sparse),
        "state_init": _state_init_source(spec),
        "state_docs": state_docs(spec, "`"),
        "defaults": "{"
        + ", ".join(
            f'"{a.name}": {a.name}' for a in arguments if a.name not in bools + own + [c[0] for c in choices]
        )
        + derived_defaults(export)
        + "}",
        "option_checks": [
            (o.name, repr(tuple(o.values)), repr(tuple(o.supported)), o.reason) for o in export.options
        ],
        "option_table": repr(
            {o.name: (tuple(o.values), tuple(o.supported), o.reason) for o in export.options}
        ),
        "bools": bools,
        "variant_key": variant_key,
        "raises": raises,
    }


TORCH_ARGUMENTS = {
    "lr": (
        "float or 0-d Tensor",
        "The learning rate (>= 0). Each step reads param_groups[i]['lr'], so torch's "
        "lr_scheduler classes (or you) may change it between steps.",
    ),
}

TORCH_SKIP_NONFINITE_DOC = (
    "optforge's option for loss-scaling training: a step whose gradients hold a NaN or an infinity "
    "changes nothing (parameters, state, step counts) and is counted in `skipped_steps`; `step()` still "
    "returns the closure's loss. By default such a step is taken, as torch does."
)

TORCH_RAISES = (
    ("ValueError", "`lr` is negative (torch's check: `Invalid learning rate`)."),
    ("ValueError", "`lr` is a Tensor of more than one element (`Tensor lr must be 1-element`)."),
    ("ValueError", "`weight_decay` is negative."),
    ("TypeError", "`lr` or `weight_decay` is not a real number."),
    ("TypeError", "a parameter is not float32 or float64 (the kernels are compiled for those)."),
    ("ValueError", "a parameter is not contiguous (it is stepped through a zero-copy view)."),
    ("ValueError", "param groups set a flag differently (one kernel variant serves an optimizer)."),
    (
        "ValueError",
        "a param group (given, or in a loaded state dict) sets an option of a torch.optim optimizer "
        "that this class does not have, or an unsupported value of one it has.",
    ),
)

# torch.optim's implementation switches: (types, default, doc). optforge runs its own fused
# kernels whatever `foreach` and `fused` say; capture and autograd through the step are not
# supported, so `capturable` and `differentiable` accept only False.
TORCH_IMPL_OPTIONS = {
    "foreach": (
        "bool or None",
        None,
        "Accepted for torch.optim compatibility (any bool or None): optforge always steps with "
        "its fused kernels.",
    ),
    "fused": (
        "bool or None",
        None,
        "Accepted for torch.optim compatibility (any bool or None): optforge always steps with "
        "its fused kernels. As in torch, `fused=True` with `foreach=True` or `differentiable=True` "
        "is a RuntimeError.",
    ),
    "capturable": (
        "bool",
        False,
        "Only False: the step runs on the host's schedule and cannot be captured in a CUDA graph "
        "(True is a ValueError).",
    ),
    "differentiable": (
        "bool",
        False,
        "Only False: the step is not recorded by autograd (True is a ValueError).",
    ),
}


def torch_message(label: str) -> str:
    """torch.optim's ValueError for an argument outside its domain (`{value}`: the value)."""
    if label == "lr":
        return "Invalid learning rate: {value}"
    if label == "eps":
        return "Invalid epsilon value: {value}"
    if label.startswith("betas["):
        return f"Invalid beta parameter at index {label[6:-1]}: {{value}}"
    return f"Invalid {label} value: {{value}}"


def _f_string(message: str, variable: str) -> str:
    """The Python source of an f-string that formats a torch message for `variable`."""
    return "f" + repr(message.replace("{value}", "{" + variable + "}"))


def torch_class_context(spec: Spec, export: Export) -> dict:
    """The optim dialect's hyperparameters in torch's signature, with torch's checks and state layout.

    torch.optim validates values, not types: an out-of-domain value is a
    ValueError in torch's words (`Invalid beta parameter at index 0: 1.0`),
    something that is not a number a TypeError.
    """
    from optforge.compiler.printers import HostPrinter

    # An implementation switch may come with the reference's default: ("foreach", True).
    impl_defaults = {
        e[0]: e[1] for e in export.signature if isinstance(e, tuple) and e[0] in TORCH_IMPL_OPTIONS
    }
    signature = tuple(e[0] if isinstance(e, tuple) and e[0] in impl_defaults else e for e in export.signature)
    impl = [e for e in signature if isinstance(e, str) and e in TORCH_IMPL_OPTIONS]
    core = tuple(e for e in signature if e != KEYWORD_ONLY and e not in impl)
    # The spec's domains, with this dialect's own where torch's differ (Adam's eps >= 0).
    spec = replace(spec, domains={**spec.domains, **export.domains})
    context = optim_class_context(spec, replace(export, signature=core))
    domains = {sym.name: runtime_domain(dom) for sym, dom in spec.domains.items()}
    raises = list(TORCH_RAISES)
    for label, name, types, _ in context["checks"]:
        if name in domains:
            raises.append(("ValueError", f"`{label}` is not {domains[name].describe()}."))
        kind = "a bool" if list(types) == ["bool"] else "a real number"
        raises.append(("TypeError", f"`{label}` is not {kind}."))
    raises += [("TypeError", f"`{name}` is not a bool.") for name in context["bools"]]
    raises += [
        ("TypeError", f"`{name}` is not {_type_words(types)}.") for name, types in context["callables"]
    ]
    raises += [r for r in context["raises"] if r[1].endswith("(not implemented for them).")]
    raises += [(c.error, f"{c.message[0].lower()}{c.message[1:]}") for c in spec.constraints]
    raises += option_raises(export.options)
    if impl:
        raises.append(("TypeError", f"{_words(impl)} is not of the type its description gives."))
        raises.append(("ValueError", "`capturable` or `differentiable` is True."))
    if "fused" in impl:
        raises.append(("RuntimeError", "`fused=True` comes with `foreach=True` or `differentiable=True`."))
    raises.append(SKIP_NONFINITE_RAISES)
    raises += PRECISION_RAISES
    keys = {s.name: export.state_keys.get(s.name, s.name) for s in spec.state}
    core_arguments = iter(context["arguments"])
    arguments, keyword_only = [], False
    for entry in signature:  # torch's order: positional arguments, then keyword-only ones
        if entry == KEYWORD_ONLY:
            keyword_only = True
            continue
        if entry in impl:
            types, default, doc = TORCH_IMPL_OPTIONS[entry]
            default = impl_defaults.get(entry, default)
            arguments.append(Argument(entry, repr(default), types, doc, keyword_only))
            continue
        a = next(core_arguments)
        if a.name in TORCH_ARGUMENTS:
            a = Argument(a.name, a.default, *TORCH_ARGUMENTS[a.name])
        if a.types in ("float or int", "int or float"):
            a = Argument(a.name, a.default, "float", a.doc)
        arguments.append(replace(a, keyword_only=keyword_only))
    names = [a.name for a in arguments if a.name not in {n for n, _ in context["callables"]}]
    messages = {label: export.messages.get(label, torch_message(label)) for label in ("lr", "weight_decay")}
    checks = []
    for label, variable, types, domain in context["checks"]:
        message = _f_string(export.messages.get(label, torch_message(label)), variable)
        checks.append((label, variable, types, domain, message))
    printer = HostPrinter()
    step_arguments = ", ".join(["t", *(h.name for h in spec.hypers)])
    extra_state = {key: printer.doprint(sp.sympify(expr)) for key, expr in export.extra_state.items()}
    kept_when = {name: printer.doprint(sp.sympify(c)) for name, c in export.kept_when.items()}
    return {
        **context,
        "kept_when": kept_when,
        "hyper_arguments": ", ".join(h.name for h in spec.hypers),
        "step_state": repr(export.step_state),
        "group_step": export.group_step,
        "skip_nonfinite_doc": TORCH_SKIP_NONFINITE_DOC,
        "state_key_map": keys,
        "arguments": arguments,
        "checks": checks,
        "lr_message": _f_string(messages["lr"], "lr"),
        "weight_decay_message": _f_string(messages["weight_decay"], "weight_decay"),
        "impl_options": impl,
        "impl_names": repr(tuple(impl)),
        "torch_checks": export.checks,
        "raises": raises,
        "flag_names": _tuple_source([repr(n) for n in context["bools"] + [c[0] for c in context["choices"]]]),
        # Each spec flag: the group key it is read from, (the key of a named option, the values
        # that set it), or the value this class pins it to.
        "variant_names": _tuple_source([_variant_source(f, context) for f in spec.flags]),
        "defaults": "{" + ", ".join(f'"{n}": {n}' for n in names) + derived_defaults(export) + "}",
        "state_keys": repr(keys),
        "optional_state": repr(tuple(export.optional_state)),
        "flat_state": repr(tuple(export.flat_state)),
        "step_arguments": step_arguments,
        "extra_state": extra_state,
        "state_docs": [
            (
                keys[name],
                doc,
                when or (f"for a group with {export.kept_when[name]}" if name in kept_when else None),
            )
            for name, doc, when in context["state_docs"]
        ],
    }


def _variant_source(flag, context: dict) -> str:
    """How a torch class reads a spec flag (see TorchOptimizer._variant_key)."""
    if flag.name in context["bools"]:
        return repr(flag.name)
    for argument, name, on, _, _ in context["choices"]:
        if name == flag.name:
            return f"({argument!r}, {on})"
    return repr(flag.default)


def _words(names: list[str]) -> str:
    quoted = [f"`{n}`" for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


CONTEXTS = {"nn": class_context, "optim": optim_class_context, "torch": torch_class_context}


def constraint_checks(spec: Spec, cls: str) -> list[tuple[str, str, str]]:
    """(Python condition, exception, message) for each of the spec's constraints."""
    from optforge.compiler.printers import HostPrinter

    printer = HostPrinter()
    return [(printer.doprint(c.condition), c.error, f"For '{cls}', {c.message}") for c in spec.constraints]


def render_class_module(spec: Spec, export: Export, package: str) -> str:
    context = CONTEXTS[export.dialect](spec, export)
    return render_unformatted(
        f"{export.dialect}_class.py.j2", package=package, aliases=export.aliases, **context
    )


def render_dialect_init(dialect: str, classes: list[tuple[str, str]], package: str) -> str:
    """`classes`: (module name, class name) pairs, in order."""
    return render_unformatted(
        "dialect_init.py.j2", source="specs/", dialect=dialect, classes=classes, package=package
    )
