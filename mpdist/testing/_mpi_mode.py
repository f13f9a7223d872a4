"""``pytest --mpi`` under ``mpiexec``: multi-rank tests run SPMD on the MPI ranks, reported by rank 0.

``mpiexec -n N python -m pytest --mpi tests/`` starts N pytest sessions, one per MPI
rank. Each collects the same tests in the same order; for every ``@pytest.mark.mpdist``
function and every ``MultiProcessTestCase`` method the ranks run the body together
(no process is spawned), each through :func:`mpdist.testing._worker.run_task` (the
record a spawned rank makes: capture, seeding, judging, groups left behind dropped).
Every rank sends its record and output to rank 0, which settles the test's
:class:`~mpdist.testing._coordinator.Outcome` and sends it back, so that every rank's
pytest gives the test the same outcome; only rank 0's terminal shows it, through the
same report path as the spawning harness (``_report``). A test whose world size is not
the communicator's is skipped, with the reason. Before the first test the ranks meet
(:mod:`mpdist.testing._mpi_startup`): a rank that did not collect the same tests, or left,
ends the run in every rank, named.

The default group is the tcp backend over ``mpi://``, made once and kept while tests
pass (a test that fails, or brings its own group, makes it go; the next test makes it
again). tcp rather than the mpi backend because of how a failing rank ends: it drops
its group, and a peer blocked in a tcp collective then fails at once ("after losing a
peer"), as under the spawning harness; an MPI collective cannot be interrupted, so the
peer would sit there until the watchdog ends the whole run. A test marked
``backend="mpi"`` gets the mpi backend.

A hang never hangs the run: a watchdog thread in every rank answers rank 0's requests
for stack dumps, and rank 0's watchdog, at the test's deadline, asks every rank for its
stacks and output, makes pytest's own reports of the test (every rank's record or dump)
and of the session's end (summary, ``--junitxml``, cache), which the abort would cut
off, and calls ``MPI_Abort``. A rank that calls
``os._exit`` (which mpiexec would answer by killing every rank at once, silently) ends the
run the same way, named. The watchdog and the records use their own duplicates of
``COMM_WORLD`` (never the tests'), polled, not waited on: MPICH spins in a blocking call.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
import unittest
from dataclasses import dataclass
from typing import Any, NoReturn, cast

import pytest

from mpdist.testing import _mpi_startup, _outcomes
from mpdist.testing._coordinator import Outcome, RankResult, read_rank_file
from mpdist.testing._records import RankRecord, is_consequence

# How often the waiting loops and the watchdog poll MPI (a blocking MPI call spins a cpu).
POLL = 0.01
WATCH_POLL = 0.05
# How long rank 0 waits for the other ranks' stack dumps at a hang.
DUMP_WAIT = 3.0
# How long rank 0 leaves mpiexec to forward the report before MPI_Abort.
FORWARD_WAIT = 1.0
# How long the pytest session's reports of a hang (JUnit, summary) may take before the abort.
FINISH_WAIT = 10.0
# Exit status of the run when a hang ends it.
HANG_EXIT = 3

_RECORD, _OUTCOME, _FUNCARGS, _DUMP_REQ, _DUMP, _EXITED = range(1, 7)


@dataclass
class _Payload:
    """What a rank sends rank 0 after a test: its record and its output."""

    seq: int
    record: RankRecord
    stdout: str
    stderr: str


@dataclass
class _Exited:
    """A rank that called ``os._exit`` after the start-up meeting, telling rank 0."""

    rank: int
    status: int
    stack: str
    test_id: str | None  # the multi-rank test it was in, if any
    nodeid: str | None  # the pytest test it was in, if any

    @property
    def what(self) -> str:
        return f"rank {self.rank} called os._exit({self.status})"

    @property
    def where(self) -> str:
        if self.nodeid is None:
            return "outside the tests"
        return f"in {self.nodeid}" + ("" if self.test_id else " (not a multi-rank test)")


@dataclass
class _DumpReply:
    seq: int
    rank: int
    dump: str
    trace: str
    stdout: str
    stderr: str


class _Channel:
    """What :func:`run_task` needs of a rank's channel; in MPI mode nobody listens."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.spec: Any = None
        self.abort_reason: str | None = None

    def send(self, msg: object) -> None:
        pass  # Failing / Dumped go to the parent of a spawned rank; here there is none


