"""Documentation pages from the specs, as written (before any pass).

Each page's argument table and Raises section come from the same context the
class generator validates with (`wrappers.CONTEXTS`), and its algorithm is
`sympy.latex` of the spec's rules, so a page cannot say other than the code.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import sympy as sp

from optforge.compiler import spec as S
from optforge.compiler.build import stale_files, write_files
from optforge.compiler.communication import shard_rounds
from optforge.compiler.passes.int8 import int8_storage
from optforge.compiler.render import environment
from optforge.compiler.traffic import precision_rows
from optforge.compiler.wrappers import CONTEXTS, Argument, runtime_domain

DIALECTS = {
    "nn": ("optforge.nn", "MindSpore's `nn` dialect"),
    "optim": ("optforge.optim", "the PyTorch-like dialect of `mindspore.experimental.optim`"),
    "torch": ("optforge.torch", "the torch.optim front end (a `torch.optim.Optimizer` over tensors)"),
}
# A user's spec (`optforge docs --specs`): described by its own exports, reached through compile_spec.
USER_DIALECTS = {
    "nn": "the nn dialect (MindSpore-style arguments; `opt(grads)` steps optforge Parameters)",
    "optim": "the optim dialect (torch.optim-style arguments; `opt(grads)` steps optforge Parameters)",
    "torch": "the torch dialect (a `torch.optim.Optimizer` over tensors)",
}


def dialect_module(spec: S.Spec, dialect: str, user: bool) -> tuple[str, str]:
    """(where the class is imported from, the dialect in words) on a spec's page."""
    if user:
        return f'optforge.compile_spec("{Path(spec.source).name}").{dialect}', USER_DIALECTS[dialect]
    return DIALECTS[dialect]


# LaTeX of the built-in symbols, and the legend that explains them.
BUILTIN_LATEX = {
    S.lr: r"\gamma",
    S.weight_decay: r"\lambda",
    S.grad_scale: r"\sigma",
    S.w: "w",
    S.g: "g",
    S.t: "t",
    S.numel: r"\operatorname{numel}",
}
BUILTIN_LEGEND = {
    "nn": {
        S.lr: "the learning rate at this step (`learning_rate`)",
        S.weight_decay: "the weight decay (`weight_decay`; 0 for parameters it skips)",
        S.grad_scale: "`1 / loss_scale`",
        S.numel: "the tensor's number of elements",
    },
    "optim": {
        S.lr: "the group's learning rate `lr`",
        S.weight_decay: "the group's `weight_decay`",
        S.grad_scale: "1 (this dialect has no loss scale)",
        S.numel: "the tensor's number of elements",
    },
    "torch": {
        S.lr: "the group's learning rate `lr`",
        S.weight_decay: "the group's `weight_decay`",
        S.grad_scale: "1 (this dialect has no loss scale)",
        S.numel: "the tensor's number of elements",
    },
}

DIALECT_NOTES = {
    "nn": (
        "Without parameter groups, weight decay skips parameters whose name contains 'beta' or "
        "'gamma'; with groups, each group's weight decay applies to all its parameters (MindSpore's code).",
        "A dynamic learning rate (1-D array or iterable) uses index 0 at the first step; past its end "
        "a step raises RuntimeError before changing anything.",
        "A NaN beta is refused: the documentation's range excludes it, though MindSpore's check lets it "
        "through. An int loss_scale is converted to float, as its description says.",
    ),
    "optim": (
        "One step counter serves all parameter groups; each group may override lr, betas, eps and "
        "weight_decay. A group's options are validated like the constructor's arguments, when the "
        "group is made and, if they changed, at the next step (MindSpore's code validates none of "
        "betas and eps), before anything is stepped.",
    ),
    "torch": (
        "Parameters that get their first gradient at the same step share one step count and one fused "
        "kernel call; at a later step they must all have a gradient or none (then they are skipped, as "
        "torch skips them). Each param group may override the numeric options; flags must be the same in "
        "every group, and a group key that is an option of a torch.optim optimizer but not of this class "
        "is refused (ValueError), given or loaded, rather than ignored.",
        "`state_dict()` is in torch's layout (`state[i]['step']` where torch keeps one, the state tensors "
        "under torch's names, only those torch keeps); a state dict of torch's optimizer of the same name "
        "loads, and ours loads into it.",
    ),
}


