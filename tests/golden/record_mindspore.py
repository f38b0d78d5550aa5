"""Record MindSpore 2.10 trajectories for the seed optimizers (run once, by hand).

    python3 -m venv /tmp/ms && . /tmp/ms/bin/activate
    pip install "mindspore==2.10.0" "numpy<2"
    python tests/golden/record_mindspore.py        # writes tests/golden/mindspore_2_10.npz
    python tests/golden/record_mindspore.py rprop_default asgd_default   # (re)records those, keeps the rest

Each case steps three parameters of different shapes (names chosen so the
beta/gamma weight-decay rule matters) through 12 steps of seeded random
gradients and keeps every parameter after every step (and, for the optimizers in
RECORDED_STATE, that state too: ASGD's average is its output). The inputs are saved
next to the results, so the tests need neither MindSpore nor this script.
Lamb is absent: MindSpore has no CPU kernel for it.
"""

import json
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn
from mindspore.experimental import optim

STEPS = 12
SHAPES = {"dense.weight": (3, 4), "dense.bias": (5,), "bn.gamma": (2, 3, 2)}
OUT = Path(__file__).with_name("mindspore_2_10.npz")
RECORDED_STATE = {"ASGD": "ax", "Rprop": "step_size"}  # MindSpore's attribute names

ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")


def inputs(seed, grad_scale=1.0):
    rng = np.random.default_rng(seed)
    w0 = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    grads = [
        {n: (rng.standard_normal(s) * 0.5 * grad_scale).astype(np.float32) for n, s in SHAPES.items()}
        for _ in range(STEPS)
    ]
    return w0, grads


def make_params(w0):
    return [Parameter(Tensor(w.copy()), name=n) for n, w in w0.items()]


def groups_of(params, spec):
    """spec: list of (indices, extra keys) -> MindSpore group dicts."""
    return [{"params": [params[i] for i in idx], **extra} for idx, extra in spec]


def run(kind, kwargs, seed, grad_scale=1.0, groups=None, scheduler=None):
    w0, grads = inputs(seed, grad_scale)
    params = make_params(w0)
    target = groups_of(params, groups) if groups else params
    lr_kwargs = dict(kwargs)
    if kind == "RAdam":
        opt = optim.RAdam(target, **lr_kwargs)
    else:
        opt = getattr(nn, kind)(target, **lr_kwargs)
    sched = None
    if scheduler:
        name, skw = scheduler
        sched = getattr(optim.lr_scheduler, name)(opt, **skw)
    history, states = [], []
    state = getattr(opt, RECORDED_STATE.get(kind, ""), None)
    for step in range(STEPS):
        opt(tuple(Tensor(grads[step][p.name]) for p in opt.parameters))
        if sched is not None:
            sched.step()
        history.append({p.name: p.asnumpy().copy() for p in params})
        if state is not None:
            states.append({p.name: s.asnumpy().copy() for p, s in zip(opt.parameters, state)})
    return w0, grads, history, states