class MpiSession:
    """The MPI side of one ``pytest --mpi`` session in one rank."""

    def __init__(self, config: pytest.Config) -> None:
        try:
            from mpi4py import MPI
        except ImportError:
            raise pytest.UsageError(
                "--mpi needs mpi4py (pip install 'mpdist[mpi]') and a run under mpiexec"
            ) from None
        if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
            raise pytest.UsageError(
                "--mpi needs an MPI library initialised with MPI_THREAD_MULTIPLE (the watchdog "
                "thread talks MPI while a test runs)"
            )
        self.MPI = MPI
        self.config = config
        self.rank = MPI.COMM_WORLD.Get_rank()
        self.size = MPI.COMM_WORLD.Get_size()
        # Made by begin(), once every rank is known to have collected the same tests
        # (duplicating COMM_WORLD is collective: a rank that left would hang the others).
        self.ctl: Any = None  # records and outcomes
        self.wd: Any = None  # the watchdog's dump requests and replies
        self.seq = 0
        self.group_backend: str | None = None
        self.lock = threading.Lock()
        # the test running now, for the watchdog
        self.spec: Any = None
        self.item: pytest.Item | None = None  # the multi-rank test running now
        self.pytest_session: pytest.Session | None = None
        self.nodeid: str | None = None  # the pytest test running now
        self.ending = False
        self.started = 0.0
        self.deadline: float | None = None
        self.received: dict[int, _Payload] = {}
        self.timeout: float | None = None
        self.rerun = ""
        self.stop = threading.Event()
        # The terminal, for the report of a hang: when the watchdog writes it, fds 1 and 2
        # may be a rank's output files (rank 0's test body is the one that hangs).
        capman = config.pluginmanager.get_plugin("capturemanager")
        with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
            self.terminal = os.dup(1)
        self.thread: threading.Thread | None = None

    def begin(self, session: pytest.Session) -> None:
        """After the start-up meeting: the session's own communicators and the watchdog."""
        self.pytest_session = session
        self.ctl = self.MPI.COMM_WORLD.Dup()
        self.wd = self.MPI.COMM_WORLD.Dup()
        self.thread = threading.Thread(target=self._watch, name="mpdist-mpi-watchdog", daemon=True)
        self.thread.start()
        _mpi_startup.set_exit_handler(self._exiting)

    def _exiting(self, status: int, stack: str) -> None:
        """``os._exit`` in this rank (its main process) after the meeting: mpiexec would kill
        every rank the moment it ends, silently (the run's status then this one's, 0
        perhaps). Rank 0 ends the run instead, with this rank named, then the abort
        comes; this rank waits for it, its watchdog answering for its stacks."""
        spec = self.spec
        test_id = None if spec is None else spec.test_id
        exited = _Exited(self.rank, status, stack, test_id, self.nodeid)
        if self.rank == 0:
            self._end(exited)
        req = self.wd.isend(exited, dest=0, tag=_EXITED)
        end = time.monotonic() + DUMP_WAIT + FINISH_WAIT + FORWARD_WAIT + 10.0
        while time.monotonic() < end:
            time.sleep(POLL)
        req.Cancel()  # rank 0 never ended the run: the exit goes on, and mpiexec ends it

    # -- one test, in every rank ------------------------------------------------------

    def run(
        self, spec: Any, timeout: float | None, rerun: str, item: pytest.Item | None = None
    ) -> Outcome:
        """Run ``spec`` (built alike in every rank) SPMD; the settled outcome, the same in
        every rank. ``item``: the pytest item it is, for the reports of a hang."""
        from mpdist.testing import _worker

        self.seq += 1
        self.item, self.started = item, time.monotonic()
        workdir = spec.workdir
        if self.rank == 0:
            self._send_all((self.seq, workdir, spec.funcargs), _FUNCARGS)
        else:
            seq, workdir, funcargs = self._recv(0, _FUNCARGS)
            assert seq == self.seq, (
                f"--mpi: rank {self.rank} is at test {self.seq}, rank 0 at {seq}"
            )
            os.makedirs(workdir, mode=0o700, exist_ok=True)
            # rank 0's fixture values (its tmp_path), so the ranks share them as spawned ranks do
            spec.funcargs = funcargs
        if spec.workdir != workdir:
            shutil.rmtree(spec.workdir, ignore_errors=True)
        spec.workdir = workdir
        spec.file_name = os.path.join(workdir, "store")
        with self.lock:
            self.spec, self.received = spec, {}
            self.deadline = None if timeout is None else time.monotonic() + timeout
        self.rerun, self.timeout = rerun, timeout
        record = self._group_for(spec)
        if record is None:
            # pytest's capture gives way to the rank's own (fds 1 and 2 to the rank's files,
            # as in a spawned rank): print() in the body must reach those files.
            capman = self.config.pluginmanager.get_plugin("capturemanager")
            with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
                record = _worker.run_task(spec, self.rank, cast(Any, _Channel(self.rank)))
        if not _worker.harness_group[0]:
            self.group_backend = None  # dropped (the test failed, or made its own)
        payload = _Payload(self.seq, record, read_rank_file(spec.out_path(self.rank)), "")
        payload.stderr = read_rank_file(spec.err_path(self.rank))
        if self.rank == 0:
            with self.lock:
                self.received[0] = payload
            while True:
                with self.lock:
                    got = self.received
                    if len(got) == self.size:
                        break
                self._drain_records()
                time.sleep(POLL)
            outcome = settle(spec.test_id, self.size, [got[r] for r in range(self.size)], timeout)
            with self.lock:
                self.deadline = None
            self._send_all((self.seq, outcome), _OUTCOME)
        else:
            _wait(self.ctl.isend(payload, dest=0, tag=_RECORD))
            seq, outcome = self._recv(0, _OUTCOME)
            with self.lock:
                self.deadline = None
        with self.lock:
            self.spec = self.item = None
        shutil.rmtree(workdir, ignore_errors=True)
        return outcome

    def _group_for(self, spec: Any) -> RankRecord | None:
        """Make the session's default group for a function test (None), or the record of
        this rank's failure to make it."""
        from mpdist import distributed as dist
        from mpdist.testing import _worker

        if spec.backend is None:
            return None
        backend = spec.backend
        spec.keep_group = True  # run_task keeps the group after a passing test
        try:
            if dist.is_initialized() and self.group_backend != backend:
                dist.destroy_process_group()
            if not dist.is_initialized():
                self.group_backend = None
                if backend == "tcp":
                    dist.init_process_group("tcp", init_method="mpi://")
                else:
                    dist.init_process_group(backend)
                self.group_backend = backend
            _worker.harness_group[0] = True
            return None
        except BaseException as exc:
            verdict = _outcomes.judge(exc)
            return RankRecord(
                rank=self.rank,
                status=verdict.status,
                pid=os.getpid(),
                exc_type=verdict.exc_type,
                message=verdict.message,
                traceback=verdict.traceback,
                failed_at=time.monotonic(),
            )

    # -- point to point, polled -------------------------------------------------------

    def _send_all(self, obj: object, tag: int) -> None:
        for req in [self.ctl.isend(obj, dest=r, tag=tag) for r in range(1, self.size)]:
            _wait(req)

    def _recv(self, source: int, tag: int) -> Any:
        while not self.ctl.Iprobe(source=source, tag=tag):
            time.sleep(POLL)
        return self.ctl.recv(source=source, tag=tag)

    def _drain_records(self) -> None:
        status = self.MPI.Status()
        while self.ctl.Iprobe(source=self.MPI.ANY_SOURCE, tag=_RECORD, status=status):
            payload = self.ctl.recv(source=status.Get_source(), tag=_RECORD)
            if payload.seq == self.seq:
                with self.lock:
                    self.received[payload.record.rank] = payload

    # -- the watchdog ------------------------------------------------------------------

    def _watch(self) -> None:
        while not self.stop.wait(WATCH_POLL):
            try:
                if self.wd.Iprobe(source=0, tag=_DUMP_REQ):
                    seq = self.wd.recv(source=0, tag=_DUMP_REQ)
                    self.wd.send(self._own_dump(seq), dest=0, tag=_DUMP)
                if self.rank == 0:
                    if self.wd.Iprobe(source=self.MPI.ANY_SOURCE, tag=_EXITED):
                        self._end(self.wd.recv(source=self.MPI.ANY_SOURCE, tag=_EXITED))
                    with self.lock:
                        late = self.deadline is not None and time.monotonic() > self.deadline
                    if late:
                        self._end(None)
            except Exception as exc:  # the watchdog must not die quietly
                _to_stderr(f"mpdist --mpi watchdog, rank {self.rank}: {exc!r}\n")

    def _own_dump(self, seq: int) -> _DumpReply:
        from mpdist.testing._worker import collective_trace

        with tempfile.TemporaryFile("w+") as f:
            faulthandler.dump_traceback(f, all_threads=True)
            f.seek(0)
            dump = f.read()
        spec = self.spec
        out = err = ""
        if spec is not None:
            out, err = (
                read_rank_file(spec.out_path(self.rank)),
                read_rank_file(spec.err_path(self.rank)),
            )
        return _DumpReply(seq, self.rank, dump, collective_trace(), out, err)

    def _end(self, exited: _Exited | None) -> NoReturn:
        """Rank 0 ends the run: at a test's deadline (``exited`` None) or because a rank
        called ``os._exit``. Every rank's stacks, the report (pytest's, as far as it goes),
        ``MPI_Abort``. Once: a second caller waits for the abort."""
        with self.lock:
            ending, self.ending = self.ending, True
        if ending:
            while True:
                time.sleep(1.0)
        spec = self.spec
        if spec is not None and (exited is None or exited.test_id == spec.test_id):
            outcome = self._ended_outcome(spec, self._dumps(), exited)
            self._write_hang(outcome, full=False, exited=exited)
            if not self._finish_session(outcome, exited):
                self._write_hang(outcome, full=True, exited=exited)
        else:  # outside the multi-rank tests: no test to report, the session still ends
            assert exited is not None
            self.item = None
            _to_terminal(
                self.terminal,
                f"\n{exited.what} {exited.where}: the run ends (MPI_Abort)\n{exited.stack}",
            )
            self._finish_session(None, exited)
        # mpiexec forwards the ranks' output through its proxies: give it time to pass the
        # report on before the abort kills everything.
        time.sleep(FORWARD_WAIT)
        # the abort ends every rank before its usual clean-up: remove what would outlive it
        if spec is not None:
            shutil.rmtree(spec.workdir, ignore_errors=True)
        _mpi_startup.abort_job(HANG_EXIT)

    def _dumps(self) -> dict[int, _DumpReply]:
        """Every rank's stacks, trace and output now (those that answer in ``DUMP_WAIT``)."""
        seq = self.seq
        for r in range(1, self.size):
            self.wd.isend(seq, dest=r, tag=_DUMP_REQ)
        dumps = {0: self._own_dump(seq)}
        end = time.monotonic() + DUMP_WAIT
        status = self.MPI.Status()
        while len(dumps) < self.size and time.monotonic() < end:
            if self.wd.Iprobe(source=self.MPI.ANY_SOURCE, tag=_DUMP, status=status):
                reply = self.wd.recv(source=status.Get_source(), tag=_DUMP)
                dumps[reply.rank] = reply
            else:
                time.sleep(POLL)
        return dumps

    def _ended_outcome(
        self, spec: Any, dumps: dict[int, _DumpReply], exited: _Exited | None
    ) -> Outcome:
        """The outcome of the test the run ends in: the records that came, the rest from
        their dumps (still running at the timeout; or killed after the rank that exited)."""
        with contextlib.suppress(Exception):
            self._drain_records()
        with self.lock:
            got = dict(self.received)
        outcome = settle(
            spec.test_id, self.size, [got.get(r) for r in range(self.size)], self.timeout
        )
        outcome.timed_out = exited is None
        for res in outcome.results:
            reply = dumps.get(res.rank)
            if exited is not None and res.rank == exited.rank:
                res.status, res.exitcode = "lost", exited.status
                res.message = f"called os._exit({exited.status}) in the test"
                res.traceback = exited.stack
            elif res.rank not in got:
                res.status = "timeout" if exited is None else "killed"
            if reply is not None:
                res.dump, res.trace = reply.dump, reply.trace
                res.stdout, res.stderr = res.stdout or reply.stdout, res.stderr or reply.stderr
        if exited is not None:
            outcome.first_failure = exited.rank
        return outcome

    def _write_hang(self, outcome: Outcome, full: bool, exited: _Exited | None = None) -> None:
        """The title of the test the run ends in, on the terminal; ``full``: its whole
        report too (when pytest's own reports of the test could not be made)."""
        from _pytest.terminal import TerminalWriter

        from mpdist.testing._report import format_outcome

        text = format_outcome(outcome, include_output=True, rerun=self.rerun)
        why = "timed out" if exited is None else exited.what
        title = f"{outcome.test_id} {why}: the run ends (MPI_Abort)"
        with open(self.terminal, "w", closefd=False) as f:
            tw = TerminalWriter(f)
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            tw.hasmarkup = bool(getattr(getattr(reporter, "_tw", None), "hasmarkup", False))
            tw.line()
            tw.sep("_", title, red=True)
            if full:
                tw.line(text)
                kind = "MultiProcessTimeout" if exited is None else "MultiProcessFailure"
                tw.line(f"FAILED {outcome.test_id} - {kind}", red=True)
            tw.flush()

    def _finish_session(self, outcome: Outcome | None, exited: _Exited | None = None) -> bool:
        """What pytest would do after the test the run ends in and at the session's end,
        which ``MPI_Abort`` cuts off: the test's reports (terminal, JUnit, cache: it
        failed) and the session's finish (the JUnit file, the cache, the terminal's
        summary, with the test's full report). Whether that was done, within
        ``FINISH_WAIT`` (a plugin's hook must not keep the run from ending: it runs in a
        thread of its own). Rank 0's main thread is stuck (in the test, or in
        ``os._exit``): nothing else runs pytest's hooks now."""
        done: list[bool] = []

        def finish() -> None:
            try:
                self._session_reports(outcome, exited)
                done.append(True)
            except Exception as exc:
                _to_stderr(f"mpdist --mpi: the session's reports at its end failed: {exc!r}\n")

        thread = threading.Thread(target=finish, name="mpdist-mpi-finish", daemon=True)
        thread.start()
        thread.join(FINISH_WAIT)
        return bool(done)

    def _session_reports(self, outcome: Outcome | None, exited: _Exited | None) -> None:
        from mpdist.testing import plugin
        from mpdist.testing._report import raise_for

        session, item = self.pytest_session, self.item
        if session is None:
            raise RuntimeError("no pytest session")
        # fds 1 and 2 are the rank's output files while its test body runs: the terminal's
        # writer (on fd 1) must reach the terminal again
        os.dup2(self.terminal, 1)
        stop = ""
        if exited is not None:
            stop = f"--mpi: {exited.what} {exited.where}; the run ends here (MPI_Abort)"
        if item is not None and outcome is not None:
            item.stash[plugin._outcome_key] = outcome
            ihook = item.ihook
            for when, body in (
                ("call", lambda: raise_for(outcome, self.rerun)),
                ("teardown", None),
            ):
                call = pytest.CallInfo.from_call(body or (lambda: None), when=when)  # type: ignore[arg-type]
                report = ihook.pytest_runtest_makereport(item=item, call=call)
                if when == "call":
                    report.duration = time.monotonic() - self.started  # to its end
                ihook.pytest_runtest_logreport(report=report)
            ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
            items = session.items
            left = len(items) - items.index(item) - 1 if item in items else 0
            why = "timed out" if exited is None else f"ends: {exited.what}"
            stop = (
                f"--mpi: {item.nodeid} {why}; the run ends here (MPI_Abort), "
                f"{left} test{'s' * (left != 1)} not run"
            )
        session.shouldstop = stop
        self.config.hook.pytest_sessionfinish(
            session=session, exitstatus=pytest.ExitCode.TESTS_FAILED
        )
        sys.stdout.flush()

    def close(self) -> None:
        """Stop the watchdog; drop the session's group."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(1.0)
        with contextlib.suppress(OSError):
            os.close(self.terminal)
        from mpdist import distributed as dist

        with contextlib.suppress(Exception):
            if dist.is_initialized():
                dist.destroy_process_group()


def _wait(req: Any) -> None:
    while not req.Test():
        time.sleep(POLL)


def _to_terminal(fd: int, text: str) -> None:
    with open(fd, "w", closefd=False) as f:
        f.write(text)


def _to_stderr(text: str) -> None:
    stream = sys.__stderr__
    if stream is not None:
        stream.write(text)
        stream.flush()


def settle(
    test_id: str, world_size: int, payloads: list[_Payload | None], timeout: float | None
) -> Outcome:
    """The test's outcome from every rank's payload (None: none came), the first failure
    picked as the spawning harness picks it: causes before consequences, then by time."""
    outcome = Outcome(test_id=test_id, world_size=world_size, timeout=timeout)
    firsts = []
    for rank, p in enumerate(payloads):
        r = RankResult(rank=rank)
        if p is not None:
            rec = p.record
            r.status, r.exc_type, r.message = rec.status, rec.exc_type, rec.message
            r.traceback, r.aborted, r.duration = rec.traceback, rec.aborted, rec.duration
            r.exit_code, r.stdout, r.stderr = rec.exit_code, p.stdout, p.stderr
            if rec.status == "failed":
                r.consequence = is_consequence(rec.exc_type, rec.message, rec.aborted)
                firsts.append((r.consequence, rec.failed_at, rank))
        outcome.results.append(r)
    if firsts:
        outcome.first_failure = min(firsts)[2]
    return outcome


# -- the plugin's entry points ---------------------------------------------------------

_session: MpiSession | None = None


def active() -> bool:
    """Whether this pytest session runs under ``--mpi``."""
    return _session is not None


def session() -> MpiSession:
    """The ``--mpi`` session of this rank (``start`` made it)."""
    assert _session is not None
    return _session


def _world() -> Any:
    """``MPI.COMM_WORLD`` (initialising MPI), or the usage error saying what ``--mpi`` needs."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise pytest.UsageError(
            "--mpi needs mpi4py (pip install 'mpdist[mpi]') and a run under mpiexec"
        ) from None
    return MPI.COMM_WORLD


