"""optforge.torch hands plain CPU gradients to the kernels by address; anything else is viewed
and checked one by one. Both give torch.optim's result."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import optforge.torch as ot  # noqa: E402
from optforge.runtime.optimizer import Addressed  # noqa: E402
from optforge.torch import optimizer as torch_optimizer  # noqa: E402


def pair(make_grad):
    torch.manual_seed(0)
    shapes = [(3, 5), (7,), (2, 3, 4)]
    ours = [torch.randn(s, requires_grad=True) for s in shapes]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    a, b = ot.AdamW(ours, lr=0.1, weight_decay=0.1), torch.optim.AdamW(theirs, lr=0.1, weight_decay=0.1)
    for step in range(3):
        grads = [torch.randn(s) for s in shapes]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = make_grad(g), g.clone()
        a.step()
        b.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)
    return a, ours


def test_plain_gradients_go_by_address_and_match_torch(monkeypatch):
    taken = []
    original = torch_optimizer._addressed

    def spy(params, grads):
        result = original(params, grads)
        taken.append(result is not None)
        return result

    monkeypatch.setattr(torch_optimizer, "_addressed", spy)
    a, ours = pair(lambda g: g.clone())
    assert taken and all(taken)
    # The batch holds the tensors its table points at until the next step.
    (batch,) = a._cohorts[0].engine._batches
    assert isinstance(batch.held[1], Addressed)
    assert [t.data_ptr() for t in batch.held[1]] == list(batch.arrays.addresses[1])


@pytest.mark.parametrize(
    "make_grad",
    [
        lambda g: g.t().contiguous().t() if g.dim() == 2 else g.clone(),  # transposed storage
        lambda g: g.double().float()[..., None].squeeze(-1),  # a view: contiguous, same values
        lambda g: torch.stack([g, g])[0],  # a view into a larger buffer
    ],
    ids=["transposed", "view", "offset"],
)
def test_other_gradients_step_the_same(make_grad):
    pair(make_grad)


def test_a_gradient_of_another_dtype_is_refused_as_before():
    p = torch.zeros(4, requires_grad=True)
    opt = ot.AdamW([p], lr=0.1)
    p.grad_dtype = None  # torch 2.13 refuses such a gradient unless asked to allow it
    p.grad = torch.ones(4, dtype=torch.float64)
    before = p.detach().clone()
    with pytest.raises(TypeError):
        opt.step()
    assert torch.equal(p.detach(), before) and np.all(p.detach().numpy() == 0)