def symbol_latex(spec: S.Spec) -> dict[sp.Symbol, str]:
    names = dict(BUILTIN_LATEX)
    for f in spec.flags:
        names[f.symbol] = r"\texttt{%s}" % f.name.replace("_", r"\_")
    names.update(spec.latex)
    return names


def latex(expr, names) -> str:
    return sp.latex(sp.sympify(expr), symbol_names=names, order="none")


def pinned_flags(spec: S.Spec, export) -> dict:
    """The flags this export does not expose, at the value its class pins them to (a rank
    flag is set per tensor, never pinned)."""
    named = {e if isinstance(e, str) else e[0] for e in export.signature}
    return {
        f.symbol: sp.true if f.default else sp.false
        for f in spec.flags
        if f.name not in named and f.rank is None
    }


def algorithm(spec: S.Spec, dialect: str, pinned: dict | None = None) -> str:
    """The update as a LaTeX pseudocode box, in the shape of the seed pages' boxes.

    Flags the dialect pins (nn.Rprop has no `maximize`) are substituted, so the
    box shows only what the class can do.
    """
    names = symbol_latex(spec)
    pinned = pinned or {}
    rules = [r for r in spec.rules if r.when is None or r.when not in pinned or pinned[r.when] == sp.true]
    exprs = {id(r): sp.sympify(r.expr).subs(pinned) for r in rules}
    used = set().union(*(e.free_symbols for e in exprs.values()))
    inputs = [rf"{names[S.lr]}\ (\text{{lr}})"]
    inputs += [rf"{latex(h.symbol, names)}\ (\texttt{{{tt(h.name)}}})" for h in spec.hypers]
    if S.weight_decay in used:
        inputs.append(rf"{names[S.weight_decay]}\ (\text{{weight decay}})")
    if S.grad_scale in used and dialect == "nn":
        inputs.append(rf"{names[S.grad_scale]} = 1/\texttt{{loss\_scale}}")
    lines = [r"&\rule{100mm}{0.4pt} \\", r"&\textbf{input}: " + r",\ ".join(inputs) + r" \\"]
    init = []
    for s in spec.state:
        value = latex(s.init, names)
        cond = (
            rf"\ (\text{{{S.when_phrase(spec, s.when, '')}}})".replace("_", r"\_")
            if s.when is not None
            else ""
        )
        init.append(rf"{latex(s.symbol, names)}_0 \leftarrow {value}{cond}")
    init += [
        rf"{latex(s.symbol, names)} \leftarrow {latex(sp.sympify(s.init), names)}" for s in spec.step_state
    ]
    lines.append(r"&\textbf{initialize}: " + r",\ ".join(init) + r" \\")
    lines.append(r"&\rule{100mm}{0.4pt} \\")
    lines.append(r"&\textbf{for}\ t = 1, 2, \ldots\ \textbf{do} \\")
    if spec.step_rules:  # once per step and group, on the host, before the elements
        lines.append(r"&\qquad \text{once per param group:} \\")
        for rule in spec.step_rules:
            target, expr = latex(rule.target, names), latex(sp.sympify(rule.expr), names)
            lines.append(rf"&\qquad\quad {target} \leftarrow {expr} \\")
        lines.append(r"&\qquad \text{per element:} \\")
    sums = set(S.group_sum_targets(spec))
    last_sum = max((i for i, rule in enumerate(rules) if rule.target in sums), default=None)
    for i, rule in enumerate(rules):
        target = latex(rule.target, names)
        body = rf"{target} \leftarrow {latex(exprs[id(rule)], names)}"
        if rule.when is not None and rule.when not in pinned:
            body = rf"\textbf{{if}}\ {latex(rule.when, names)}:\ {body}"
        lines.append(rf"&\qquad {body} \\")
        if i == last_sum:  # the sum rules, once the group sums over every tensor are known
            lines.append(r"&\qquad \text{once the group sums are known, per param group:} \\")
            for sum_rule in spec.sum_rules:
                target, expr = latex(sum_rule.target, names), latex(sp.sympify(sum_rule.expr), names)
                lines.append(rf"&\qquad\quad {target} \leftarrow {expr} \\")
            lines.append(r"&\qquad \text{per element:} \\")
    if spec.modes is not None:  # the mode methods, elementwise
        lines.append(r"&\rule{100mm}{0.4pt} \\")
        for transition in (spec.modes.enter, spec.modes.leave):
            body = r",\ ".join(
                rf"{latex(r.target, names)} \leftarrow {latex(sp.sympify(r.expr), names)}"
                for r in transition.rules
            )
            lines.append(rf"&\texttt{{{tt(transition.method)}()}}:\ {body} \\")
    lines.append(r"&\rule{100mm}{0.4pt}")
    return "\\begin{aligned}\n" + "\n".join(lines) + "\n\\end{aligned}"


