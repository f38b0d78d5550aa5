"""8-bit blockwise state in optforge.torch (`state_dtype="int8"`), against float32 state.

An int8 step reads each code as ``table[code] * absmax``, steps in float32 and writes the new
values back as codes. So from the same dequantised state a float32-state optimizer of the same
class must take the same step: the same parameter bits, and new state whose codes and absmax
(`quantize_blockwise`) are the int8 optimizer's bit for bit. Classes with a reduction over a
tensor (Lamb's trust ratio, Adafactor's and StableAdamW's RMS, Prodigy's sums) read the stored
codes again in their second stage, so theirs agree to the codes' rounding. Then checkpoints
(torch's layout, bit-exact resume, torch.optim's state dicts both ways), partial gradients, and
every refusal with nothing changed.
"""

from __future__ import annotations

import copy
import importlib
import io
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import optforge.torch  # noqa: E402
from optforge.runtime.quantize import BLOCK, MIDPOINTS, TABLES, dequantize_blockwise, quantize_blockwise  # noqa: E402
from tests.test_precision_api import classes, required  # noqa: E402

SIZES = [(700,), (3, 5), (257,)]  # partial blocks, a matrix, a block and one element


def _module(cls):
    return importlib.import_module(f"{cls._KERNELS}.cpu.{cls._SPEC}")


def _codes_states(cls) -> dict[str, str]:
    """torch's key of each state this class may keep as codes -> its code table's kind."""
    tables = getattr(_module(cls), "INT8_TABLES", {})
    return {cls._STATE_KEYS[n]: kind for n, kind in tables.items() if kind and n in cls._STATE_KEYS}


INT8_CLASSES = [c for c in classes(optforge.torch) if _codes_states(c)]


def _rereads_state(cls) -> bool:
    """Whether its step reduces over a tensor: a second stage then reads the stored state."""
    variant = next(iter(_module(cls).VARIANTS.values()))
    return any(branch.plan.reductions for branch in variant.branches.values())


def _make(cls, sizes=SIZES, seed=0, **options):
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s)) for s in sizes]
    opt = cls(params, **{**required(cls), **options})
    if hasattr(opt, "train"):  # Schedule-Free steps in train mode
        opt.train()
    return params, opt


def _step(params, opt, generator, grads=None):
    grads = grads or [torch.randn(p.shape, generator=generator) for p in params]
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()
    opt.step()
    return grads


def _snapshot(params, opt) -> list[torch.Tensor]:
    tensors = [p.detach().clone() for p in params]
    for p in params:
        tensors += [v.clone() for v in opt.state.get(p, {}).values() if isinstance(v, torch.Tensor)]
    return tensors


def _same(a, b) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))


def test_the_classes_that_may_keep_codes_are_most_of_them():
    names = {c.__name__ for c in INT8_CLASSES}
    assert {"Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Lion", "Lamb", "NAdam", "RAdam"} <= names
    assert "Rprop" not in names  # its states are snapshots (INT8_REFUSED)


