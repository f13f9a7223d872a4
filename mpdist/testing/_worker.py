"""What runs inside a rank process: load the test, run it, send one result record to the parent.

A rank talks to the parent over one duplex pipe, in the messages of
:mod:`mpdist.testing._records`. A listener thread owns the receiving end, so the
parent can reach a rank that is stuck in a collective: ``Abort`` aborts everything
of the rank that waits on other ranks (pending collectives raise; the abort sticks
until the next task), ``Dump`` writes the stacks of all threads and the last
collective entered to the rank's dump file. The main thread sends ``Started`` once
and ``Finished`` per test; a failing test also sends ``Failing`` before its group is
torn down, so the parent hears of the cause before the peers report the lost
connection.

Fresh ranks enter through :func:`rank_main` (one test, then exit); pooled
workers through :func:`pool_main` (tests arrive as ``Task``).
"""

from __future__ import annotations

import contextlib
import faulthandler
import importlib
import importlib.util
import json
import marshal
import os
import pickle
import queue
import random
import signal
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.random  # noqa: F401 - numpy 2 imports it lazily; ranks seed it at once

import mpdist
from mpdist import distributed as dist
from mpdist.distributed import debug
from mpdist.testing import _outcomes, _pytest_internals
from mpdist.testing import _records as records

# Exit status of a rank whose parent went away: its whole process group is killed.
_ORPHAN_EXIT = 70


# [True] while the default group of this (pooled) worker was made by with_comms and may
# serve the next test of the class; a list so decorators can flip it.
harness_group = [False]


@dataclass
class TaskSpec:
    """Everything a rank needs to run one test; pickled to the rank."""

    kind: str  # "case": a MultiProcessTestCase method; "function": an mpdist-marked function;
    # "call": fn(rank, world_size, *args) from spawn_ranks, whose return value is sent back
    module: str
    path: str | None
    qualname: str
    method: str
    world_size: int
    file_name: str
    workdir: str
    test_id: str
    seed: int = 1234
    rewrite: bool = False  # run the module with pytest's assertion rewriting
    code: bytes | None = None  # ... compiled by the parent (rewritten_code), if it did
    backend: str | None = None  # "function": the default group the harness initializes
    funcargs: bytes | None = None  # "function": pickled fixture values; "call": pickled args
    group_timeout: float | None = None  # seconds, for the group the harness initializes
    may_die: tuple[int, ...] = ()  # ranks allowed to exit without a result
    destroy_groups: bool = True  # destroy the groups a test left up (destroy_pg_upon_exit)
    keep_group: bool = False  # pooled: a group made by with_comms may stay up for the next test
    group_file: str | None = None  # pooled: the store file of such a group (lives with the pool)
    env: dict[str, str] | None = None
    sys_path: list[str] = field(default_factory=list)
    cwd: str | None = None
    debug_rank: int | None = None

    def __post_init__(self) -> None:
        # in the parent only (unpickling a spec in a rank does not run it)
        if self.rewrite and self.path and self.code is None:
            with contextlib.suppress(OSError, SyntaxError):  # the rank reports it, if real
                self.code = rewritten_code(self.path)

    def out_path(self, rank: int) -> str:
        return os.path.join(self.workdir, f"rank{rank}.out")

    def err_path(self, rank: int) -> str:
        return os.path.join(self.workdir, f"rank{rank}.err")

    def dump_path(self, rank: int) -> str:
        return os.path.join(self.workdir, f"rank{rank}.dump")


def collective_trace() -> str:
    """The last collective this process entered, as the collectives layer reports it."""
    try:
        return debug.collective_trace()
    except Exception as exc:  # the trace is diagnostics: never let it mask the dump
        return f"unavailable ({type(exc).__name__}: {exc})"


