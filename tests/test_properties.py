"""Property-based tests (hypothesis): random shapes, dtypes and hyperparameters.

- every class of the nn and optim dialects, with random in-domain hyperparameters, flags,
  weight decay (and loss scale), against the float64 reference evaluated from its spec
  (compiler/reference.py) over three steps;
- validation (nn, optim and torch dialects) never lets an out-of-domain value through and never
  rejects an in-domain one;
- use_locking=True: concurrent calls from several threads equal the same steps in sequence.
"""

import math
import threading

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import optforge
from optforge.compiler.build import load_specs
from optforge.compiler.reference import reference_advance, reference_group_step, reference_step
from optforge.compiler.spec import active, rank_flag
from optforge.compiler.wrappers import runtime_domain
from optforge.runtime.factored import STATE_SHAPES
from tests.modes import ready

# A spec of matrices (Muon: 2-D parameters only, a matrix function the per-element reference
# cannot evaluate) is checked by tests/test_muon.py, against torch.optim.Muon, instead.
SPECS = {s.name: s for s in load_specs() if s.tensor_rank is None}
shapes = st.lists(st.integers(1, 7), min_size=1, max_size=3).map(tuple)
dtypes = st.sampled_from([np.float32, np.float64])
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def in_domain(domain, fallback_low=1e-3, fallback_high=10.0):
    """Floats inside a spec domain (a runtime Interval), kept to moderate magnitudes."""
    low = domain.lower if math.isfinite(domain.lower) else -fallback_high
    high = domain.upper if math.isfinite(domain.upper) else fallback_high
    return st.floats(low, high, exclude_min=domain.left_open, exclude_max=domain.right_open)


# Moderate ranges where a domain is a half-line, so three steps stay well-conditioned.
BOUNDED = {
    "lr": (1e-4, 0.1),
    "learning_rate": (1e-4, 0.1),
    "weight_decay": (0.0, 0.1),
    "loss_scale": (0.5, 4.0),
}


def _exports(dialect):
    return [
        pytest.param(spec, export, id=f"{dialect}.{export.class_name}")
        for spec in SPECS.values()
        for export in spec.exports
        if export.dialect == dialect
    ]


# Values of a callable hyperparameter (ADOPT's clip_lambda): none, one that grows, one that shrinks.
STEP_FUNCTIONS = (None, lambda step: step**0.25, lambda step: 0.5 / step)


def _draw_hyper(data, spec, name):
    hyper = spec.hyper(name)
    symbol = hyper.symbol
    if hyper.types == ("bool",):  # a switch the step rules test (Prodigy's use_bias_correction)
        return data.draw(st.booleans(), label=name)
    if symbol in spec.domains:
        domain = runtime_domain(spec.domains[symbol])
        # Away from the degenerate corners where float32 cannot follow float64 at all: a decay
        # rate of 0 or 1 (centered RMSprop's variance is then g^2 - g^2), an eps of 5e-324.
        # RMSprop's alpha/decay and Adadelta's rho are rates too, though their domains are half-lines.
        rate = 0 <= domain.lower and domain.upper <= 1.0 or name in ("alpha", "decay", "rho")
        low = max(domain.lower, 0.05 if rate else 1e-6 if domain.lower == 0 else -2.0)
        high = min(domain.upper, 0.999 if rate else 2.0)
        value = data.draw(st.floats(low, high), label=name)
    else:
        value = data.draw(st.floats(-1.0, 1.0), label=name)
    return int(value) if hyper.types == ("int",) else value


