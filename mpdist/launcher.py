"""``mpdist run``: start the local ranks of a script with env:// set, label their output, stop them together.

    python -m mpdist run --nproc 4 train.py --epochs 3
    python -m mpdist run --nproc 2 -m mypkg.job
    # two machines, 4 ranks each (global rank = node_rank * nproc + local_rank):
    python -m mpdist run --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --master-port 29500 --nproc 4 train.py
    python -m mpdist run --nnodes 2 --node-rank 1 --master-addr 10.0.0.1 --master-port 29500 --nproc 4 train.py

Every rank gets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``GROUP_RANK`` (the node rank), ``MASTER_ADDR`` and ``MASTER_PORT``, so
``mpdist.init_process_group()`` with no arguments meets the others (env://).

Job secret. The ranks' store and meshes authenticate with a job secret (see
``mpdist._auth``): ``--secret-file FILE`` (a 0600 file of this user; every node of a
multi-node job passes the same secret) is handed to the ranks as
``MPDIST_JOB_SECRET_FILE``; else a ``MPDIST_JOB_SECRET`` or ``MPDIST_JOB_SECRET_FILE``
already in the environment is passed on; else a one-node job gets a fresh random secret
in its ranks' environment (never on a command line), and a multi-node job, which cannot
share one that way, runs without and the launcher says so.

Master port. With ``--master-port`` the launcher of node 0 checks the port is
free before starting anything. Without it (one node only) the launcher asks the
OS for a free port. To close the race between choosing the port and rank 0
binding it, the launcher keeps a bound but non-listening socket with
``SO_REUSEADDR`` on that port until the job ends: the kernel then hands the port
to no other ``bind(port=0)`` or outgoing connection, while rank 0's store server
(which binds with ``SO_REUSEADDR``) can still listen on it.

Slurm. Inside a Slurm job (one ``mpdist run`` per node, e.g. ``srun
--ntasks-per-node=1 python -m mpdist run --nproc 4 train.py``) ``--nnodes`` and
``--node-rank`` default to ``SLURM_NNODES`` and ``SLURM_NODEID``, and with several
nodes ``--master-addr`` / ``--master-port`` to the first host of the node list and a
port derived from the job and step ids (as env:// derives them).

Threads. Each rank gets ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and
``MKL_NUM_THREADS`` = max(1, usable cpus // ranks on this node), the test harness's
rule, unless the user set them: N ranks with a BLAS pool of all cpus each would
oversubscribe the node N times.

Output. Each line a rank writes to stdout or stderr is written to the
launcher's stdout or stderr as one ``[rank k] ...`` line (k is the global
rank), so lines of different ranks never mix within a line. Ranks run with
``PYTHONUNBUFFERED=1`` so lines appear as they are printed. ``--ranks-filter 0,2``
passes only those ranks' lines to the terminal; ``--log-dir DIR`` also writes every
rank's lines, unprefixed, to ``DIR/rank<k>.stdout`` and ``DIR/rank<k>.stderr``;
``--timestamp`` starts each line (terminal and files) with the time it was read.

Exit. When every rank exits 0 the launcher exits 0. When a rank fails first,
the others are stopped and the launcher exits with that rank's code; a rank
killed by a signal counts as ``128 + signum`` (139 for SIGSEGV), as a shell
reports it. SIGINT (Ctrl-C) or SIGTERM to the launcher stops every rank and
exits 130 (SIGHUP too: a closed terminal); a second signal skips the grace
period. Stopping means: SIGTERM to each rank's whole process tree (each rank
leads its own process group, and descendants found through psutil are
signalled too), ``--stop-grace`` seconds to exit, then SIGKILL. Processes a
successful rank leaves behind are stopped the same way: nothing outlives the
launcher. On Linux the launcher is a child subreaper while the job runs, so a
descendant whose rank died is adopted by the launcher (found, stopped and
reaped there) instead of by init, and each rank gets SIGKILL from the kernel if
the launcher itself dies (PR_SET_PDEATHSIG). Ranks get stdin from /dev/null.

Layout. ``--no-aslr`` starts the ranks with address randomization off, all at the same
addresses: ranks that take turns on a core run small collectives faster (see
``mpdist._rank_start``, which also holds the libc calls above).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import psutil

from mpdist import _auth
from mpdist._proctree import ProcessTree
from mpdist._rank_start import PR_SET_CHILD_SUBREAPER, libc_function, one_layout, rank_preexec
from mpdist.store import rendezvous
from mpdist.testing._config import THREAD_VARS, blas_threads

__all__ = ["main"]

PROG = "mpdist run"

# The launcher's options that take a value: (spellings, add_argument keywords). The parser is
# built from this table, and _split_argv reads it to find where the launcher's options end
# and the script's arguments begin (everything after the script is passed on verbatim).
_VALUE_OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (
        ("--nproc", "--nproc-per-node", "--nproc_per_node"),
        dict(
            dest="nproc",
            type=int,
            default=1,
            metavar="N",
            help="ranks to start on this node (default 1)",
        ),
    ),
    (
        ("--nnodes",),
        dict(
            type=int,
            default=None,
            metavar="M",
            help="number of nodes (default: $SLURM_NNODES under Slurm, else 1)",
        ),
    ),
    (
        ("--node-rank", "--node_rank"),
        dict(
            dest="node_rank",
            type=int,
            default=None,
            metavar="R",
            help="this node's index, 0..M-1 (default: $SLURM_NODEID under Slurm, else 0)",
        ),
    ),
    (
        ("--master-addr", "--master_addr"),
        dict(
            dest="master_addr",
            default=None,
            metavar="A",
            help="address of node 0, where rank 0 runs the store (default: the first host "
            "of Slurm's node list with several nodes, else 127.0.0.1)",
        ),
    ),
    (
        ("--master-port", "--master_port"),
        dict(
            dest="master_port",
            type=int,
            default=None,
            metavar="P",
            help="port of rank 0's store; required with --nnodes > 1 outside Slurm "
            "(default: one derived from Slurm's job id, else a free port)",
        ),
    ),
    (
        ("--log-dir", "--log_dir"),
        dict(
            dest="log_dir",
            default=None,
            metavar="DIR",
            help="also write each rank's output to DIR/rank<k>.stdout and DIR/rank<k>.stderr",
        ),
    ),
    (
        ("--ranks-filter", "--ranks_filter"),
        dict(
            dest="ranks_filter",
            default=None,
            metavar="K,...",
            help="only these global ranks' output reaches the terminal (default: all)",
        ),
    ),
    (
        ("--secret-file", "--secret_file"),
        dict(
            dest="secret_file",
            default=None,
            metavar="FILE",
            help="a 0600 file holding the job secret the ranks authenticate with "
            "(default: $MPDIST_JOB_SECRET(_FILE), else a fresh one on one node)",
        ),
    ),
    (
        ("--stop-grace",),
        dict(
            dest="stop_grace",
            type=float,
            default=5.0,
            metavar="S",
            help="seconds ranks get to exit after SIGTERM before SIGKILL (default 5)",
        ),
    ),
)
_VALUE_OPTION_NAMES = frozenset(name for names, _ in _VALUE_OPTIONS for name in names)

# A rank line longer than this is passed on in pieces rather than buffered without bound.
_MAX_LINE = 1 << 20
_READ_CHUNK = 1 << 16
# How long SIGKILLed processes get to disappear before the launcher gives up on them.
_KILL_WAIT_S = 10.0
# Signals that stop the job (exit 130); a second one skips the grace period.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _UsageError(Exception):
    pass


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # Raise instead of exiting so main() returns 2 like any other usage error.
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [options] (script.py | -m module) [args ...]",
        description="Start N local ranks of a Python program with env:// rendezvous variables set.",
        epilog=(
            "Each rank gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR\n"
            "and MASTER_PORT, so mpdist.init_process_group() needs no arguments. Output lines are\n"
            "prefixed '[rank k] '. Exit status: 0 if every rank succeeds; else the first failing\n"
            "rank's code (128+N if killed by signal N), the other ranks being stopped; 130 after\n"
            "Ctrl-C/SIGTERM; 2 for bad arguments."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    for names, kwargs in _VALUE_OPTIONS:
        p.add_argument(*names, **kwargs)
    p.add_argument(
        "--no-aslr",
        dest="no_aslr",
        action="store_true",
        help="start the ranks with address randomization off, all at the same addresses:"
        " ranks that share a core run small collectives faster (Linux; gives up ASLR)",
    )
    p.add_argument(
        "--timestamp",
        action="store_true",
        help="start each output line with the time it was read (HH:MM:SS.mmm)",
    )
    p.add_argument(
        "-m",
        "--module",
        action="store_true",
        help="run the program as a module, like python -m",
    )
    return p


@dataclass
class _Config:
    nproc: int
    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int | None
    stop_grace: float
    secret_file: str | None
    module: bool
    program: str
    program_args: list[str]
    log_dir: str | None = None
    ranks_filter: frozenset[int] | None = None  # None: every rank's output reaches the terminal
    timestamp: bool = False
    no_aslr: bool = False  # the ranks start with one address layout (_rank_start.one_layout)


def _split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split into the launcher's options and ``[program, *its args]``."""
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            return list(argv[:i]), list(argv[i + 1 :])
        if tok == "-" or not tok.startswith("-"):
            return list(argv[:i]), list(argv[i:])
        i += 2 if tok in _VALUE_OPTION_NAMES else 1
    return list(argv), []


