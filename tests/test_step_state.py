"""Step-level state (`StepState`, `step_rules`) and modes (`Modes`, `Transition`) in the spec
language: the SpecErrors for their misuse, what the compiler makes of them (the host's
`advance`, the kernels' step-level inputs, the transitions' kernels), and a spec of
their own compiled from outside the checkout and stepped, saved and reloaded."""

import textwrap

import numpy as np
import pytest
import sympy as sp

from optforge.compiler.lower import lower, transitions
from optforge.compiler.spec import (
    Export,
    Hyper,
    Modes,
    Rule,
    Spec,
    SpecError,
    State,
    StepState,
    Transition,
    g,
    lr,
    step_inputs,
    step_locals,
    t,
    w,
)

a, m, peak, count, c = sp.symbols("a m peak count c")


def make(**overrides):
    """A momentum SGD whose step is scaled by the largest lr so far (a step state, `peak`)."""
    fields = dict(
        name="tiny",
        title="Tiny",
        source="/somewhere/specs/tiny.py",
        hypers=[Hyper(a, ("float",), 0.5, "a")],
        flags=[],
        state=[State(m, 0, "moment", "m")],
        rules=[Rule(m, a * m + g), Rule(w, w - c * m)],
        decay="decoupled",
        step_state=[StepState(peak, 0.0, "peak", "largest lr"), StepState(count, 0, "count", "steps")],
        step_rules=[Rule(peak, sp.Max(peak, lr)), Rule(c, peak / (count + 1)), Rule(count, count + 1)],
    )
    return Spec(**(fields | overrides))


def test_a_spec_with_step_state_builds():
    spec = make()
    assert step_locals(spec) == (c,)
    assert step_inputs(spec) == (peak, count, c)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"step_rules": [Rule(peak, sp.Max(peak, lr)), Rule(c, peak * m), Rule(count, count + 1)]},
         r"step rule 2 \(c <- m\*peak\): reads 'm', which is per-element"),
        ({"step_rules": [Rule(peak, peak + w), Rule(c, peak), Rule(count, count + 1)]},
         "reads 'w', which is per-element"),
        ({"step_rules": [Rule(peak, sp.Max(peak, lr)), Rule(c, peak)]},
         "step state 'count': is never written by a step rule"),
        ({"step_rules": [Rule(peak, lr), Rule(c, peak), Rule(c, 2 * peak), Rule(count, count)]},
         "assigns the local 'c' twice"),
        ({"step_rules": [Rule(a, lr), Rule(peak, lr), Rule(c, peak), Rule(count, count)]},
         "cannot assign to 'a'"),
        ({"rules": [Rule(m, a * m + g), Rule(peak, m), Rule(w, w - c * m)]},
         r"rule 2 \(peak <- m\): cannot assign to 'peak': it is step-level"),
        ({"step_state": [StepState(peak, "zero", "peak", "x"), StepState(count, 0, "count", "x")]},
         "step state 'peak': initial value must be a number"),
        ({"step_state": [StepState(peak, 0.0, "a", "x"), StepState(count, 0, "count", "x")]},
         "step state 'a': its group key must be an identifier no argument or option uses"),
        ({"step_state": [StepState(m, 0.0, "peak", "x"), StepState(count, 0, "count", "x")]},
         "name already used by a state"),
        ({"step_rules": [Rule(peak, sp.Function("f")(lr)), Rule(c, peak), Rule(count, count)]},
         "f is not something the kernels can compute"),
    ],
)  # fmt: skip
def test_misuse_of_step_state_is_a_spec_error(overrides, message):
    with pytest.raises(SpecError, match=message):
        make(**overrides)


def test_element_rules_read_step_state_and_locals_like_hyperparameters():
    """The kernels take the step rules' values as step-level scalars, computed on the host."""
    spec = make()
    (kernel,) = lower(spec, {})
    assert kernel.host_inputs == (t, lr, a, peak, count, c)
    # w - c*m: the host hoists -c into a kernel scalar, from the local the step rules computed.
    (hoisted,) = [h for h in kernel.host if h.target in kernel.scalars]
    assert hoisted.expr == -c


def test_the_host_advance_runs_the_step_rules_in_order():
    from optforge.compiler.backends.cpu import render_host_module

    spec = make()
    namespace = {}
    exec(render_host_module(spec, lower(spec, {})), namespace)
    # advance(t, lr, a, peak, count) -> (peak, count, c): count is read before its update.
    assert namespace["advance"](1, 0.5, 0.9, 0.2, 3) == (0.5, 4, 0.5 / 4)
    assert namespace["advance"](1, 0.1, 0.9, 0.2, 0) == (0.2, 1, 0.2)