class _Channel:
    """The rank's end of the pipe: a lock for sends, a listener thread for receives."""

    def __init__(self, conn: Any, rank: int) -> None:
        self.conn = conn
        self.rank = rank
        self.lock = threading.Lock()
        self.tasks: queue.SimpleQueue[TaskSpec | None] = queue.SimpleQueue()
        self.spec: TaskSpec | None = None
        self.abort_reason: str | None = None
        self.done = False  # the fresh rank has sent its result: EOF is expected now
        self.own_group = False
        self.thread = threading.Thread(target=self._listen, name="mpdist-harness", daemon=True)
        self.thread.start()

    def send(self, msg: object) -> None:
        with self.lock:
            self.conn.send(msg)

    def _listen(self) -> None:
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                self._parent_gone()
                return
            if isinstance(msg, records.Task):
                # A pooled worker's next test starts with no abort in force.
                self.abort_reason = None
                debug.clear_abort()
                self.tasks.put(msg.spec)
            elif isinstance(msg, records.Stop):
                self.tasks.put(None)
                return
            elif isinstance(msg, records.Abort):
                # The abort sticks (mpdist.aborts): a group built after it, by a test that
                # had not got there yet or an init still in its rendezvous, fails too.
                self.abort_reason = msg.reason
                with contextlib.suppress(Exception):
                    debug.abort_all_groups(msg.reason)
            elif isinstance(msg, records.Dump):
                self._dump()

    def _parent_gone(self) -> None:
        if self.done:
            return
        # The parent died or gave up on us: nothing of this rank may survive it.
        if self.own_group:
            with contextlib.suppress(OSError):
                os.killpg(os.getpgrp(), signal.SIGKILL)
        os._exit(_ORPHAN_EXIT)

    def _dump(self) -> None:
        trace = collective_trace()
        spec = self.spec
        if spec is not None:
            with open(spec.dump_path(self.rank), "a") as f:
                f.write(f"last collective entered: {trace}\n")
                f.flush()
                faulthandler.dump_traceback(f, all_threads=True)
        with contextlib.suppress(OSError):
            self.send(records.Dumped(trace))


class _Capture:
    """Send fds 1 and 2 (and so C-level output) of this process to the rank's files."""

    def __init__(self, out_path: str, err_path: str) -> None:
        self._flush()
        self.saved = (os.dup(1), os.dup(2))
        for fd, path in ((1, out_path), (2, err_path)):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
            os.dup2(target, fd)
            os.close(target)

    @staticmethod
    def _flush() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()

    def restore(self) -> None:
        self._flush()
        for fd, saved in zip((1, 2), self.saved, strict=True):
            os.dup2(saved, fd)
            os.close(saved)


def _attach_terminal() -> None:
    # The debug rank talks to the user's terminal even though pytest captures the
    # parent's fds; /dev/tty is the controlling terminal of the whole session.
    try:
        tty_fd = os.open("/dev/tty", os.O_RDWR)
    except OSError:
        return
    for fd in (0, 1, 2):
        os.dup2(tty_fd, fd)
    os.close(tty_fd)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115


def _same_file(module: types.ModuleType, path: str | None) -> bool:
    if path is None:
        return True
    mod_file = getattr(module, "__file__", None)
    if mod_file is None:
        return False
    try:
        return os.path.samefile(mod_file, path)
    except OSError:
        return False


# Test modules run here with rewritten asserts: (name, path) -> (file stamp, module). A
# forkserver that ran a test module (load_server_modules) hands it to every rank it forks.
_rewritten: dict[tuple[str, str], tuple[tuple[int, int], types.ModuleType]] = {}
_compiled: dict[str, tuple[tuple[int, int], bytes]] = {}  # path -> (file stamp, code)

# The test modules a forkserver runs before it forks ranks: a JSON list of [name, path]
# pairs, set by the parent (see _preload.ForkserverPreload) and read by load_server_modules.
SERVER_MODULES_ENV = "MPDIST_SERVER_TEST_MODULES"


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size)


def rewritten_code(path: str) -> bytes:
    """The test module at ``path`` compiled with pytest's assertion rewriting, marshaled.

    The parent compiles each version of a file once and sends the code with every task:
    parsing, rewriting and compiling a typical test module takes 20-30 ms, which every
    rank of every test would otherwise spend again.
    """
    stamp = _stamp(path)
    hit = _compiled.get(path)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    import ast

    with open(path, "rb") as f:
        source = f.read()
    tree = ast.parse(source, filename=path)
    _pytest_internals.rewrite_asserts(tree, source, path)
    blob = marshal.dumps(compile(tree, path, "exec", dont_inherit=True))
    _compiled[path] = (stamp, blob)
    return blob


def _load_rewritten(name: str, path: str, code: bytes | None) -> types.ModuleType:
    # pytest rewrote the module's asserts in the parent; run the same rewritten code here
    # so a failing plain `assert` in a rank explains itself.
    stamp = _stamp(path)
    hit = _rewritten.get((name, path))
    if hit is not None and hit[0] == stamp:
        return hit[1]
    _pytest_internals.explain_comparisons()
    module = types.ModuleType(name)
    module.__file__ = path
    if hit is not None and sys.modules.get(name) is hit[1]:
        sys.modules[name] = module  # the file changed since it ran here: the new version
    else:
        sys.modules.setdefault(name, module)
    exec(marshal.loads(code if code is not None else rewritten_code(path)), module.__dict__)
    _rewritten[(name, path)] = (stamp, module)
    return module