def tt(name: str) -> str:
    """A name inside \\texttt{}: KaTeX needs its underscores escaped."""
    return name.replace("_", r"\_")


def legend(spec: S.Spec, dialect: str, state_names: dict | None = None) -> list[str]:
    names = symbol_latex(spec)
    used = set().union(*(sp.sympify(r.expr).free_symbols for r in spec.rules))
    items = [f"${names[s]}$: {text}" for s, text in BUILTIN_LEGEND[dialect].items() if s in used or s == S.lr]
    items.append("$w$: the parameter, $g$: its gradient, $t$: the step, from 1")
    for f in spec.flags:
        if f.rank is not None:
            items.append(
                f"${latex(f.symbol, names)}$: set per tensor, for tensors of at least {f.rank} dimensions "
                "(a stack of matrices over the leading ones): the row, column and matrix means are "
                "taken within each matrix, $\\operatorname{RMS}$ over the whole tensor"
            )
    for s in spec.state:
        name = (state_names or {}).get(s.name, s.name)
        items.append(f"${latex(s.symbol, names)}$: `{name}`, {s.doc[0].lower()}{s.doc[1:]}")
    for s in spec.step_state:
        items.append(f"${latex(s.symbol, names)}$: the group's `{s.name}`, {s.doc[0].lower()}{s.doc[1:]}")
    return items


def example(spec: S.Spec, export, module: str) -> str:
    # A spec of matrices (tensor_rank=2) steps the weight only, not the 1-D bias.
    matrices = spec.tensor_rank == 2
    if export.dialect == "torch":
        return (
            "import torch\n"
            f"import {'optforge' if module.startswith('optforge.compile_spec') else 'optforge.torch'}\n\n"
            "model = torch.nn.Linear(3, 2)\n"
            f"opt = {module}.{export.class_name}({'[model.weight]' if matrices else 'model.parameters()'})\n"
            + (f"opt.{spec.modes.enter.method}()\n" if spec.modes else "")
            + "x, y = torch.randn(8, 3), torch.randn(8, 2)\n"
            "for step in range(3):\n"
            "    opt.zero_grad()\n"
            "    torch.nn.functional.mse_loss(model(x), y).backward()\n"
            "    opt.step()  # updates the parameters' memory in place\n"
            + (f"opt.{spec.modes.leave.method}()\n" if spec.modes else "")
            + "print(model.weight)\n"
        )
    kwargs = ", ".join(f"{k}={v!r}" for k, v in export.example.items())
    kwargs = f", {kwargs}" if kwargs else ""
    weight = 'w = optforge.Parameter(np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), "layer.weight")\n'
    if matrices:
        return (
            "import numpy as np\n"
            "import optforge\n\n" + weight + f"opt = {module}.{export.class_name}([w]{kwargs})\n"
            "for step in range(3):\n"
            "    opt((np.full((2, 3), 0.1, np.float32),))  # updates w in place\n"
            "print(w.asnumpy())\n"
        )
    return (
        "import numpy as np\n"
        "import optforge\n\n" + weight + 'b = optforge.Parameter(np.zeros(3, np.float32), "layer.bias")\n'
        f"opt = {module}.{export.class_name}([w, b]{kwargs})\n"
        + (f"opt.{spec.modes.enter.method}()\n" if spec.modes else "")
        + "for step in range(3):\n"
        "    grads = (np.full((2, 3), 0.1, np.float32), np.full(3, -0.2, np.float32))\n"
        "    opt(grads)  # updates w and b in place\n"
        + (f"opt.{spec.modes.leave.method}()\n" if spec.modes else "")
        + "print(w.asnumpy())\n"
    )