def communicator_size() -> int:
    """``MPI.COMM_WORLD``'s size (initialising MPI): the world size of an ``--mpi`` run."""
    return int(_world().Get_size())


def only_rank_zero_writes(config: pytest.Config) -> None:
    """Before ``pytest_configure``: ranks other than 0 write no JUnit XML, nothing into
    pytest's cache or Hypothesis's example database, and not in ``--basetemp``. Every
    rank runs the same session with the same outcomes, so each would write the same
    files at once (one JUnit file, rewritten N times; ``--basetemp`` emptied by every
    rank at its start, while rank 0's tests, whose ``tmp_path`` all ranks share, use it)."""
    if _world().Get_rank() == 0:
        return
    config.option.xmlpath = None  # junitxml's pytest_configure then makes no LogXML
    config.option.cacheclear = False  # rank 0 clears it
    config.option.basetemp = None  # a numbered directory of its own, as without the option
    config.pluginmanager.register(_CacheReader(), "mpdist-mpi-cache-reader")
    config.pluginmanager.register(_HypothesisReader(), "mpdist-mpi-hypothesis-reader")


class _CacheReader:
    """Gives a rank other than 0 a cache that reads rank 0's values (``--lf``/``--ff``/``--sw``
    must select the same tests in every rank) and drops writes. Its ``pytest_configure`` is
    not ``tryfirst``: it runs after cacheprovider's (tryfirst) made ``config.cache``, and,
    registered last, before the plain hooks (stepwise's) that keep a reference to it."""

    def pytest_configure(self, config: pytest.Config) -> None:
        cache = getattr(config, "cache", None)  # no attribute under -p no:cacheprovider
        if cache is not None:
            config.cache = cast(Any, _ReadOnlyCache(cache))