@pytest.mark.parametrize("cls", INT8_CLASSES, ids=lambda c: c.__name__)
def test_an_int8_step_is_the_float32_step_from_the_dequantised_state(cls):
    codes = _codes_states(cls)
    sizes = [(40, 9), (3, 5)] if cls.__name__ == "Muon" else SIZES  # Muon: matrices only
    params, opt = _make(cls, sizes, state_dtype=dict.fromkeys(codes, "int8"))
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        _step(params, opt, generator)
    for p in params:
        for key in codes.keys() & opt.state[p].keys():
            assert opt.state[p][key].dtype is torch.uint8 and opt.state[p][key].numel() == p.numel()
            absmax = opt.state[p][key + "_absmax"]
            assert absmax.dtype is torch.float32 and absmax.shape == (-(-p.numel() // BLOCK),)
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    reference = cls(twins, **required(cls), state_dtype="float32")
    if hasattr(reference, "train"):
        reference.train()
    reference.load_state_dict(opt.float32_state_dict())
    grads = _step(params, opt, generator)
    _step(twins, reference, None, grads)
    if _rereads_state(cls):
        for p, q in zip(params, twins):  # the second stage read the codes, not the float32 values
            torch.testing.assert_close(p, q, rtol=0, atol=1e-3)
        return
    assert all(torch.equal(p, q) for p, q in zip(params, twins))
    for p, q in zip(params, twins):
        for key in codes.keys() & opt.state[p].keys():
            kind = codes[key]
            expected, absmax = quantize_blockwise(
                reference.state[q][key].numpy(), TABLES[kind], mids=MIDPOINTS[kind]
            )
            assert np.array_equal(opt.state[p][key].numpy().reshape(-1), expected), key
            assert np.array_equal(opt.state[p][key + "_absmax"].numpy(), absmax), key


@pytest.mark.parametrize("cls", [optforge.torch.AdamW, optforge.torch.Lamb, optforge.torch.SGD])
def test_a_checkpoint_resumes_bit_for_bit_through_torch_save_deepcopy_and_pickle(cls):
    params, opt = _make(cls, state_dtype="int8")
    generator = torch.Generator().manual_seed(4)
    for _ in range(3):
        _step(params, opt, generator)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    values = [p.detach().clone() for p in params]
    copied = copy.deepcopy(opt)
    pickled = pickle.loads(pickle.dumps(opt))
    grads = [_step(params, opt, generator) for _ in range(2)]
    resumed_params, resumed = _make(cls, state_dtype="int8")
    with torch.no_grad():
        for p, v in zip(resumed_params, values):
            p.copy_(v)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    for other in (resumed, copied, pickled):
        mine = [p for group in other.param_groups for p in group["params"]]
        for g in grads:
            _step(mine, other, None, g)
        assert _same(_snapshot(params, opt), _snapshot(mine, other)), type(other).__name__


def test_the_float32_state_dict_dequantises_and_torch_optim_steps_on_from_it():
    params, opt = _make(optforge.torch.AdamW, lr=1e-2, state_dtype="int8")
    generator = torch.Generator().manual_seed(5)
    for _ in range(3):
        _step(params, opt, generator)
    saved = opt.float32_state_dict()
    assert "exp_avg_absmax" not in saved["state"][0] and "exp_avg_qmap" not in saved["state"][0]
    kept, absmax = opt.state[params[0]]["exp_avg"], opt.state[params[0]]["exp_avg_absmax"]
    expected = dequantize_blockwise(kept.numpy(), absmax.numpy(), TABLES["signed"]).reshape(kept.shape)
    assert saved["state"][0]["exp_avg"].dtype is torch.float32
    assert np.array_equal(saved["state"][0]["exp_avg"].numpy(), expected)
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    reference = torch.optim.AdamW(twins, lr=1e-2)
    # a copy: torch's load keeps the tensors it is given, and steps `step` in place
    reference.load_state_dict(copy.deepcopy(saved))
    grads = _step(params, opt, generator)
    _step(twins, reference, None, grads)
    for p, q in zip(params, twins):  # torch's own AdamW, from the same moments: its rounding only
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert opt.state[params[0]]["exp_avg"].dtype is torch.uint8  # ours is untouched


def test_torch_optim_state_loads_quantised_and_codes_load_dequantised():
    params, reference = _make(torch.optim.Adam, lr=1e-2)
    generator = torch.Generator().manual_seed(6)
    for _ in range(2):
        _step(params, reference, generator)
    saved = reference.state_dict()
    _, quantised = _make(optforge.torch.Adam, lr=1e-2, state_dtype="int8")
    quantised.load_state_dict(saved)
    qparams = quantised.param_groups[0]["params"]
    for i, (p, q) in enumerate(zip(params, qparams)):
        for key, kind in (("exp_avg", "signed"), ("exp_avg_sq", "unsigned")):
            codes, absmax = quantize_blockwise(
                saved["state"][i][key].numpy(), TABLES[kind], mids=MIDPOINTS[kind]
            )
            assert np.array_equal(quantised.state[q][key].numpy().reshape(-1), codes)
            assert np.array_equal(quantised.state[q][key + "_absmax"].numpy(), absmax)
        assert int(quantised.state[q]["step"]) == 2
    _, widened = _make(optforge.torch.Adam, lr=1e-2)  # float32 state, from the codes
    widened.load_state_dict(quantised.state_dict())
    for q, w in zip(qparams, widened.param_groups[0]["params"]):
        values = dequantize_blockwise(
            quantised.state[q]["exp_avg_sq"].numpy(),
            quantised.state[q]["exp_avg_sq_absmax"].numpy(),
            TABLES["unsigned"],
        )
        assert np.array_equal(widened.state[w]["exp_avg_sq"].numpy().reshape(-1), values)
        assert widened.state[w]["exp_avg_sq"].dtype is torch.float32


def _broken(saved: dict, change) -> dict:
    state = {i: dict(s) for i, s in saved["state"].items()}
    change(state[0])
    return {**saved, "state": state}


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda s: s.update(exp_avg=s["exp_avg"].to(torch.int16)), "not a torch.uint8 tensor"),
        (lambda s: s.update(exp_avg_absmax=s["exp_avg_absmax"][:-1]), "one value per 256"),
        (lambda s: s.update(exp_avg_absmax=s["exp_avg_absmax"].double()), "not torch.float32"),
        (lambda s: s.pop("exp_avg_absmax"), "without 'exp_avg_absmax'"),
        (lambda s: s.update(exp_avg=s["exp_avg"][:5]), "has shape (5,)"),
        (lambda s: s.pop("exp_avg_qmap"), "without 'exp_avg_qmap'"),
        (lambda s: s.update(exp_avg_qmap=s["exp_avg_qmap"][:100]), "not a float32 tensor of 256"),
    ],
    ids=[
        "codes int16",
        "absmax short",
        "absmax float64",
        "no absmax",
        "codes short",
        "no qmap",
        "qmap short",
    ],
)
def test_a_state_dict_with_broken_codes_is_refused_with_nothing_changed(change, words):
    params, opt = _make(optforge.torch.Adam, lr=1e-2, state_dtype="int8")
    generator = torch.Generator().manual_seed(7)
    _step(params, opt, generator)
    saved = copy.deepcopy(opt.state_dict())
    _step(params, opt, generator)
    before = _snapshot(params, opt)
    with pytest.raises(ValueError) as raised:
        opt.load_state_dict(_broken(saved, change))
    assert words in str(raised.value)
    assert _same(before, _snapshot(params, opt))
    twin_params, twin = _make(optforge.torch.Adam, lr=1e-2, state_dtype="int8")  # never refused
    twin_generator = torch.Generator().manual_seed(7)
    _step(twin_params, twin, twin_generator)
    _step(twin_params, twin, twin_generator)
    grads = _step(params, opt, generator)
    _step(twin_params, twin, None, grads)
    assert _same(_snapshot(params, opt), _snapshot(twin_params, twin))