def page(spec: S.Spec, export, user: bool = False) -> str:
    context = CONTEXTS[export.dialect](spec, export)
    module, dialect_words = dialect_module(spec, export.dialect, user)
    own = {**spec.domains, **export.domains}  # a dialect's own domains (torch's Adam: eps >= 0)
    domains = {sym.name: runtime_domain(dom).describe() for sym, dom in own.items()}
    arguments = []
    for a in context["arguments"]:
        domain = domains.get(a.name, "")
        if a.types.startswith("tuple of "):
            members = next(e[1] for e in export.signature if not isinstance(e, str) and e[0] == a.name)
            described = list(dict.fromkeys(domains[m] for m in members if m in domains))
            domain = "each " + "; ".join(described) if described else ""
        arguments.append((a, domain))
    skip_doc = context["skip_nonfinite_doc"]
    state_names = context.get("state_key_map", {})  # the torch dialect's names (Lamb's exp_avg)
    arguments.append((Argument("skip_nonfinite", "False", "bool (keyword only)", skip_doc), ""))
    for o in context["precision_options"]:
        arguments.append((Argument(o.name, o.default, f"{o.types} (keyword only)", o.doc), ""))
    parts = ["params"]
    for a in context["arguments"]:
        if a.keyword_only and "*" not in parts:  # torch's keyword-only arguments
            parts.append("*")
        parts.append(a.name if a.default is None else f"{a.name}={a.default}")
    parts += [*(["*"] if "*" not in parts else []), "skip_nonfinite=False"]
    parts += [f"{o.name}={o.default}" for o in context["precision_options"]]
    signature = ", ".join(parts)
    if len(signature) > 60:  # one argument per line, as a formatter would
        signature = "\n" + "".join(f"    {p},\n" for p in parts)
    return environment.get_template("optimizer_page.md.j2").render(
        spec=spec,
        export=export,
        module=module,
        dialect_words=dialect_words,
        signature=signature,
        algorithm=algorithm(spec, export.dialect, pinned_flags(spec, export)),
        legend=legend(spec, export.dialect, state_names),
        arguments=arguments,
        raises=context["raises"],
        state=[
            (
                state_names.get(s.name, s.name),
                latex(s.init, symbol_latex(spec)),
                s.doc,
                S.when_phrase(spec, s.when)
                # the torch dialect keeps some states only where torch does (SGD's buffer)
                or (f"for a group with {export.kept_when[s.name]}" if s.name in export.kept_when else None),
            )
            for s in spec.state
        ],
        step_state=[(s.name, s.init, s.doc) for s in spec.step_state],
        step_locals=[latex(sym, symbol_latex(spec)) for sym in S.step_locals(spec)],
        precision=precision_rows(spec),
        shard_rounds=shard_rounds(spec),
        int8=[(state_names.get(v.state, v.state), v.table, "; ".join(v.reasons)) for v in int8_storage(spec)],
        notes=list(spec.notes) + list(DIALECT_NOTES[export.dialect]),
        example=example(spec, export, module),
    )


# Classes written by hand in the run-time (wrappers, not update rules): their page comes
# from their docstring and signature, so it cannot drift from the code either.
LARS_ALGORITHM = r"""\begin{aligned}
&\rule{100mm}{0.4pt} \\
&\textbf{input}: \text{the wrapped optimizer's } \gamma,\ \lambda,\ \sigma;\
\theta\ (\texttt{coefficient}),\ \epsilon\ (\texttt{epsilon}) \\
&\rule{100mm}{0.4pt} \\
&\textbf{for}\ t = 1, 2, \ldots\ \textbf{do, for each parameter } w
\textbf{ that } \texttt{lars\_filter} \textbf{ accepts} \\
&\qquad c \leftarrow \frac{\theta \left\| w \right\|}
{\left\| \sigma g \right\| + \lambda \left\| w \right\| + \epsilon} \\
&\qquad \textbf{if}\ \texttt{use\_clip}:\
c \leftarrow \min\left(\max\left(c / \gamma, 0\right), 1\right) \\
&\qquad g \leftarrow c \left(\sigma g + \lambda w\right)
\quad \text{(others: } g \leftarrow \sigma g\text{, no weight decay)} \\
&\qquad \text{the wrapped optimizer steps with } g\text{, its own weight decay and loss scale off} \\
&\rule{100mm}{0.4pt}
\end{aligned}"""


