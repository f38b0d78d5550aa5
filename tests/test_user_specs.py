"""A user's own spec, outside optforge: `compile_spec`, its cache, a second process.

QHAdam (Ma & Yarats, 2019) is written here as a user would write it, in a folder of its
own, and checked against an independent float64 loop of the paper's algorithm.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import optforge
from optforge import user_specs

QHADAM = textwrap.dedent(
    '''
    """QHAdam: quasi-hyperbolic momentum and Adam (Ma & Yarats, 2019)."""

    import sympy as sp

    from optforge.compiler.spec import Export, Hyper, Rule, Spec, State, g, lr, t, w

    beta1, beta2, nu1, nu2, eps = sp.symbols("beta1 beta2 nu1 nu2 eps")
    m, v = sp.symbols("m v")
    SIGNATURE = (("lr", 1e-3), ("betas", ("beta1", "beta2")), ("nus", ("nu1", "nu2")), "eps")

    SPEC = Spec(
        name="qhadam",
        title="QHAdam",
        source=__file__,
        summary="Adam whose step mixes the gradient with the moments (quasi-hyperbolic).",
        references=("Jerry Ma, Denis Yarats. Quasi-hyperbolic momentum and Adam. ICLR 2019.",),
        hypers=[
            Hyper(beta1, ("float",), 0.9, "Decay of the first moment."),
            Hyper(beta2, ("float",), 0.999, "Decay of the second moment."),
            Hyper(nu1, ("float",), 0.7, "Weight of the first moment in the step."),
            Hyper(nu2, ("float",), 1.0, "Weight of the second moment in the step."),
            Hyper(eps, ("float",), 1e-8, "Added to the denominator."),
        ],
        domains={
            beta1: sp.Interval.Ropen(0, 1),
            beta2: sp.Interval.Ropen(0, 1),
            nu1: sp.Interval(0, 1),
            nu2: sp.Interval(0, 1),
            eps: sp.Interval.open(0, sp.oo),
        },
        flags=[],
        state=[State(m, 0, "exp_avg", "First moment."), State(v, 0, "exp_avg_sq", "Second moment.")],
        rules=[
            Rule(m, beta1 * m + (1 - beta1) * g),
            Rule(v, beta2 * v + (1 - beta2) * g**2),
            Rule(
                w,
                w
                - lr
                * ((1 - nu1) * g + nu1 * m / (1 - beta1**t))
                / (sp.sqrt((1 - nu2) * g**2 + nu2 * v / (1 - beta2**t)) + eps),
            ),
        ],
        decay="decoupled",
        exports=[Export("optim", "QHAdam", SIGNATURE), Export("torch", "QHAdam", SIGNATURE)],
    )
    '''
)
SHAPES = [(7,), (3, 5)]


def qhadam_reference(w, grads, lr, betas, nus, eps):
    """The paper's Algorithm (QHAdam), float64, written from the formula."""
    (b1, b2), (n1, n2) = betas, nus
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        w = w - lr * ((1 - n1) * g + n1 * m_hat) / (np.sqrt((1 - n2) * g * g + n2 * v_hat) + eps)
    return w


