"""DDP with activation checkpointing, on two rank processes over the tcp backend.

The scenarios of torch's ``test_ddp_checkpointing_*`` family, in our words: a model whose
layer is checkpointed once, twice, twice with shared weights, or a different layer each
iteration, and a whole DDP model checkpointed, with either checkpoint variant, with and
without ``gradient_as_bucket_view``, ``static_graph`` and ``find_unused_parameters``. Where
torch trains, the DDP gradients must equal those of the same model trained on the full
batch in one process; where torch refuses (a reentrant checkpoint hands a parameter its
gradient in more than one pass, or hides it from unused-parameter detection), the same
error must come up.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import numpy as np
import pytest

import mpdist
from mpdist import nn
from mpdist.autograd import Tensor
from mpdist.parallel import DistributedDataParallel as DDP
from mpdist.utils.checkpoint import checkpoint

PER_RANK = 16
WIDTH = 20
ITERATIONS = 5
READY_TWICE = "Expected to mark a variable ready only once."


def _linear() -> nn.Linear:
    return nn.Linear(WIDTH, WIDTH, dtype=np.float64)


class OneCheckpoint(nn.Module):
    """``second`` runs under a checkpoint, ``first`` does not."""

    def __init__(self, use_reentrant: bool = True) -> None:
        super().__init__()
        mpdist.manual_seed(31415)
        self.first = _linear()
        self.second = _linear()
        self.use_reentrant = use_reentrant

    def forward(self, x: Any) -> Any:
        return checkpoint(self.second, self.first(x), use_reentrant=self.use_reentrant)


class SameLayerTwice(OneCheckpoint):
    """``second`` checkpointed twice in a row (pipeline-style reuse of one layer)."""

    def forward(self, x: Any) -> Any:
        x = self.first(x)
        x = checkpoint(self.second, x, use_reentrant=self.use_reentrant)
        return checkpoint(self.second, x, use_reentrant=self.use_reentrant)


class SameLayerTwiceSharedWeight(SameLayerTwice):
    """As ``SameLayerTwice``, and ``first`` uses ``second``'s weight."""

    def __init__(self, use_reentrant: bool = True) -> None:
        super().__init__(use_reentrant)
        self.first.weight = self.second.weight


class Alternating(OneCheckpoint):
    """Each call checkpoints one of the two layers, in turn: half the parameters go unused."""

    def __init__(self, use_reentrant: bool = True) -> None:
        super().__init__(use_reentrant)
        self.calls = 0

    def forward(self, x: Any) -> Any:
        layer = self.first if self.calls % 2 else self.second
        self.calls += 1
        return checkpoint(layer, x, use_reentrant=self.use_reentrant)


class AlternatingSharedWeight(Alternating):
    def __init__(self, use_reentrant: bool = True) -> None:
        super().__init__(use_reentrant)
        self.first.weight = self.second.weight


def _step(model: Any, x: Tensor, y: np.ndarray, whole: bool, use_reentrant: bool) -> None:
    model.train()
    out = checkpoint(model, x, use_reentrant=use_reentrant) if whole else model(x)
    nn.MSELoss()(out, y).backward()


def train_and_compare(
    rank: int,
    world_size: int,
    template: nn.Module,
    bucket_view: bool,
    find_unused: bool = False,
    static_graph: bool = False,
    whole: bool = False,
    use_reentrant: bool = True,
    none_grads_allowed: bool = False,
) -> None:
    """Train ``template`` on the full batch here and under DDP on this rank's share, step by
    step, and require the same gradients after every backward."""
    local = copy.deepcopy(template)
    ddp = DDP(
        copy.deepcopy(template),
        bucket_cap_mb=1,
        gradient_as_bucket_view=bucket_view,
        find_unused_parameters=find_unused,
        static_graph=static_graph,
    )
    assert ddp._get_ddp_logging_data()["static_graph"] == int(static_graph)
    rng = np.random.default_rng(2718)  # the same batch on every rank
    x = Tensor(rng.random((PER_RANK * world_size, WIDTH)), requires_grad=True)
    y = rng.standard_normal((PER_RANK * world_size, WIDTH))
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    for _ in range(ITERATIONS):
        local.zero_grad(set_to_none=False)
        ddp.zero_grad(set_to_none=False)
        _step(local, x, y, whole, use_reentrant)
        _step(ddp, x[mine], y[mine], whole, use_reentrant)
        for p, q in zip(local.parameters(), ddp.parameters(), strict=True):
            if not none_grads_allowed:
                assert p.grad is not None and q.grad is not None
            if p.grad is None or q.grad is None:
                assert p.grad is None and q.grad is None
                continue
            np.testing.assert_allclose(q.grad.data, p.grad.data, rtol=1e-9, atol=1e-12)


