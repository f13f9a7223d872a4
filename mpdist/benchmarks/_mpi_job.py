"""The bench's MPI ranks: one ``mpiexec`` job whose ranks connect back to the bench.

``mpdist bench --vs mpi`` times MPI libraries (mpdist's ``mpi`` backend, raw mpi4py),
whose ranks only ``mpiexec`` can start. The bench opens a ``multiprocessing`` listener,
starts ``mpiexec -n N python -m mpdist.benchmarks._mpi_job ...``, and each rank
connects back with its ``MPI.COMM_WORLD`` rank and then runs the same rank loop
(``collectives._rank_main``) as a spawned rank, over that connection instead of a pipe.
So the bench drives MPI ranks row by row exactly as it drives its own.

A job that exits or stalls before every rank has connected is a ``RuntimeError``
carrying the job's output, never a hang; stopping the job stops its whole process tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

__all__ = ["MPI_LIBS", "MpiJob", "find_mpiexec"]

# the libraries whose ranks run under mpiexec
MPI_LIBS = ("mpi", "mpi4py")
_AUTHKEY_ENV = "MPDIST_BENCH_AUTHKEY"
_WAKE = "wake"  # what the watchdog sends to end a wait for ranks that will not come


def find_mpiexec() -> str | None:
    """The ``mpiexec`` next to this Python (the ``mpich`` wheel's), else the one on PATH."""
    here = shutil.which("mpiexec", path=os.path.dirname(sys.executable))
    return here or shutil.which("mpiexec")


class MpiJob:
    """``n`` ranks of ``lib`` under one ``mpiexec``; ``connect()`` returns their connections
    in rank order, ``stop()`` ends the job. Its output goes to ``log_path``."""

    def __init__(
        self,
        lib: str,
        n: int,
        store_path: str,
        iters: int | None,
        dtype: str,
        log_path: str,
        startup_timeout: float = 120.0,
    ) -> None:
        mpiexec = find_mpiexec()
        if mpiexec is None:
            raise RuntimeError("mpiexec not found (pip install 'mpdist[mpi]')")
        self.lib, self.n, self.log_path = lib, n, log_path
        self._timeout = startup_timeout
        authkey = os.urandom(16)
        self._authkey = authkey
        self._listener = Listener(("127.0.0.1", 0), authkey=authkey)
        host, port = self._listener.address
        cmd = [mpiexec, "-n", str(n), sys.executable, "-m", __name__]
        cmd += [host, str(port), lib, str(n), store_path, str(iters or 0), dtype]
        self._log = open(log_path, "w")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, _AUTHKEY_ENV: authkey.hex()},
            start_new_session=True,  # one process group: stop() finds every process of it
        )
        self._connected = threading.Event()

    def output(self, limit: int = 4000) -> str:
        """The end of the job's output (what mpiexec and the ranks printed)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-limit:]
        except OSError:
            return ""

    def connect(self) -> list[Connection]:
        """Wait until every rank has connected; their connections, in rank order."""
        failure: list[str] = []

        def watch() -> None:
            # The listener cannot time out: a job that dies or stalls first is reported
            # by connecting to it ourselves, which ends the wait below.
            deadline = time.monotonic() + self._timeout
            while not self._connected.wait(0.1):
                code = self.proc.poll()
                if code is not None:
                    why = f"mpiexec exited with code {code} before all {self.n} ranks connected"
                    break
                if time.monotonic() > deadline:
                    why = f"the {self.n} MPI ranks did not all connect within {self._timeout:g} s"
                    break
            else:
                return
            failure.append(why)
            try:
                with Client(self._listener.address, authkey=self._authkey) as c:
                    c.send(_WAKE)
            except OSError:  # the wait is over anyway
                pass

        watchdog = threading.Thread(target=watch, name="mpdist-bench-mpi-watchdog", daemon=True)
        watchdog.start()
        by_rank: dict[int, Connection] = {}
        try:
            while len(by_rank) < self.n:
                conn = self._listener.accept()
                hello: Any = conn.recv()
                if hello == _WAKE or failure:
                    conn.close()
                    raise RuntimeError(f"{self.lib}: {failure[0]}:\n{self.output()}")
                by_rank[int(hello)] = conn
        except BaseException:
            for c in by_rank.values():
                c.close()
            raise
        finally:
            self._connected.set()
        return [by_rank[r] for r in range(self.n)]

    def stop(self, grace: float = 30.0) -> None:
        """Wait up to ``grace`` seconds for the job to end, then kill what is left of it."""
        from mpdist._proctree import kill_tree

        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        finally:
            kill_tree([self.proc.pid], [self.proc.pid], grace=1.0)
            self.proc.wait()
            self._listener.close()
            self._log.close()


def _rank(argv: list[str]) -> None:
    """One MPI rank: connect to the bench, say which rank this is, run the rank loop."""
    from mpi4py import MPI

    from mpdist.benchmarks.collectives import _rank_main

    host, port, lib, n, store_path, iters, dtype = argv
    rank = MPI.COMM_WORLD.Get_rank()
    conn = Client((host, int(port)), authkey=bytes.fromhex(os.environ[_AUTHKEY_ENV]))
    conn.send(rank)
    _rank_main(lib, rank, int(n), store_path, int(iters) or None, dtype, conn)


if __name__ == "__main__":
    _rank(sys.argv[1:])
