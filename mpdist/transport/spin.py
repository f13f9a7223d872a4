"""Whether a wait polls without sleeping for a moment first, learned from the waits before it.

A rank blocked in poll() costs tens of microseconds to wake (on a virtual machine above all:
the idle vCPU halts), more than a peer's answer in a small exchange takes to arrive; so a
wait first polls without sleeping, for up to ``limit_s``. Spinning holds a core: it pays only
while the host has a core for every local rank (``default_spin_s``), and only while spins
are answered in time. A spin that ends without an answer costs credit, one that gets one
earns it; without credit waits sleep at once (a peer busy computing, or a machine busy with
other work, answers late), and every ``PROBE_EVERY`` sleeping waits one spins again to see
whether answers have become quick.
"""

from __future__ import annotations

import os

from mpdist._cpus import local_ranks, usable_cpus

__all__ = ["Spin", "default_spin_s"]

_SPIN_ENV = os.environ.get("MPDIST_SPIN_US")  # microseconds; overrides the rule below
_DEFAULT_SPIN_S = 50e-6


def default_spin_s(size: int) -> float:
    """The spin limit of a transport of ``size`` ranks: ``$MPDIST_SPIN_US``, else 50 us while
    this host has a core for every local rank, else 0 (sleep at once)."""
    if _SPIN_ENV is not None:
        return float(_SPIN_ENV) * 1e-6
    return _DEFAULT_SPIN_S if local_ranks(size) <= usable_cpus() else 0.0


class Spin:
    """One transport's spin policy (used under the transport's lock)."""

    MAX_CREDIT = 8
    PROBE_EVERY = 64

    __slots__ = ("credit", "limit_s", "slept")

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.credit = self.MAX_CREDIT if limit_s > 0 else 0
        self.slept = 0

    def budget(self) -> float:
        """Seconds the next wait may spin before it sleeps (0: sleep at once)."""
        if self.limit_s <= 0:
            return 0.0
        if self.credit > 0:
            return self.limit_s
        self.slept += 1
        if self.slept < self.PROBE_EVERY:
            return 0.0
        self.slept = 0
        self.credit = 1  # a probe: one spin, kept going only if it is answered
        return self.limit_s

    def answered(self, in_time: bool) -> None:
        """Note how the spin that :meth:`budget` allowed ended."""
        if in_time:
            self.credit = min(self.credit + 1, self.MAX_CREDIT)
        else:
            self.credit -= 2