def refused(rank: int, world_size: int, template: nn.Module, **kwargs: Any) -> str:
    with pytest.raises(RuntimeError, match=READY_TWICE) as info:
        train_and_compare(rank, world_size, template, **kwargs)
    return str(info.value)


BOTH = pytest.mark.parametrize("use_reentrant", [True, False], ids=["reentrant", "non-reentrant"])


@BOTH
@pytest.mark.mpdist(world_size=2)
def test_one_checkpointed_layer_trains(rank, world_size, use_reentrant) -> None:
    for view, static in itertools.product((False, True), (False, True)):
        train_and_compare(rank, world_size, OneCheckpoint(use_reentrant), view, static_graph=static)
        if static:  # find_unused_parameters changes nothing under static_graph
            train_and_compare(
                rank, world_size, OneCheckpoint(), view, static_graph=True, find_unused=True
            )


@BOTH
@pytest.mark.mpdist(world_size=2)
def test_unused_parameter_detection_with_a_checkpoint(rank, world_size, use_reentrant) -> None:
    """A reentrant checkpoint hides its layer from the graph DDP searches for unused
    parameters: they are taken for unused, then get gradients, which torch refuses;
    without reentrancy, or with static_graph, it trains."""
    for view in (True, False):
        if use_reentrant:
            msg = refused(rank, world_size, OneCheckpoint(True), bucket_view=view, find_unused=True)
            assert "find_unused_parameters=True" in msg and "second.weight" in msg
        else:
            train_and_compare(rank, world_size, OneCheckpoint(False), view, find_unused=True)
        train_and_compare(
            rank,
            world_size,
            OneCheckpoint(use_reentrant),
            view,
            find_unused=True,
            static_graph=True,
        )


@BOTH
@pytest.mark.mpdist(world_size=2)
def test_the_same_layer_checkpointed_twice(rank, world_size, use_reentrant) -> None:
    """Reentrant: the layer's parameters get gradients in two nested passes, refused
    without static_graph (with or without unused-parameter detection); non-reentrant:
    one total per parameter, trains."""
    for view in (True, False):
        for find_unused in (False, True):
            if use_reentrant:
                msg = refused(
                    rank,
                    world_size,
                    SameLayerTwice(True),
                    bucket_view=view,
                    find_unused=find_unused,
                )
                assert "static_graph=True" in msg and "reentrant" in msg
            else:
                train_and_compare(
                    rank, world_size, SameLayerTwice(False), view, find_unused=find_unused
                )


@BOTH
@pytest.mark.mpdist(world_size=2)
def test_twice_checkpointed_trains_with_static_graph(rank, world_size, use_reentrant) -> None:
    for view in (True, False):
        train_and_compare(rank, world_size, SameLayerTwice(use_reentrant), view, static_graph=True)


@pytest.mark.mpdist(world_size=2)
def test_a_module_that_checkpoints_a_different_layer_each_time(rank, world_size) -> None:
    for template in (Alternating, AlternatingSharedWeight):
        for view in (True, False):
            train_and_compare(
                rank,
                world_size,
                template(False),
                view,
                find_unused=True,
                none_grads_allowed=True,
            )


@BOTH
@pytest.mark.mpdist(world_size=2)
def test_checkpointing_the_whole_ddp_model_with_shared_weights(
    rank, world_size, use_reentrant
) -> None:
    """checkpoint(ddp_model, x): DDP's forward runs again in backward; a weight used by
    two layers gets one gradient in that pass."""
    for view, static in itertools.product((False, True), (False, True)):
        mpdist.manual_seed(31415)
        a, b = _linear(), _linear()
        a.weight = b.weight
        train_and_compare(
            rank,
            world_size,
            nn.Sequential(a, b),
            view,
            static_graph=static,
            whole=True,
            use_reentrant=use_reentrant,
        )


@pytest.mark.mpdist(world_size=2)
def test_twice_checkpointed_with_shared_weights_and_static_graph(rank, world_size) -> None:
    for view in (True, False):
        train_and_compare(rank, world_size, SameLayerTwiceSharedWeight(), view, static_graph=True)


@pytest.mark.mpdist(world_size=2)
def test_a_static_graph_that_changes_is_refused(rank, world_size) -> None:
    """static_graph counts how often each parameter's gradient arrives in the first
    iteration: a later iteration that checkpoints the layer once more is an error in torch's
    words."""
    model = SameLayerTwice(True)
    ddp = DDP(model, static_graph=True)
    x = Tensor(np.ones((2, WIDTH)), requires_grad=True)
    ddp(x).sum().backward()
    extra = model.forward

    def three_times(inp: Any) -> Any:
        return checkpoint(model.second, extra(inp), use_reentrant=True)

    model.forward = three_times  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="Your training graph has changed in this iteration"):
        ddp(x).sum().backward()
