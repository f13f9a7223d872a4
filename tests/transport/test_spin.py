"""A waiting rank spins before it sleeps only while the host has a core for every local rank."""

from __future__ import annotations

import pytest

from mpdist import _cpus
from mpdist.transport import tcp


@pytest.fixture
def cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tcp, "_SPIN_ENV", None)
    monkeypatch.setattr(tcp, "usable_cpus", lambda: 4)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


@pytest.mark.usefixtures("cpus")
def test_spins_while_every_local_rank_has_a_core() -> None:
    assert tcp.default_spin_s(2) == tcp._DEFAULT_SPIN_S > 0
    assert tcp.default_spin_s(4) == tcp._DEFAULT_SPIN_S


@pytest.mark.usefixtures("cpus")
def test_an_oversubscribed_host_sleeps_at_once() -> None:
    # a spinning rank would hold the core its peer needs to answer
    assert tcp.default_spin_s(5) == 0.0


@pytest.mark.usefixtures("cpus")
def test_the_local_world_size_counts_not_the_whole_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # 16 ranks over 8 hosts
    assert tcp.default_spin_s(16) == tcp._DEFAULT_SPIN_S
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert tcp.default_spin_s(16) == 0.0


@pytest.mark.usefixtures("cpus")
def test_mpdist_spin_us_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tcp, "_SPIN_ENV", "7")
    assert tcp.default_spin_s(64) == pytest.approx(7e-6)
    monkeypatch.setattr(tcp, "_SPIN_ENV", "0")
    assert tcp.default_spin_s(2) == 0.0


def test_local_ranks_reads_the_launchers_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert _cpus.local_ranks(6) == 6
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert _cpus.local_ranks(6) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "junk")
    assert _cpus.local_ranks(6) == 6
    assert _cpus.usable_cpus() >= 1
