"""Transport tests: mesh setup, p2p matching, errors (mismatch, lost peer, timeout, abort), leaks."""

from __future__ import annotations

import os
import socket
import threading

import numpy as np
import pytest
from mesh_helpers import KINDS, DictStore, leak_snapshot, make_transport, run_ranks, shm_files

import mpdist.algorithms as A
from mpdist import _auth
from mpdist.errors import DistBackendError, DistNetworkError
from mpdist.transport import LocalTransport, TcpTransport
from mpdist.transport.mesh import Claims, group_token
from mpdist.transport.shm import Ring, ring_aux, sweep_stale_rings


@pytest.mark.parametrize("kind", KINDS)
def test_p2p_tags_any_source_and_early_messages(kind: str) -> None:
    def fn(comm: A.Communicator):
        if comm.rank == 0:
            # posted in the reverse order of arrival: early messages are buffered
            b = np.empty(3, np.int64)
            a = np.empty(2, np.int64)
            assert A.recv(comm, b, 1, tag=7) == 1
            assert A.recv(comm, a, 1, tag=5) == 1
            got = {}
            for _ in range(2):
                x = np.empty(1, np.int64)
                src = A.recv(comm, x, None, tag=9)
                got[src] = int(x[0])
            return a.tolist(), b.tolist(), got
        A.send(comm, np.array([1, 2]), 0, tag=5)
        if comm.rank == 1:
            A.send(comm, np.array([3, 4, 5]), 0, tag=7)
        A.send(comm, np.array([comm.rank * 10]), 0, tag=9)
        return None

    res = run_ranks(3, fn, kind)
    assert res[0] == ([1, 2], [3, 4, 5], {1: 10, 2: 20})


def test_p2p_rejects_self_and_out_of_range() -> None:
    def fn(comm: A.Communicator):
        with pytest.raises(ValueError, match="itself"):
            A.send(comm, np.zeros(1), comm.rank)
        with pytest.raises(ValueError, match="not a rank"):
            A.recv(comm, np.zeros(1), 5)
        with pytest.raises(ValueError, match="32 bits"):
            A.send(comm, np.zeros(1), 1 - comm.rank, tag=1 << 40)
        # the group is still usable afterwards
        x = np.array([comm.rank], np.int64)
        A.allreduce(comm, x)
        return int(x[0])

    assert run_ranks(2, fn, "local") == [1, 1]


@pytest.mark.parametrize("kind", KINDS)
def test_large_isend_both_first_does_not_deadlock(kind: str) -> None:
    # 20 MiB each way: more than the socket buffers and a shared-memory ring hold
    n = (20 << 20) // 8

    def fn(comm: A.Communicator):
        other = 1 - comm.rank
        out = np.full(n, comm.rank, np.float64)
        inp = np.empty(n, np.float64)
        s = A.isend(comm, out, other, 3)
        A.wait(comm, [s], "isend")  # both ranks finish sending before either receives
        r = A.irecv(comm, inp, other, 3)
        A.wait(comm, [r], "irecv")
        return bool((inp == other).all())

    assert run_ranks(2, fn, kind) == [True, True]


@pytest.mark.parametrize("kind", KINDS)
def test_p2p_size_mismatch_raises_on_both(kind: str) -> None:
    def fn(comm: A.Communicator):
        if comm.rank == 0:
            A.send(comm, np.zeros(4, np.float32), 1)
            with pytest.raises(DistBackendError, match="rank 1"):
                A.barrier(comm)
        else:
            with pytest.raises(DistBackendError, match="16 bytes"):
                A.recv(comm, np.zeros(3, np.float32), 0)
        return True

    assert run_ranks(2, fn, kind) == [True, True]


@pytest.mark.parametrize("kind", KINDS)
def test_timeout_names_op(kind: str) -> None:
    done = threading.Event()

    def fn(comm: A.Communicator):
        if comm.rank == 0:
            comm.timeout_s = 0.2
            try:
                with pytest.raises(DistBackendError, match="my_recv.*timed out.*rank 1"):
                    A.recv(comm, np.zeros(1), 1, op_name="my_recv")
            finally:
                done.set()
        else:
            done.wait(10)  # stay connected until rank 0 has timed out
        return True

    assert run_ranks(2, fn, kind) == [True, True]