def _draw_arguments(data, spec, export):
    """Constructor kwargs and the reference's scalars and flag values, drawn together."""
    kwargs, scalars = (
        {},
        {h.name: float(h.default) for h in spec.hypers if isinstance(h.default, (int, float))},
    )
    scalars |= {"lr": 0.01, "weight_decay": 0.0, "grad_scale": 1.0}
    flags = {f.symbol: f.default for f in spec.flags}
    options = {o.name: o for o in export.options}
    for entry in export.signature:
        name = entry if isinstance(entry, str) else entry[0]
        members = entry[1] if isinstance(entry, tuple) and isinstance(entry[1], tuple) else None
        if members:
            values = tuple(_draw_hyper(data, spec, m) for m in members)
            kwargs[name] = values
            scalars |= dict(zip(members, values))
        elif name in BOUNDED:
            kwargs[name] = data.draw(st.floats(*BOUNDED[name]), label=name)
            key = {"learning_rate": "lr", "loss_scale": "grad_scale"}.get(name, name)
            scalars[key] = 1.0 / kwargs[name] if name == "loss_scale" else kwargs[name]
        elif name == "use_locking":
            continue
        elif any(f.name == name for f in spec.flags):
            kwargs[name] = data.draw(st.booleans(), label=name)
            flags[next(f.symbol for f in spec.flags if f.name == name)] = kwargs[name]
        elif name in options:  # selects no kernel: any value the class computes
            kwargs[name] = data.draw(st.sampled_from(options[name].supported), label=name)
        elif spec.hyper(name).is_callable:  # a function of the step, or None
            kwargs[name] = scalars[name] = data.draw(st.sampled_from(STEP_FUNCTIONS), label=name)
        elif spec.hyper(name).none is not None and data.draw(st.booleans(), label=f"{name} is None"):
            kwargs[name], scalars[name] = None, spec.hyper(name).none
        else:
            kwargs[name] = _draw_hyper(data, spec, name)
            scalars[name] = kwargs[name]
    for name, expr in export.derived.items():  # computed by the constructor (MARS's lr_1d / lr)
        scalars[name] = float(expr.subs({s: scalars[s.name] for s in expr.free_symbols}))
    return kwargs, scalars, flags


@pytest.mark.parametrize("spec, export", _exports("optim") + _exports("nn"))
@SETTINGS
@given(shape=shapes, dtype=dtypes, data=st.data())
def test_every_class_matches_its_spec_reference(spec, export, shape, dtype, data):
    kwargs, scalars, flags = _draw_arguments(data, spec, export)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    w0 = rng.standard_normal(shape).astype(dtype)
    p = optforge.Parameter(w0.copy(), "layer.weight")
    try:
        opt = getattr(getattr(optforge, export.dialect), export.class_name)([p], **kwargs)
    except ValueError:  # a constraint between arguments (SGD's nesterov, Rprop's step sizes)
        assume(False)
    arrays = {"w": w0.astype(np.float64)}
    ranked = rank_flag(spec)
    if ranked is not None:  # set per tensor (Adafactor: factored for 2 or more dimensions)
        flags[ranked.symbol] = len(shape) >= ranked.rank
    numbers = {k: v for k, v in scalars.items() if isinstance(v, (int, float))}  # not the callables
    for state in spec.state:
        if not active(state.when, flags):
            continue
        init = sp.sympify(state.init).subs({sp.Symbol(k): v for k, v in numbers.items()})
        if init.free_symbols:  # an expression of the parameter (Schedule-Free's z = w)
            value = sp.lambdify(sorted(init.free_symbols, key=str), init, "numpy")(arrays["w"])
            arrays[state.symbol.name] = np.broadcast_to(value, shape).astype(np.float64)
        else:
            arrays[state.symbol.name] = np.full(STATE_SHAPES[state.shape](shape), float(init))
    ready(opt)
    step_state = {s.symbol.name: float(sp.sympify(s.init).subs(numbers)) for s in spec.step_state}
    for t in range(1, 4):
        g = rng.standard_normal(shape).astype(dtype)
        opt((g,))
        arrays["g"] = g.astype(np.float64)
        # The step rules first (step-level state, e.g. Schedule-Free's), then the element rules.
        step_values = reference_advance(spec, {**scalars, "t": t, **step_state}) if spec.step_rules else {}
        step_state = {name: step_values[name] for name in step_state}
        if spec.sum_rules:  # group sums (over this one tensor), then the sum rules
            [new], summed = reference_group_step(spec, flags, [arrays], [{**scalars, **step_values, "t": t}])
            arrays |= new
            step_state = {name: summed.get(name, step_state[name]) for name in step_state}
        else:
            arrays |= reference_step(spec, flags, arrays, {**scalars, **step_values, "t": t})
    # float32 steps, or float32 step-level arithmetic (RAdam, as MindSpore), follow to float32 accuracy.
    exact = dtype == np.float64 and spec.host_dtype == "float64"
    tol = dict(atol=1e-12, rtol=1e-9) if exact else dict(atol=1e-5, rtol=2e-5)
    np.testing.assert_allclose(p.data, arrays["w"], **tol)