def _slurm_int(name: str) -> int | None:
    """A Slurm variable as an int, when this runs inside a Slurm job and it is set."""
    if not os.environ.get("SLURM_JOB_ID"):
        return None
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise _UsageError(f"${name} must be an integer, got {text!r}") from None


def _slurm_master(nnodes: int) -> tuple[str | None, int | None]:
    """Node 0's address and a port for a multi-node job under Slurm, as env:// derives them."""
    if nnodes == 1 or not os.environ.get("SLURM_JOB_ID"):
        return None, None
    env = os.environ
    nodes = rendezvous._slurm_nodes(env)
    try:
        addr = rendezvous.expand_hostlist(nodes)[0] if nodes else None
    except ValueError as exc:
        raise _UsageError(f"{exc}; give --master-addr") from None
    job = f"{env['SLURM_JOB_ID'].strip()}.{env.get('SLURM_STEP_ID', '').strip()}"
    return addr, rendezvous.derived_port(f"slurm:{job}")


def _ranks_filter(text: str | None, world_size: int) -> frozenset[int] | None:
    if text is None:
        return None
    ranks = set()
    for part in text.split(","):
        try:
            rank = int(part.strip())
        except ValueError:
            raise _UsageError(f"--ranks-filter takes global ranks like 0,2, got {text!r}") from None
        if not 0 <= rank < world_size:
            raise _UsageError(f"--ranks-filter: rank {rank} is not in 0..{world_size - 1}")
        ranks.add(rank)
    return frozenset(ranks)