def test_codes_without_their_table_are_refused_and_a_non_float_state_too():
    params, opt = _make(optforge.torch.Rprop, lr=1e-2)
    _step(params, opt, torch.Generator().manual_seed(8))
    saved = opt.state_dict()
    codes = _broken(saved, lambda s: s.update(prev_absmax=torch.zeros(3), prev=s["prev"].to(torch.uint8)))
    with pytest.raises(ValueError, match="without 'prev_qmap', the code table they index"):
        opt.load_state_dict(codes)
    with pytest.raises(ValueError, match="not a floating-point tensor"):
        opt.load_state_dict(_broken(saved, lambda s: s.update(prev=s["prev"].to(torch.uint8))))


@pytest.mark.parametrize(
    "source, target",
    [
        (optforge.torch.Lamb, optforge.torch.StableAdamW),  # unsigned exp_avg_sq -> signed
        (optforge.torch.StableAdamW, optforge.torch.AdamW),  # signed -> unsigned
        (optforge.torch.StableAdamW, None),  # signed codes -> float32 state of AdamW
    ],
    ids=["unsigned into signed", "signed into unsigned", "codes into float32 state"],
)
def test_codes_of_another_class_load_by_their_own_table(source, target):
    """StableAdamW keeps exp_avg_sq in the signed table, Lamb and AdamW in the unsigned one:
    saved with their table (`exp_avg_sq_qmap`), codes are read as the values they are, then
    requantised into the loading optimizer's table (or kept as float32 values)."""
    params, opt = _make(source, lr=1e-2, state_dtype="int8")
    _step(params, opt, torch.Generator().manual_seed(16))
    values = opt.float32_state_dict()["state"]
    assert not any(k.endswith(("_absmax", "_qmap")) for k in values[0])
    loading = target or optforge.torch.AdamW
    _, other = _make(loading, lr=1e-2, **({"state_dtype": "int8"} if target else {}))
    other.load_state_dict(opt.state_dict())
    for i, q in enumerate(other.param_groups[0]["params"]):
        loaded = other.float32_state_dict()["state"][i]["exp_avg_sq"]
        assert torch.all(loaded >= 0)
        scale = float(values[i]["exp_avg_sq"].abs().max())
        # within the loading table's rounding of the source's values
        torch.testing.assert_close(loaded, values[i]["exp_avg_sq"], rtol=0.07, atol=1e-2 * scale)
        if target is None:
            assert torch.equal(other.state[q]["exp_avg_sq"], values[i]["exp_avg_sq"])


