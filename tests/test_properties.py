"""Property-based tests (hypothesis): random shapes, dtypes and hyperparameters.

- every PyTorch-like class, with in-domain hyperparameters, against the float64 reference
  evaluated from its spec (compiler/reference.py) over three steps;
- validation never lets an out-of-domain value through and never rejects an in-domain one;
- use_locking=True: concurrent calls from several threads equal the same steps in sequence.
"""

import math
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optforge
from optforge.compiler.build import load_specs
from optforge.compiler.reference import reference_step
from optforge.compiler.wrappers import runtime_domain

SPECS = {s.name: s for s in load_specs()}
shapes = st.lists(st.integers(1, 7), min_size=1, max_size=3).map(tuple)
dtypes = st.sampled_from([np.float32, np.float64])
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def in_domain(domain, fallback_low=1e-3, fallback_high=10.0):
    """Floats inside a spec domain (a runtime Interval), kept to moderate magnitudes."""
    low = domain.lower if math.isfinite(domain.lower) else -fallback_high
    high = domain.upper if math.isfinite(domain.upper) else fallback_high
    return st.floats(low, high, exclude_min=domain.left_open, exclude_max=domain.right_open)


@SETTINGS
@given(shape=shapes, dtype=dtypes, data=st.data())
def test_adam_torch_matches_the_spec_reference(shape, dtype, data):
    spec = SPECS["adam_torch"]
    beta1 = data.draw(st.floats(0.0, 0.99), label="beta1")
    beta2 = data.draw(st.floats(0.5, 0.9999), label="beta2")
    eps = data.draw(st.floats(1e-8, 1e-2), label="eps")
    lr = data.draw(st.floats(1e-4, 0.1), label="lr")
    wd = data.draw(st.floats(0.0, 0.1), label="weight_decay")
    amsgrad = data.draw(st.booleans(), label="amsgrad")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    w0 = rng.standard_normal(shape).astype(dtype)
    p = optforge.Parameter(w0.copy(), "w")
    opt = optforge.optim.Adam([p], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd, amsgrad=amsgrad)
    arrays = {"w": w0.astype(np.float64), "g": None}
    arrays |= {s.symbol.name: np.zeros(shape) for s in spec.state}
    variant = {f.symbol: (f.name == "amsgrad" and amsgrad) for f in spec.flags}
    for t in range(1, 4):
        g = rng.standard_normal(shape).astype(dtype)
        opt((g,))
        arrays["g"] = g.astype(np.float64)
        scalars = {"t": t, "lr": lr, "weight_decay": wd, "grad_scale": 1.0}
        scalars |= {"beta1": beta1, "beta2": beta2, "eps": eps}
        arrays |= reference_step(spec, variant, arrays, scalars)
    tol = dict(atol=1e-5, rtol=2e-5) if dtype == np.float32 else dict(atol=1e-12, rtol=1e-10)
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