@pytest.mark.parametrize("kind", KINDS)
def test_peer_closing_raises_network_error_naming_it(kind: str) -> None:
    closed = threading.Event()

    def fn(comm: A.Communicator):
        if comm.rank == 1:
            comm.close()
            closed.set()
            return True
        closed.wait(10)
        with pytest.raises(DistNetworkError, match="rank 1"):
            A.recv(comm, np.zeros(1), 1)
        with pytest.raises(DistNetworkError, match="rank 1"):
            A.allreduce(comm, np.zeros(1))
        return True

    assert run_ranks(2, fn, kind) == [True, True]


@pytest.mark.parametrize("kind", KINDS)
def test_abort_from_another_thread(kind: str) -> None:
    done = threading.Event()

    def fn(comm: A.Communicator):
        if comm.rank == 1:
            done.wait(10)  # stay connected: rank 0 must see the abort, not a lost peer
        else:
            timer = threading.Timer(0.05, comm.abort, args=("aborted by test",))
            timer.start()
            try:
                with pytest.raises(DistBackendError, match="aborted by test"):
                    A.recv(comm, np.zeros(1), 1)
                with pytest.raises(DistBackendError, match="aborted by test"):
                    A.allreduce(comm, np.zeros(1))
            finally:
                timer.join()
                done.set()
        return True

    assert run_ranks(2, fn, kind, timeout=10) == [True, True]


class _SignallingStore(DictStore):
    """Sets ``published`` once rank 0 has published its address: it is about to wait for
    its peers' connections."""

    def __init__(self) -> None:
        super().__init__()
        self.published = threading.Event()

    def set(self, key: str, value: bytes | str) -> None:
        super().set(key, value)
        if key == "mpdist_tcp/addr/0":
            self.published.set()


def test_abort_stops_a_transport_waiting_for_its_peers_to_connect() -> None:
    store = _SignallingStore()
    # constructing connects nothing: the transport exists to be aborted before it connects
    t = TcpTransport(store, 0, 2, 60.0)

    def abort() -> None:
        store.published.wait(30)
        t.abort("stop building")

    aborter = threading.Thread(target=abort)
    aborter.start()
    try:
        # rank 1 never comes; without the abort this would wait out the 60 s timeout
        with pytest.raises(DistBackendError, match="^stop building$"):
            t.connect()
    finally:
        store.published.set()
        aborter.join()
    assert t._closed


def test_construction_connects_nothing_and_connect_does() -> None:
    store = DictStore()
    ts = [TcpTransport(store, r, 2, 10.0) for r in range(2)]  # one thread: would hang if it met
    assert not store.check(["mpdist_tcp/token"])
    try:
        with pytest.raises(RuntimeError, match="not connected .call connect.. first"):
            ts[0].isend_p2p(1, 0, memoryview(bytearray(1)), 0, 0)
        with pytest.raises(RuntimeError, match="not connected .call connect.. first"):
            ts[1].wait([ts[1].irecv_p2p(0, 99, memoryview(bytearray(1)), 0)], "recv")
        th = threading.Thread(target=ts[1].connect)
        th.start()
        assert ts[0].connect() is ts[0]
        th.join(20)
        comm = [A.Communicator(t, 10.0) for t in ts]
        A.send(comm[0], np.arange(3.0), 1)
        out = np.zeros(3)
        assert A.recv(comm[1], out, 0) == 0
        assert out.tolist() == [0.0, 1.0, 2.0]
        with pytest.raises(RuntimeError, match="connect.. was called already"):
            ts[0].connect()
    finally:
        for t in ts:
            t.close()


def test_abort_or_close_before_connect_makes_connect_raise_at_once() -> None:
    aborted = TcpTransport(DictStore(), 0, 2, 60.0)
    aborted.abort("stop before it began")
    with pytest.raises(DistBackendError, match="^stop before it began$"):
        aborted.connect()  # rank 1 never comes: without the abort, a 60 s wait
    assert aborted._closed
    closed = TcpTransport(DictStore(), 0, 2, 60.0)
    closed.close()
    with pytest.raises(DistBackendError, match="transport was closed"):
        closed.connect()