CASES = {
    # name: (optimizer, kwargs, seed, grad scale, groups, scheduler)
    "adam_default": ("Adam", {"learning_rate": 0.01}, 1, 1.0, None, None),
    "adam_nesterov": ("Adam", {"learning_rate": 0.01, "use_nesterov": True}, 2, 1.0, None, None),
    "adam_amsgrad": ("Adam", {"learning_rate": 0.01, "use_amsgrad": True}, 3, 1.0, None, None),
    "adam_decay_loss_scale": (
        "Adam",
        {"learning_rate": 0.02, "weight_decay": 0.1, "loss_scale": 8.0},
        4,
        8.0,
        None,
        None,
    ),
    "adam_betas_eps": (
        "Adam",
        {"learning_rate": 0.01, "beta1": 0.8, "beta2": 0.95, "eps": 1e-3},
        5,
        1.0,
        None,
        None,
    ),
    "adam_lr_list": ("Adam", {"learning_rate": [0.05 / (k + 1) for k in range(STEPS)]}, 6, 1.0, None, None),
    "adam_groups": (
        "Adam",
        {"learning_rate": 0.01, "weight_decay": 0.02},
        7,
        1.0,
        [([0], {"lr": 0.05, "weight_decay": 0.1}), ([1, 2], {})],
        None,
    ),
    "adamoffload_default": ("AdamOffload", {"learning_rate": 0.01}, 11, 1.0, None, None),
    "adamoffload_nesterov": (
        "AdamOffload",
        {"learning_rate": 0.01, "use_nesterov": True},
        12,
        1.0,
        None,
        None,
    ),
    "adamoffload_decay_loss_scale": (
        "AdamOffload",
        {
            "learning_rate": 0.02,
            "weight_decay": 0.1,
            "loss_scale": 4.0,
            "beta1": 0.8,
            "beta2": 0.9,
            "eps": 1e-4,
        },
        13,
        4.0,
        None,
        None,
    ),
    "proximaladagrad_default": ("ProximalAdagrad", {"learning_rate": 0.05}, 21, 1.0, None, None),
    "proximaladagrad_l1_l2": (
        "ProximalAdagrad",
        {"learning_rate": 0.05, "accum": 0.2, "l1": 0.01, "l2": 0.05},
        22,
        1.0,
        None,
        None,
    ),
    "proximaladagrad_decay_loss_scale": (
        "ProximalAdagrad",
        {"learning_rate": 0.1, "l1": 0.02, "weight_decay": 0.1, "loss_scale": 2.0},
        23,
        2.0,
        None,
        None,
    ),
    "proximaladagrad_groups_lr_list": (
        "ProximalAdagrad",
        {"learning_rate": [0.1 * 0.9**k for k in range(STEPS)], "l1": 0.01},
        24,
        1.0,
        [([0, 1], {"weight_decay": 0.05}), ([2], {})],
        None,
    ),
    "momentum_default": ("Momentum", {"learning_rate": 0.01, "momentum": 0.9}, 41, 1.0, None, None),
    # (use_nesterov is left out: MindSpore 2.10's CPU kernel ignores it; see specs/momentum.py)
    "momentum_decay_loss_scale": (
        "Momentum",
        {"learning_rate": 0.01, "momentum": 0.8, "weight_decay": 0.1, "loss_scale": 4.0},
        42,
        4.0,
        None,
        None,
    ),
    "adagrad_default": ("Adagrad", {"learning_rate": 0.1}, 43, 1.0, None, None),
    "adagrad_decay_loss_scale": (
        "Adagrad",
        {"learning_rate": 0.1, "accum": 0.5, "weight_decay": 0.1, "loss_scale": 2.0},
        44,
        2.0,
        None,
        None,
    ),
    "rmsprop_default": ("RMSProp", {"learning_rate": 0.01}, 45, 1.0, None, None),
    "rmsprop_centered_momentum": (
        "RMSProp",
        {"learning_rate": 0.01, "momentum": 0.9, "centered": True, "epsilon": 1e-6},
        46,
        1.0,
        None,
        None,
    ),
    "rmsprop_decay_loss_scale": (
        "RMSProp",
        {"learning_rate": 0.01, "decay": 0.8, "weight_decay": 0.1, "loss_scale": 2.0},
        47,
        2.0,
        None,
        None,
    ),
    "adamax_default": ("AdaMax", {"learning_rate": 0.01}, 48, 1.0, None, None),
    "adamax_decay_loss_scale": (
        "AdaMax",
        {"learning_rate": 0.01, "beta1": 0.8, "beta2": 0.9, "weight_decay": 0.1, "loss_scale": 2.0},
        49,
        2.0,
        None,
        None,
    ),
    "adadelta_default": ("Adadelta", {"learning_rate": 1.0}, 50, 1.0, None, None),
    "adadelta_decay_loss_scale": (
        "Adadelta",
        {"learning_rate": 0.5, "rho": 0.8, "epsilon": 1e-4, "weight_decay": 0.1, "loss_scale": 2.0},
        51,
        2.0,
        None,
        None,
    ),
    "adamweightdecay_default": ("AdamWeightDecay", {"learning_rate": 0.01}, 52, 1.0, None, None),
    "adamweightdecay_decay": (
        "AdamWeightDecay",
        {"learning_rate": 0.01, "beta1": 0.8, "beta2": 0.95, "eps": 1e-4, "weight_decay": 0.1},
        53,
        1.0,
        None,
        None,
    ),
    "sgd_momentum": ("SGD", {"learning_rate": 0.05, "momentum": 0.9, "dampening": 0.1}, 54, 1.0, None, None),
    "sgd_nesterov_decay_loss_scale": (
        "SGD",
        {"learning_rate": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.1, "loss_scale": 2.0},
        55,
        2.0,
        None,
        None,
    ),
    "sgd_plain": ("SGD", {"learning_rate": 0.1}, 56, 1.0, None, None),
    "ftrl_default": ("FTRL", {"learning_rate": 0.1}, 57, 1.0, None, None),
    # (l1 is left out: MindSpore 2.10's CPU kernel grows |w| where `linear` < 0; see specs/ftrl.py)
    "ftrl_l2_power": (
        "FTRL",
        {"learning_rate": 0.1, "l2": 0.02, "lr_power": -0.7},
        58,
        1.0,
        None,
        None,
    ),
    "rprop_default": ("Rprop", {}, 59, 1.0, None, None),
    "rprop_etas_steps_decay": (
        "Rprop",
        {"learning_rate": 0.05, "etas": (0.3, 1.5), "step_sizes": (1e-3, 0.2), "weight_decay": 0.05},
        60,
        1.0,
        None,
        None,
    ),
    "asgd_default": ("ASGD", {}, 61, 1.0, None, None),
    "asgd_averaging_decay": (
        "ASGD",
        {"learning_rate": 0.05, "lambd": 0.01, "alpha": 0.5, "t0": 3.0, "weight_decay": 0.1},
        62,
        1.0,
        None,
        None,
    ),
    "radam_default": ("RAdam", {"lr": 0.01}, 31, 1.0, None, None),
    "radam_betas_eps_decay": (
        "RAdam",
        {"lr": 0.02, "betas": (0.8, 0.9), "eps": 1e-6, "weight_decay": 0.1},
        32,
        1.0,
        None,
        None,
    ),
    "radam_groups": (
        "RAdam",
        {"lr": 0.01},
        33,
        1.0,
        [([0], {"lr": 0.05, "betas": (0.85, 0.99)}), ([1, 2], {"weight_decay": 0.05, "eps": 1e-4})],
        None,
    ),
    "radam_steplr": ("RAdam", {"lr": 0.05}, 34, 1.0, None, ("StepLR", {"step_size": 3, "gamma": 0.5})),
}


