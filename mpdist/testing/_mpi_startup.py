"""``pytest --mpi`` start-up: the ranks meet once, collected, before the first test.

Under ``mpiexec`` every rank runs its own pytest session, and the tests run SPMD only if
every rank reached its test loop with the same tests in the same order. A rank that does
not (a collection error, a conftest that fails to import, a different test list, a rank
that leaves) would leave the others waiting in the first test for a peer that never
comes. So before the first test each rank sends rank 0 what it collected, or why it left,
and waits for rank 0's verdict; rank 0 compares, prints what differs, naming the ranks,
and every rank ends its session (``Interrupted``) or goes on, together.

Every way out of a rank before the meeting goes through it: pytest's test loop (the usual
way), the end of a session that never got there (``stop``), a conftest that failed to
import (before pytest is configured), the interpreter's exit, and ``os._exit``. The last
one matters most: MPICH's ``mpiexec`` kills every rank (SIGKILL) the moment one ends
without ``MPI_Finalize``, so rank 0 could never report it afterwards, and the job would
end silently with that rank's exit status (0 for ``os._exit(0)``). Under ``--mpi``,
``os._exit`` in a rank's own process first reports and finalizes MPI (after the meeting,
the session's handler takes over: rank 0 ends the run naming the rank). A rank that dies
of a signal still ends the job at once, through ``mpiexec`` (whose message names its
pid and signal).

The meeting uses point-to-point messages on ``COMM_WORLD`` with tags of its own, polled:
no collective, so a rank that never arrives cannot hang the others in MPI. Waits are
bounded by the run's per-test deadline (``--mp-timeout``); past it the job is aborted
with the absent ranks named.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

# Tags of the meeting on COMM_WORLD (apart from anything a test sends there).
_HELLO, _VERDICT = 0x6D7000, 0x6D7001
POLL = 0.01
# How much longer than rank 0 a waiting rank gives the meeting before it ends the job.
GRACE = 10.0
# The exit status of a job ended because a rank never reached the meeting.
ABSENT_EXIT = 3
# pytest's status for an interrupted session: what a rank that leaves early ends with.
INTERRUPTED_EXIT = 2


@dataclass
class Hello:
    """What a rank tells rank 0 at the meeting."""

    rank: int
    host: str
    pid: int
    nodeids: list[str] = field(default_factory=list)  # the tests it would run, in order
    errors: dict[str, str] = field(default_factory=dict)  # failed collections: node id -> report
    left: str = ""  # why it leaves before the tests ("": it does not)


@dataclass
class _State:
    pid: int
    met: bool = False
    verdict: str = ""
    errors: dict[str, str] = field(default_factory=dict)
    exitstatus: int | None = None
    # what os._exit does in a rank after the meeting (set by the session; None: just exit)
    on_exit: Callable[[int, str], None] | None = None


_state: _State | None = None
_real_exit = os._exit


def arm() -> None:
    """Under ``--mpi``, before pytest loads conftests: every way out of this process
    from now on meets the other ranks first (see the module's docstring)."""
    global _state
    if _state is not None and _state.pid == os.getpid():
        return
    _state = _State(pid=os.getpid())
    atexit.register(leave_if_armed)
    os._exit = _guarded_exit


def disarm() -> None:
    """At the session's end: ``os._exit`` is the plain one again (no rank 0 listens now)."""
    if os._exit is _guarded_exit:
        os._exit = _real_exit
    if _state is not None:
        _state.on_exit = None


def armed() -> bool:
    """Whether this process is an ``--mpi`` rank that has not met the others yet."""
    return _state is not None and _state.pid == os.getpid() and not _state.met


def record_collect_error(nodeid: str, text: str) -> None:
    """A collection that failed in this rank (reported at the meeting)."""
    if _state is not None:
        _state.errors[nodeid] = text


def record_exitstatus(status: int) -> None:
    """The session's exit status (for a rank that ends without reaching its tests)."""
    if _state is not None:
        _state.exitstatus = int(status)


def set_exit_handler(handler: Callable[[int, str], None] | None) -> None:
    """What ``os._exit`` does first in this rank after the meeting."""
    if _state is not None:
        _state.on_exit = handler


def meet(nodeids: list[str], write: Callable[[str], None] | None = None) -> str:
    """At the test loop: meet the other ranks with the tests this rank collected. The
    problem that ends the run ("" if none), the same in every rank; rank 0 writes
    what differs first, through ``write`` (else to stderr)."""
    assert _state is not None
    errors = dict(_state.errors)
    return _meet(Hello(0, "", 0, nodeids=list(nodeids), errors=errors), write)


def leave(reason: str, write: Callable[[str], None] | None = None) -> str:
    """This rank leaves before its tests: meet the others with the reason (once)."""
    if not armed():
        return ""
    assert _state is not None
    hello = Hello(0, "", 0, errors=dict(_state.errors), left=reason)
    return _meet(hello, write)


def leave_conftest(exc: BaseException) -> None:
    """A conftest failed to import before pytest was configured: leave with its error."""
    cause = getattr(exc, "cause", None) or exc
    where = getattr(exc, "path", None)
    frames = _own_frames(traceback.extract_tb(cause.__traceback__))
    text = "".join(traceback.format_list(frames)) + "".join(
        traceback.format_exception_only(type(cause), cause)
    )
    head = f"{type(cause).__name__} while loading conftest {where}: {cause}" if where else ""
    leave(f"{head or f'{type(cause).__name__}: {cause}'}\n{text}")


def leave_if_armed() -> None:
    """Leave before the tests, if this rank has not met the others (the session ended)."""
    if armed():
        assert _state is not None
        status = _state.exitstatus
        leave(
            "its pytest ended before the tests started"
            + ("" if status is None else f" (exit status {status})")
        )


def _guarded_exit(status: int) -> NoReturn:
    st = _state
    if st is not None and st.pid == os.getpid():  # not a forked child of the rank
        with contextlib.suppress(BaseException):
            frames = _own_frames(traceback.extract_stack()[:-1])
            where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
            stack = "".join(traceback.format_list(frames))
            if not st.met:
                leave(f"it called os._exit({status}){where} before the tests started\n{stack}")
                mpi = sys.modules.get("mpi4py.MPI")
                # finalized, its end is a normal one to mpiexec, which then lets rank 0 finish
                if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
                    # mpiexec kills the ranks still finalizing when this one ends, at times
                    # before MPICH unlinks its segments: every rank is attached by now
                    unlink_mapped_shm()
                    mpi.Finalize()
                # Once every rank has finalized, mpiexec takes the first status it sees and
                # kills the rest: a 0 here could be the run's. The run failed (Interrupted).
                status = status or INTERRUPTED_EXIT
            elif st.on_exit is not None:
                st.on_exit(status, stack)
    _real_exit(status)


# Frames of pytest's, pluggy's and the import system's, left out of a rank's stack.
_MACHINERY = tuple(
    f"{os.sep}{name}{os.sep}" for name in ("_pytest", "pytest", "pluggy", "importlib")
)


def _own_frames(frames: traceback.StackSummary | list[traceback.FrameSummary]) -> list[Any]:
    """The frames of a stack that are not pytest's machinery (the user's and mpdist's)."""
    return [
        f
        for f in frames
        if not f.filename.startswith("<frozen")
        and not any(m in f.filename for m in _MACHINERY)
        and f.filename != __file__
    ]


def _timeout() -> float:
    from mpdist.testing import _config

    try:
        return _config.run_timeout_and_source()[0]
    except ValueError:
        return _config.DEFAULT_TIMEOUT


def _meet(hello: Hello, write: Callable[[str], None] | None) -> str:
    assert _state is not None and not _state.met
    _state.met = True
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    hello.rank, hello.host, hello.pid = rank, socket.gethostname(), os.getpid()
    timeout = _timeout()
    out = write or _to_stderr
    if rank != 0:
        req = world.isend(hello, dest=0, tag=_HELLO)
        deadline = time.monotonic() + timeout + GRACE
        while not world.Iprobe(source=0, tag=_VERDICT):
            if time.monotonic() > deadline:
                _to_stderr(
                    f"pytest --mpi: rank {rank} waited {timeout + GRACE:g} s for rank 0 to "
                    "finish collecting; the run ends (MPI_Abort)\n"
                )
                abort_job(ABSENT_EXIT)
            time.sleep(POLL)
        _state.verdict = world.recv(source=0, tag=_VERDICT)
        req.wait()
        return _state.verdict
    hellos: dict[int, Hello] = {0: hello}
    deadline = time.monotonic() + timeout
    status = MPI.Status()
    while len(hellos) < size:
        if world.Iprobe(source=MPI.ANY_SOURCE, tag=_HELLO, status=status):
            got = world.recv(source=status.Get_source(), tag=_HELLO)
            hellos[got.rank] = got
        elif time.monotonic() > deadline:
            absent = [r for r in range(size) if r not in hellos]
            out(
                _banner(
                    f"pytest --mpi: rank{'s' * (len(absent) > 1)} "
                    f"{', '.join(map(str, absent))} did not finish collecting within "
                    f"{timeout:g} s of rank 0 (--mp-timeout); the run ends (MPI_Abort)"
                )
            )
            abort_job(ABSENT_EXIT)
        else:
            time.sleep(POLL)
    problems, details = compare([hellos[r] for r in range(size)])
    verdict = ""
    if problems:
        out(_banner("pytest --mpi: the ranks did not start alike") + "\n".join(details) + "\n")
        verdict = "--mpi: " + "; ".join(problems) + " (no test ran)"
    for req in [world.isend(verdict, dest=r, tag=_VERDICT) for r in range(1, size)]:
        req.wait()
    _state.verdict = verdict
    return verdict


def compare(hellos: list[Hello]) -> tuple[list[str], list[str]]:
    """What keeps the ranks from running their tests together, one line per problem,
    and the text that explains them (each rank's reasons and error reports)."""
    first = hellos[0]
    if all(h.left and h.left == first.left for h in hellos):
        return [], []  # every rank ended alike (--help, a usage error): pytest said why
    problems: list[str] = []
    details: list[str] = []
    present = [h for h in hellos if not h.left]
    common = set.intersection(*(set(h.errors) for h in present)) if present else set()
    for h in hellos:
        who = f"rank {h.rank} (pid {h.pid} on {h.host})"
        if h.left:
            line = h.left.splitlines()[0] if h.left.strip() else "it left"
            problems.append(f"rank {h.rank} left before the tests started: {line}")
            details += [f"--- {who} left before the tests started ---", h.left.rstrip()]
        own = [n for n in h.errors if n not in common]
        if own:
            if not h.left:
                problems.append(f"rank {h.rank} failed to collect {', '.join(own)}")
            details.append(f"--- {who}: error{'s' * (len(own) > 1)} during collection ---")
            details += [f"{n}:\n{h.errors[n].rstrip()}" for n in own]
    if problems:
        return problems, details  # the test lists then differ too, as a consequence
    for h in hellos[1:]:
        if h.nodeids != first.nodeids:
            line = _difference(first.nodeids, h.nodeids, h.rank)
            problems.append(line)
            details += [
                f"--- rank {h.rank} (pid {h.pid} on {h.host}) ---",
                line + " (every rank must run the same tests in order)",
            ]
    return problems, details


def _difference(mine: list[str], theirs: list[str], rank: int) -> str:
    """How rank ``rank``'s test list differs from rank 0's, at the first place it does."""
    head = f"rank {rank} collected {len(theirs)} tests, rank 0 {len(mine)}"
    for i, (a, b) in enumerate(zip(mine, theirs, strict=False)):
        if a != b:
            return f"{head}: test {i + 1} is {b} in rank {rank}, {a} in rank 0"
    if len(theirs) > len(mine):
        return f"{head}: rank {rank} also has {theirs[len(mine)]}"
    return f"{head}: rank 0 also has {mine[len(theirs)]}"


def _banner(title: str) -> str:
    return f"\n{'=' * 8} {title} {'=' * 8}\n"


def _to_stderr(text: str) -> None:
    stream = sys.__stderr__
    if stream is not None:
        stream.write(text)
        stream.flush()


def unlink_mapped_shm() -> None:
    """Unlink the MPI library's shared-memory segments this process has mapped.

    MPICH removes them when the job ends normally; ``MPI_Abort`` kills the ranks first, and
    the names would stay in /dev/shm. Unlinking a mapped segment is safe: every rank
    attached long ago, and the memory lives until the last process unmaps it.
    """
    try:
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return
    for line in lines:
        path = line.rpartition(" ")[2]
        if path.startswith("/dev/shm/mpich_shm_"):
            with contextlib.suppress(OSError):
                os.unlink(path)


def abort_job(code: int) -> NoReturn:
    """End the whole MPI job now, leaving nothing of MPI's in /dev/shm."""
    from mpi4py import MPI

    unlink_mapped_shm()
    MPI.COMM_WORLD.Abort(code)
    raise AssertionError("MPI_Abort returned")  # pragma: no cover
