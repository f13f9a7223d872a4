"""The parent's side of one multi-rank test: start the ranks, wait, abort, dump, reap.

:func:`run_ranks` starts one process per rank (or hands the test to a worker
pool), waits with a deadline, and returns an :class:`Outcome` holding every
rank's record, exit status, output and (after a timeout) stack dump. On the
first failing rank the others are told to abort; past the deadline every rank
dumps its stacks and the whole process tree is killed. Whatever happens
(Ctrl-C included), no rank process survives the call unless it belongs to a
healthy pool.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, field
from multiprocessing import connection as mp_connection
from typing import Any

from mpdist import _proctree
from mpdist.distributed import debug
from mpdist.testing import _config, _preload
from mpdist.testing import _records as records
from mpdist.testing._outcomes import signal_name
from mpdist.testing._records import RankRecord, is_consequence
from mpdist.testing._worker import TaskSpec, rank_main

# After the first failure, how long the other ranks get to notice the abort and report.
ABORT_GRACE = 5.0
# After every rank reported, how long a fresh rank may take to exit before it is killed.
EXIT_GRACE = 5.0
# How long ranks get to answer a stack-dump request before SIGUSR1 is used instead.
DUMP_WAIT = 1.0
# SIGTERM -> SIGKILL grace when the tree is killed.
KILL_GRACE = 1.0


@dataclass
class RankResult:
    """What became of one rank."""

    rank: int
    status: str = "lost"  # passed | failed | skipped | timeout | killed | lost
    exc_type: str | None = None
    message: str = ""
    traceback: str = ""
    exitcode: int | None = None
    exit_code: int | None = None  # the test body ended with sys.exit(exit_code)
    aborted: str | None = None  # the abort reason, if the parent aborted this rank
    stdout: str = ""
    stderr: str = ""
    dump: str = ""
    trace: str | None = None  # last collective entered, from a timeout dump
    duration: float = 0.0
    value: bytes | None = None  # spawn_ranks: the pickled return value
    consequence: bool = False  # failed because another rank failed (aborted, lost a peer)


@dataclass
class Outcome:
    """The result of one multi-rank test in the parent."""

    test_id: str
    world_size: int
    results: list[RankResult] = field(default_factory=list)
    timed_out: bool = False
    timeout: float | None = None
    first_failure: int | None = None
    elapsed: float = 0.0
    interrupted: bool = False

    @property
    def status(self) -> str:
        """``"failed"`` if any rank failed or the test timed out, else ``"skipped"`` if any skipped."""
        if self.timed_out or any(r.status not in ("passed", "skipped") for r in self.results):
            return "failed"
        if any(r.status == "skipped" for r in self.results):
            return "skipped"
        return "passed"

    @property
    def skip_reason(self) -> str:
        """The reason given by the first rank that skipped."""
        for r in self.results:
            if r.status == "skipped":
                return r.message
        return ""


def get_context(method: str, preload: list[str]) -> multiprocessing.context.BaseContext:
    """An explicit multiprocessing context (never the global start method).

    For forkserver, ``preload`` (the test's module) joins the modules the server
    imports before forking; see :class:`ForkserverPreload`.
    """
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        _preload.forkserver_preload.prepare(ctx, list(preload))
    return ctx


class _Handle:
    """One rank as the parent sees it."""

    def __init__(self, rank: int, proc: Any, conn: Any) -> None:
        self.rank = rank
        self.proc = proc
        self.conn = conn
        self.pid: int | None = proc.pid if proc is not None else None
        self.pgid = 0
        self.record: RankRecord | None = None
        self.exited = False
        self.conn_open = True
        self.trace: str | None = None
        self.dumped = False
        self.failing: RankRecord | None = None  # the rank's failure, announced early
        self.failed_seen: float | None = None  # parent's clock when it saw this rank fail
        self.reaped = False  # killed by the harness (timeout, grace period): not a failure

    def send(self, msg: object) -> bool:
        if not self.conn_open:
            return False
        try:
            self.conn.send(msg)
            return True
        except (OSError, ValueError):
            return False

    def drain(self) -> None:
        """Read every message that has arrived."""
        while self.conn_open:
            try:
                if not self.conn.poll():
                    return
                msg = self.conn.recv()
            except (EOFError, OSError):
                self.conn_open = False
                return
            if isinstance(msg, records.Started):
                self.pid, self.pgid = msg.pid, msg.pgid
            elif isinstance(msg, records.Failing):
                self.failing = msg.record
            elif isinstance(msg, records.Finished):
                self.record = msg.record
            elif isinstance(msg, records.Dumped):
                self.dumped = True
                self.trace = msg.trace


def _exitcode(h: _Handle) -> int | None:
    # A discarded pool has closed its process objects already.
    try:
        return h.proc.exitcode if h.proc is not None else None
    except ValueError:
        return None


def read_rank_file(path: str) -> str:
    """A rank's output or dump file as text (undecodable bytes replaced; "" if it is missing)."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def left_early(
    rank: int, exit_code: int, left_at: float, failed_at: dict[int, float]
) -> str | None:
    """Why a rank that ended with ``sys.exit(exit_code)`` at ``left_at`` is a failure, or None.

    ``failed_at`` maps each failed peer to when it failed (one clock). A rank that leaves
    a test early takes its end of every connection with it, so peers that were still
    running then fail with a lost connection: the rank that left is the cause (both
    harnesses name it so). An exit after which no peer fails stays a pass.
    """
    running = sorted(r for r, when in failed_at.items() if r != rank and when >= left_at)
    if not running:
        return None
    return (
        f"sys.exit({exit_code}): rank {rank} left the test while ranks {running} were "
        "still running (they failed after it)"
    )