def _parse(argv: Sequence[str]) -> _Config:
    opts, rest = _split_argv(argv)
    parser = _parser()
    ns = parser.parse_args(opts)
    # Under Slurm (one `mpdist run` per node, e.g. srun --ntasks-per-node=1) the job says
    # how many nodes there are and which one this is; the command line still wins.
    if ns.nnodes is None:
        ns.nnodes = _slurm_int("SLURM_NNODES") or _slurm_int("SLURM_JOB_NUM_NODES") or 1
    if ns.node_rank is None:
        ns.node_rank = (_slurm_int("SLURM_NODEID") or 0) if ns.nnodes > 1 else 0
    slurm_addr, slurm_port = _slurm_master(ns.nnodes)
    if ns.master_addr is None:
        ns.master_addr = slurm_addr or "127.0.0.1"
    if ns.master_port is None:
        ns.master_port = slurm_port
    if not rest:
        raise _UsageError("a module name is required after -m" if ns.module else "no script given")
    if ns.nproc < 1:
        raise _UsageError(f"--nproc must be >= 1, got {ns.nproc}")
    if ns.nnodes < 1:
        raise _UsageError(f"--nnodes must be >= 1, got {ns.nnodes}")
    if not 0 <= ns.node_rank < ns.nnodes:
        raise _UsageError(f"--node-rank must be in 0..{ns.nnodes - 1}, got {ns.node_rank}")
    if ns.master_port is not None and not 1 <= ns.master_port <= 65535:
        raise _UsageError(f"--master-port must be in 1..65535, got {ns.master_port}")
    if ns.nnodes > 1 and ns.master_port is None:
        raise _UsageError(
            "--master-port is required with --nnodes > 1 (every node must use the same)"
        )
    if not ns.master_addr.strip():
        raise _UsageError("--master-addr must not be empty")
    if not ns.stop_grace >= 0:
        raise _UsageError(f"--stop-grace must be >= 0, got {ns.stop_grace}")
    secret_file = None if ns.secret_file is None else os.path.abspath(ns.secret_file)
    if secret_file is not None:
        try:
            _auth.job_secret({_auth.SECRET_FILE_ENV: secret_file})
        except ValueError as exc:
            raise _UsageError(f"--secret-file: {exc}") from None
    ranks_filter = _ranks_filter(ns.ranks_filter, ns.nnodes * ns.nproc)
    log_dir = None if ns.log_dir is None else os.path.abspath(ns.log_dir)
    if log_dir is not None:
        try:
            os.makedirs(log_dir, exist_ok=True)
        except OSError as exc:
            raise _UsageError(f"--log-dir {ns.log_dir}: {exc.strerror or exc}") from None
    program = rest[0]
    if not ns.module and not os.path.isfile(program):
        raise _UsageError(f"script not found: {program!r} (use -m to run a module)")
    return _Config(
        nproc=ns.nproc,
        nnodes=ns.nnodes,
        node_rank=ns.node_rank,
        master_addr=ns.master_addr.strip(),
        master_port=ns.master_port,
        stop_grace=ns.stop_grace,
        secret_file=secret_file,
        module=ns.module,
        program=program,
        program_args=rest[1:],
        log_dir=log_dir,
        ranks_filter=ranks_filter,
        timestamp=ns.timestamp,
        no_aslr=ns.no_aslr,
    )


