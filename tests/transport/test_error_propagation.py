"""A peer's ERROR message wins over its closing: drained before the peer is declared lost, and
relayed (with the rank that detected it) by a rank that fails because of it.

The orderings are built by hand with a scripted peer that speaks the wire protocol, so each
test takes the exact path it is about (no luck involved): the peer writes its ERROR and
closes while we are still writing to it, or before we post a send, or it tells only one
rank, which must pass the cause on before it closes.
"""

from __future__ import annotations

import contextlib
import socket
import threading

import numpy as np
import pytest
from mesh_helpers import DictStore, make_transport

import mpdist.algorithms as A
from mpdist.errors import DistBackendError, DistNetworkError
from mpdist.transport import TcpTransport, as_bytes
from mpdist.transport.header import (
    ERR_BACKEND,
    HEADER,
    KIND_ERROR,
    MAGIC,
)
from mpdist.transport.mesh import Claims, group_token, initiate

TEXT = "all_reduce: mismatch between rank {me} and rank 0 in collective #1: dtype float32 vs int64"


class ScriptedPeer:
    """The highest rank of a TCP mesh, played by hand: handshakes with every lower rank,
    then sends exactly what the test says (and reads nothing unless told)."""

    def __init__(self, store: DictStore, rank: int) -> None:
        self.rank = rank
        gid, key = group_token(store, rank)
        self.socks: list[socket.socket] = []
        for peer in range(rank):
            host, _, port = store.get(f"mpdist_tcp/addr/{peer}").decode().rpartition(":")
            s = socket.create_connection((host, int(port)), timeout=10)
            self.socks.append(s)
            initiate(s, key, Claims(rank, 0, gid))

    def send_error(self, peer: int, text: str, origin: int = -1) -> None:
        payload = text.encode()
        hdr = HEADER.pack(
            MAGIC, KIND_ERROR, 0, ERR_BACKEND, 0, 0, origin, 0, 0, 0, 0, 0, len(payload), 0
        )
        self.socks[peer].sendall(hdr + payload)

    def close(self) -> None:
        for s in self.socks:
            s.close()


def mesh_with_scripted_peer(n_real: int) -> tuple[list[TcpTransport], ScriptedPeer]:
    """Real TcpTransports for ranks 0..n_real-1 and a ScriptedPeer as rank n_real."""
    store = DictStore(timeout=10)
    ts: list = [None] * n_real
    errs: list[BaseException] = []

    def make(r: int) -> None:
        try:
            ts[r] = TcpTransport(store, r, n_real + 1, 10.0, shm=False).connect()
        except BaseException as e:  # re-raised below
            errs.append(e)

    threads = [threading.Thread(target=make, args=(r,)) for r in range(n_real)]
    for th in threads:
        th.start()
    fake = ScriptedPeer(store, n_real)
    for th in threads:
        th.join()
    if errs:
        fake.close()
        for t in ts:
            if t is not None:
                t.close()
        raise errs[0]
    return ts, fake


