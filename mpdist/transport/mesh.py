"""Connecting a group's full TCP mesh: one checked loopback connection per pair of ranks.

Every rank listens on an ephemeral loopback port and publishes ``host:port`` in the group's
store; rank 0 publishes a random group id and secret (:func:`group_token`). Rank i connects
to every rank j < i and accepts every j > i (:func:`connect_full_mesh`); each connection
starts with a handshake (magic, rank, flags, group id, secret) that the acceptor checks (a
stranger is closed and the mesh carries on) and answers with its own. The listener is
closed once the mesh is complete. What goes over the connections afterwards is
``mpdist.transport.tcp``'s business.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import select
import socket
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from mpdist.errors import DistNetworkError
from mpdist.transport.header import HANDSHAKE, HANDSHAKE_MAGIC

__all__ = ["Link", "group_token", "connect_full_mesh"]

_SOCK_BUF = 4 << 20
_TOKEN_KEY = "mpdist_tcp/token"


def _addr_key(rank: int) -> str:
    return f"mpdist_tcp/addr/{rank}"


class Link(NamedTuple):
    """A connected peer: its socket (non-blocking, tuned) and the flags of its hello."""

    sock: socket.socket
    flags: int


def group_token(store: Any, rank: int) -> tuple[bytes, bytes]:
    """(group id, secret) of the group: rank 0 makes them and publishes them in ``store``,
    the other ranks wait for them there."""
    if rank == 0:
        token = os.urandom(48)
        store.set(_TOKEN_KEY, token.hex())
    else:
        token = bytes.fromhex(_text(store.get(_TOKEN_KEY)))
    return token[:16], token[16:]


def connect_full_mesh(
    store: Any,
    rank: int,
    size: int,
    gid: bytes,
    secret: bytes,
    flags: int,
    *,
    deadline: float,
    timeout_s: float,
    wake: socket.socket,
    check_abort: Callable[[], None],
    name: Callable[[int], int],
) -> dict[int, Link]:
    """Connect this rank to every other rank of the group; returns their links by rank.

    ``flags`` go to every peer in our hello. Blocks until the mesh is complete; raises
    ``DistNetworkError`` at ``deadline`` (monotonic time) naming the ranks that never came,
    or when a peer breaks off its handshake. A byte on ``wake`` (another thread's abort)
    makes it call ``check_abort()``, which raises. Whatever way it fails, it leaves no
    socket open. ``name`` gives the rank names for messages (e.g. a subgroup's global ranks).
    """
    links: dict[int, Link] = {}
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    pending: dict[socket.socket, bytearray] = {}  # accepted, handshake not complete
    waiting_ack: dict[socket.socket, tuple[int, bytearray]] = {}
    done = False

    def check_hello(buf: bytearray) -> tuple[int, int] | None:
        """(rank, flags) of a peer's hello, or None if it is not one of ours."""
        magic, peer, peer_flags, peer_gid, peer_secret = HANDSHAKE.unpack(
            bytes(buf[: HANDSHAKE.size])
        )
        if magic != HANDSHAKE_MAGIC or not hmac.compare_digest(peer_gid, gid):
            return None
        if not hmac.compare_digest(peer_secret, secret) or peer >= size:
            return None
        return peer, peer_flags

    def handshake_lost(peer: int, cause: OSError | None = None) -> DistNetworkError:
        why = "" if cause is None else f": {cause}"
        return DistNetworkError(
            f"rank {name(rank)}: rank {name(peer)} closed or refused the connection "
            f"during the handshake{why}"
        )

    try:
        _tune(listener)  # before listen(): accepted sockets inherit the buffer sizes
        listener.bind(("127.0.0.1", 0))
        listener.listen(size + 16)
        listener.setblocking(False)
        host, port = listener.getsockname()[:2]
        store.set(_addr_key(rank), f"{host}:{port}")
        hello = HANDSHAKE.pack(HANDSHAKE_MAGIC, rank, flags, gid, secret)

        # connect to lower ranks; their listen backlog holds us until they accept
        for peer in range(rank):
            host, _, port = _text(store.get(_addr_key(peer))).rpartition(":")
            remaining = max(deadline - time.monotonic(), 0.001)
            try:
                sock = socket.create_connection((host, int(port)), timeout=remaining)
            except OSError as e:
                raise DistNetworkError(
                    f"rank {name(rank)}: cannot connect to rank {name(peer)} at {host}:{port}: {e}"
                ) from e
            try:
                _tune(sock)
                sock.sendall(hello)
            except OSError as e:
                sock.close()
                raise handshake_lost(peer, e) from e
            sock.setblocking(False)
            waiting_ack[sock] = (peer, bytearray())

        poll = select.poll()
        poll.register(listener.fileno(), select.POLLIN)
        # an abort from another thread writes to the wake socket: watching it here is what
        # lets an abort stop a rank waiting for peers that never connect
        poll.register(wake.fileno(), select.POLLIN)
        fds: dict[int, socket.socket] = {listener.fileno(): listener, wake.fileno(): wake}
        for sock in waiting_ack:
            poll.register(sock.fileno(), select.POLLIN)
            fds[sock.fileno()] = sock
        need_accept = size - 1 - rank
        while need_accept or waiting_ack:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = [name(p) for p in range(size) if p != rank and p not in links]
                raise DistNetworkError(
                    f"rank {name(rank)}: timed out after {timeout_s:g} s connecting the "
                    f"TCP mesh; no connection from rank(s) {missing}"
                )
            check_abort()
            for fd, _ev in poll.poll(remaining * 1000):
                sock = fds[fd]
                if sock is wake:
                    with contextlib.suppress(OSError):  # BlockingIOError once it is empty
                        while wake.recv(4096):
                            pass
                    continue  # an abort woke us: the loop's check raises
                if sock is listener:
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    pending[conn] = bytearray()
                    poll.register(conn.fileno(), select.POLLIN)
                    fds[conn.fileno()] = conn
                    continue
                if sock in pending:
                    buf = pending[sock]
                    ok, eof = _read_some(sock, buf, HANDSHAKE.size)
                    if len(buf) < HANDSHAKE.size and not eof:
                        continue
                    hello_of = check_hello(buf) if ok and not eof else None
                    if hello_of is not None and (hello_of[0] <= rank or hello_of[0] in links):
                        hello_of = None
                    poll.unregister(fd)
                    del fds[fd]
                    del pending[sock]
                    if hello_of is None:
                        sock.close()  # a stranger, or garbage: refuse; the mesh goes on
                        continue
                    peer = hello_of[0]
                    try:
                        _tune(sock)
                        sock.setblocking(True)
                        sock.sendall(hello)
                    except OSError as e:
                        sock.close()
                        raise handshake_lost(peer, e) from e
                    sock.setblocking(False)
                    links[peer] = Link(sock, hello_of[1])
                    need_accept -= 1
                elif sock in waiting_ack:
                    peer, buf = waiting_ack[sock]
                    ok, eof = _read_some(sock, buf, HANDSHAKE.size)
                    if len(buf) < HANDSHAKE.size and not eof:
                        continue
                    hello_of = None if eof else check_hello(buf)
                    if hello_of is None or hello_of[0] != peer:
                        raise handshake_lost(peer)
                    poll.unregister(fd)
                    del fds[fd]
                    del waiting_ack[sock]
                    links[peer] = Link(sock, hello_of[1])
        done = True
        return links
    finally:
        listener.close()
        for sock in pending:  # strangers still mid-handshake
            sock.close()
        if not done:
            for sock in waiting_ack:
                sock.close()
            for link in links.values():
                link.sock.close()


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, _SOCK_BUF)


def _read_some(sock: socket.socket, buf: bytearray, want: int) -> tuple[bool, bool]:
    """Append up to ``want - len(buf)`` bytes; returns (ok, eof)."""
    try:
        data = sock.recv(want - len(buf))
    except (BlockingIOError, InterruptedError):
        return True, False
    except OSError:
        return False, True
    if not data:
        return False, True
    buf += data
    return True, False


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