def _reserve_port(addr: str, port: int) -> socket.socket:
    """Bind (without listening) ``addr:port`` with SO_REUSEADDR; port 0 lets the OS choose."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _exit_code(returncode: int) -> int:
    """A shell-style exit status: ``-signum`` from subprocess becomes ``128 + signum``."""
    return 128 - returncode if returncode < 0 else returncode


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name} (exit code {_exit_code(returncode)})"
    return f"exited with code {returncode}"


@dataclass
class _Stream:
    fd: int
    target: int  # 1 (stdout) or 2 (stderr)
    buf: bytearray = field(default_factory=bytearray)
    log: BinaryIO | None = None  # --log-dir's file for this rank and stream


@dataclass
class _Rank:
    rank: int
    local_rank: int
    proc: subprocess.Popen
    returncode: int | None = None


class _Job:
    """The running ranks of one ``mpdist run``: start, forward output, stop."""

    def __init__(self, cfg: _Config, master_port: int, secret: dict[str, str]) -> None:
        self.cfg = cfg
        self.master_port = master_port
        self.secret = secret  # the job-secret variable the ranks get (none: unauthenticated)
        self.ranks: list[_Rank] = []
        self.sel = selectors.DefaultSelector()
        self.streams = 0
        self.broken: set[int] = set()  # launcher outputs that went away (EPIPE)
        self.interrupted: int | None = None  # the signal that asked us to stop
        self.force = False  # a second signal: skip the grace period
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        self.prctl = libc_function("prctl")
        # As a child subreaper (Linux) the launcher adopts descendants whose rank died,
        # so it can find, stop and reap them; `foreign` are children it had before.
        self.subreaper = False
        self.foreign: set[int] = set()

    # ---- environment and start ----------------------------------------------------------
    def _env(self, local_rank: int) -> dict[str, str]:
        cfg = self.cfg
        env = dict(os.environ)
        env.pop(_auth.SECRET_ENV, None)
        env.pop(_auth.SECRET_FILE_ENV, None)
        env.update(self.secret)
        # The node's cpus shared by its ranks' BLAS / OpenMP pools, unless the user sized them.
        threads = str(blas_threads(cfg.nproc))
        env.update({name: threads for name in THREAD_VARS if name not in os.environ})
        env.update(
            RANK=str(cfg.node_rank * cfg.nproc + local_rank),
            WORLD_SIZE=str(cfg.nnodes * cfg.nproc),
            LOCAL_RANK=str(local_rank),
            LOCAL_WORLD_SIZE=str(cfg.nproc),
            GROUP_RANK=str(cfg.node_rank),
            MASTER_ADDR=cfg.master_addr,
            MASTER_PORT=str(self.master_port),
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self) -> None:
        cfg = self.cfg
        cmd = [sys.executable, "-u"]
        cmd += ["-m", cfg.program] if cfg.module else [cfg.program]
        cmd += cfg.program_args
        self.foreign = {c.pid for c in psutil.Process().children()}
        if self.prctl is not None:
            self.subreaper = self.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        preexec = rank_preexec(self.prctl)
        # (one rank at a time, each registered before the next starts: stop() finds it)
        with one_layout() if cfg.no_aslr else contextlib.nullcontext():
            for local_rank in range(cfg.nproc):
                self._start_rank(cmd, local_rank, preexec)

    def _start_rank(
        self, cmd: list[str], local_rank: int, preexec: Callable[[], None] | None
    ) -> None:
        cfg = self.cfg
        proc = subprocess.Popen(
            cmd,
            env=self._env(local_rank),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # Own process group: the terminal's Ctrl-C reaches only the launcher, which
            # then stops the ranks in order; and killpg reaches a rank's descendants.
            start_new_session=True,
            preexec_fn=preexec,
        )
        r = _Rank(cfg.node_rank * cfg.nproc + local_rank, local_rank, proc)
        self.ranks.append(r)
        for pipe, target in ((proc.stdout, 1), (proc.stderr, 2)):
            assert pipe is not None
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            log = None
            if cfg.log_dir is not None:
                name = f"rank{r.rank}.{'stdout' if target == 1 else 'stderr'}"
                log = open(os.path.join(cfg.log_dir, name), "wb")  # noqa: SIM115
            self.sel.register(fd, selectors.EVENT_READ, (r, _Stream(fd, target, log=log)))
            self.streams += 1

    # ---- output -------------------------------------------------------------------------
    def _emit(self, target: int, data: bytes) -> None:
        if target in self.broken:
            return
        out = sys.stdout if target == 1 else sys.stderr
        try:
            out.flush()  # keep the launcher's own messages in order with rank lines
            view = memoryview(data)
            while view:
                n = os.write(target, view)
                view = view[n:]
        except BrokenPipeError:
            self.broken.add(target)
        except BlockingIOError:
            # A non-blocking terminal that is full: fall back to a blocking write.
            os.set_blocking(target, True)
            self._emit(target, bytes(view))

    def _forward(self, r: _Rank, stream: _Stream, eof: bool) -> None:
        """Emit the complete lines buffered for ``stream`` (all of it at EOF), each prefixed."""
        buf = stream.buf
        end = buf.rfind(b"\n") + 1
        lines = bytes(buf[:end]).split(b"\n")[:-1] if end else []
        del buf[:end]
        if len(buf) >= _MAX_LINE or (eof and buf):
            lines.append(bytes(buf))
            buf.clear()
        if not lines:
            return
        stamp = b""
        if self.cfg.timestamp:
            now = time.time()
            stamp = time.strftime("%H:%M:%S", time.localtime(now)).encode()
            stamp += f".{int(now % 1 * 1000):03d} ".encode()
        if stream.log is not None:
            stream.log.write(b"".join(stamp + line + b"\n" for line in lines))
            stream.log.flush()
        if self.cfg.ranks_filter is None or r.rank in self.cfg.ranks_filter:
            prefix = stamp + f"[rank {r.rank}] ".encode()
            self._emit(stream.target, b"".join(prefix + line + b"\n" for line in lines))

    def _pump(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` for output or a wake-up (signal), forward complete lines."""
        for key, _ in self.sel.select(timeout):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self.wake_r, 512):
                        pass
                continue
            r, stream = key.data
            try:
                chunk = os.read(stream.fd, _READ_CHUNK)
            except BlockingIOError:
                continue
            if chunk:
                stream.buf += chunk
                self._forward(r, stream, eof=False)
            else:
                self._forward(r, stream, eof=True)
                if stream.log is not None:
                    stream.log.close()
                self.sel.unregister(stream.fd)
                self.streams -= 1

    # ---- signals ------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGCHLD:
            return  # only here to wake the selector via the wakeup fd
        if self.interrupted is not None:
            self.force = True
        self.interrupted = signum

    @contextlib.contextmanager
    def signals(self) -> Iterator[bool]:
        """Route SIGINT/SIGTERM/SIGHUP to a flag and SIGCHLD to a wake-up (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield False
            return
        old = {s: signal.getsignal(s) for s in (*_STOP_SIGNALS, signal.SIGCHLD)}
        old_fd = signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        try:
            for s in old:
                signal.signal(s, self._on_signal)
            yield True
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            signal.set_wakeup_fd(old_fd)

    # ---- supervision --------------------------------------------------------------------
    def _reap(self) -> _Rank | None:
        """Record exits (and reap adopted orphans); return the first rank seen failing."""
        failed = None
        for r in self.ranks:
            if r.returncode is None:
                r.returncode = r.proc.poll()
                if r.returncode not in (None, 0) and failed is None:
                    failed = r
        if self.subreaper:
            self._reap_orphans()
        return failed

    def _reap_orphans(self) -> None:
        """Reap exited adopted descendants; never a rank (Popen reaps those) or a foreign child."""
        running = {r.proc.pid for r in self.ranks if r.returncode is None}
        while True:
            try:
                # WNOWAIT: look first, so a rank's status is left for its Popen.
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid in running or info.si_pid in self.foreign:
                return
            with contextlib.suppress(ChildProcessError):
                os.waitpid(info.si_pid, os.WNOHANG)

    def supervise(self, wakes_on_signals: bool) -> tuple[str, _Rank | None]:
        """Run until every rank exits 0 ("done"), one fails ("failed") or we are signalled."""
        # Without SIGCHLD wake-ups (not the main thread) poll for exits instead.
        timeout = None if wakes_on_signals else 0.05
        while True:
            failed = self._reap()
            if failed is not None:
                return "failed", failed
            if self.interrupted is not None:
                return "interrupted", None
            if all(r.returncode is not None for r in self.ranks):
                return "done", None
            self._pump(timeout)

    def _roots(self) -> list[int]:
        """Where the job's process tree starts now: the live ranks, or every child we adopted."""
        if self.subreaper:
            # Orphans were adopted by us, so our children cover every descendant.
            return [c.pid for c in psutil.Process().children() if c.pid not in self.foreign]
        # Only unreaped ranks: a reaped rank's pid may already belong to a stranger.
        return [r.proc.pid for r in self.ranks if r.proc.poll() is None]

    def _pause(self, seconds: float) -> None:
        """While stopping: forward output for up to ``seconds``, then record exits."""
        self._pump(seconds)
        self._reap()

    def stop(self) -> None:
        """SIGTERM every rank's process tree, wait the grace period, SIGKILL what is left."""
        # Every rank leads its own process group, which outlives it while a descendant lives.
        tree = ProcessTree(self._roots, groups=[r.proc.pid for r in self.ranks])
        self._reap()
        if not tree.members():
            return
        if all(r.returncode is not None for r in self.ranks):
            _note("stopping processes the ranks left behind")
        left = tree.stop(
            self.cfg.stop_grace,
            _KILL_WAIT_S,
            pause=self._pause,
            # A second Ctrl-C during the grace period cuts it short.
            cut_short=lambda: self.force,
        )
        if left:
            _note(f"some processes could not be killed: {', '.join(str(p.pid) for p in left)}")

    def finish(self) -> None:
        """Wait for every rank, forward the rest of the output, close everything."""
        for r in self.ranks:
            # Bounded: a process stuck in the kernel may survive SIGKILL for a while.
            with contextlib.suppress(subprocess.TimeoutExpired):
                r.returncode = r.proc.wait(_KILL_WAIT_S)
        # Every writer is gone now, so the pipes reach EOF; the bound only guards
        # against a descendant that escaped into another session and kept a pipe.
        deadline = time.monotonic() + 2.0
        while self.streams and time.monotonic() < deadline:
            self._pump(deadline - time.monotonic())
        for key in list(self.sel.get_map().values()):
            if key.data is not None:
                r, stream = key.data
                self._forward(r, stream, eof=True)
                if stream.log is not None:
                    stream.log.close()
        self.sel.close()
        for r in self.ranks:
            for pipe in (r.proc.stdout, r.proc.stderr):
                if pipe is not None:
                    pipe.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
        if self.subreaper:
            self._reap_orphans()
            assert self.prctl is not None  # how the launcher became a subreaper
            self.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
            self.subreaper = False