class RankSet:
    """The ranks of one test: started fresh, or borrowed from a pool."""

    def __init__(self, spec: TaskSpec, handles: list[_Handle], pooled: bool) -> None:
        self.spec = spec
        self.handles = handles
        self.pooled = pooled
        self.first_failure: int | None = None
        self.closed = False

    @classmethod
    def start_fresh(cls, spec: TaskSpec, ctx: Any) -> RankSet:
        """Start one process per rank; if any cannot start, none is left running.

        A failed start (the forkserver gone, a spec that does not pickle, Ctrl-C)
        kills and reaps the ranks already started, closes every pipe end and process
        handle, and re-raises the original error.
        """
        handles: list[_Handle] = []
        rs = cls(spec, handles, pooled=False)
        try:
            for rank in range(spec.world_size):
                parent_conn, child_conn = ctx.Pipe(duplex=True)
                # The handle owns the parent end from here on, so cleanup closes it.
                handles.append(_Handle(rank, None, parent_conn))
                try:
                    proc = ctx.Process(
                        target=rank_main,
                        args=(spec, rank, child_conn),
                        name=f"mpdist-rank-{rank}",
                    )
                    proc.start()
                finally:
                    # The child got its copy during start(), or never will: ours must go
                    # either way (a frame kept alive by the traceback would hold it open).
                    child_conn.close()
                handles[-1].proc = proc
                handles[-1].pid = proc.pid
        except BaseException:
            for h in handles:
                # Learn the process groups of ranks that already said hello (for the sweep).
                with contextlib.suppress(Exception):
                    h.drain()
            abandon(rs)
            raise
        return rs

    # -- the wait loop ---------------------------------------------------------------

    def _active(self) -> list[_Handle]:
        if self.pooled:
            return [h for h in self.handles if h.record is None and not h.exited]
        return [h for h in self.handles if not h.exited]

    def _note_exit(self, h: _Handle) -> None:
        h.drain()
        h.proc.join(0)
        if h.proc.exitcode is None:  # sentinel fired but status not in yet
            h.proc.join(1.0)
        h.exited = True

    def _failure(self, h: _Handle, now: float, early: bool = True) -> RankRecord | None:
        """What is known of ``h``'s failure (notice, record, death, early exit), or None."""
        failure: RankRecord | None
        if h.record is not None:
            failure = h.record if h.record.status == "failed" else None
            if failure is None and early:
                failure = self._left_early(h, now)
        elif h.failing is not None:
            failure = h.failing
        elif h.exited and not h.reaped and h.rank not in self.spec.may_die:
            failure = RankRecord(h.rank, "failed", message=signal_name(_exitcode(h)))
        else:
            return None
        if failure is not None and h.failed_seen is None:
            h.failed_seen = now
        return failure

    def _left_early(self, h: _Handle, now: float) -> RankRecord | None:
        """``h``'s ``sys.exit(0)`` as a failure, if a peer that was still running then failed.

        A rank that leaves a test early takes its end of every connection with it; its
        peers then fail with a lost connection. The rank that left is the cause, not the
        peer that noticed. A ``sys.exit(0)`` after which no peer fails stays a pass.
        """
        rec = h.record
        if rec is None or rec.status != "passed" or rec.exit_code is None:
            return None
        if h.rank in self.spec.may_die:
            return None
        failed_at = {}
        for other in self.handles:
            if other is h:
                continue
            failure = self._failure(other, now, early=False)
            if failure is not None:
                failed_at[other.rank] = failure.failed_at or other.failed_seen or now
        message = left_early(h.rank, rec.exit_code, rec.failed_at, failed_at)
        if message is None:
            return None
        return dataclasses.replace(rec, status="failed", exc_type="SystemExit", message=message)

    def _failure_key(self, h: _Handle, failure: RankRecord) -> tuple[bool, float, int]:
        # Causes before consequences; then by when the rank caught its exception (a rank
        # that died without a word: when the parent saw it die); then by rank.
        when = failure.failed_at or h.failed_seen or 0.0
        consequence = is_consequence(failure.exc_type, failure.message, failure.aborted)
        return (consequence, when, h.rank)

    def first_failed(self, now: float) -> tuple[_Handle, RankRecord] | None:
        """The rank whose failure came first (causes before consequences), if any failed."""
        failures = []
        for h in self.handles:
            failure = self._failure(h, now)
            if failure is not None:
                failures.append((self._failure_key(h, failure), h, failure))
        if not failures:
            return None
        _, h, failure = min(failures, key=lambda f: f[0])
        return h, failure

    def _check_failure(self, now: float) -> float | None:
        """On the first failure, abort the other ranks; returns the abort deadline."""
        if self.first_failure is not None:
            return None
        first = self.first_failed(now)
        if first is None:
            return None
        h, failure = first
        self.first_failure = h.rank
        what = f"{failure.exc_type or ''}: {failure.message}".strip(": ")
        reason = (
            f"aborted by the harness: rank {h.rank} failed ({what.splitlines()[0] if what else ''})"
        )
        for other in self.handles:
            if (
                other is not h
                and other.record is None
                and other.failing is None
                and not other.exited
            ):
                other.send(records.Abort(reason))
        return now + ABORT_GRACE

    def wait(self, timeout: float | None) -> tuple[bool, bool]:
        """Wait for every rank; returns (timed_out, killed_after_failure)."""
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        abort_deadline: float | None = None
        exit_deadline: float | None = None
        while True:
            active = self._active()
            if not active:
                return False, False
            now = time.monotonic()
            limits = [t for t in (deadline, abort_deadline, exit_deadline) if t is not None]
            remaining = None if not limits else max(0.0, min(limits) - now)
            waitables: list[Any] = []
            for h in active:
                if h.conn_open:
                    waitables.append(h.conn)
                waitables.append(h.proc.sentinel)
            ready = set(mp_connection.wait(waitables, timeout=remaining))
            now = time.monotonic()
            # Read everything that arrived before judging: the rank that failed first is
            # picked from all the failures known now, not from the first pipe looked at.
            for h in active:
                if h.conn_open and h.conn in ready:
                    h.drain()
                if h.proc.sentinel in ready:
                    self._note_exit(h)
            t = self._check_failure(now)
            if t is not None:
                abort_deadline = t
            if (
                not self.pooled
                and exit_deadline is None
                and all(h.record is not None or h.exited for h in self.handles)
            ):
                exit_deadline = now + EXIT_GRACE
            if deadline is not None and now >= deadline and self._active():
                return True, False
            if abort_deadline is not None and now >= abort_deadline and self._active():
                return False, True
            if exit_deadline is not None and now >= exit_deadline and self._active():
                return False, True

    # -- timeout, kill ---------------------------------------------------------------

    def dump(self) -> None:
        """Ask every live rank for its stacks; SIGUSR1 (faulthandler) for ranks that can't answer."""
        live = self._active()
        asked = [h for h in live if h.send(records.Dump())]
        end = time.monotonic() + DUMP_WAIT
        while any(not h.dumped for h in asked) and time.monotonic() < end:
            conns = [h.conn for h in asked if not h.dumped and h.conn_open]
            if not conns:
                break
            for conn in mp_connection.wait(conns, timeout=max(0.0, end - time.monotonic())):
                for h in asked:
                    if h.conn is conn:
                        h.drain()
        signalled = []
        for h in live:
            if not h.dumped and h.pid is not None:
                try:
                    os.kill(h.pid, signal.SIGUSR1)
                    signalled.append(h)
                except OSError:
                    pass
        # faulthandler writes from the signal handler; wait until something landed.
        end = time.monotonic() + DUMP_WAIT
        for h in signalled:
            path = self.spec.dump_path(h.rank)
            while time.monotonic() < end:
                try:
                    if os.path.getsize(path) > 0:
                        break
                except OSError:
                    pass
                time.sleep(0.01)

    def kill(self, grace: float = KILL_GRACE) -> None:
        """Kill every rank of this set, their descendants and their process groups."""
        if self.closed:
            return
        for h in self._active():
            h.reaped = True
        pids = [h.pid for h in self.handles if h.pid is not None]
        pgids = [h.pgid for h in self.handles if h.pgid]
        _proctree.kill_tree(pids, pgids, grace=grace)
        for h in self.handles:
            if h.proc is not None and not h.exited:
                h.proc.join(grace)
                h.exited = h.proc.exitcode is not None

    def close(self) -> None:
        """Release pipes and process handles; sweep leftover grandchildren (fresh ranks only)."""
        if self.closed:
            return
        self.closed = True
        if not self.pooled:
            _proctree.sweep_groups([h.pgid for h in self.handles if h.pgid])
            for h in self.handles:
                if h.conn is not None:
                    h.conn.close()
                if h.proc is not None:
                    h.proc.join(KILL_GRACE)
                    if h.proc.exitcode is not None:
                        h.proc.close()
            # a rank killed while its mesh connected left the rings it made for its peers
            debug.remove_stale_files()

    # -- results -----------------------------------------------------------------------

    def _unresponsive_cause(self, first: tuple[_Handle, RankRecord] | None) -> _Handle | None:
        """The rank to blame when the first failure is a timeout waiting for other ranks and
        a rank neither finished, failed nor answered the abort (it was killed after the
        grace period): a hung or stopped rank is noticed only by its peers' timeouts, and
        the peer that times out first may be waiting on another peer that waits on it.
        Likewise when the first failure is a lost peer and a later one a timeout: the rank
        that timed out may have taken others down with it (the store it hosted, its end of
        their connections) before it reported."""
        if first is None:
            return None
        rec = first[1]
        if "timed out" not in rec.message:
            if not is_consequence(rec.exc_type, rec.message, rec.aborted):
                return None
            failures = [self._failure(h, time.monotonic(), early=False) for h in self.handles]
            if not any(f is not None and "timed out" in f.message for f in failures):
                return None
        silent = [h for h in self.handles if h.record is None and h.failing is None and h.reaped]
        return min(silent, key=lambda h: h.rank) if silent else None

    def results(self, timed_out: bool) -> list[RankResult]:
        # Every record is in now: settle which rank failed first for the report.
        first = self.first_failed(time.monotonic())
        hung = None if timed_out else self._unresponsive_cause(first)
        if hung is not None:
            self.first_failure = hung.rank
        elif first is not None:
            self.first_failure = first[0].rank
        out = []
        for h in self.handles:
            r = RankResult(rank=h.rank)
            rec = h.record
            if h.proc is not None and not self.pooled:
                try:
                    r.exitcode = h.proc.exitcode
                except ValueError:
                    r.exitcode = None
            if rec is not None:
                # A sys.exit(0) that left failing peers behind is this rank's failure.
                rec = self._failure(h, time.monotonic()) or rec
                r.status = rec.status
                r.exc_type = rec.exc_type
                r.message = rec.message
                r.traceback = rec.traceback
                r.aborted = rec.aborted
                r.duration = rec.duration
                r.exit_code = rec.exit_code
                r.value = rec.value
                r.consequence = r.status == "failed" and (
                    is_consequence(rec.exc_type, rec.message, rec.aborted)
                    or (hung is not None and "timed out" in rec.message)
                )
            elif h is hung:
                r.status = "failed"
                r.exc_type = "Unresponsive"
                r.message = (
                    f"rank {h.rank} stopped responding: it neither finished nor failed while "
                    "its peers timed out waiting, and did not answer the harness's abort "
                    f"(killed after the grace period, {signal_name(r.exitcode)})"
                )
            elif h.rank in self.spec.may_die and h.exited:
                r.status = "passed"  # allowed to die: no result, no failure
            elif timed_out:
                r.status = "timeout"
            elif self.first_failure is not None and self.first_failure != h.rank:
                r.status = "killed"
            else:
                r.status = "lost"
                r.message = f"rank {h.rank} exited without reporting ({signal_name(r.exitcode)})"
            r.trace = h.trace
            r.stdout = read_rank_file(self.spec.out_path(h.rank))
            r.stderr = read_rank_file(self.spec.err_path(h.rank))
            r.dump = read_rank_file(self.spec.dump_path(h.rank))
            out.append(r)
        return out


