"""The seed optimizers against trajectories recorded from MindSpore 2.10 on the CPU.

tests/golden/record_mindspore.py made tests/golden/mindspore_2_10.npz: three
parameters of different shapes, 12 steps of seeded gradients, for defaults,
weight decay with loss scale, other betas/eps, flags, dynamic learning rates,
groups and (RAdam) a StepLR schedule. Lamb is absent: MindSpore has no CPU
kernel for it (see test_lamb.py). The nn catalogue (Momentum, Adagrad, RMSProp, AdaMax,
Adadelta, AdamWeightDecay, SGD, FTRL, Rprop, ASGD) is recorded the same way; for Rprop
and ASGD a state (step sizes, the running average) is compared too.
"""

import json
from pathlib import Path

import numpy as np
import pytest

import optforge
from tests.conftest import MS_TOL

GOLDEN = np.load(Path(__file__).parent / "golden" / "mindspore_2_10.npz")
META = json.loads(str(GOLDEN["meta"]))

CLASSES = {
    "Adam": optforge.nn.Adam,
    "AdamOffload": optforge.nn.AdamOffload,
    "ProximalAdagrad": optforge.nn.ProximalAdagrad,
    "Momentum": optforge.nn.Momentum,
    "Adagrad": optforge.nn.Adagrad,
    "RMSProp": optforge.nn.RMSProp,
    "AdaMax": optforge.nn.AdaMax,
    "Adadelta": optforge.nn.Adadelta,
    "AdamWeightDecay": optforge.nn.AdamWeightDecay,
    "SGD": optforge.nn.SGD,
    "FTRL": optforge.nn.FTRL,
    "Rprop": optforge.nn.Rprop,
    "ASGD": optforge.nn.ASGD,
    "RAdam": optforge.optim.RAdam,
}


def build(case):
    meta = META[case]
    params = [optforge.Parameter(GOLDEN[f"{case}/w0/{n}"].copy(), n) for n in meta["names"]]
    kwargs = dict(meta["kwargs"])
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}  # JSON made them lists
    target = params
    if meta["groups"]:
        target = []
        for indices, extra in meta["groups"]:
            extra = {k: tuple(v) if isinstance(v, list) else v for k, v in extra.items()}
            target.append({"params": [params[i] for i in indices], **extra})
    opt = CLASSES[meta["optimizer"]](target, **kwargs)
    scheduler = None
    if meta["scheduler"]:
        name, skw = meta["scheduler"]
        scheduler = getattr(optforge.optim.lr_scheduler, name)(opt, **skw)
    return opt, params, scheduler


@pytest.mark.parametrize("case", sorted(META))
def test_matches_mindspore_over_twelve_steps(case):
    opt, params, scheduler = build(case)
    names = META[case]["names"]
    grads = {n: GOLDEN[f"{case}/grads/{n}"] for n in names}
    history = {n: GOLDEN[f"{case}/history/{n}"] for n in names}
    state_name = META[case].get("state")  # a recorded state (ASGD's average) is compared too
    for step in range(12):
        assert opt(tuple(grads[p.name][step] for p in opt.parameters)) is True
        if scheduler is not None:
            scheduler.step()
        for p in params:
            np.testing.assert_allclose(
                p.data, history[p.name][step], **MS_TOL, err_msg=f"{case}: {p.name} after step {step + 1}"
            )
        if state_name:
            for p, s in zip(opt.parameters, getattr(opt, state_name)):
                np.testing.assert_allclose(
                    s,
                    GOLDEN[f"{case}/state/{p.name}"][step],
                    **MS_TOL,
                    err_msg=f"{case}: {state_name} of {p.name} after step {step + 1}",
                )
