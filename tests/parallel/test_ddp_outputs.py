"""DDP over a module whose forward returns a structure, not a tensor: a dataclass (with a
field left None), dataclasses inside dicts and lists, a namedtuple. With
``find_unused_parameters=True`` DDP must find every tensor of the output to see which
parameters it reaches (a missed tensor makes its parameters look unused: their gradients are
reduced as zeros before backward even starts). On two rank processes, the DDP gradients must
equal those of the same model trained on the whole batch in one process, for two iterations
(the second would find an unfinished reduction if the first marked a parameter wrongly).
torch's ``test_dataclass_output`` / ``test_dataclass_output_unused_param`` scenario, in our
words.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, NamedTuple

import numpy as np
import pytest

import mpdist
from mpdist import nn
from mpdist.autograd import Tensor
from mpdist.nn import functional as F
from mpdist.parallel import DistributedDataParallel as DDP

PER_RANK = 4
WIDTH = 6


@dataclasses.dataclass
class Heads:
    left: Tensor | None
    right: dict[str, Tensor]


@dataclasses.dataclass(frozen=True)
class Single:
    value: Tensor


class Pair(NamedTuple):
    first: Tensor
    second: Tensor


def _stack(n: int) -> nn.Sequential:
    return nn.Sequential(*[nn.Linear(WIDTH, WIDTH, dtype=np.float64) for _ in range(n)])


class Branches(nn.Module):
    """Two branches; ``right`` is used twice. ``layout`` picks the output's structure and
    ``skip_left`` leaves the left branch (its parameters) out of the output."""

    def __init__(self, layout: str, skip_left: bool) -> None:
        super().__init__()
        mpdist.manual_seed(7)
        self.left = _stack(2)
        self.right = _stack(2)
        self.layout = layout
        self.skip_left = skip_left

    def forward(self, x: Tensor) -> Any:
        left = None if self.skip_left else self.left(x).relu()
        a, b = self.right(x), self.right(x).relu()
        if self.layout == "dataclass":
            return Heads(left, {"a": a, "b": b})
        if self.layout == "dataclass in dict and list":
            return {"out": [Single(a), Heads(left, {"b": b})]}
        if self.layout == "namedtuple":
            return Pair(a, b if left is None else b + left)
        raise AssertionError(self.layout)


def _loss(out: Any) -> Tensor:
    """Every tensor of the output, summed, against ones."""
    found: list[Tensor] = []

    def walk(x: Any) -> None:
        if isinstance(x, Tensor):
            found.append(x)
        elif isinstance(x, dict):
            [walk(v) for v in x.values()]
        elif isinstance(x, (list, tuple)):
            [walk(v) for v in x]
        elif dataclasses.is_dataclass(x):
            [walk(getattr(x, f.name)) for f in dataclasses.fields(x)]

    walk(out)
    total = found[0]
    for t in found[1:]:
        total = total + t
    return F.mse_loss(total, Tensor(np.ones(total.shape)))


@pytest.mark.parametrize("skip_left", [False, True], ids=["all used", "left unused"])
@pytest.mark.parametrize("layout", ["dataclass", "dataclass in dict and list", "namedtuple"])
@pytest.mark.mpdist(world_size=2)
def test_structured_outputs_train_as_the_whole_batch(rank, world_size, layout, skip_left) -> None:
    template = Branches(layout, skip_left)
    local = copy.deepcopy(template)
    ddp = DDP(copy.deepcopy(template), find_unused_parameters=True)
    rng = np.random.default_rng(11)  # the same batch on every rank
    x = rng.standard_normal((PER_RANK * world_size, WIDTH))
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    for _ in range(2):
        local.zero_grad()
        ddp.zero_grad()
        _loss(local(Tensor(x))).backward()
        _loss(ddp(Tensor(x[mine]))).backward()
        for (name, p), q in zip(local.named_parameters(), ddp.parameters(), strict=True):
            if skip_left and name.startswith("left"):
                assert p.grad is None and q.grad is None, name
                continue
            assert q.grad is not None, name
            np.testing.assert_allclose(q.grad.data, p.grad.data, rtol=1e-10, atol=1e-12)