class _HypothesisReader:
    """Gives a rank other than 0 a Hypothesis example database that reads and never
    writes: the settings profile in force, its database wrapped in ``ReadOnlyDatabase``.
    Reading keeps the examples a test replays the same in every rank (an SPMD test's
    ranks must draw alike). Loaded when the session starts (after the conftests, which
    may load a profile of their own; before the test modules, whose ``@settings`` take
    the profile in force as their parent), and again before the first test if a module
    loaded another profile. Hypothesis is imported for it only where installed."""

    profile = "mpdist-mpi-read-only"

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self) -> None:
        import importlib.util

        if "hypothesis" in sys.modules or importlib.util.find_spec("hypothesis") is not None:
            self.apply()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self) -> None:
        if "hypothesis" in sys.modules:
            self.apply()

    def apply(self) -> None:
        from hypothesis import settings
        from hypothesis.database import ReadOnlyDatabase

        current = settings.get_current_profile_name()
        if current == self.profile:
            return
        database = settings.default.database if settings.default is not None else None
        if database is None or isinstance(database, ReadOnlyDatabase):
            return
        settings.register_profile(
            self.profile, settings.get_profile(current), database=ReadOnlyDatabase(database)
        )
        settings.load_profile(self.profile)


class _ReadOnlyCache:
    """pytest's ``Cache`` with ``set`` a no-op (the class is final: a wrapper, not a subclass)."""

    def __init__(self, cache: Any) -> None:
        self._cache = cache

    def set(self, key: str, value: object) -> None:
        pass  # rank 0 writes the same value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)


