"""DTensor inputs that FSDP2's own path does not make, on 2 real gloo ranks (127.0.0.1):
gradients placed otherwise than their parameters, and checkpoints whose states are
placed otherwise than this optimizer's. Each is either stepped as torch's DTensor ops
would step it, or refused with every parameter and state byte unchanged.

The worker asserts (a failed assertion on a rank fails the test with its traceback).
"""

from __future__ import annotations

import torch

from tests.distributed_harness import run_ranks

SHAPE = (7, 5)  # 7 rows over 2 ranks: 4 and 3


def _snapshot(params, opt) -> list[torch.Tensor]:
    """Every parameter's and state tensor's local bytes, copied."""
    from optforge.torch.dtensor import local

    tensors = [local(p).clone() for p in params]
    for p in params:
        for value in opt.state.get(p, {}).values():
            if isinstance(value, torch.Tensor):
                tensors.append(local(value).clone())
    return tensors


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def inputs_worker(rank: int, world: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

    import optforge.torch as ot

    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)  # the same numbers on every rank
    whole = torch.randn(SHAPE)
    grads = [torch.randn(SHAPE) for _ in range(3)]

    def split_param():
        return torch.nn.Parameter(distribute_tensor(whole.clone(), mesh, [Shard(0)]))

    # 8-bit codes on a DTensor parameter: each rank's blocks would not form one tensor of the
    # parameter's layout. Refused as the parameter is added.
    try:
        ot.AdamW([split_param()], lr=1e-2, state_dtype="int8")
    except ValueError as error:
        assert "cannot keep state as 8-bit codes" in str(error), error
    else:
        raise AssertionError("8-bit state on a DTensor parameter was taken")
    ot.AdamW([split_param()], lr=1e-2, state_dtype={"exp_avg": "bfloat16"})  # 16-bit state is fine

    for cls in ("AdamW", "Lamb", "Adafactor"):
        # A replicated gradient on a split parameter: this rank's rows of it are stepped,
        # exactly as the same gradient given split (no collective is needed to take rows).
        given, twin = split_param(), split_param()
        opt_given, opt_twin = getattr(ot, cls)([given], lr=1e-2), getattr(ot, cls)([twin], lr=1e-2)
        for g in grads:
            given.grad = distribute_tensor(g.clone(), mesh, [Replicate()])
            twin.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
            opt_given.step()
            opt_twin.step()
        assert torch.equal(given.to_local(), twin.to_local()), cls

        # A pending sum (Partial: each rank holds a part of it) on a split parameter: the sum's
        # rows are stepped. Each rank's part is g/world (exact in binary for world 2).
        summed, twin = split_param(), split_param()
        opt_summed, opt_twin = getattr(ot, cls)([summed], lr=1e-2), getattr(ot, cls)([twin], lr=1e-2)
        for g in grads:
            summed.grad = DTensor.from_local(g / world, mesh, [Partial()], run_check=False)
            twin.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
            opt_summed.step()
            opt_twin.step()
        assert torch.equal(summed.to_local(), twin.to_local()), cls

        # A plain tensor as a DTensor parameter's gradient: which rows would it be? Refused.
        p = split_param()
        opt = getattr(ot, cls)([p], lr=1e-2)
        p.grad = distribute_tensor(grads[0].clone(), mesh, [Shard(0)])
        opt.step()
        before = _snapshot([p], opt)
        p.grad = torch.randn(SHAPE)
        try:
            opt.step()
        except TypeError as error:
            assert "is a DTensor, but its gradient is not one" in str(error), error
        else:
            raise AssertionError(f"{cls}: a plain gradient on a DTensor parameter was stepped")
        _assert_same(before, _snapshot([p], opt))

        # Checkpoints. A state dict whose states are whole (replicated on every rank, or a
        # consolidated torch.Tensor) loads this rank's rows: the same as the sharded one.
        p.grad = distribute_tensor(grads[1].clone(), mesh, [Shard(0)])
        opt.step()
        saved = opt.state_dict()
        kept = _snapshot([p], opt)

        def placed(state_dict, make):
            return {
                **state_dict,
                "state": {
                    i: {k: make(v) if isinstance(v, DTensor) else v for k, v in s.items()}
                    for i, s in state_dict["state"].items()
                },
            }

        for whole_state in (
            placed(saved, lambda v: v.redistribute(mesh, [Replicate()])),
            placed(saved, lambda v: v.full_tensor()),
        ):
            opt.load_state_dict(whole_state)
            _assert_same(kept, _snapshot([p], opt))

        # A state placed as a pending sum cannot be loaded without a collective: refused, and
        # nothing changes: the next step is the step of an optimizer that was never asked.
        pending = placed(
            saved, lambda v: DTensor.from_local(v.full_tensor(), mesh, [Partial()], run_check=False)
        )
        try:
            opt.load_state_dict(pending)
        except ValueError as error:
            assert "cannot be loaded" in str(error) and "Partial" in str(error), error
        else:
            raise AssertionError(f"{cls}: a state placed Partial was loaded")
        _assert_same(kept, _snapshot([p], opt))
        p.grad = distribute_tensor(grads[2].clone(), mesh, [Shard(0)])
        opt.step()
        after_refusal = _snapshot([p], opt)

        q = split_param()  # the same history, never given the pending state dict
        opt_q = getattr(ot, cls)([q], lr=1e-2)
        for g in grads:
            q.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
            opt_q.step()
        _assert_same(after_refusal, _snapshot([q], opt_q))


def test_dtensor_gradients_and_states_placed_otherwise():
    run_ranks(2, inputs_worker, timeout_s=120)