def load_server_modules() -> None:
    """Run the test modules listed in ``$MPDIST_SERVER_TEST_MODULES``, asserts rewritten.

    Called in the harness's forkserver (the last module it preloads), so that the ranks
    it forks find their test module loaded: a rank running a torch test module itself
    spends 0.1-0.2 s on it, at every test. A module that fails here is dropped; the rank
    then loads it itself and reports what is wrong.
    """
    listed = os.environ.get(SERVER_MODULES_ENV)
    if not listed:
        return
    for name, path in json.loads(listed):
        # pytest puts a test module's root on sys.path when it imports the module, which
        # may not have happened yet in the parent when this server started
        root = os.path.dirname(path)
        for _ in range(name.count(".")):
            root = os.path.dirname(root)
        if root not in sys.path:
            sys.path.insert(0, root)
        before = sys.modules.get(name)
        try:
            _load_rewritten(name, path, None)
        except (Exception, SystemExit):
            _rewritten.pop((name, path), None)
            if before is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = before


def _load_module(
    name: str, path: str | None, rewrite: bool, code: bytes | None = None
) -> types.ModuleType:
    if rewrite and path:
        return _load_rewritten(name, path, code)
    if name == "__main__":
        # A file run directly (unittest.main()): multiprocessing re-ran it as __mp_main__.
        for alias in ("__mp_main__", "__main__"):
            module = sys.modules.get(alias)
            if module is not None and _same_file(module, path):
                return module
        name = "__mp_main__"
    module = sys.modules.get(name)
    if module is not None and _same_file(module, path):
        return module
    if module is None:
        with contextlib.suppress(ImportError):
            module = importlib.import_module(name)
            if _same_file(module, path):
                return module
    if path is None:
        raise ImportError(f"cannot import test module {name!r} in the rank")
    # Not importable by name (pytest's importlib mode, a stale module of that name):
    # load the file itself under the same name.
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load test module {name!r} from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _resolve(module: types.ModuleType, qualname: str) -> Any:
    obj: Any = module
    for part in qualname.split("."):
        if part == "<locals>":
            raise ImportError(
                f"{qualname} is defined inside a function; multi-rank tests must be defined at module level"
            )
        obj = getattr(obj, part)
    return obj


def seed_everything(seed: int) -> None:
    """Seed random, numpy, mpdist's parameter RNG and torch (if imported) identically."""
    random.seed(seed)
    np.random.seed(seed)
    mpdist.manual_seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "manual_seed"):
        torch.manual_seed(seed)


def _destroy_torch_group() -> None:
    tdist = sys.modules.get("torch.distributed")
    if tdist is None:
        return
    with contextlib.suppress(Exception):
        if tdist.is_available() and tdist.is_initialized():
            tdist.destroy_process_group()


def _build_call(spec: TaskSpec, rank: int) -> Any:
    module = _load_module(spec.module, spec.path, spec.rewrite, spec.code)
    if spec.kind == "case":
        cls = _resolve(module, spec.qualname)
        case = cls(spec.method)
        case.rank = rank
        case.file_name = spec.file_name
        case._mpdist_world_size = spec.world_size
        case._mpdist_in_rank = True
        case._mpdist_keep_group = spec.keep_group
        case._mpdist_group_file = spec.group_file
        body = getattr(cls, spec.method)
        keeps = getattr(body, "_mpdist_with_comms", False) or getattr(
            cls, "_mpdist_keeps_group", False
        )
        if not (harness_group[0] and keeps):
            # A group left by the previous test (kept for with_comms, or not destroyed:
            # destroy_pg_upon_exit) would make this test's own init fail.
            _drop_group()
            _destroy_torch_group()
        # The class attribute, not the instance's parent-side wrapper: this is the body.
        bound = body.__get__(case, cls)

        def run_case() -> Any:
            case._mpdist_rank_setup()
            return bound()

        return run_case
    obj = _resolve(module, spec.qualname)
    if spec.kind == "call":
        args = pickle.loads(spec.funcargs) if spec.funcargs else ()
        return lambda: obj(rank, spec.world_size, *args)
    if isinstance(obj, type):  # a method of a pytest-style class
        obj = getattr(obj(), spec.method)
    kwargs = pickle.loads(spec.funcargs) if spec.funcargs else {}
    if "rank" in kwargs:
        kwargs["rank"] = rank
    if "world_size" in kwargs:
        kwargs["world_size"] = spec.world_size
    return lambda: obj(**kwargs)


def _pickle_value(value: Any, rank: int) -> bytes:
    try:
        return pickle.dumps(value)
    except Exception as exc:
        raise TypeError(
            f"rank {rank} returned a {type(value).__name__} that cannot be pickled: {exc}"
        ) from None


def _drop_group() -> None:
    harness_group[0] = False
    with contextlib.suppress(Exception):
        if dist.is_initialized():
            dist.destroy_process_group()