def start(config: pytest.Config) -> None:
    """Start the session's MPI side; its watchdog starts once the ranks have met."""
    global _session
    _mpi_startup.arm()  # (the plugin arms it before the conftests; this when it did not)
    _session = MpiSession(config)
    config.pluginmanager.register(_StartupHooks(), "mpdist-mpi-startup")


class _StartupHooks:
    """The session's part in the ranks' start-up meeting (``_mpi_startup``)."""

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            _mpi_startup.record_collect_error(report.nodeid, report.longreprtext)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        """Before the first test (and before pytest's own check of collection errors):
        meet the other ranks; end the session in every rank if they did not collect alike."""
        s = _session
        if s is None or not _mpi_startup.armed():
            return
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        write = reporter.write if reporter is not None and s.rank == 0 else None
        problem = _mpi_startup.meet([item.nodeid for item in session.items], write)
        if problem:
            raise session.Interrupted(problem)
        s.begin(session)

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        if _session is not None:
            _session.nodeid = nodeid  # for a rank that calls os._exit, to say where

    def pytest_sessionfinish(self, exitstatus: int) -> None:
        _mpi_startup.record_exitstatus(exitstatus)


def quiet(config: pytest.Config) -> None:
    """Ranks other than 0 write nothing to the terminal (their reporter writes to /dev/null)."""
    if _session is not None and _session.rank != 0:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            from _pytest.terminal import TerminalWriter

            quiet = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the session
            reporter._tw = TerminalWriter(quiet)