def start(spec: TaskSpec, *, ctx: Any = None, pool: Any = None) -> RankSet:
    """Start the ranks of ``spec`` (fresh processes, or the workers of ``pool``).

    A world larger than the run allows (``--max-ranks``) is skipped, or fails, first.
    """
    _config.check_capacity(spec.world_size)
    from mpdist.testing._job_secret import give_job_secret  # the ranks' shared job secret

    give_job_secret(spec)
    if pool is not None:
        return pool.submit(spec)
    return RankSet.start_fresh(spec, ctx)


def finish(rs: RankSet, *, timeout: float | None, pool: Any = None) -> Outcome:
    """Wait for the ranks of ``rs``, abort/dump/kill as needed, and collect the :class:`Outcome`.

    With ``pool`` (a :class:`mpdist.testing._pool.WorkerPool`), a failure or timeout
    discards the pool's workers so the next test gets healthy ones.
    """
    t0 = time.perf_counter()
    spec = rs.spec
    outcome = Outcome(test_id=spec.test_id, world_size=spec.world_size, timeout=timeout)
    timed_out = killed = False
    try:
        timed_out, killed = rs.wait(timeout)
        if timed_out or killed:
            # Whatever a rank is stuck in, the report shows where, before it is killed.
            rs.dump()
            rs.kill()
            if pool is not None:
                pool.discard()
    except BaseException:
        # Ctrl-C (or anything else) in the parent: nothing may keep running.
        outcome.interrupted = True
        abandon(rs, pool)
        raise
    outcome.timed_out = timed_out
    outcome.results = rs.results(timed_out)
    outcome.first_failure = rs.first_failure  # as settled by results(), with every record in
    rs.close()
    if pool is not None and outcome.status == "failed":
        pool.discard()
    outcome.elapsed = time.perf_counter() - t0
    return outcome


def abandon(rs: RankSet, pool: Any = None) -> None:
    """Kill the ranks of ``rs`` without collecting anything (setUp failed, Ctrl-C)."""
    rs.kill(grace=0.2)
    if pool is not None:
        pool.discard()
    rs.close()


def run_ranks(
    spec: TaskSpec, *, ctx: Any = None, timeout: float | None, pool: Any = None
) -> Outcome:
    """Start and finish ``spec`` in one call."""
    return finish(start(spec, ctx=ctx, pool=pool), timeout=timeout, pool=pool)