def test_a_state_that_cannot_be_codes_is_refused_at_construction_naming_it():
    with pytest.raises(ValueError, match="state 'prev' cannot be kept as 8-bit codes"):
        optforge.torch.Rprop([torch.nn.Parameter(torch.zeros(3))], state_dtype="int8")
    with pytest.raises(ValueError, match="state 'row_var' cannot be kept as 8-bit codes.*row-shaped"):
        optforge.torch.Adafactor(
            [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4, 5))],
            state_dtype={"row_var": "int8"},
        )
    opt = optforge.torch.Adafactor(  # a vector's variance may be codes beside a matrix's factors
        [torch.nn.Parameter(torch.zeros(300)), torch.nn.Parameter(torch.zeros(4, 5))],
        state_dtype={"variance": "int8"},
    )
    params = opt.param_groups[0]["params"]
    _step(params, opt, torch.Generator().manual_seed(9))
    assert opt.state[params[0]]["variance"].dtype is torch.uint8
    assert opt.state[params[1]]["row_var"].dtype is torch.float32


def test_partial_gradients_step_each_tensor_s_codes_as_alone():
    """A cohort split by a missing gradient steps its part's codes; the rest keep theirs. Each
    tensor's blocks are its own, so each ends as an optimizer over it alone would leave it."""
    params, opt = _make(optforge.torch.AdamW, state_dtype="int8")
    alone = [_make(optforge.torch.AdamW, [s], state_dtype="int8") for s in SIZES]
    with torch.no_grad():
        for p, (ps, _) in zip(params, alone):
            ps[0].copy_(p)
    generator = torch.Generator().manual_seed(10)
    for present in ([0, 1, 2], [0, 2], [1], [0, 1, 2]):
        grads = [
            torch.randn(p.shape, generator=generator) if i in present else None for i, p in enumerate(params)
        ]
        before = {i: _snapshot([params[i]], opt) for i in range(3) if i not in present}
        _step(params, opt, None, grads)
        for i, kept in before.items():
            assert _same(kept, _snapshot([params[i]], opt))
        for i in present:
            _step(*alone[i], None, [grads[i]])
    for i, (ps, other) in enumerate(alone):
        assert _same(_snapshot([params[i]], opt), _snapshot(ps, other))


def test_sgd_without_momentum_keeps_no_codes_and_refuses_momentum_later():
    params, opt = _make(optforge.torch.SGD, lr=1e-2, momentum=0.0, state_dtype="int8")
    _step(params, opt, torch.Generator().manual_seed(11))
    assert all(not opt.state.get(p) for p in params)
    opt.param_groups[0]["momentum"] = 0.9
    before = _snapshot(params, opt)
    with pytest.raises(RuntimeError, match="momentum_buffer"):
        _step(params, opt, torch.Generator().manual_seed(12))
    assert _same(before, _snapshot(params, opt))