def test_error_frame_wins_when_our_big_write_fails() -> None:
    """We are mid-write of a payload bigger than both socket buffers; the peer writes its
    ERROR and closes without reading (so its kernel resets the connection). Our next write
    fails first: what the peer sent must still be read, and its error raised."""
    (t0,), fake = mesh_with_scripted_peer(1)
    try:
        comm = A.Communicator(t0, 10.0)
        big = np.ones((32 << 20) // 8)
        comm.start("all_reduce", big.dtype, big.nbytes, big.shape, redop=0)
        req = t0.isend(1, 0, as_bytes(big))
        assert not req.done  # the rest is queued: the peer reads nothing
        fake.send_error(0, TEXT.format(me=1))
        fake.close()  # unread bytes: the peer's kernel answers with a reset
        with pytest.raises(DistBackendError, match="dtype float32 vs int64") as ei:
            t0.wait([req], "all_reduce")
        assert "reported by rank 1 to rank 0" in str(ei.value)
        # sticky, and still the peer's error
        with pytest.raises(DistBackendError, match="dtype float32 vs int64"):
            A.barrier(comm)
    finally:
        fake.close()
        t0.close()


def test_error_frame_wins_when_posting_a_send_fails() -> None:
    """The peer wrote its ERROR and reset the connection before we post our next send: the
    send fails at once, and waiting on it still raises the peer's error."""
    (t0,), fake = mesh_with_scripted_peer(1)
    try:
        comm = A.Communicator(t0, 10.0)
        A.send(comm, np.ones(4), 1, tag=3)  # unread by the peer
        fake.send_error(0, TEXT.format(me=1))
        fake.close()
        # a write after the reset fails (the first one may still go through): post until one
        # has, so the wait below starts with sending to that peer already stopped
        reqs = []
        while not t0._peers[1].closed:
            reqs.append(A.isend(comm, np.ones(4), 1, tag=3))
        with pytest.raises(DistBackendError, match="dtype float32 vs int64"):
            A.wait(comm, reqs, "send")
    finally:
        fake.close()
        t0.close()


def test_peer_that_closes_without_error_is_still_lost() -> None:
    """Draining before declaring a peer lost must not hide a plain exit."""
    (t0,), fake = mesh_with_scripted_peer(1)
    try:
        comm = A.Communicator(t0, 10.0)
        big = np.ones((32 << 20) // 8)
        req = A.isend(comm, big, 1, tag=0)
        fake.close()
        with pytest.raises(DistNetworkError, match="rank 0 lost its connection to rank 1"):
            A.wait(comm, [req], "send")
    finally:
        fake.close()
        t0.close()


def test_error_is_relayed_with_its_cause_to_a_third_rank() -> None:
    """Rank 2 tells only rank 1 about a mismatch and goes away; rank 1 fails and closes.
    Rank 0 then finds both gone, and must raise rank 2's mismatch (relayed by rank 1), not
    'lost its connection'."""
    (t0, t1), fake = mesh_with_scripted_peer(2)
    try:
        c0, c1 = A.Communicator(t0, 10.0), A.Communicator(t1, 10.0)
        fake.send_error(1, TEXT.format(me=2))
        fake.close()
        with pytest.raises(DistBackendError, match="dtype float32 vs int64") as e1:
            A.barrier(c1)  # waits for rank 0 first; finds rank 2's ERROR
        assert "reported by rank 2 to rank 1" in str(e1.value)
        t1.close()
        with pytest.raises(DistBackendError, match="dtype float32 vs int64") as e0:
            A.barrier(c0)
        msg = str(e0.value)
        assert "mismatch between rank 2 and rank 0" in msg
        assert "reported by rank 2 to rank 0, relayed by rank 1" in msg, msg
    finally:
        fake.close()
        t0.close()
        t1.close()


@pytest.mark.parametrize("kind", ["local", "tcp", "tcp-noshm"])
def test_relay_between_real_transports(kind: str) -> None:
    """All ranks real: rank 2 reports a p2p mismatch to rank 1 only (p2p errors are told to
    the peer involved), then rank 1 closes: it tells the others why as it leaves. Rank 0 is
    not disturbed by that until it needs rank 1: its traffic with rank 3 goes on."""
    store = DictStore(timeout=10)
    ts: list = [None] * 4

    def make(r: int) -> None:
        ts[r] = make_transport(kind, store, r, 4, 10.0)

    threads = [threading.Thread(target=make, args=(r,)) for r in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    try:
        c0, c1, c2, c3 = (A.Communicator(t, 10.0) for t in ts)
        A.send(c1, np.ones(3), 2, tag=1)
        with pytest.raises(DistBackendError, match="posted a receive of 16 bytes") as e2:
            A.recv(c2, np.empty(2), 1, tag=1)
        with pytest.raises(DistBackendError, match="posted a receive of 16 bytes") as e1:
            A.recv(c1, np.empty(1), 2, tag=9)
        assert "reported by rank 2 to rank 1" in str(e1.value)
        ts[1].close()
        x = np.zeros(2)
        A.send(c3, np.full(2, 7.0), 0, tag=4)
        assert A.recv(c0, x, 3, tag=4) == 3 and x.tolist() == [7.0, 7.0]
        with pytest.raises(DistBackendError, match="posted a receive of 16 bytes") as e0:
            A.recv(c0, np.empty(1), 1, tag=9)
        assert str(e2.value) in str(e0.value)
        assert "reported by rank 2 to rank 0, relayed by rank 1" in str(e0.value)
    finally:
        for t in ts:
            t.close()


def test_close_delivers_an_error_queued_behind_data_while_the_peer_keeps_sending() -> None:
    """Our ERROR sits in the kernel behind data the peer has not taken yet, and the peer is
    still sending to us when we close. A plain close would reset the connection (unread
    bytes) and the reset discards our queued ERROR; a graceful close (FIN after our data,
    drop what comes in until the peer has everything) delivers it."""
    (t0,), fake = mesh_with_scripted_peer(1)
    sock = fake.socks[0]
    # a small receive window: most of what rank 0 sends stays queued in rank 0's kernel
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
    got = bytearray()
    closing = threading.Event()
    stop_flood = threading.Event()

    def flood() -> None:  # the peer keeps sending while rank 0 closes
        junk = b"\0" * (64 << 10)
        try:
            while not stop_flood.is_set():
                sock.sendall(junk)
        except OSError:
            pass

    def read_all() -> None:
        closing.wait()
        while True:
            try:
                data = sock.recv(1 << 16)
            except OSError:
                return  # reset: what was queued behind is lost
            if not data:
                return
            got.extend(data)

    comm = A.Communicator(t0, 10.0)
    A.send(comm, np.ones((1 << 20) // 8), 1, tag=0)  # accepted by the kernel, not delivered
    # a header for collective #1 that disagrees with rank 0's barrier: rank 0 detects it
    sock.sendall(HEADER.pack(MAGIC, 0, 0, 2, 0, 0, 0, 0, 0, 1, 8, 0, 0, 0))
    with pytest.raises(DistBackendError, match="mismatch between rank 0 and rank 1"):
        A.barrier(comm)
    shutdown = t0._shutdown

    def traced_shutdown() -> None:
        closing.set()  # the peer starts reading only now
        shutdown()

    t0._shutdown = traced_shutdown
    threads = [threading.Thread(target=flood), threading.Thread(target=read_all)]
    try:
        for th in threads:
            th.start()
        t0.close()
    finally:
        stop_flood.set()
        closing.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the flood and the reader if still blocked
        for th in threads:
            th.join()
        fake.close()
        t0.close()
    assert b"mismatch between rank 0 and rank 1" in got
