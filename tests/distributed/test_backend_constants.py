"""Backend's name constants: torch's spellings and values, usable in code mypy checks."""

from __future__ import annotations

import pytest

from mpdist import Backend


def test_mpi_constant() -> None:
    assert Backend.MPI == "mpi"


def test_each_constant_names_a_backend_registered_once_mpdist_is_imported() -> None:
    # as torch.distributed.Backend("mpi") is valid right after the import
    for const in ("TCP", "GLOO", "THREADED", "FAKE", "MPI"):
        name = getattr(Backend, const)
        assert Backend(const) == name and name in Backend.backend_list(), const


def test_constants_equal_torchs() -> None:
    torch = pytest.importorskip("torch")
    for name in ("MPI", "GLOO", "UNDEFINED"):
        assert getattr(Backend, name) == getattr(torch.distributed.Backend, name), name