def _job_secret(cfg: _Config) -> dict[str, str]:
    """The job-secret variable for the ranks' environment; ``ValueError`` if the one set is bad."""
    if cfg.secret_file is not None:
        return {_auth.SECRET_FILE_ENV: cfg.secret_file}
    for name in (_auth.SECRET_ENV, _auth.SECRET_FILE_ENV):
        if os.environ.get(name):
            _auth.job_secret()  # checked here, once, rather than failing in every rank
            return {name: os.environ[name]}
    if cfg.nnodes == 1:
        return {_auth.SECRET_ENV: _auth.new_secret()}
    _note(
        "warning: no job secret (--secret-file, or MPDIST_JOB_SECRET on every node): "
        "anyone who can reach the master port can read and write the job's store"
    )
    return {}


def _note(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    """Run ``mpdist run [options] (script.py | -m module) [args]``; return the exit code."""
    if any(a in ("-h", "--help") for a in _split_argv(argv)[0]):
        _parser().print_help()
        return 0
    try:
        cfg = _parse(argv)
    except _UsageError as exc:
        print(_parser().format_usage().rstrip(), file=sys.stderr)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2

    try:
        secret = _job_secret(cfg)
    except ValueError as exc:
        _note(f"error: {exc}")
        return 2

    if cfg.no_aslr:
        try:
            with one_layout():  # refused here, before anything starts, or not at all
                pass
        except OSError as exc:
            _note(f"error: --no-aslr: {exc.strerror}")
            return 2

    reservation: socket.socket | None = None
    if cfg.node_rank == 0:
        # Rank 0 runs here: make sure its port is free now, and keep it ours until the end.
        try:
            reservation = _reserve_port(cfg.master_addr, cfg.master_port or 0)
        except OSError as exc:
            where = f"{cfg.master_addr}:{cfg.master_port or 0}"
            _note(f"error: cannot use {where} for rank 0's store: {exc.strerror or exc}")
            return 2
    master_port = cfg.master_port or (reservation.getsockname()[1] if reservation else 0)

    job = _Job(cfg, master_port, secret)
    outcome, failed = "interrupted", None
    try:
        with job.signals() as wakes:
            try:
                job.start()
                outcome, failed = job.supervise(wakes)
                if outcome == "failed":
                    assert failed is not None and failed.returncode is not None
                    _note(
                        f"rank {failed.rank} (pid {failed.proc.pid}) "
                        f"{_describe_exit(failed.returncode)}; stopping the other ranks"
                    )
                elif outcome == "interrupted":
                    assert job.interrupted is not None
                    _note(f"got {signal.Signals(job.interrupted).name}; stopping every rank")
            except BaseException:
                job.force = True
                raise
            finally:
                # Always: whatever happened above, no rank or descendant outlives us.
                job.stop()
                job.finish()
    finally:
        if reservation is not None:
            reservation.close()

    if outcome == "failed":
        assert failed is not None and failed.returncode is not None
        return _exit_code(failed.returncode)
    return 130 if outcome == "interrupted" else 0
