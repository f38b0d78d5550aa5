"""Callable hyperparameters (`call`, `given`, `StepFunction`) and `Flag(wide_only=True)`.

A hyperparameter whose types include "callable" is a function of the step: rules read its
value as `call(h)` (computed on the host once per step) and test `given(h)` (not None),
which the compiler turns into a kernel chosen on the host. Misuse is a SpecError.
"""

import math

import numpy as np
import pytest
import sympy as sp

from optforge.compiler import build
from optforge.compiler.lower import lower
from optforge.compiler.spec import (
    Export,
    Flag,
    Hyper,
    Rule,
    Spec,
    SpecError,
    State,
    StepFunction,
    call,
    g,
    given,
    lr,
    t,
    w,
)

a, clip, m, flag, wide = sp.symbols("a clip m flag wide")
CLIPPED = sp.Piecewise((sp.Min(sp.Max(g, -call(clip)), call(clip)), given(clip)), (g, True))


def make(**overrides):
    fields = dict(
        name="tiny_clip",
        title="TinyClip",
        source="/somewhere/specs/tiny_clip.py",
        hypers=[
            Hyper(a, ("float",), 0.5, "a"),
            Hyper(clip, ("callable", "None"), StepFunction(t**0.5), "a bound of the step"),
        ],
        flags=[],
        state=[State(m, 0, "moment", "m")],
        rules=[Rule(m, a * m + CLIPPED), Rule(w, w - lr * m)],
        decay="decoupled",
        exports=[Export("optim", "TinyClip", (("lr", 1e-3), "a", "clip"))],
    )
    return Spec(**(fields | overrides))


def test_step_function_default_prints_as_a_lambda_and_evaluates_at_the_step():
    default = StepFunction(t**0.25)
    assert repr(default) == "lambda step: step**0.25"
    assert default(16) == 2.0
    assert eval(repr(default))(81) == math.pow(81, 0.25)


def test_given_is_a_host_side_branch_and_call_a_host_scalar():
    spec = make()
    kernels = lower(spec, {})
    assert [k.guards for k in kernels] == [(given(clip),), (given(clip),)]
    host = build.build_files([spec])["host/tiny_clip.py"]
    assert "return ((clip is not None),)" in host
    assert "float(clip(t))" in host
    # The kernel without the callable takes no bound, and its host code never calls it.
    clipped, plain = kernels
    assert len(clipped.scalars) == len(plain.scalars) + 2  # clip(t) and -clip(t)
    without = host[host.index("def scalars_not_given_clip") :]
    assert "clip(t)" not in without


def test_the_generated_class_calls_it_each_step_and_keeps_it_as_an_attribute(tmp_path, monkeypatch):
    import inspect

    import optforge

    monkeypatch.setenv("OPTFORGE_CACHE_DIR", str(tmp_path / "cache"))

    path = tmp_path / "tiny_clip.py"
    path.write_text(
        "import sympy as sp\n"
        "from optforge.compiler.spec import (Export, Hyper, Rule, State, StepFunction, Spec, call, g,\n"
        "    given, lr, t, w)\n"
        "a, clip, m = sp.symbols('a clip m')\n"
        "CLIPPED = sp.Piecewise((sp.Min(sp.Max(g, -call(clip)), call(clip)), given(clip)), (g, True))\n"
        "SPEC = Spec(name='tiny_clip', title='TinyClip', source=__file__, flags=[],\n"
        "    hypers=[Hyper(a, ('float',), 0.5, 'a'),\n"
        "            Hyper(clip, ('callable', 'None'), StepFunction(t), 'c')],\n"
        "    state=[State(m, 0, 'moment', 'm')], rules=[Rule(m, a * m + CLIPPED), Rule(w, w - lr * m)],\n"
        "    decay='decoupled', exports=[Export('optim', 'TinyClip', (('lr', 1.0), 'a', 'clip'))])\n"
    )
    module = optforge.compile_spec(str(path))
    cls = module.optim.TinyClip
    assert inspect.signature(cls).parameters["clip"].default(3) == 3  # `lambda step: step`
    calls = []

    def bound(step):
        calls.append(step)
        return 0.25

    p = optforge.Parameter(np.zeros(3), "p")
    opt = cls([p], a=0.0, clip=bound)
    assert opt.clip is bound and "clip" not in opt.param_groups[0]
    opt((np.array([1.0, -1.0, 0.1]),))
    np.testing.assert_array_equal(p.data, [-0.25, 0.25, -0.1])  # clipped to +-bound(1)
    opt.clip = None  # no clipping: the other kernel
    opt((np.array([1.0, -1.0, 0.1]),))
    np.testing.assert_array_equal(p.data, [-1.25, 1.25, -0.2])
    assert calls == [1]
    default = cls([optforge.Parameter(np.zeros(1), "q")], a=0.0)
    assert default.clip(9) == 9.0
    with pytest.raises(TypeError, match="'clip' should be 'callable' or 'None'"):
        cls([optforge.Parameter(np.zeros(1), "q")], clip=1.0)


