"""Bad bytes never crash a listener: random, truncated and oversized frames, slow-loris
partial frames and floods of connections, to the TCPStore server (with and without a
secret) and to a mesh listener. Each is dropped, the server and the job carry on, and no
descriptor or thread is left. Bounded: a few seconds."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator

import numpy as np
import psutil
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mpdist.algorithms as A
from mpdist import _auth
from mpdist.store import HashStore, TCPStore
from mpdist.store import _protocol as proto
from mpdist.transport import TcpTransport

SECRET = "fuzz-tests-job-secret-0123456789"
FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

# What strangers send: anything at all; a valid frame cut short; a frame header claiming
# up to 4 GiB; a hello cut short (a plausible start).
VALID_FRAMES = [
    proto.encode_frame(proto.Op.SET, [b"key", b"poison"]),
    proto.encode_frame(proto.Op.GET, [proto.encode_timeout(1.0), b"key"]),
    proto.encode_frame(proto.Op.MULTI_SET, [b"a", b"1", b"b", b"2"]),
]
valid_frames = st.sampled_from(VALID_FRAMES)
payloads = st.one_of(
    st.binary(max_size=300),
    st.tuples(valid_frames, st.integers(0, 40)).map(lambda fc: fc[0][: fc[1]]),
    st.integers(1 << 20, (1 << 32) - 1).map(
        lambda n: proto.HEADER.pack(proto.MAGIC, proto.Op.SET, n) + b"\0" * 16
    ),
    st.integers(0, _auth.hello_size(0) - 1).map(
        lambda n: (_auth.MAGIC + b"\1" * _auth.NONCE_SIZE)[:n]
    ),
    st.binary(max_size=64).map(lambda b: _auth.MAGIC + b),
)


def snapshot() -> tuple[int, int]:
    return psutil.Process().num_fds(), threading.active_count()


def settled(before: tuple[int, int], timeout: float = 5.0) -> bool:
    """Whether fds and threads came back to ``before`` (the server closes asynchronously)."""
    deadline = time.monotonic() + timeout
    while snapshot() != before:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


REPLY_SIZE = _auth.hello_size(0) + _auth.PROOF_SIZE


def closed_without_answer(sock: socket.socket) -> bool:
    """Whether the peer closed ``sock`` having answered nothing but, to a well-formed
    hello, its own challenge (the handshake's reply: no command is ever answered)."""
    sock.settimeout(10)
    got = b""
    try:
        while chunk := sock.recv(1 << 16):
            got += chunk
    except ConnectionResetError:
        pass
    return got == b"" or (len(got) == REPLY_SIZE and got.startswith(_auth.MAGIC))


def knock(port: int, data: bytes, hang_up: bool = True) -> socket.socket | None:
    """Send ``data`` to the port as a stranger; with ``hang_up``, half-close and expect
    the connection closed without an answer."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    with contextlib.suppress(ConnectionError):  # the server may close before all of it is sent
        s.sendall(data)
    if not hang_up:
        return s
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_WR)
    try:
        assert closed_without_answer(s)
    finally:
        s.close()
    return None


@contextlib.contextmanager
def stores(secret: str | None) -> Iterator[tuple[TCPStore, TCPStore]]:
    """A master and a client of one job (with ``secret`` or open); checks nothing leaked."""
    before = snapshot()
    master = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, secret=secret)
    client = TCPStore("127.0.0.1", master.port, secret=secret)
    try:
        master.set("key", b"value")
        yield master, client
        # the job carries on, and nobody wrote its keys
        assert client.get("key") == b"value"
        client.set("after", b"1")
        assert master.get("after") == b"1"
        assert not master.check(["a"])
    finally:
        client.close()
        master.close()
    assert settled(before), (before, snapshot())


@FUZZ
@given(data=st.lists(payloads, min_size=1, max_size=8))
def test_random_bytes_to_an_authenticated_store(data: list[bytes]) -> None:
    with stores(SECRET) as (master, _):
        for d in data:
            knock(master.port, d)
        assert master.refused_connections == len(data)


@FUZZ
@given(data=st.lists(payloads, min_size=1, max_size=8))
def test_random_bytes_to_an_open_store(data: list[bytes]) -> None:
    # without a secret a valid frame is served (as torch's store would); anything else,
    # and an oversized length prefix followed by a hang-up, is dropped
    with stores(None) as (master, _):
        for d in data:
            try:
                proto.decode_fields(d[proto.HEADER.size :])
                whole = proto.HEADER.unpack_from(d)[2] == len(d) - proto.HEADER.size
            except (proto.ProtocolError, struct.error):
                whole = False
            if not whole:
                knock(master.port, d)


def test_an_oversized_length_prefix_allocates_nothing_before_authentication() -> None:
    with stores(SECRET) as (master, _):
        rss = psutil.Process().memory_info().rss
        s = knock(master.port, struct.pack("<4sI", _auth.MAGIC, (1 << 32) - 1), hang_up=False)
        assert s is not None
        with s:
            s.sendall(b"\xff" * 4096)  # more than a hello: refused once it has read one
            assert closed_without_answer(s)
        assert psutil.Process().memory_info().rss - rss < 64 << 20
        assert master.refused_connections == 1


def test_slow_loris_partial_handshakes_are_dropped_and_the_job_carries_on(monkeypatch) -> None:
    monkeypatch.setattr(_auth, "HANDSHAKE_TIMEOUT_S", 0.3)
    with stores(SECRET) as (master, client):
        slow = [knock(master.port, _auth.MAGIC[:k], hang_up=False) for k in range(1, 5)]
        try:
            client.set("during", b"1")  # an authenticated client is served meanwhile
            assert master.get("during") == b"1"
            t0 = time.monotonic()
            assert all(s is not None and closed_without_answer(s) for s in slow)
            assert time.monotonic() - t0 < 5
        finally:
            for s in slow:
                if s is not None:
                    s.close()
        assert master.refused_connections == 4


def test_a_flood_of_connections_is_bounded_and_the_job_carries_on() -> None:
    with stores(SECRET) as (master, client):
        flood = [
            socket.create_connection(("127.0.0.1", master.port), timeout=10)
            for _ in range(_auth.MAX_PENDING + 72)
        ]
        try:
            # a new authenticated connection (a second client) gets through the flood
            other = TCPStore("127.0.0.1", master.port, secret=SECRET)
            assert other.get("key") == b"value"
            other.close()
            # the oldest waiting strangers were dropped to keep at most MAX_PENDING
            deadline = time.monotonic() + 10
            while master.refused_connections < 72 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert master.refused_connections >= 72
            assert closed_without_answer(flood[0])
        finally:
            for s in flood:
                s.close()


@settings(max_examples=12, deadline=None, database=None)
@given(data=st.lists(payloads, min_size=1, max_size=5))
def test_random_bytes_to_a_mesh_listener(data: list[bytes]) -> None:
    before = snapshot()
    store = HashStore()
    results: dict[int, float] = {}

    def rank(r: int) -> None:
        t = TcpTransport(store, r, 2, 20.0, shm=False).connect()
        try:
            x = np.array([r + 1.0])
            A.allreduce(A.Communicator(t, 20.0), x)
            results[r] = float(x[0])
        finally:
            t.close()

    th0 = threading.Thread(target=rank, args=(0,))
    th0.start()
    try:
        host, _, port = store.get("mpdist_tcp/addr/0").decode().rpartition(":")
        refused = _auth.refusals("mesh")
        for d in data:
            knock(int(port), d)
        assert _auth.refusals("mesh") == refused + len(data)
    finally:
        th1 = threading.Thread(target=rank, args=(1,))
        th1.start()
        th0.join(30)
        th1.join(30)
    assert results == {0: 3.0, 1: 3.0}
    assert settled(before), (before, snapshot())