def test_sgd_groups_with_and_without_momentum_split_and_merge_over_codes():
    """A group without momentum keeps no codes (nor absmax) beside one that keeps them, through
    a cohort split by a missing gradient (a new engine over the arrays not kept) and a merge;
    each group ends as an optimizer over it alone would leave it."""
    torch.manual_seed(13)
    values = [torch.randn(s) for s in SIZES]
    params = [torch.nn.Parameter(v.clone()) for v in values]
    groups = [{"params": params[:2], "momentum": 0.0}, {"params": params[2:], "momentum": 0.9}]
    opt = optforge.torch.SGD(groups, lr=1e-2, state_dtype="int8")
    alone = []
    for group, indices in zip(groups, ([0, 1], [2])):
        twins = [torch.nn.Parameter(values[i].clone()) for i in indices]
        other = optforge.torch.SGD(twins, lr=1e-2, momentum=group["momentum"], state_dtype="int8")
        alone.append((twins, other))
    generator = torch.Generator().manual_seed(14)
    for present in ([0, 1, 2], [1, 2], [0, 1, 2]):
        grads = [
            torch.randn(p.shape, generator=generator) if i in present else None for i, p in enumerate(params)
        ]
        _step(params, opt, None, grads)
        for (twins, other), part in zip(alone, (grads[:2], grads[2:])):
            if any(g is not None for g in part):
                _step(twins, other, None, part)
    assert not opt.state.get(params[0]) and not opt.state.get(params[1])
    assert opt.state[params[2]]["momentum_buffer"].dtype is torch.uint8
    assert _same(_snapshot(params[:2], opt), _snapshot(*alone[0]))
    assert _same(_snapshot(params[2:], opt), _snapshot(*alone[1]))


@pytest.mark.parametrize(
    "cls, lr",
    [(optforge.torch.Lamb, 1e-3), (optforge.torch.StableAdamW, 1e-3), (optforge.torch.Prodigy, 1.0)],
    ids=["Lamb", "StableAdamW", "Prodigy"],
)
def test_a_second_moment_far_below_its_block_s_largest_never_reads_back_as_zero(cls, lr):
    """A block with one gradient 1e4 times the others: their second moments are 1e-8 of the
    block's largest, below the smallest nonzero code. Read back as 0 by the second stage, they
    would step by m / eps (StableAdamW: 9 instead of 1e-3); kept at the smallest code, the step
    is at most float32 state's."""
    g = torch.full((256,), 1e-4)
    g[0] = 1.0
    updates = {}
    for state_dtype in (None, "int8"):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(256))
        before = p.detach().clone()
        opt = cls([p], lr=lr, state_dtype=state_dtype)
        p.grad = g.clone()
        opt.step()
        updates[state_dtype] = (p.detach() - before).abs()
    assert torch.all(updates["int8"] <= updates[None] * 1.01 + 1e-9)
    assert torch.all(updates["int8"][1:] > 0)


def test_an_adam_moment_whose_gradient_stops_steps_less_than_float32_not_by_m_over_eps():
    steps = {}
    for state_dtype in (None, "int8"):
        p = torch.nn.Parameter(torch.zeros(256))
        opt = optforge.torch.Adam([p], lr=1e-3, state_dtype=state_dtype)
        g = torch.zeros(256)
        g[0], g[1] = 1.0, 1e-4
        p.grad = g.clone()
        opt.step()
        before = p[1].item()
        g[1] = 0.0  # element 1 gets no gradient at step 2: its update is m_hat / sqrt(v_hat)
        p.grad = g.clone()
        opt.step()
        steps[state_dtype] = before - p[1].item()
    assert 0 < steps["int8"] <= steps[None]


@pytest.mark.parametrize(
    "state_dtype, change, words",
    [
        ("int8", lambda s: s.update(exp_avg_absmax=s["exp_avg_absmax"].bfloat16()), "is torch.bfloat16"),
        ("int8", lambda s: s.update(exp_avg_absmax=s["exp_avg_absmax"][:1].clone()), "has 1 elements, not 3"),
        ("int8", lambda s: s.pop("exp_avg_absmax"), "without their 'exp_avg_absmax'"),
        (None, lambda s: s.update(exp_avg=s["exp_avg"].bfloat16()), "is torch.bfloat16"),
        (None, lambda s: s.update(exp_avg_sq=s["exp_avg_sq"][:10].clone()), "has 10 elements"),
    ],
    ids=["absmax bfloat16", "absmax short", "absmax gone", "state bfloat16", "state short"],
)
def test_a_copy_whose_state_tensors_were_cast_or_cut_is_refused(state_dtype, change, words):
    """deepcopy and pickle build the copy's kernels over its `state[p]` tensors: one cast to
    another dtype or cut short would have them write past its end. Refused, naming it."""
    params, opt = _make(optforge.torch.AdamW, lr=1e-2, state_dtype=state_dtype)
    _step(params, opt, torch.Generator().manual_seed(15))
    change(opt.state[params[0]])
    with pytest.raises(ValueError, match=words):
        copy.deepcopy(opt)
