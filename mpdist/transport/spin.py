"""Whether a wait polls without sleeping for a moment first, learned from the waits before it.

A rank blocked in poll() costs tens of microseconds to wake (on a virtual machine above all:
the idle vCPU halts), more than a peer's answer in a small exchange takes to arrive; so a
wait first polls without sleeping, for up to ``limit_s``. While the host has a core for
every local rank a spinning rank holds its own core. With more local ranks than cores a
spinning rank would hold the core its peer needs to answer, so it spins yielding: it gives
the core up (``sched_yield``) on every turn, and gets it back at once only when no other
process wants it (MPI's ``yield_when_idle``). Either way spins pay only while they are
answered in time. A spin that ends without an answer costs credit, one that gets one earns
it; without credit waits sleep at once (a peer busy computing, or a machine busy with other
work, answers late), and every ``PROBE_EVERY`` sleeping waits one spins again to see whether
answers have become quick.
"""

from __future__ import annotations

import os

from mpdist._cpus import local_ranks, usable_cpus

__all__ = ["Spin"]

_SPIN_ENV = os.environ.get("MPDIST_SPIN_US")  # microseconds; overrides the limits below
_DEFAULT_SPIN_S = 50e-6  # a core for every local rank
_YIELDING_SPIN_S = 200e-6  # more local ranks than cores: each turn yields the core


class Spin:
    """One transport's spin policy (used under the transport's lock)."""

    MAX_CREDIT = 8
    PROBE_EVERY = 64

    __slots__ = ("credit", "limit_s", "slept", "yields")

    def __init__(self, limit_s: float, yields: bool = False) -> None:
        self.limit_s = limit_s
        self.yields = yields  # give the core up on every turn of a spin
        self.credit = self.MAX_CREDIT if limit_s > 0 else 0
        self.slept = 0

    @classmethod
    def for_group(cls, size: int) -> Spin:
        """The policy of a transport of ``size`` ranks: spin for 50 us while this host has a
        core for every local rank, else spin yielding for 200 us; ``$MPDIST_SPIN_US``
        overrides the limit (0: sleep at once)."""
        yields = local_ranks(size) > usable_cpus()
        if _SPIN_ENV is not None:
            return cls(float(_SPIN_ENV) * 1e-6, yields)
        return cls(_YIELDING_SPIN_S if yields else _DEFAULT_SPIN_S, yields)

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