def _init_group(spec: TaskSpec, rank: int) -> None:
    if dist.is_initialized():
        if spec.keep_group and dist.get_world_size() == spec.world_size:
            return
        dist.destroy_process_group()
    from datetime import timedelta

    from mpdist.store import FileStore

    store = FileStore(spec.file_name, spec.world_size)
    timeout = None if spec.group_timeout is None else timedelta(seconds=spec.group_timeout)
    dist.init_process_group(
        spec.backend, store=store, rank=rank, world_size=spec.world_size, timeout=timeout
    )


def _apply_env(spec: TaskSpec) -> None:
    # forkserver children inherit the server's environment, not the test's: use the test's.
    if spec.env is not None and spec.env != dict(os.environ):
        os.environ.clear()
        os.environ.update(spec.env)
    for entry in reversed(spec.sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    if spec.cwd and spec.cwd != os.getcwd():
        with contextlib.suppress(OSError):
            os.chdir(spec.cwd)


def _announce_failure(record: records.RankRecord, chan: _Channel) -> None:
    # Tell the parent before this rank's group is torn down: closing the group makes the
    # peers fail too, and the parent must hear about the cause before the consequences.
    # record.failed_at (time.monotonic(), one clock for every process of the machine)
    # orders the failures of several ranks by when each was caught.
    with contextlib.suppress(OSError, ValueError):
        chan.send(records.Failing(record))


def run_task(spec: TaskSpec, rank: int, chan: _Channel) -> records.RankRecord:
    """Run one test in this rank and return its result record."""
    chan.spec = spec
    on_terminal = spec.debug_rank == rank
    capture = None if on_terminal else _Capture(spec.out_path(rank), spec.err_path(rank))
    dump_file = open(spec.dump_path(rank), "a")  # noqa: SIM115 - faulthandler needs it open
    faulthandler.register(signal.SIGUSR1, file=dump_file, all_threads=True)
    if capture is not None:
        with contextlib.suppress(Exception):
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    record = records.RankRecord(rank=rank, pid=os.getpid())
    start = time.perf_counter()
    try:
        _apply_env(spec)
        call = _build_call(spec, rank)
        seed_everything(spec.seed)
        if spec.backend is not None:
            _init_group(spec, rank)
        value = call()
        if spec.kind == "call":
            record.value = _pickle_value(value, rank)
    except BaseException as exc:
        verdict = _outcomes.judge(exc, __file__)
        record.status = verdict.status
        if verdict.status != "passed":
            record.message = verdict.message
        record.exit_code = verdict.exit_code
        if verdict.status == "failed" or verdict.exit_code is not None:
            # For sys.exit(0) too: when the rank left, in case its peers were still running.
            record.failed_at = time.monotonic()
        if verdict.status == "failed":
            record.exc_type, record.traceback = verdict.exc_type, verdict.traceback
    finally:
        record.duration = time.perf_counter() - start
        record.aborted = chan.abort_reason
        if record.status == "failed":
            _announce_failure(record, chan)
        if spec.destroy_groups and not (
            spec.keep_group and record.status in ("passed", "skipped") and harness_group[0]
        ):
            _drop_group()
            _destroy_torch_group()
        faulthandler.unregister(signal.SIGUSR1)
        if capture is not None:
            capture.restore()
        dump_file.close()
        chan.spec = None
    return record


def _process_setup(rank: int, on_terminal: bool) -> bool:
    """Per-process setup of a rank; returns whether the rank leads its own process group."""
    # Fatal signals (segfault, abort) print every thread's stack to the rank's stderr.
    faulthandler.enable(all_threads=True)
    if on_terminal:
        _attach_terminal()
        return False
    # Own process group: Ctrl-C at the terminal reaches only the parent (which stops
    # everything), and the parent can kill orphaned grandchildren by group.
    try:
        os.setpgrp()
    except OSError:
        return False
    return True


def rank_main(spec: TaskSpec, rank: int, conn: Any) -> None:
    """Entry point of a fresh rank process: run one test, report, exit."""
    own = _process_setup(rank, spec.debug_rank == rank)
    chan = _Channel(conn, rank)
    chan.own_group = own
    chan.send(records.Started(os.getpid(), os.getpgrp() if own else 0))
    record = run_task(spec, rank, chan)
    chan.done = True
    chan.send(records.Finished(record))


def pool_main(rank: int, conn: Any) -> None:
    """Entry point of a pooled worker: run tests as they arrive until told to stop."""
    own = _process_setup(rank, False)
    chan = _Channel(conn, rank)
    chan.own_group = own
    chan.send(records.Started(os.getpid(), os.getpgrp() if own else 0))
    while True:
        spec = chan.tasks.get()
        if spec is None:
            break
        record = run_task(spec, rank, chan)
        chan.send(records.Finished(record))
    chan.done = True
    _drop_group()