def stop() -> None:
    """End the session's MPI side."""
    global _session
    _mpi_startup.leave_if_armed()  # a session that ended before its tests: say so to the others
    _mpi_startup.disarm()
    if _session is not None:
        _session.close()
        _session = None


def rerun_command(nodeid: str, world_size: int) -> str:
    """The command that runs just this test again on MPI."""
    return shlex.join(["mpiexec", "-n", str(world_size), "python", "-m", "pytest", "--mpi", nodeid])


def _check_size(world_size: int, size: int) -> None:
    if world_size != size:
        raise unittest.SkipTest(
            f"world size {world_size} is not the MPI communicator's {size} (pytest --mpi "
            f"runs each test on the mpiexec ranks)"
        )


def run_function(item: pytest.Function) -> None:
    """Run an mpdist-marked function SPMD; raise its outcome (as the spawning harness does)."""
    from mpdist.testing import plugin
    from mpdist.testing._report import raise_for
    from mpdist.testing.multiprocess import make_workdir, remove_workdir

    s = session()
    workdir = make_workdir()
    try:
        spec, timeout = plugin._function_spec(item, workdir)
        _check_size(spec.world_size, s.size)
        outcome = s.run(spec, timeout, rerun_command(item.nodeid, s.size), item)
        item.stash[plugin._outcome_key] = outcome
        raise_for(outcome, s.rerun)
    finally:
        remove_workdir(workdir)


