"""Training a small MLP with an optforge class and with its reference, step by step.

The model has a matrix, a vector and a 3-D tensor of odd sizes (the 3-D one reshaped into a
linear layer's weight), so a spec that treats tensors by rank meets every kind; the task is a
fixed synthetic regression. Shared by the tests that check classes against pytorch_optimizer.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

import optforge

TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=2e-5), torch.float64: dict(atol=1e-9, rtol=1e-9)}


class Model(torch.nn.Module):
    """Linear(7 -> 13) with a bias, tanh, then a weight kept as a (5, 13, 1) tensor with a bias."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.first = torch.nn.Linear(7, 13, dtype=dtype)
        with torch.no_grad():
            self.first.weight.copy_(torch.randn(13, 7, generator=generator, dtype=dtype) * 0.4)
            self.first.bias.copy_(torch.randn(13, generator=generator, dtype=dtype) * 0.1)
        self.cube = torch.nn.Parameter(torch.randn(5, 13, 1, generator=generator, dtype=dtype) * 0.3)
        self.bias = torch.nn.Parameter(torch.randn(5, generator=generator, dtype=dtype) * 0.1)

    def forward(self, x):
        return torch.tanh(self.first(x)) @ self.cube.reshape(5, 13).T + self.bias


def data(dtype: torch.dtype):
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(29, 7, generator=generator, dtype=dtype)
    y = torch.sin(x[:, :5] * 1.7) + 0.3 * x[:, 5:6]
    return x, y


def groups(model: Model, split: dict | tuple | None):
    """All parameters in one group, or two: matrices (+ `split` options) and vectors (+ the
    second dict's, where `split` is a pair of dicts)."""
    if split is None:
        return model.parameters()
    first, second = split if isinstance(split, tuple) else (split, {})
    return [
        {"params": [model.first.weight, model.cube], **first},
        {"params": [model.first.bias, model.bias], **second},
    ]


def train(make, dtype: torch.dtype, steps: int, split: dict | None = None, model=None, optimizer=None):
    """The parameters after each of `steps` steps of `make(params)` (or of `optimizer`)."""
    model = Model(dtype) if model is None else model
    optimizer = make(groups(model, split)) if optimizer is None else optimizer
    x, y = data(dtype)
    history = []
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        history.append([p.detach().clone() for p in model.parameters()])
    return history, model, optimizer


def assert_close_each_step(ours, theirs, dtype):
    for step, (a, b) in enumerate(zip(ours, theirs), 1):
        for k, (x, y) in enumerate(zip(a, b)):
            torch.testing.assert_close(
                x, y, **TOLERANCE[dtype], msg=lambda m: f"step {step}, tensor {k}: {m}"
            )


def train_optim_dialect(make, dtype: torch.dtype, steps: int, split: dict | None = None):
    """The same training with an optforge.optim class: Parameters over the tensors' memory,
    stepped with the gradients torch computes."""
    model = Model(dtype)
    params = [optforge.Parameter(p.detach().numpy(), f"p{i}") for i, p in enumerate(model.parameters())]
    order = [0, 1, 2, 3] if split is None else [0, 2, 1, 3]  # the optimizer's order: group by group
    if split is None:
        optimizer = make(params)
    else:
        first, second = split if isinstance(split, tuple) else (split, {})
        optimizer = make(
            [{"params": [params[0], params[2]], **first}, {"params": [params[1], params[3]], **second}]
        )
    x, y = data(dtype)
    history = []
    for _ in range(steps):
        model.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        grads = [p.grad.numpy().copy() for p in model.parameters()]
        optimizer(tuple(grads[i] for i in order))
        history.append([p.detach().clone() for p in model.parameters()])
    return history


def resume_is_bit_exact(make, dtype: torch.dtype, steps: int = 10, split: dict | None = None) -> None:
    """state_dict after `steps` steps, loaded into a fresh optimizer over a copy of the model:
    `steps` more steps equal, bit for bit, those of the uninterrupted run."""
    _, model, optimizer = train(make, dtype, steps, split)
    saved = copy.deepcopy(optimizer.state_dict())
    twin = copy.deepcopy(model)
    straight, _, _ = train(make, dtype, steps, split, model, optimizer)
    fresh = make(groups(twin, split))
    fresh.load_state_dict(saved)
    resumed, _, _ = train(make, dtype, steps, split, twin, fresh)
    for a, b in zip(straight, resumed):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    for p, q in zip(model.parameters(), twin.parameters()):
        for key, value in optimizer.state[p].items():
            assert torch.equal(value, fresh.state[q][key]), key


def numpy_dtype(dtype: torch.dtype):
    return {torch.float32: np.float32, torch.float64: np.float64}[dtype]