def modes(**overrides):
    fields = dict(
        key="fast",
        enter=Transition("fast", [Rule(w, w + m)], "w + m"),
        leave=Transition("slow", [Rule(w, w - m)], "w - m"),
        error="RuntimeError",
        message="not fast",
    )
    return Modes(**(fields | overrides))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"enter": Transition("fast", [Rule(m, w)], "x")},
            "transition 'fast', rule 1 .*cannot assign to 'm'",
        ),
        ({"enter": Transition("fast", [Rule(w, w + g)], "x")}, "reads 'g': a transition reads"),
        ({"enter": Transition("fast", [Rule(w, w + c)], "x")}, "reads 'c'"),  # a step rule's local
        ({"enter": Transition("fast", [Rule(c, m)], "x")}, "never assigns the parameter 'w'"),
        ({"enter": Transition("step", [Rule(w, w)], "x")}, "the method name is one the optimizer classes"),
        ({"leave": Transition("fast", [Rule(w, w)], "x")}, "two transitions need two method names"),
        ({"key": "peak"}, "its group key must be an identifier no argument, option or step state uses"),
        ({"error": "NoSuchError"}, "error must name a builtin exception"),
    ],
)
def test_misuse_of_modes_is_a_spec_error(overrides, message):
    with pytest.raises(SpecError, match=message):
        make(modes=modes(**overrides))


def test_transitions_lower_to_kernels_that_store_only_the_parameter():
    spec = make(modes=modes())
    (enter, _, (kernel,)), (leave, _, _) = transitions(spec)
    assert (enter, leave) == ("fast", "slow")
    stored = {s.array.name for r in kernel.regions for s in r.stores}
    loaded = {ld.array.name for r in kernel.regions for ld in r.loads}
    assert stored == {"param"} and loaded == {"param", "moment"}  # no gradient, state unchanged


def test_step_state_is_not_for_the_nn_dialect():
    with pytest.raises(SpecError, match="step state and modes are kept in torch-style param groups"):
        make(exports=[Export("nn", "Tiny", ())])


def test_an_alias_must_be_another_identifier():
    with pytest.raises(SpecError, match="alias 'Tiny' must be another identifier"):
        make(exports=[Export("optim", "Tiny", (("lr", 0.1),), aliases=("Tiny",))])


SPEC_FILE = """
import sympy as sp
from optforge.compiler.spec import (Export, Hyper, Modes, Rule, Spec, State, StepState, Transition, g, lr, w)

a, m, peak, count, c = sp.symbols("a m peak count c")
SPEC = Spec(
    name="peaky",
    title="Peaky",
    source=__file__,
    hypers=[Hyper(a, ("float",), 0.5, "Momentum.")],
    flags=[],
    state=[State(m, 0, "moment", "Momentum buffer.")],
    rules=[Rule(m, a * m + g), Rule(w, w - c * m)],
    decay="decoupled",
    step_state=[StepState(peak, 0.0, "peak", "Largest lr."), StepState(count, 0, "count", "Steps.")],
    step_rules=[Rule(peak, sp.Max(peak, lr)), Rule(c, peak / (count + 1)), Rule(count, count + 1)],
    modes=Modes("fast", Transition("fast", [Rule(w, w + m)], "Add m."),
                Transition("slow", [Rule(w, w - m)], "Take m away."), initial=True, message="slow"),
    exports=[Export("optim", "Peaky", (("lr", 0.1), "a"))],
)
"""


def test_a_users_spec_with_step_state_and_modes_steps_saves_and_switches(tmp_path, monkeypatch):
    """A spec of its own (not Schedule-Free): its step state in the groups, advanced by its
    step rules, saved and restored; its modes' kernels; its refusal outside the mode."""
    import optforge

    monkeypatch.setenv("OPTFORGE_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "peaky.py"
    path.write_text(textwrap.dedent(SPEC_FILE))
    cls = optforge.compile_spec(path).optim.Peaky
    w0 = np.array([1.0, 2.0, 3.0])
    p = optforge.Parameter(w0.copy(), "p")
    opt = cls([p], lr=0.1, a=0.5)
    assert opt.param_groups[0]["peak"] == 0.0 and opt.param_groups[0]["fast"] is True
    grads = [np.array([1.0, 0.0, -1.0]), np.array([0.5, 0.5, 0.5])]
    lrs = [0.1, 0.05]
    expect, moment, peak_, count_ = w0.copy(), np.zeros(3), 0.0, 0
    for grad, rate in zip(grads, lrs):
        opt.param_groups[0]["lr"] = rate
        opt((grad,))
        peak_, scale, count_ = max(peak_, rate), max(peak_, rate) / (count_ + 1), count_ + 1
        moment = 0.5 * moment + grad
        expect = expect - scale * moment
    np.testing.assert_allclose(p.data, expect, rtol=1e-15)
    assert (opt.param_groups[0]["peak"], opt.param_groups[0]["count"]) == (0.1, 2)
    assert type(opt.param_groups[0]["count"]) is int
    saved = opt.state_dict()
    opt.slow()
    np.testing.assert_allclose(p.data, expect - moment, rtol=1e-15)
    with pytest.raises(RuntimeError, match="slow"):
        opt((grads[0],))
    opt.slow()  # already slow: nothing moves
    np.testing.assert_allclose(p.data, expect - moment, rtol=1e-15)
    opt.fast()
    np.testing.assert_allclose(p.data, expect, rtol=1e-15)
    q = optforge.Parameter(expect.copy(), "p")
    fresh = cls([q], lr=0.05, a=0.5)
    fresh.load_state_dict(saved)
    assert (fresh.param_groups[0]["peak"], fresh.param_groups[0]["count"]) == (0.1, 2)
    fresh((grads[0],))
    opt((grads[0],))
    np.testing.assert_array_equal(p.data, q.data)