@pytest.fixture
def user_project(tmp_path, monkeypatch):
    """A user's folder with the spec, and a cache of this test's own."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "qhadam.py").write_text(QHADAM)
    monkeypatch.setenv(user_specs.CACHE_ENV, str(tmp_path / "cache"))
    return project


def test_a_user_spec_compiles_and_its_classes_match_the_paper(user_project):
    compiled = optforge.compile_spec(user_project / "qhadam.py")
    assert sorted(compiled.exports) == ["optim", "torch"]
    with pytest.raises(AttributeError, match="exports no 'nn' dialect"):
        compiled.nn
    rng = np.random.default_rng(0)
    kwargs = dict(lr=0.01, betas=(0.9, 0.99), nus=(0.7, 0.9), eps=1e-8)
    for dtype in (np.float32, np.float64):
        values = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
        grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(8)]
        opt = compiled.optim.QHAdam(
            [optforge.Parameter(x.copy(), f"p{i}") for i, x in enumerate(values)], **kwargs
        )
        for step in grads:
            opt(tuple(step))
        tol = dict(atol=1e-5, rtol=2e-5) if dtype == np.float32 else dict(atol=1e-12, rtol=1e-10)
        for i, p in enumerate(opt.parameters):
            expected = qhadam_reference(values[i].astype(np.float64), [g[i] for g in grads], **kwargs)
            np.testing.assert_allclose(p.data, expected, **tol)


def test_a_user_spec_in_the_torch_dialect_matches_the_paper(user_project):
    torch = pytest.importorskip("torch")
    compiled = optforge.compile_spec(str(user_project / "qhadam.py"))
    rng = np.random.default_rng(1)
    kwargs = dict(lr=0.01, betas=(0.9, 0.99), nus=(0.7, 0.9), eps=1e-8)
    values = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(6)]
    params = [torch.nn.Parameter(torch.tensor(x)) for x in values]
    opt = compiled.torch.QHAdam(params, **kwargs)
    assert isinstance(opt, torch.optim.Optimizer)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = torch.tensor(g)
        opt.step()
    for i, p in enumerate(params):
        expected = qhadam_reference(values[i], [g[i] for g in grads], **kwargs)
        np.testing.assert_allclose(p.detach().numpy(), expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize(
    "nus, error", [((1.5, 0.5), ValueError), ((0.5,), IndexError), ((0.5, "x"), TypeError)]
)
def test_a_user_spec_s_domains_are_enforced(user_project, nus, error):
    compiled = optforge.compile_spec(user_project / "qhadam.py")
    with pytest.raises(error):
        compiled.optim.QHAdam([optforge.Parameter(np.ones(3, np.float32), "w")], nus=nus)


def test_the_cache_is_keyed_by_the_spec_s_bytes_and_never_in_site_packages(user_project, tmp_path):
    first = optforge.compile_spec(user_project / "qhadam.py")
    again = optforge.compile_spec(user_project / "qhadam.py")
    assert again.package == first.package and again.folder == first.folder
    assert first.folder.parent == tmp_path / "cache"
    manifest = json.loads((first.folder / user_specs.MANIFEST).read_text())
    assert manifest["exports"] == {"optim": ["QHAdam"], "torch": ["QHAdam"]}
    installed = Path(optforge.__file__).parent
    assert not any(installed.rglob("*qhadam*"))
    (user_project / "qhadam.py").write_text(QHADAM.replace("0.7, ", "0.75, "))  # an edit
    edited = optforge.compile_spec(user_project / "qhadam.py")
    assert edited.package != first.package
    assert (
        edited.optim.QHAdam([optforge.Parameter(np.ones(3, np.float32), "w")]).param_groups[0]["nus"][0]
        == 0.75
    )


def test_the_default_cache_is_the_platform_s_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(user_specs.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert user_specs.cache_root() == tmp_path / "xdg" / "optforge"
    monkeypatch.setenv(user_specs.CACHE_ENV, str(tmp_path / "mine"))
    assert user_specs.cache_root() == tmp_path / "mine"


def test_a_second_process_steps_a_cached_spec_without_sympy_or_recompiling(user_project, tmp_path):
    optforge.compile_spec(user_project / "qhadam.py").optim.QHAdam(
        [optforge.Parameter(np.ones(3, np.float32), "w")]
    )((np.ones(3, np.float32),))  # compiles the spec, and Numba caches the kernel it ran
    script = textwrap.dedent(
        f"""
        import sys, importlib
        import numpy as np
        import optforge
        compiled = optforge.compile_spec({str(user_project / "qhadam.py")!r})
        opt = compiled.optim.QHAdam([optforge.Parameter(np.ones(3, np.float32), "w")])
        opt((np.ones(3, np.float32),))
        kernels = importlib.import_module(compiled.package + ".cpu.qhadam")
        made = [b.stages["float32"] for v in kernels.VARIANTS.values() for b in v.branches.values()]
        dispatchers = list({{id(f): f for stages in made for f in stages}}.values())
        misses = sum(len(f.stats.cache_misses) for f in dispatchers)
        hits = sum(len(f.stats.cache_hits) for f in dispatchers)
        print("sympy" in sys.modules, "jinja2" in sys.modules, misses, hits)
        """
    )
    env = {**os.environ, user_specs.CACHE_ENV: str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "0", "1"]


def test_a_bad_user_spec_is_a_spec_error_naming_its_file(user_project):
    from optforge.compiler.spec import SpecError

    bad = QHADAM.replace('m, v = sp.symbols("m v")', 'm, v, q = sp.symbols("m v q")')
    (user_project / "bad.py").write_text(bad.replace("Rule(v, beta2 * v", "Rule(v, beta2 * q"))
    with pytest.raises(SpecError, match=r"project/bad.py: rule 2 .*undefined symbol 'q'"):
        optforge.compile_spec(user_project / "bad.py")
    with pytest.raises(FileNotFoundError):
        optforge.compile_spec(user_project / "missing.py")


# -- the command line in a user's project --


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """optforge as a non-editable install sees itself: generated/ and specs/ without tests/."""
    from optforge.compiler import build

    site = tmp_path / "site-packages" / "optforge"
    (site / "generated").mkdir(parents=True)
    (site / "specs").mkdir()
    monkeypatch.setattr(build, "generated_dir", lambda: site / "generated")
    return site


def test_new_outside_a_checkout_writes_into_the_user_s_folder(installed, user_project, tmp_path, capsys):
    from optforge.compiler.cli import main

    assert main(["new", "my_rule", "--dir", str(user_project)]) == 0
    assert main(["new", "my_rule", "--dir", str(user_project)]) == 1  # never overwrites
    assert sorted(p.name for p in user_project.iterdir()) == ["my_rule.py", "qhadam.py", "test_my_rule.py"]
    assert not any(installed.rglob("*my_rule*"))
    assert main(["new", "other", "--dir", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err
    compiled = optforge.compile_spec(user_project / "my_rule.py")
    assert compiled.optim.MyRule
    env = {**os.environ, user_specs.CACHE_ENV: str(tmp_path / "cache")}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_rule.py"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=user_project, timeout=300)
    assert result.returncode == 1  # runs, and fails until the reference is written
    assert "write the reference implementation of MyRule in test_my_rule.py" in result.stdout


def test_commands_outside_a_checkout_say_what_to_do_in_one_line(installed, capsys):
    from optforge.compiler.cli import main

    for command in (["build"], ["docs"], ["docs", "--check"], ["site"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "installed, not a checkout" in err and "--specs DIR --out DIR" in err
    assert main(["build", "--specs", "x"]) == 2
    assert "needs --out" in capsys.readouterr().err


def test_build_specs_writes_a_package_of_the_user_s_own(installed, user_project, tmp_path):
    from optforge.compiler.cli import main

    out = tmp_path / "vendor" / "my_optimizers"
    assert main(["build", "--specs", str(user_project), "--out", str(out)]) == 0
    assert main(["build", "--specs", str(user_project), "--out", str(out), "--check"]) == 0
    assert (out / "optim" / "qhadam.py").exists() and not any(installed.rglob("*qhadam*"))
    assert "from my_optimizers.host.qhadam import" in (out / "cpu" / "qhadam.py").read_text()
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import optforge
        from my_optimizers.optim import QHAdam
        opt = QHAdam([optforge.Parameter(np.ones(3, np.float32), "w")], lr=0.1)
        opt((np.ones(3, np.float32),))
        print("sympy" in sys.modules, "jinja2" in sys.modules, float(opt.parameters[0].data[0]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=out.parent, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == ["False", "False"] and float(result.stdout.split()[2]) < 1.0
    (user_project / "qhadam.py").write_text(QHADAM.replace("0.7, ", "0.75, "))
    assert main(["build", "--specs", str(user_project), "--out", str(out), "--check"]) == 1
    docs = tmp_path / "docs"
    assert main(["docs", "--specs", str(user_project), "--out", str(docs)]) == 0
    page = (docs / "optim.QHAdam.md").read_text()
    assert 'optforge.compile_spec("qhadam.py").optim.QHAdam' in page and "mindspore.experimental" not in page
    assert "nn.LARS" not in (docs / "index.md").read_text()


# -- state that starts from the parameter --

FROM_PARAMETER = textwrap.dedent(
    '''
    """Averaging toward an iterate that starts at the parameter (Schedule-Free's z)."""

    import sympy as sp

    from optforge.compiler.spec import Export, Hyper, Rule, Spec, State, g, lr, w

    c = sp.Symbol("c")
    z, d = sp.symbols("z d")
    SIGNATURE = (("lr", 1e-2), "c")

    SPEC = Spec(
        name="toward_z",
        title="TowardZ",
        source=__file__,
        summary="w moves toward z, an SGD iterate that starts at w.",
        hypers=[Hyper(c, ("float",), 0.5, "Weight of z.")],
        domains={c: sp.Interval(0, 1)},
        flags=[],
        state=[State(z, w, "z", "The SGD iterate."), State(d, 2 * abs(w) + c, "d", "A running max.")],
        rules=[
            Rule(z, z - lr * g),
            Rule(d, sp.Max(d, abs(g))),
            Rule(w, (1 - c) * w + c * z - lr * g / (d + 1)),
        ],
        decay="decoupled",
        exports=[Export("optim", "TowardZ", SIGNATURE), Export("torch", "TowardZ", SIGNATURE)],
    )
    '''
)


def toward_z_reference(w, grads, lr, c):
    z, d = w.copy(), 2 * np.abs(w) + c
    for g in grads:
        z = z - lr * g
        d = np.maximum(d, np.abs(g))
        w = (1 - c) * w + c * z - lr * g / (d + 1)
    return w, z, d


def test_a_state_may_start_from_the_parameter(user_project):
    (user_project / "toward_z.py").write_text(FROM_PARAMETER)
    compiled = optforge.compile_spec(user_project / "toward_z.py")
    rng = np.random.default_rng(2)
    values = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(5)]
    opt = compiled.optim.TowardZ([optforge.Parameter(x.copy(), f"p{i}") for i, x in enumerate(values)], c=0.3)
    np.testing.assert_array_equal(opt.z[1], values[1])  # a copy of the parameter, not its memory
    assert not np.shares_memory(opt.z[1], opt.parameters[1].data)
    for step in grads:
        opt(tuple(step))
    for i, p in enumerate(opt.parameters):
        w, z, d = toward_z_reference(values[i], [g[i] for g in grads], lr=1e-2, c=0.3)
        np.testing.assert_allclose(p.data, w, atol=1e-12, rtol=1e-10)
        np.testing.assert_allclose(opt.z[i], z, atol=1e-12, rtol=1e-10)
        np.testing.assert_allclose(opt.d[i], d, atol=1e-12, rtol=1e-10)

    torch = pytest.importorskip("torch")
    params = [torch.nn.Parameter(torch.tensor(x)) for x in values]
    topt = compiled.torch.TowardZ(params, c=0.3)
    with torch.no_grad():
        params[0].mul_(2)  # torch's state starts at the first step: from the value then
    for step in grads:
        for p, g in zip(params, step):
            p.grad = torch.tensor(g)
        topt.step()
    start = [values[0] * 2, *values[1:]]
    for i, p in enumerate(params):
        w, z, _ = toward_z_reference(start[i], [g[i] for g in grads], lr=1e-2, c=0.3)
        np.testing.assert_allclose(p.detach().numpy(), w, atol=1e-12, rtol=1e-10)
        np.testing.assert_allclose(topt.state[p]["z"].numpy(), z, atol=1e-12, rtol=1e-10)


def test_a_state_from_anything_but_the_parameter_and_hyperparameters_is_refused(user_project):
    from optforge.compiler.spec import SpecError

    (user_project / "bad_init.py").write_text(
        FROM_PARAMETER.replace('State(z, w, "z"', 'State(z, w + g, "z"')
    )
    with pytest.raises(
        SpecError, match="state 'z': initial value must be a number, a hyperparameter, lr, or an"
    ):
        optforge.compile_spec(user_project / "bad_init.py")


def test_build_and_docs_never_touch_the_user_s_own_files(installed, user_project, tmp_path, capsys):
    """Only .py files that assign SPEC are run; --out must be a folder of optforge's own."""
    from optforge.compiler.cli import main

    (user_project / "train.py").write_text("open('TRAIN_RAN', 'w').close()\n")
    (user_project / "helpers.py").write_text("BETA = 0.5\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.md").write_text("my notes")
    (mine / "model.py").write_text("x = 1")
    for command in (["build", "--specs", str(user_project), "--out", str(mine)],
                    ["docs", "--specs", str(user_project), "--out", str(mine)],
                    ["build", "--specs", str(user_project), "--out", str(user_project)],
                    ["build", "--specs", str(user_project), "--out", str(tmp_path)]):  # fmt: skip
        assert main(command) == 2
        assert capsys.readouterr().err.count("\n") == 1
    assert sorted(p.name for p in mine.iterdir()) == ["model.py", "notes.md"]
    assert not (user_project / "TRAIN_RAN").exists() and not (tmp_path / "TRAIN_RAN").exists()
    out = tmp_path / "pkg"
    assert main(["build", "--specs", str(user_project), "--out", str(out)]) == 0
    (out / "mine.py").write_text("x = 1")  # the user's file in optforge's folder: kept
    (user_project / "qhadam.py").write_text(
        QHADAM.replace('name="qhadam"', 'name="qh"')
    )  # renamed: old files go
    assert main(["build", "--specs", str(user_project), "--out", str(out)]) == 0
    assert (out / "mine.py").exists() and (out / "cpu" / "qh.py").exists()
    assert not (out / "cpu" / "qhadam.py").exists()
    assert not (user_project / "TRAIN_RAN").exists()


def test_a_spec_may_import_a_sibling_module_and_its_edits_recompile(user_project):
    (user_project / "qh_defaults.py").write_text("NU1 = 0.6\n")
    spec = QHADAM.replace("import sympy as sp\n", "import sympy as sp\n\nfrom qh_defaults import NU1\n", 1)
    (user_project / "qhadam.py").write_text(
        spec.replace('Hyper(nu1, ("float",), 0.7,', 'Hyper(nu1, ("float",), NU1,')
    )
    params = [optforge.Parameter(np.ones(3, np.float32), "w")]
    assert (
        optforge.compile_spec(user_project / "qhadam.py").optim.QHAdam(params).param_groups[0]["nus"][0]
        == 0.6
    )
    (user_project / "qh_defaults.py").write_text("NU1 = 0.4\n")
    again = optforge.compile_spec(user_project / "qhadam.py").optim.QHAdam(params)
    assert again.param_groups[0]["nus"][0] == 0.4


def test_a_state_starts_from_its_own_group_s_hyperparameters(user_project):
    (user_project / "toward_z.py").write_text(FROM_PARAMETER)
    compiled = optforge.compile_spec(user_project / "toward_z.py")
    a, b = optforge.Parameter(np.ones(3), "a"), optforge.Parameter(np.ones(3), "b")
    opt = compiled.optim.TowardZ([{"params": [a]}, {"params": [b], "c": 0.25}], c=0.5)
    np.testing.assert_array_equal(opt.d[0], 2.5)  # 2|w| + c, with each group's c
    np.testing.assert_array_equal(opt.d[1], 2.25)


def test_a_user_spec_s_checkpoints_never_pass_for_a_built_in_s(user_project):
    compiled = optforge.compile_spec(user_project / "qhadam.py")
    opt = compiled.optim.QHAdam([optforge.Parameter(np.ones(3, np.float32), "w")])
    sd = opt.state_dict()
    assert sd["optimizer"] == "user-spec.optim.qhadam.QHAdam"
    builtin = optforge.optim.Adam([optforge.Parameter(np.ones(3, np.float32), "w")])
    with pytest.raises(ValueError, match="the state dict is from"):
        builtin.load_state_dict(sd)


def test_a_missing_extra_is_one_line_naming_its_pip_install(monkeypatch, capsys):
    import optforge.bench.cpu as bench
    from optforge.compiler.cli import main

    def needs_torch(args):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(bench, "run_from_arguments", needs_torch)
    assert main(["bench", "adam"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "optforge[torch]"' in err and "torch==2.13.0" in err


# -- a user's spec composed from fragments --

MAXADAM = textwrap.dedent(
    '''
    """Adam with L2 decay and maximize, from optforge's fragments and a core of the user's own."""

    import sympy as sp

    from optforge.compiler import fragments as F
    from optforge.compiler.fragments import beta1, beta2, eps, g_eff, w_decayed
    from optforge.compiler.spec import Export, Rule, State, lr, t, w

    m, v = sp.symbols("m v")
    CORE = F.Fragment(
        "core",
        state=[State(m, 0, "exp_avg", "First moment."), State(v, 0, "exp_avg_sq", "Second moment.")],
        rules=[
            Rule(m, beta1 * m + (1 - beta1) * g_eff),
            Rule(v, beta2 * v + (1 - beta2) * g_eff**2),
            Rule(w, w_decayed - lr / (1 - beta1**t) * m / (sp.sqrt(v) / sp.sqrt(1 - beta2**t) + eps)),
        ],
    )
    SIGNATURE = (("lr", 1e-3), ("betas", ("beta1", "beta2")), "eps", ("weight_decay", 0.0), "maximize")

    SPEC = F.compose(
        F.betas(),
        F.epsilon(1e-8),
        CORE,
        F.maximize(),
        F.nn_prologue(),  # g*grad_scale + weight_decay*w: coupled L2 decay
        name="maxadam",
        title="MaxAdam",
        source=__file__,
        summary="Adam with L2 decay that can maximize.",
        exports=[Export("optim", "MaxAdam", SIGNATURE)],
    )
    '''
)


def maxadam_reference(w, grads, lr, betas, eps, weight_decay, maximize):
    """Adam with coupled L2 decay and torch's maximize, float64, written from the formula."""
    b1, b2 = betas
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, 1):
        g = (-g if maximize else g) + weight_decay * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - lr / (1 - b1**t) * m / (np.sqrt(v) / np.sqrt(1 - b2**t) + eps)
    return w


def test_a_user_spec_composed_from_fragments_compiles_and_matches_its_formula(user_project):
    (user_project / "maxadam.py").write_text(MAXADAM)
    compiled = optforge.compile_spec(user_project / "maxadam.py")
    rng = np.random.default_rng(2)
    kwargs = dict(lr=0.01, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.1, maximize=True)
    values = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(5)]
    opt = compiled.optim.MaxAdam(
        [optforge.Parameter(x.copy(), f"p{i}") for i, x in enumerate(values)], **kwargs
    )
    for step in grads:
        opt(tuple(step))
    for i, p in enumerate(opt.parameters):
        expected = maxadam_reference(values[i], [g[i] for g in grads], **kwargs)
        np.testing.assert_allclose(p.data, expected, atol=1e-12, rtol=1e-10)


def test_a_user_spec_applying_a_fragment_twice_is_a_spec_error_naming_its_file(user_project):
    from optforge.compiler.spec import SpecError

    (user_project / "twice.py").write_text(MAXADAM.replace("F.maximize(),", "F.maximize(), F.maximize(),"))
    with pytest.raises(
        SpecError, match="project/twice.py: fragment 'maximize': the gradient's sign is already"
    ):
        optforge.compile_spec(user_project / "twice.py")
