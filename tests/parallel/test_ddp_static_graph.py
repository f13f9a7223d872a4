"""DDP with ``static_graph=True``: the first backward records which parameters are used; later
ones need neither ``find_unused_parameters`` nor a graph traversal, and a changed graph is an
error."""

from __future__ import annotations

import numpy as np
import pytest
from ddp_helpers import TwoHeads

from mpdist.optim import SGD
from mpdist.parallel import DistributedDataParallel as DDP
from mpdist.parallel import reducer
from mpdist.testing import spawn_threads

STEPS = 4


def x_for(rank: int, step: int) -> np.ndarray:
    return np.random.default_rng(10 * step + rank).standard_normal((3, 4))


def train(model, rank: int, steps: int = STEPS) -> list[np.ndarray]:
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(steps):
        opt.zero_grad()
        model(x_for(rank, step)).sum().backward()
        opt.step()
    return [p.data.copy() for p in model.parameters()]


def reference(world_size: int) -> list[np.ndarray]:
    """One process, the gradient averaged over the ranks' batches by hand."""
    model = TwoHeads()
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(STEPS):
        opt.zero_grad()
        for r in range(world_size):
            (model(x_for(r, step)).sum() / world_size).backward()
        opt.step()
    return [p.data.copy() for p in model.parameters()]


@pytest.mark.parametrize("find_unused", [False, True])
def test_unused_head_trains_without_find_unused_parameters(find_unused, monkeypatch) -> None:
    """head_b is never used. Without static_graph (and find_unused_parameters) the second
    forward raises; with it, training matches one process, head_b keeps no gradient, and
    the output graph is never traversed (also when find_unused_parameters is set)."""
    traversals: list[int] = []
    real = reducer._reachable_leaves
    monkeypatch.setattr(reducer, "_reachable_leaves", lambda out: traversals.append(1) or real(out))

    def body(rank: int, ws: int):
        ddp = DDP(TwoHeads(), static_graph=True, find_unused_parameters=find_unused)
        params = train(ddp, rank)
        return params, ddp.module.head_b.weight.grad

    out = spawn_threads(body, 2)
    ref = reference(2)
    for params, head_b_grad in out:
        assert head_b_grad is None
        for p, r in zip(params, ref, strict=True):
            np.testing.assert_allclose(p, r, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(out[0][0][0], out[1][0][0])
    assert traversals == []


def test_static_graph_collectives_after_the_first_iteration(allreduce_calls) -> None:
    """The used-parameter map is all-reduced once, after the first backward; later
    iterations all-reduce only the gradient bucket."""

    def body(rank: int, ws: int):
        ddp = DDP(TwoHeads(), static_graph=True)
        train(ddp, rank, steps=3)
        return sum(p.data.size for p in ddp.parameters())

    n_params = spawn_threads(body, 2)[0]
    sizes = [n for _, n in allreduce_calls]
    n_flags = 6  # one per parameter
    assert sizes.count(n_flags) == 2  # once per rank
    assert sizes.count(n_params) == 2 * 3  # the one bucket, every step, on both ranks


def test_a_changed_graph_is_an_error() -> None:
    """head_b unused in the first iteration and used in the second: a clear error naming
    the parameter, raised in that backward."""

    def body(rank: int, ws: int):
        ddp = DDP(TwoHeads(), static_graph=True)
        ddp(np.ones((2, 4))).sum().backward()
        with pytest.raises(RuntimeError, match="training graph has changed") as info:
            ddp(np.ones((2, 4)), use_b=True).sum().backward()
        return str(info.value)

    for msg in spawn_threads(body, 2):
        assert "parameter 4 (head_b.weight)" in msg
        assert "static_graph=True" in msg


def test_without_static_graph_the_same_model_needs_find_unused_parameters() -> None:
    def body(rank: int, ws: int):
        ddp = DDP(TwoHeads())
        ddp(x_for(rank, 0)).sum().backward()
        with pytest.raises(RuntimeError, match="Expected to have finished reduction"):
            ddp(x_for(rank, 1))
        return True

    assert spawn_threads(body, 2) == [True, True]