def wrapper_page(cls, module: str, algorithm_latex: str, source: str) -> str:
    """A page for a hand-written class: signature, algorithm, and its docstring's sections."""
    doc = inspect.cleandoc(cls.__doc__)
    summary, _, body = doc.partition("\n\n")
    parameters = body.split("Parameters\n----------\n")[1].split("\n\nRaises")[0]
    raises = body.split("Raises\n------\n")[1]
    # A function default prints with its address; print its name (pages are reproducible).
    signature = re.sub(r"<function (\w+) at 0x[0-9a-f]+>", r"\1", str(inspect.signature(cls)))
    arguments = []
    for line in parameters.splitlines():
        if line and not line.startswith(" "):
            name, _, kind = line.partition(" : ")
            arguments.append([name, kind, ""])
        elif line.strip():
            arguments[-1][2] = f"{arguments[-1][2]} {line.strip()}".strip()
    errors = []
    for line in raises.splitlines():
        if line and not line.startswith(" "):
            errors.append([line.strip(), ""])
        elif line.strip():
            errors[-1][1] = f"{errors[-1][1]} {line.strip()}".strip()
    return environment.get_template("wrapper_page.md.j2").render(
        name=cls.__name__,
        module=module,
        source=source,
        summary=summary,
        overview=inspect.cleandoc(inspect.getmodule(cls).__doc__).partition("\n\n")[2],
        signature=signature,
        algorithm=algorithm_latex,
        arguments=arguments,
        raises=errors,
    )


def wrapper_pages() -> dict[str, tuple[str, str, str]]:
    """Relative path -> (class path, page, summary) of the hand-written classes."""
    from optforge.runtime.lars import LARS

    source = "optforge/runtime/lars.py"
    text = wrapper_page(LARS, "optforge.nn", LARS_ALGORITHM, source)
    summary = inspect.cleandoc(LARS.__doc__).partition("\n")[0]
    return {"optimizers/nn.LARS.md": ("optforge.nn.LARS", text, summary, source)}


def page_path(export, user: bool = False) -> str:
    """Where a class's page goes under docs/ (a user's: directly in their --out folder)."""
    return f"{'' if user else 'optimizers/'}{export.dialect}.{export.class_name}.md"


def docs_files(specs: list[S.Spec], user: bool = False) -> dict[str, str]:
    """Relative path under docs/ -> Markdown, for every page the specs give (`user`: a user's
    own specs, whose pages name them by their exports and compile_spec).

    The hand-written pages (docs/guide/) are not among them.
    """
    files = {}
    rows = []
    for spec in specs:
        for export in spec.exports:
            files[page_path(export, user)] = page(spec, export, user)
            module, _ = dialect_module(spec, export.dialect, user)
            rows.append((f"{module}.{export.class_name}", page_path(export, user), spec.summary, spec.where))
    for path, (name, text, summary, source) in ({} if user else wrapper_pages()).items():
        files[path] = text
        rows.append((name, path, summary, source))
    files["index.md"] = environment.get_template("docs_index.md.j2").render(rows=sorted(rows), user=user)
    return files


# The generated pages; the rest of docs/ (the guide, assets) is written by hand.
GENERATED_PAGES = "optimizers/*.md"


def stale_pages(files: dict[str, str], root: Path) -> list[str]:
    """Changed or missing generated pages, and pages under optimizers/ no spec gives."""
    return stale_files(files, root, GENERATED_PAGES)


def write_pages(files: dict[str, str], root: Path) -> list[str]:
    return write_files(files, root, GENERATED_PAGES)
