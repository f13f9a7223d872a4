"""Whether a wait polls without sleeping for a moment first, learned from the waits before it.

A rank blocked in poll() costs tens of microseconds to wake (on a virtual machine above all:
the idle vCPU halts), more than a peer's answer in a small exchange takes to arrive; so a
wait first polls without sleeping, for up to ``limit_s``, and gives its core up
(``sched_yield``) on every turn: on a core of its own it gets the core straight back, and
on a core it shares (more local ranks than cores, or a machine busy with other work) the
peer it waits for runs instead (MPI's ``yield_when_idle``). The limit is longer than a
wake-up on this kind of machine (200 us), so that a rank whose peer had to be woken still
sees its answer while spinning and keeps spinning; with a shorter one two ranks that both
slept once kept sleeping, every exchange paying two wake-ups.

Spins pay only while they are answered in time. A spin that ends without an answer costs
credit, one that gets one earns it; without credit waits sleep at once (a peer busy
computing answers late), and every ``PROBE_EVERY`` sleeping waits one spins again to see
whether answers have become quick.
"""

from __future__ import annotations

import os

__all__ = ["Spin"]

_SPIN_ENV = os.environ.get("MPDIST_SPIN_US")  # microseconds; overrides the limit below
_DEFAULT_SPIN_S = 200e-6


class Spin:
    """One transport's spin policy (used under the transport's lock)."""

    MAX_CREDIT = 8
    PROBE_EVERY = 64

    __slots__ = ("credit", "limit_s", "slept")

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.credit = self.MAX_CREDIT if limit_s > 0 else 0
        self.slept = 0

    @classmethod
    def default(cls) -> Spin:
        """A transport's policy: spin for up to 200 us, or ``$MPDIST_SPIN_US`` (0: sleep at once)."""
        return cls(float(_SPIN_ENV) * 1e-6 if _SPIN_ENV is not None else _DEFAULT_SPIN_S)

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
