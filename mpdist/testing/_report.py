"""Turn an :class:`~mpdist.testing._coordinator.Outcome` into text and one test outcome.

A failure's text starts with ``rank k: ExcType: message`` of the first failing
rank (what rerun filters and CI annotations match), then a headline, then every
rank, the first failing rank first, each labelled ``rank k``; tracebacks, exit codes or signal names, the stack dumps of ranks
that were still running at a timeout or had to be killed after another rank
failed, and (when not shown as pytest report sections) each rank's output.
"""

from __future__ import annotations

import shlex
import sys
import unittest

from mpdist.testing import _config
from mpdist.testing._coordinator import Outcome, RankResult
from mpdist.testing._outcomes import TORCH_THREADS_TERMINATED, signal_name


def _rank_line(r: RankResult, outcome: Outcome) -> str:
    exit_info = ""
    if r.exitcode not in (None, 0):
        exit_info = f" [{signal_name(r.exitcode)}]"
    if r.status == "passed":
        return f"rank {r.rank}: passed{exit_info}"
    if r.status == "skipped":
        return f"rank {r.rank}: skipped: {r.message}"
    if r.status == "failed":
        what = f"{r.exc_type}: {r.message}" if r.message else f"{r.exc_type}"
        prefix = f"rank {r.rank}: failed"
        if r.consequence and outcome.first_failure not in (None, r.rank):
            first = outcome.first_failure
            aborted = "aborted by the harness" in r.message or TORCH_THREADS_TERMINATED in r.message
            if aborted or (r.aborted and r.aborted in r.message):
                prefix += f" after the abort (rank {first} failed first)"
            else:
                prefix += f" after losing a peer (rank {first} failed first)"
        return f"{prefix}: {what.splitlines()[0] if what else ''}{exit_info}"
    if r.status == "timeout":
        trace = f"; last collective entered: {r.trace}" if r.trace else ""
        return f"rank {r.rank}: still running at the timeout{trace}"
    if r.status == "killed":
        trace = f"; last collective entered: {r.trace}" if r.trace else ""
        return (
            f"rank {r.rank}: killed after rank {outcome.first_failure} failed "
            f"(did not finish within the abort grace period){trace}"
        )
    return f"rank {r.rank}: exited without reporting a result ({signal_name(r.exitcode)})"


def _ordered(outcome: Outcome) -> list[RankResult]:
    first = outcome.first_failure
    return sorted(outcome.results, key=lambda r: (r.rank != first, r.rank))


def headline(outcome: Outcome) -> str:
    """One line saying what went wrong."""
    if outcome.timed_out:
        stuck = [r.rank for r in outcome.results if r.status == "timeout"]
        return (
            f"{outcome.test_id} timed out after {outcome.timeout:g} s "
            f"(world size {outcome.world_size}); ranks still running: {stuck}"
        )
    failed = [r.rank for r in outcome.results if r.status not in ("passed", "skipped")]
    # The first failure may itself look like a consequence (every rank lost a connection):
    # it is the one the others are blamed on, never listed among them.
    caused = [
        r.rank
        for r in outcome.results
        if (r.status == "killed" or r.consequence) and r.rank != outcome.first_failure
    ]
    because = f" ({caused} only because rank {outcome.first_failure} failed)" if caused else ""
    return (
        f"{outcome.test_id} failed in rank {outcome.first_failure} "
        f"(world size {outcome.world_size}); failing ranks: {failed}{because}"
    )


def first_line(outcome: Outcome) -> str | None:
    """``rank k: ExcType: message`` of the rank that failed first (None if no rank failed).

    The failure text starts with it, so that a rerun filter (``--only-rerun``,
    ``--rerun-except``) or a CI annotation sees the real error, not the harness's.
    """
    first = next((r for r in outcome.results if r.rank == outcome.first_failure), None)
    if first is None or first.status not in ("failed", "lost"):
        return None
    if first.status == "lost" or not first.exc_type:
        what = first.message or f"exited without reporting a result ({signal_name(first.exitcode)})"
        return f"rank {first.rank}: {what.splitlines()[0]}"
    message = first.message.splitlines()[0] if first.message else ""
    return f"rank {first.rank}: {first.exc_type}: {message}".rstrip(": ")


def format_outcome(outcome: Outcome, include_output: bool = True, rerun: str | None = None) -> str:
    """The full failure text: the first failure's line, the headline, then every rank."""
    first = first_line(outcome)
    lines = ([first] if first else []) + [headline(outcome), ""]
    for r in _ordered(outcome):
        lines.append(f"=== {_rank_line(r, outcome)}")
        if r.status in ("failed", "timeout", "lost", "killed") and r.traceback:
            lines.append(r.traceback.rstrip("\n"))
        if r.dump and (outcome.timed_out or r.status != "passed"):
            lines.append(f"--- rank {r.rank} stack dump ---")
            lines.append(r.dump.rstrip("\n"))
        if include_output:
            for name, text in (("stdout", r.stdout), ("stderr", r.stderr)):
                if text.strip():
                    lines.append(f"--- rank {r.rank} {name} ---")
                    lines.append(text.rstrip("\n"))
        lines.append("")
    if rerun:
        lines.append(f"rerun just this test: {rerun}")
    return "\n".join(lines).rstrip("\n")


class MultiProcessFailure(RuntimeError):
    """A multi-rank test failed; carries the :class:`Outcome` for the pytest plugin.

    A ``RuntimeError``, as torch's harness raises when a rank fails (torch suites check
    ``assertRaises(RuntimeError)`` around a failing inner test); not an
    ``AssertionError``, so ``--rerun-except AssertionError`` tells a rank's failed
    assertion (named in the text's first line) from a crash or a timeout.
    """

    def __init__(self, outcome: Outcome, rerun: str | None = None) -> None:
        self.outcome = outcome
        self.rerun = rerun
        super().__init__(format_outcome(outcome, include_output=True, rerun=rerun))


class MultiProcessTimeout(MultiProcessFailure):
    """A multi-rank test ran past its deadline; its ranks were dumped and killed."""


def rerun_command(nodeid: str | None, unittest_id: str, world_size: int) -> str:
    """A shell command that runs just this test again with the same world size."""
    settings = _config.current()
    if settings.under_pytest and nodeid:
        args = ["python", "-m", "pytest", nodeid, "--ranks", str(world_size)]
        args += list(settings.rerun_args)
        return shlex.join(args)
    env = ["env", f"MPDIST_WORLD_SIZE={world_size}", "python"]
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if unittest_id.startswith("__main__.") and main_file:
        # A file run directly with unittest.main(): run it again, naming the test.
        return shlex.join([*env, main_file, unittest_id.removeprefix("__main__.")])
    return shlex.join([*env, "-m", "unittest", unittest_id])


def raise_for(outcome: Outcome, rerun: str | None = None) -> None:
    """Make ``outcome`` the test's outcome: return (passed), SkipTest, MultiProcessTimeout
    or MultiProcessFailure."""
    status = outcome.status
    if status == "passed":
        return
    if status == "skipped":
        raise unittest.SkipTest(outcome.skip_reason)
    if outcome.timed_out:
        raise MultiProcessTimeout(outcome, rerun)
    raise MultiProcessFailure(outcome, rerun)
