"""Models, data and checks shared by the DDP tests (rank threads and rank processes)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

import mpdist
from mpdist import nn


def mlp(seed: int, *widths: int) -> nn.Sequential:
    """float64 Linear layers of the given widths with ReLU between, drawn from mpdist's
    parameter RNG seeded with ``seed`` (same seed, same model, in any thread or process)."""
    mpdist.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(widths[i], widths[i + 1], dtype=np.float64))
    return nn.Sequential(*layers)


def regression_data(seed: int, n: int, n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch of ``n`` standard-normal inputs and targets, fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n_in)), rng.standard_normal((n, n_out))


def shard(a: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """``rank``'s equal share of ``a`` along axis 0 (the rows a DDP rank trains on)."""
    per = len(a) // world_size
    return a[rank * per : (rank + 1) * per]


def assert_replicas_equal_reference(
    per_rank: Sequence[Sequence[np.ndarray]], reference: Sequence[np.ndarray], rtol: float
) -> None:
    """Every rank's arrays are bitwise equal to rank 0's and close to ``reference``."""
    for arrays in per_rank:
        for a, b, r in zip(arrays, per_rank[0], reference, strict=True):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_allclose(a, r, rtol=rtol, atol=rtol)


class TwoHeads(nn.Module):
    """A trunk and two heads; ``forward(x, use_b)`` uses one head (the other gets no
    gradient)."""

    def __init__(self) -> None:
        super().__init__()
        mpdist.manual_seed(1)
        self.trunk = nn.Linear(4, 4, dtype=np.float64)
        self.head_a = nn.Linear(4, 2, dtype=np.float64)
        self.head_b = nn.Linear(4, 2, dtype=np.float64)

    def forward(self, x, use_b: bool = False):
        h = self.trunk(x).relu()
        return self.head_b(h) if use_b else self.head_a(h)
