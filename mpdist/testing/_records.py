"""What a rank and the parent say to each other over the rank's pipe, as records with named fields.

Rank -> parent: :class:`Started` once, :class:`Failing` as soon as a test fails (before
the rank's groups go down, so the parent hears of the cause before the consequences),
:class:`Finished` with the test's :class:`RankRecord`, :class:`Dumped` after a stack
dump. Parent -> rank: :class:`Task` (a pooled worker's next test), :class:`Abort`,
:class:`Dump`, :class:`Stop`. Every message is a small frozen dataclass, pickled by the
pipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mpdist.testing._outcomes import TORCH_THREADS_TERMINATED


@dataclass
class RankRecord:
    """How one test went in one rank, as the rank reports it."""

    rank: int
    status: str = "passed"  # passed | failed | skipped
    pid: int = 0
    exc_type: str | None = None
    message: str = ""
    traceback: str = ""
    exit_code: int | None = None  # the test body ended with sys.exit(exit_code)
    duration: float = 0.0
    aborted: str | None = None  # the abort reason, if the parent aborted this rank
    failed_at: float = 0.0  # time.monotonic() when the failure was caught (one clock per host)
    value: bytes | None = None  # spawn_ranks: the pickled return value


def is_consequence(exc_type: str | None, message: str, aborted: str | None = None) -> bool:
    """Whether a failure was caused by another rank's: the harness's abort, a lost peer."""
    if "aborted by the harness" in message or (aborted and aborted in message):
        return True
    if TORCH_THREADS_TERMINATED in message:  # torch's threaded world, stopped by the harness
        return True
    return (exc_type or "").endswith("DistNetworkError")


# -- rank -> parent


@dataclass(frozen=True)
class Started:
    """The rank is up: its pid, and its process group id if it leads one (else 0)."""

    pid: int
    pgid: int


@dataclass(frozen=True)
class Failing:
    """The test failed in this rank; sent before the rank's groups are torn down."""

    record: RankRecord


@dataclass(frozen=True)
class Finished:
    """The rank's result for the test."""

    record: RankRecord


@dataclass(frozen=True)
class Dumped:
    """The rank wrote its stacks to its dump file; ``trace`` is its last collective."""

    trace: str


# -- parent -> rank


@dataclass(frozen=True)
class Task:
    """Run this test (a pooled worker)."""

    spec: Any  # a _worker.TaskSpec


@dataclass(frozen=True)
class Abort:
    """Abort every group of the rank (the abort sticks until the next task)."""

    reason: str


@dataclass(frozen=True)
class Dump:
    """Write every thread's stack and the last collective to the dump file."""


@dataclass(frozen=True)
class Stop:
    """A pooled worker: leave after the current test."""