def run_case(item: Any) -> None:
    """Run a MultiProcessTestCase method SPMD, as its ranks would (no setUp/tearDown: those
    run in the spawning harness's parent, which is not here)."""
    from mpdist.testing import plugin
    from mpdist.testing._report import raise_for
    from mpdist.testing._worker import TaskSpec
    from mpdist.testing.multiprocess import make_workdir, module_path, remove_workdir

    s = session()
    case = item.make_instance()
    world_size = case._mpdist_resolve_world_size()
    _check_size(world_size, s.size)
    method = getattr(type(case), case._testMethodName, None)
    needed = getattr(method, "_mpdist_min_world_size", None)
    if needed is not None and world_size < needed:
        raise unittest.SkipTest(f"Need at least {needed} ranks, world size is {world_size}")
    cls = type(case)
    workdir = make_workdir()
    try:
        spec = TaskSpec(
            kind="case",
            module=cls.__module__,
            path=module_path(cls.__module__),
            qualname=cls.__qualname__,
            method=case._testMethodName,
            world_size=world_size,
            file_name=os.path.join(workdir, "store"),
            workdir=workdir,
            test_id=item.nodeid,
            seed=case.seed,
            destroy_groups=bool(case.destroy_pg_upon_exit),
            env=dict(os.environ),
            sys_path=list(sys.path),
            cwd=os.getcwd(),
        )
        if s.rank == 0:
            from mpdist.testing._job_secret import make_private_file

            make_private_file(spec.file_name)
        outcome = s.run(spec, case._mpdist_deadline(), rerun_command(item.nodeid, s.size), item)
        item.stash[plugin._outcome_key] = outcome
        raise_for(outcome, s.rerun)
    finally:
        remove_workdir(workdir)
