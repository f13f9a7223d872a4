"""A waiting rank spins (yielding its core) before it sleeps, and only while spins are answered
in time."""

from __future__ import annotations

import pytest

from mpdist import _cpus
from mpdist.transport import spin
from mpdist.transport.spin import Spin


def test_the_default_spins_longer_than_a_wake_up_and_the_variable_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(spin, "_SPIN_ENV", None)
    assert Spin.default().limit_s == spin._DEFAULT_SPIN_S == 200e-6
    monkeypatch.setattr(spin, "_SPIN_ENV", "7")
    assert Spin.default().limit_s == pytest.approx(7e-6)
    monkeypatch.setattr(spin, "_SPIN_ENV", "0")
    assert Spin.default().budget() == 0.0


def test_answered_spins_keep_spinning() -> None:
    policy = Spin(50e-6)
    for _ in range(100):
        assert policy.budget() == 50e-6
        policy.answered(True)


def test_unanswered_spins_stop_spinning_then_probe_now_and_then() -> None:
    # a peer busy computing, or a machine busy with other work: spinning only burns a core
    policy = Spin(50e-6)
    spins = 0
    for _ in range(Spin.PROBE_EVERY * 3):
        if policy.budget() > 0:
            spins += 1
            policy.answered(False)
    # the credit (8, two per miss) is spent after 4 spins; then one probe per PROBE_EVERY
    # sleeping waits: 2 more in the 188 waits left
    assert spins == Spin.MAX_CREDIT // 2 + 2
    assert policy.credit <= 0


def test_a_probe_that_is_answered_brings_spinning_back() -> None:
    policy = Spin(50e-6)
    while policy.credit > 0:
        policy.budget()
        policy.answered(False)
    budgets = [policy.budget() for _ in range(Spin.PROBE_EVERY)]
    assert budgets[:-1] == [0.0] * (Spin.PROBE_EVERY - 1) and budgets[-1] == 50e-6
    policy.answered(True)
    assert policy.budget() == 50e-6  # spinning again


def test_no_limit_never_spins() -> None:
    policy = Spin(0.0)
    assert all(policy.budget() == 0.0 for _ in range(Spin.PROBE_EVERY * 2))


def test_local_ranks_reads_the_launchers_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert _cpus.local_ranks(6) == 6
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert _cpus.local_ranks(6) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "junk")
    assert _cpus.local_ranks(6) == 6
    assert _cpus.usable_cpus() >= 1
