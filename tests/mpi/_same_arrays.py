"""How the scripts under mpiexec compare the mpi backend's results with the tcp backend's."""

from __future__ import annotations

import numpy as np


def assert_same_arrays(name: str, rank: int, mpi: list[np.ndarray], tcp: list[np.ndarray]) -> None:
    """The same arrays (values, dtype, shape) from both backends, else AssertionError."""
    assert len(mpi) == len(tcp), name
    for x, y in zip(mpi, tcp, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape, (name, x.dtype, y.dtype, x.shape)
        if not np.array_equal(x, y):
            raise AssertionError(f"{name} on rank {rank}: mpi {x!r} != tcp {y!r}")
