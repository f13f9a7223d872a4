"""Backend's name constants: torch's spellings and values, usable in code mypy checks."""

from __future__ import annotations

import pytest

from mpdist import Backend


def test_mpi_constant_names_the_registered_mpi_backend() -> None:
    assert Backend.MPI == "mpi" == Backend("MPI") and "mpi" in Backend.backend_list()


def test_constants_equal_torchs() -> None:
    torch = pytest.importorskip("torch")
    for name in ("MPI", "GLOO", "UNDEFINED"):
        assert getattr(Backend, name) == getattr(torch.distributed.Backend, name), name