def test_reading_a_callable_as_a_number_is_refused():
    with pytest.raises(SpecError, match=r"reads the callable 'clip' as a number: write call\(clip\)"):
        make(rules=[Rule(m, a * m + clip * g), Rule(w, w - lr * m)])


def test_call_of_a_plain_hyperparameter_is_refused():
    with pytest.raises(SpecError, match="call\\(a\\) needs a hyperparameter whose types include 'callable'"):
        make(rules=[Rule(m, a * m + call(a) * g), Rule(w, w - lr * m)])


def test_a_callable_default_must_be_a_step_function_or_none():
    with pytest.raises(SpecError, match="a callable's default is None or a StepFunction"):
        make(hypers=[Hyper(a, ("float",), 0.5, "a"), Hyper(clip, ("callable",), 0.5, "c")])
    with pytest.raises(SpecError, match="a callable's default is None or a StepFunction"):
        make(hypers=[Hyper(a, ("float",), 0.5, "a"), Hyper(clip, ("callable",), StepFunction(a * t), "c")])
    with pytest.raises(SpecError, match="default None needs the type 'None'"):
        make(hypers=[Hyper(a, ("float",), 0.5, "a"), Hyper(clip, ("callable",), None, "c")])
    with pytest.raises(SpecError, match="a callable's types are 'callable' and 'None' only"):
        make(hypers=[Hyper(a, ("float",), 0.5, "a"), Hyper(clip, ("callable", "float"), None, "c")])


def test_a_callable_has_no_domain_and_is_not_packed():
    with pytest.raises(SpecError, match="domain of 'clip': a callable hyperparameter has no domain"):
        make(domains={clip: sp.Interval(0, 1)})
    with pytest.raises(SpecError, match="'pair' packs a callable hyperparameter"):
        make(exports=[Export("optim", "TinyClip", (("lr", 1e-3), ("pair", ("a", "clip"))))])


def test_a_wide_only_flag_cannot_be_a_rank_flag_or_in_the_nn_dialect():
    rules = [Rule(m, a * m + g), Rule(w, w - lr * m)]
    with pytest.raises(SpecError, match="a rank flag is set per tensor: it cannot refuse 16-bit"):
        make(rules=rules, flags=[Flag(wide, "w", rank=2, wide_only=True)], exports=[])
    with pytest.raises(SpecError, match="a wide_only flag is for the optim and torch dialects"):
        make(
            rules=rules,
            hypers=[Hyper(a, ("float",), 0.5, "a")],
            flags=[Flag(wide, "w", wide_only=True)],
            exports=[Export("nn", "TinyClip", (("learning_rate", 0.1), "a", "wide"))],
        )


def test_group_step_is_for_the_torch_dialect():
    with pytest.raises(SpecError, match="group_step is for the torch dialect"):
        make(exports=[Export("optim", "TinyClip", (("lr", 1e-3), "a", "clip"), group_step=True)])
    assert make(exports=[Export("torch", "TinyClip", (("lr", 1e-3), "a", "clip"), group_step=True)])