def test_a_single_rank_connects_to_nobody() -> None:
    store = DictStore()
    t = TcpTransport(store, 0, 1, 1.0).connect()
    assert not store.check(["mpdist_tcp/token"])
    t.close()


def test_mesh_timeout_names_missing_ranks_by_rank_names() -> None:
    # ranks 1 and 2 of the group (global ranks 6 and 8) never come
    with pytest.raises(DistNetworkError, match=r"no connection from rank\(s\) \[6, 8\]"):
        TcpTransport(DictStore(), 0, 3, 0.2, rank_names=[4, 6, 8]).connect()


def test_stranger_is_refused_and_mesh_carries_on() -> None:
    store = DictStore()
    results: dict[int, object] = {}

    def rank(r: int) -> None:
        t = TcpTransport(store, r, 2, 10.0).connect()
        try:
            comm = A.Communicator(t, 10.0)
            x = np.array([r + 1.0])
            A.allreduce(comm, x)
            results[r] = float(x[0])
        finally:
            t.close()

    th0 = threading.Thread(target=rank, args=(0,))
    th0.start()
    host, _, port = store.get("mpdist_tcp/addr/0").decode().rpartition(":")
    # a stranger with a wrong secret, and one that connects and says nothing
    bad = socket.create_connection((host, int(port)))
    silent = socket.create_connection((host, int(port)))
    try:
        bad.sendall(_auth.Initiator(b"k" * 32, Claims(1, 0, b"x" * 16).pack(), 24).hello)
        th1 = threading.Thread(target=rank, args=(1,))
        th1.start()
        th0.join(20)
        th1.join(20)
        assert results == {0: 3.0, 1: 3.0}
        assert bad.recv(100) == b""  # refused: closed without an answer
        assert silent.recv(100) == b""  # closed when the mesh was complete
    finally:
        bad.close()
        silent.close()


@pytest.mark.parametrize("side", ["acceptor", "connector"])
def test_a_handshake_that_cannot_be_sent_is_a_network_error_and_leaks_no_socket(
    side: str, monkeypatch
) -> None:
    # rank 0 accepts, rank 1 connects; the real transport plays ``side``, a raw socket the
    # other rank, and the transport's sending of its hello fails (the peer reset it)
    store = DictStore()
    before_socks, _ = leak_snapshot()
    before_files = shm_files()
    real_sendall = socket.socket.sendall
    failing: set[int] = set()

    def sendall(sock, data, *args):
        if threading.get_ident() in failing:
            raise ConnectionResetError(104, "Connection reset by peer")
        return real_sendall(sock, data, *args)

    monkeypatch.setattr(socket.socket, "sendall", sendall)
    result: list[BaseException] = []

    def transport(rank: int) -> None:
        failing.add(threading.get_ident())
        try:
            TcpTransport(store, rank, 2, 10.0, rank_names=[5, 7]).connect()
        except BaseException as e:  # checked below
            result.append(e)

    peer = None
    if side == "acceptor":
        th = threading.Thread(target=transport, args=(0,))
        th.start()
        gid, key = group_token(store, 1)
        host, _, port = store.get("mpdist_tcp/addr/0").decode().rpartition(":")
        peer = socket.create_connection((host, int(port)), timeout=10)
        peer.sendall(_auth.Initiator(key, Claims(1, 0, gid).pack(), 24).hello)
        th.join(20)
        assert peer.recv(100) == b""  # closed, not left open
        who = "rank 5: rank 7"
    else:
        listener = socket.create_server(("127.0.0.1", 0))
        host, port = listener.getsockname()[:2]
        store.set("mpdist_tcp/token", os.urandom(48).hex())
        store.set("mpdist_tcp/addr/0", f"{host}:{port}")
        th = threading.Thread(target=transport, args=(1,))
        th.start()
        th.join(20)
        peer, _ = listener.accept()
        listener.close()
        who = "rank 7: rank 5"
    peer.close()
    assert len(result) == 1 and isinstance(result[0], DistNetworkError), result
    assert str(result[0]).startswith(f"{who} closed or refused the connection during the handshake")
    del result[:]  # the traceback would keep the failed transport's frames alive
    assert leak_snapshot()[0] == before_socks
    assert shm_files() == before_files