def _nn_classes_with_domains():
    """(class, hyper name, runtime domain, the example's kwargs) for every nn hyper with a domain."""
    cases = []
    for spec in SPECS.values():
        for export in spec.exports:
            if export.dialect != "nn":
                continue
            named = {e if isinstance(e, str) else e[0] for e in export.signature}
            for symbol, domain in spec.domains.items():
                if symbol.name in named:
                    cls = getattr(optforge.nn, export.class_name)
                    cases.append(
                        pytest.param(
                            cls,
                            symbol.name,
                            runtime_domain(domain),
                            export,
                            id=f"{export.class_name}.{symbol.name}",
                        )
                    )
    return cases


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # a huge initial accum in float32 state
@pytest.mark.parametrize("cls, name, domain, export", _nn_classes_with_domains())
@SETTINGS
@given(value=st.floats(allow_nan=True, allow_infinity=True, width=64))
def test_nn_validation_accepts_exactly_the_domain(cls, name, domain, export, value):
    kwargs = dict(export.example)
    hyper_types = export.types.get(name) or next(
        h.types for h in SPECS[_spec_of(export)].hypers if h.name == name
    )
    assert "float" in hyper_types
    kwargs[name] = value
    params = [optforge.Parameter(np.ones(3, np.float32), "w")]
    if value in domain:
        cls(params, **kwargs)  # never rejected
    else:
        with pytest.raises(ValueError):
            cls(params, **kwargs)


def _optim_and_torch_hypers_with_domains():
    """(dialect, class, argument, position in a packed tuple or None, domain, export)."""
    cases = []
    for spec in SPECS.values():
        for export in spec.exports:
            if export.dialect not in ("optim", "torch"):
                continue
            domains = {**spec.domains, **export.domains}  # a dialect's own (torch's Adam: eps >= 0)
            for entry in export.signature:
                name = entry if isinstance(entry, str) else entry[0]
                members = entry[1] if isinstance(entry, tuple) and isinstance(entry[1], tuple) else (name,)
                for index, member in enumerate(members):
                    symbol = next((h.symbol for h in spec.hypers if h.name == member), None)
                    if symbol not in domains or "float" not in spec.hyper(member).types:
                        continue
                    position = index if len(members) > 1 or members[0] != name else None
                    label = f"{export.dialect}.{export.class_name}.{name}" + (
                        f"[{position}]" if position is not None else ""
                    )
                    cases.append(
                        pytest.param(
                            export.dialect, export.class_name, name, position,
                            runtime_domain(domains[symbol]), spec, id=label,
                        )
                    )  # fmt: skip
    return cases


@pytest.mark.parametrize(
    "dialect, cls_name, name, position, domain, spec", _optim_and_torch_hypers_with_domains()
)
@SETTINGS
@given(value=st.floats(allow_nan=True, allow_infinity=True, width=64))
def test_optim_and_torch_validation_accept_exactly_the_domain(
    dialect, cls_name, name, position, domain, spec, value
):
    if dialect == "torch":
        import torch

        module = pytest.importorskip("optforge.torch")
        params = [torch.zeros(3, requires_grad=True)]
    else:
        module = optforge.optim
        params = [optforge.Parameter(np.ones(3, np.float32), "w")]
    kwargs = {"lr": 0.01} if cls_name == "SGD" else {}
    if position is None:
        kwargs[name] = value
    else:
        export = next(e for e in spec.exports if e.dialect == dialect and e.class_name == cls_name)
        members = next(e[1] for e in export.signature if not isinstance(e, str) and e[0] == name)
        defaults = [spec.hyper(m).default for m in members]
        defaults[position] = value
        kwargs[name] = tuple(defaults)
    cls = getattr(module, cls_name)
    try:
        cls(params, **kwargs)
    except ValueError as error:
        # In the domain, only a constraint between arguments may refuse it (Rprop's step sizes).
        assert value not in domain or "must not exceed" in str(error), error
    else:
        assert value in domain


def _spec_of(export):
    return next(s.name for s in SPECS.values() if export in s.exports)


@pytest.mark.parametrize("make", [
    lambda ps: optforge.nn.Adam(ps, learning_rate=0.01, use_locking=True),
    lambda ps: optforge.nn.ProximalAdagrad(ps, learning_rate=0.01, l1=0.001, use_locking=True),
])  # fmt: skip
def test_use_locking_makes_concurrent_steps_safe(make):
    shapes_ = [(300, 7), (1001,)]
    g = tuple(np.full(s, 0.01, np.float32) for s in shapes_)

    def params():
        return [optforge.Parameter(np.ones(s, np.float32), f"p{i}") for i, s in enumerate(shapes_)]

    sequential = make(params())
    for _ in range(40):
        sequential(g)
    shared = make(params())
    barrier = threading.Barrier(4)

    def worker():
        barrier.wait()
        for _ in range(10):
            shared(g)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert shared.global_step == 40
    for a, b in zip(sequential.parameters, shared.parameters):
        np.testing.assert_array_equal(a.data, b.data)