def main(only):
    arrays, meta = {}, {}
    if only:  # keep every other recorded case as it is
        with np.load(OUT) as old:
            arrays = {k: old[k] for k in old.files if k != "meta"}
            meta = json.loads(str(old["meta"]))
        for name in only:
            meta.pop(name, None)
            arrays = {k: v for k, v in arrays.items() if not k.startswith(f"{name}/")}
    for name, (kind, kwargs, seed, scale, groups, scheduler) in CASES.items():
        if only and name not in only:
            continue
        w0, grads, history, states = run(kind, kwargs, seed, scale, groups, scheduler)
        meta[name] = {
            "optimizer": kind,
            "kwargs": kwargs,
            "groups": groups,
            "scheduler": scheduler,
            "names": list(SHAPES),
        }
        for n in SHAPES:
            arrays[f"{name}/w0/{n}"] = w0[n]
            arrays[f"{name}/grads/{n}"] = np.stack([g[n] for g in grads])
            arrays[f"{name}/history/{n}"] = np.stack([h[n] for h in history])
            if states:
                arrays[f"{name}/state/{n}"] = np.stack([h[n] for h in states])
        if states:
            meta[name]["state"] = RECORDED_STATE[kind]
        print(name, "done")
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez_compressed(OUT, **arrays)
    print("wrote", OUT)


if __name__ == "__main__":
    main(sys.argv[1:])