@pytest.mark.parametrize("kind", KINDS)
def test_close_is_idempotent_and_leaves_nothing(kind: str) -> None:
    before_socks, before_threads = leak_snapshot()
    before_files = shm_files()
    store = DictStore()
    transports: list = [None] * 3

    def mk(r: int) -> None:
        transports[r] = make_transport(kind, store, r, 3, 10.0)

    ths = [threading.Thread(target=mk, args=(r,)) for r in range(3)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(20)
    if kind != "local":
        assert len(leak_snapshot()[0] - before_socks) >= 6
    for t in transports:
        t.close()
        t.close()
    with pytest.raises(DistBackendError, match="closed"):
        transports[0].wait([A.p2p.irecv(A.Communicator(transports[0], 1), np.zeros(1), 1)], "recv")
    after_socks, after_threads = leak_snapshot()
    assert after_socks == before_socks
    assert after_threads == before_threads
    assert shm_files() == before_files


def test_bad_rank_or_size() -> None:
    with pytest.raises(ValueError):
        LocalTransport(DictStore(), 2, 2, 1.0)
    with pytest.raises(ValueError):
        TcpTransport(DictStore(), 0, 0, 1.0)


@pytest.mark.parametrize("kind", KINDS)
def test_errors_name_ranks_by_rank_names(kind: str) -> None:
    """A subgroup's transport can name peers by their global ranks."""

    def fn(comm: A.Communicator):
        try:
            A.allreduce(comm, np.ones(2 + comm.rank))
        except DistBackendError as e:
            return str(e)
        return "no error"

    for msg in run_ranks(2, fn, kind, rank_names=[5, 7]):
        assert "rank 5" in msg and "rank 7" in msg, msg


def test_mismatch_message_lists_every_difference() -> None:
    def fn(comm: A.Communicator):
        try:
            if comm.rank == 0:
                A.allreduce(comm, np.ones(4, np.float32))
            else:
                A.reduce(comm, np.ones(3, np.float64), 1, A.ReduceOp.MAX)
            A.barrier(comm)
        except DistBackendError as e:
            return str(e)
        return "no error"

    res = run_ranks(2, fn, "local", timeout=10, rank_names=[5, 7])
    assert "mismatch" in res[0], res[0]
    # rank 1 (the root of its reduce) sends nothing before it sees rank 0's header: it is
    # the one that finds the mismatch
    assert res[1] == (
        "reduce: mismatch between rank 7 and rank 5 in collective #1: rank 7 called reduce "
        "but rank 5 called all_reduce; dtype float64 on rank 7 vs float32 on rank 5; 24 bytes "
        "on rank 7 vs 16 bytes on rank 5; root 1 on rank 7 vs root -1 on rank 5; reduce op "
        "MAX on rank 7 vs SUM on rank 5"
    )


def test_mismatch_with_a_barrier_names_the_collectives_and_no_dtype() -> None:
    def fn(comm: A.Communicator):
        try:
            if comm.rank == 0:
                A.barrier(comm)
            else:
                A.allreduce(comm, np.ones(2, np.float32))
        except DistBackendError as e:
            return str(e)
        return "no error"

    res = run_ranks(2, fn, "local", timeout=10)
    for rank, text in enumerate(res):
        mine, theirs = ("barrier", "all_reduce") if rank == 0 else ("all_reduce", "barrier")
        assert f"rank {rank} called {mine} but rank {1 - rank} called {theirs}" in text, text
        assert "dtype" not in text, text  # a barrier has no dtype to compare


@pytest.mark.parametrize("kind", KINDS)
def test_many_big_messages_before_any_receive(kind: str) -> None:
    """More data than a shared-memory ring holds, sent before the receiver looks: the
    overflow goes over TCP, order and contents are kept, the ring wraps around."""
    sizes = [(1 << 20) + 8 * i for i in range(40)]

    def fn(comm: A.Communicator):
        if comm.rank == 1:
            reqs = [
                A.isend(comm, np.full(n // 8, i, np.int64), 0, tag=1) for i, n in enumerate(sizes)
            ]
            A.wait(comm, reqs, "isend")
            A.barrier(comm)
            return True
        A.barrier(comm)  # everything has been sent before we receive anything
        ok = []
        for i, n in enumerate(sizes):
            x = np.empty(n // 8, np.int64)
            A.recv(comm, x, 1, tag=1)
            ok.append(bool((x == i).all()))
        return all(ok)

    assert run_ranks(2, fn, kind) == [True, True]


def test_shared_memory_ring_allocation(tmp_path) -> None:
    path = str(tmp_path / "ring")
    tx = Ring(path, 640, create=True)
    rx = Ring(path, 640, create=False)
    try:
        assert tx.alloc(250) == 0  # regions are rounded up to 64 bytes
        assert tx.alloc(256) == 256
        assert tx.alloc(256) is None  # 128 bytes left at the end, the start is in use
        tx.data[0:3] = b"abc"
        found = rx.payload(ring_aux(0, 0), 3)
        assert found is not None and bytes(found[0]) == b"abc" and found[1] == 0
        found[0].release()
        # released by allocation number, in any order; only the released prefix is reused
        rx.release(1)
        assert tx.alloc(256) is None
        assert rx.payload(ring_aux(256, 1), 3) is None  # released already: a forged header
        rx.release(0)  # now the first two
        assert tx.alloc(256) == 0  # empty: back to the start
        assert tx.alloc(256) == 256
        rx.release(2)
        assert tx.alloc(256) == 0  # wraps around
        assert tx.alloc(1) is None  # [256, 512) and [0, 256) in use
        rx.release(3)
        rx.release(4)
        assert rx.payload(ring_aux(600, 5), 64) is None  # past the end of the ring
        assert tx.alloc(640) == 0  # empty again: back to the start
        assert tx.alloc(641) is None
    finally:
        tx.unlink()
        tx.close()
        rx.close()


def test_a_ring_that_cannot_be_mapped_leaves_no_file(tmp_path, monkeypatch) -> None:
    import mmap

    def no_map(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(mmap, "mmap", no_map)
    path = tmp_path / "ring"
    with pytest.raises(OSError, match="Cannot allocate memory"):
        Ring(str(path), 640, create=True)
    assert not path.exists()
    # a sender's failed attach must not remove the receiver's file
    path.write_bytes(b"\0" * 704)
    path.chmod(0o600)  # as the receiver makes it (a ring others may open is not mapped)
    with pytest.raises(OSError, match="Cannot allocate memory"):
        Ring(str(path), 640, create=False)
    assert path.exists()


def test_stale_ring_files_of_dead_processes_are_swept(tmp_path) -> None:
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    stale = tmp_path / f"mpdist-{pid}-{'ab' * 16}-1-0"
    alive = tmp_path / f"mpdist-{os.getpid()}-{'ab' * 16}-1-0"
    other = tmp_path / "unrelated-file"
    for f in (stale, alive, other):
        f.write_bytes(b"")
    sweep_stale_rings(str(tmp_path))
    assert not stale.exists()
    assert alive.exists() and other.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_run_ranks_first_failure_aborts_the_other_ranks(kind: str) -> None:
    """The runner itself: a failing rank stops its peers' waits (not their timeout)."""

    def fn(comm: A.Communicator):
        if comm.rank == 0:
            raise ValueError("rank 0 gives up")
        A.recv(comm, np.zeros(1), 0)  # rank 0 never sends

    res = run_ranks(2, fn, kind, raise_first=False)
    assert isinstance(res[0], ValueError)
    assert isinstance(res[1], DistBackendError)
    assert "rank 0 failed: ValueError: rank 0 gives up" in str(res[1])
    assert "timed out" not in str(res[1])
    with pytest.raises(ValueError, match="gives up"):  # the first failure, not its echoes
        run_ranks(3, fn, kind)
