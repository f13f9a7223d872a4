"""A mesh listener whose accept fails: rest while out of descriptors, fail when it is gone.

Out of descriptors, accept fails at once while the connection waits in the backlog and the
listener polls readable: the connecting rank must not spin, and must complete its mesh once
descriptors are free (rank 0 in a process with a lowered, filled RLIMIT_NOFILE; rank 1 here).
A listener shut down under its rank (accept: EINVAL) never accepts again: that rank fails at
once, as itself (a ``DistBackendError``, not a lost peer's ``DistNetworkError``), naming the
ranks still to come, and leaves no socket open.
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

from mpdist.errors import DistBackendError
from mpdist.store import HashStore, TCPStore
from mpdist.transport.mesh import Link, connect_full_mesh

GID, KEY = b"g" * 16, b"k" * 32

# Rank 0 of a 2-rank mesh, out of descriptors but the one its listener takes; "free" on
# stdin gives them back. Its main thread waits in the mesh; a thread reads stdin.
_RANK0 = textwrap.dedent(
    f"""
    import errno, os, resource, socket, sys, threading, time
    from datetime import timedelta
    from mpdist.store import TCPStore
    from mpdist.transport.mesh import connect_full_mesh

    store = TCPStore("127.0.0.1", int(sys.argv[1]), timeout=timedelta(seconds=60))
    store.set("rank0/up", b"1")  # its connection is open (and idle) from now on
    wake_r, wake_w = socket.socketpair()
    used = len(os.listdir("/proc/self/fd"))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 16, hard))
    fillers = []
    try:
        while True:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as e:
        assert e.errno == errno.EMFILE, e
    os.close(fillers.pop())  # one left: the listener's

    def free():
        sys.stdin.readline()
        for fd in fillers:
            os.close(fd)

    threading.Thread(target=free, daemon=True).start()
    print("full", flush=True)
    links = connect_full_mesh(
        store, 0, 2, {GID!r}, {KEY!r}, 0, deadline=time.monotonic() + 60, timeout_s=60,
        wake=wake_r, check_abort=lambda: None, name=lambda r: r,
    )
    print("mesh", sorted(links), flush=True)
    """
)


def test_out_of_descriptors_mesh_listener_rests_then_connects():
    with TCPStore(
        "127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60)
    ) as store:
        rank0 = subprocess.Popen(
            [sys.executable, "-c", _RANK0, str(store.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert rank0.stdin is not None and rank0.stdout is not None
        wake_r, wake_w = socket.socketpair()
        links: list[dict[int, Link]] = []
        errors: list[BaseException] = []

        def rank1() -> None:
            try:
                links.append(
                    connect_full_mesh(
                        store, 1, 2, GID, KEY, 0, deadline=time.monotonic() + 60,
                        timeout_s=60, wake=wake_r, check_abort=lambda: None, name=lambda r: r,
                    )
                )  # fmt: skip
            except BaseException as e:  # reported below
                errors.append(e)

        t = threading.Thread(target=rank1, daemon=True)
        try:
            assert rank0.stdout.readline().strip() == "full"
            t.start()  # connects once rank 0 has published its address: into the backlog
            store.wait(["mpdist_tcp/addr/0"])
            proc = psutil.Process(rank0.pid)
            time.sleep(0.3)
            t0 = proc.cpu_times()
            time.sleep(1.0)
            t1 = proc.cpu_times()
            spent = (t1.user + t1.system) - (t0.user + t0.system)
            assert spent < 0.1, f"rank 0 spent {spent:.3f} s of CPU in 1 s out of descriptors"
            assert rank0.poll() is None and t.is_alive()  # still waiting, both
            rank0.stdin.write("free\n")
            rank0.stdin.flush()
            assert rank0.stdout.readline().strip() == "mesh [1]"
            t.join(30)
            assert not errors, errors
            assert links and sorted(links[0]) == [0]
        finally:
            for link in links[0].values() if links else ():
                link.sock.close()
            rank0.stdin.close()
            try:
                rank0.wait(10)
            except subprocess.TimeoutExpired:
                rank0.kill()
                rank0.wait()
            rank0.stdout.close()
            wake_r.close()
            wake_w.close()


def test_listener_shut_down_fails_its_rank_at_once():
    store = HashStore()
    wake_r, wake_w = socket.socketpair()
    errors: list[BaseException] = []

    def rank0() -> None:
        try:
            connect_full_mesh(
                store, 0, 3, GID, KEY, 0, deadline=time.monotonic() + 60, timeout_s=60,
                wake=wake_r, check_abort=lambda: None, name=lambda r: r,
            )  # fmt: skip
        except BaseException as e:
            errors.append(e)

    before = {c.fd for c in psutil.Process().net_connections(kind="tcp")}
    t = threading.Thread(target=rank0, daemon=True)
    t.start()
    try:
        port = int(store.get("mpdist_tcp/addr/0").decode().rpartition(":")[2])
        (listener,) = [
            c
            for c in psutil.Process().net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        ]
        s = socket.socket(fileno=listener.fd)
        try:
            s.shutdown(socket.SHUT_RDWR)  # accept: EINVAL from now on
        finally:
            s.detach()
        t.join(10)
        assert not t.is_alive(), "rank 0 still waits on a listener that is gone"
    finally:
        wake_r.close()
        wake_w.close()
    assert len(errors) == 1, errors
    with pytest.raises(DistBackendError, match=r"rank 0: the listener .* ranks \[1, 2\]"):
        raise errors[0]
    left = {c.fd for c in psutil.Process().net_connections(kind="tcp")} - before
    assert not left, f"sockets left open: {left}"
