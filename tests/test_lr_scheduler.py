"""optforge.optim.lr_scheduler against torch.optim.lr_scheduler (torch 2.13, a test dependency)."""

import math

import numpy as np
import pytest

import optforge
from optforge.optim import lr_scheduler

torch = pytest.importorskip("torch")  # installed by the test extra; see pyproject.toml
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")

EPOCHS = 25


def lambda_factor(epoch):
    return 0.95**epoch


SCHEDULERS = {
    "StepLR": lambda m, opt: m.StepLR(opt, step_size=3, gamma=0.5),
    "MultiStepLR": lambda m, opt: m.MultiStepLR(opt, milestones=[2, 5, 5, 11], gamma=0.3),
    "ExponentialLR": lambda m, opt: m.ExponentialLR(opt, gamma=0.9),
    "LinearLR": lambda m, opt: m.LinearLR(opt, start_factor=0.25, end_factor=1.0, total_iters=6),
    "CosineAnnealingLR": lambda m, opt: m.CosineAnnealingLR(opt, T_max=7, eta_min=0.001),
    "LambdaLR": lambda m, opt: m.LambdaLR(opt, lr_lambda=lambda_factor),
    "SequentialLR": lambda m, opt: m.SequentialLR(
        opt,
        schedulers=[m.LinearLR(opt, start_factor=0.1, total_iters=4), m.CosineAnnealingLR(opt, T_max=10)],
        milestones=[4],
    ),
    "chained": lambda m, opt: (m.StepLR(opt, step_size=4, gamma=0.5), m.ExponentialLR(opt, gamma=0.97)),
}


def lrs_of(make, module, opt, epochs=EPOCHS):
    schedulers = make(module, opt)
    schedulers = schedulers if isinstance(schedulers, tuple) else (schedulers,)
    history = []
    for _ in range(epochs):
        history.append([float(g["lr"]) for g in opt.param_groups])
        for s in schedulers:
            s.step()
    return history


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_scheduler_gives_torch_learning_rates(name):
    params = [
        optforge.Parameter(np.ones(2, np.float32), "a"),
        optforge.Parameter(np.ones(2, np.float32), "b"),
    ]
    ours = optforge.optim.RAdam([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.05}], lr=0.1)
    tparams = [torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))]
    theirs = torch.optim.RAdam([{"params": [tparams[0]]}, {"params": [tparams[1]], "lr": 0.05}], lr=0.1)
    got = lrs_of(SCHEDULERS[name], lr_scheduler, ours)
    want = lrs_of(SCHEDULERS[name], torch.optim.lr_scheduler, theirs)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_the_optimizer_steps_with_the_scheduled_learning_rate():
    """RAdam's unrectified first steps move w by lr * m_hat: with a unit gradient, exactly lr."""
    p = optforge.Parameter(np.zeros(3), "w")
    opt = optforge.optim.RAdam([p], lr=0.1)
    sched = lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    moves = []
    for _ in range(5):
        before = p.asnumpy()
        opt((np.ones(3),))
        sched.step()
        moves.append(float(before[0] - p.data[0]))
    np.testing.assert_allclose(moves, [0.1, 0.1, 0.05, 0.05, 0.025], rtol=1e-6)


def test_scheduler_checks_and_resume():
    opt = optforge.optim.RAdam([optforge.Parameter(np.ones(2), "w")], lr=0.1)
    with pytest.raises(TypeError, match="last_epoch"):
        lr_scheduler.StepLR(opt, step_size=2, last_epoch=1.5)
    with pytest.raises(ValueError, match="Invalid last_epoch"):
        lr_scheduler.StepLR(opt, step_size=2, last_epoch=-2)
    with pytest.raises(KeyError, match="initial_lr"):
        lr_scheduler.StepLR(opt, step_size=2, last_epoch=3)
    sched = lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    assert sched.get_last_lr() == [0.1]
    sched.step()
    assert math.isclose(sched.get_last_lr()[0], 0.05 * (1 + math.cos(math.pi / 4)))
