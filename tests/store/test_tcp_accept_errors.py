"""TCPStore's server when accept fails at once: it rests instead of spinning, and lives.

A server process lowers its RLIMIT_NOFILE and fills every descriptor; a client then connects
(the kernel completes the connection into the listen backlog, so the listener is readable but
every accept fails with EMFILE). Polling the listener then would spin a core. The server's
CPU time over a second must stay low, and once descriptors are free again the waiting client
is served. Likewise when its listener is shut down under it (accept fails with EINVAL and
the listener polls as hung up forever): the clients it has keep being served, without a spin.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta

import psutil
import pytest

from mpdist.store import TCPStore
from mpdist.store._tcp_server import Server

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_NOFILE and /proc: Linux")

# The server process: a TCPStore master, then descriptors filled on command, freed on command.
# Its main thread blocks reading stdin, so the process's CPU time is the server thread's.
_SERVER = textwrap.dedent(
    """
    import errno, os, resource, sys
    from datetime import timedelta
    from mpdist.store import TCPStore

    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                     timeout=timedelta(seconds=60))
    print(store.port, flush=True)
    fillers = []
    for line in sys.stdin:
        if line.strip() == "fill":
            # a low limit keeps the filling cheap; every descriptor under it taken
            used = len(os.listdir("/proc/self/fd"))
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (used + 16, hard))
            try:
                while True:
                    fillers.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as e:
                assert e.errno == errno.EMFILE, e
            print("full", len(fillers), flush=True)
        elif line.strip() == "free":
            for fd in fillers:
                os.close(fd)
            fillers.clear()
            print("free", flush=True)
        elif line.strip() == "get":
            print(store.get("from-client").decode(), flush=True)
    store.close()
    """
)


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def test_out_of_descriptors_server_rests_then_serves_again():
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    try:
        port = int(server.stdout.readline())
        server.stdin.write("fill\n")
        server.stdin.flush()
        assert server.stdout.readline().startswith("full ")
        proc = psutil.Process(server.pid)

        # A client connects while the server has no descriptor for it; its constructor
        # (connect, then the first request) waits in the backlog, in a thread of ours.
        made: list[TCPStore] = []
        errors: list[BaseException] = []

        def connect() -> None:
            try:
                made.append(TCPStore("127.0.0.1", port, timeout=timedelta(seconds=60)))
            except BaseException as e:  # reported below
                errors.append(e)

        client = threading.Thread(target=connect, daemon=True)
        client.start()
        time.sleep(0.3)  # the connection is in the backlog, accept failed at least once
        before = _cpu(proc)
        time.sleep(1.0)
        spent = _cpu(proc) - before
        # A spinning loop burns close to the whole second (or whatever share of a core a
        # loaded machine gives it); resting, a handful of failed accepts cost milliseconds.
        assert spent < 0.1, f"the server spent {spent:.3f} s of CPU in 1 s out of descriptors"
        assert server.poll() is None, "the server process died"

        server.stdin.write("free\n")
        server.stdin.flush()
        assert server.stdout.readline().strip() == "free"
        client.join(30)
        assert not errors, errors
        assert made, "the waiting client was never served"
        with made[0] as c:
            c.set("from-client", b"served")
            assert c.get("from-client") == b"served"
        server.stdin.write("get\n")
        server.stdin.flush()
        assert server.stdout.readline().strip() == "served"
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()


def _thread_cpu(native_id: int) -> float:
    for t in psutil.Process().threads():
        if t.id == native_id:
            return t.user_time + t.system_time
    raise AssertionError(f"thread {native_id} is gone")


def test_listener_shut_down_server_rests_and_serves_its_clients():
    server = Server("127.0.0.1", 0)
    try:
        with TCPStore("127.0.0.1", server.port, timeout=timedelta(seconds=30)) as client:
            client.set("before", b"1")
            server.listener.shutdown(socket.SHUT_RDWR)  # accept: EINVAL; polled: hung up
            assert server.thread.native_id is not None
            time.sleep(0.2)
            before = _thread_cpu(server.thread.native_id)
            time.sleep(1.0)
            spent = _thread_cpu(server.thread.native_id) - before
            assert spent < 0.1, f"the server thread spent {spent:.3f} s of CPU in 1 s"
            assert server.thread.is_alive()
            client.set("after", b"2")
            assert client.get("before") == b"1" and client.get("after") == b"2"
    finally:
        server.stop()
    assert not server.thread.is_alive()
