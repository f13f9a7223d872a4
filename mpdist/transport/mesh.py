"""Connecting a group's full TCP mesh: one authenticated loopback connection per pair of ranks.

Every rank listens on an ephemeral loopback port and publishes ``host:port`` in the group's
store; rank 0 publishes a random group id (:func:`group_token`). Rank i connects to every
rank j < i and accepts every j > i (:func:`connect_full_mesh`). Each connection starts with
``mpdist._auth``'s handshake under the group's key, the connecting rank's hello claiming
(rank, flags, group id) (:class:`Claims`): a stranger, or anything that is not a handshake,
is closed without an answer and counted (``mpdist._auth.refusals("mesh")``), and the mesh
carries on. The key derives from the job secret (``MPDIST_JOB_SECRET`` /
``MPDIST_JOB_SECRET_FILE``) and the group id when there is one, so nothing secret is in the
store; without one, rank 0 also publishes a random group secret in the store (which is then
as private as the store is). The listener is closed once the mesh is complete. What goes over
the connections afterwards is ``mpdist.transport.tcp``'s business.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from mpdist import _accept, _auth
from mpdist.errors import DistBackendError, DistNetworkError

__all__ = ["Claims", "Link", "group_token", "connect_full_mesh", "initiate"]

_SOCK_BUF = 4 << 20
_TOKEN_KEY = "mpdist_tcp/token"
_GID_SIZE = 16
_GROUP_SECRET_SIZE = 32


def _addr_key(rank: int) -> str:
    return f"mpdist_tcp/addr/{rank}"


class Link(NamedTuple):
    """A connected peer: its socket (non-blocking, tuned) and the flags of its hello."""

    sock: socket.socket
    flags: int


_CLAIMS = struct.Struct("<II16s")  # rank, flags, group id
_CLAIMS_SIZE = _CLAIMS.size


class Claims(NamedTuple):
    """Who a rank says it is in its hello (authenticated by the handshake's proofs)."""

    rank: int
    flags: int
    gid: bytes

    def pack(self) -> bytes:
        return _CLAIMS.pack(self.rank, self.flags, self.gid)

    @classmethod
    def unpack(cls, data: bytes) -> Claims:
        rank, flags, gid = _CLAIMS.unpack(data)
        return cls(rank, flags, gid)


@dataclass
class _Pending:
    """An accepted connection whose handshake is not complete."""

    side: _auth.Responder
    buf: bytearray = field(default_factory=bytearray)


def group_token(store: Any, rank: int) -> tuple[bytes, bytes]:
    """(group id, handshake key) of the group: rank 0 makes the id (and, without a job
    secret, a group secret) and publishes it in ``store``; the other ranks wait for it."""
    job = _auth.job_secret()
    if rank == 0:
        token = os.urandom(_GID_SIZE if job is not None else _GID_SIZE + _GROUP_SECRET_SIZE)
        store.set(_TOKEN_KEY, token.hex())
    else:
        token = bytes.fromhex(_text(store.get(_TOKEN_KEY)))
        if (len(token) == _GID_SIZE) != (job is not None):
            has = "has" if len(token) == _GID_SIZE else "has no"
            raise DistNetworkError(
                f"rank {rank}: rank 0 {has} job secret ({_auth.SECRET_ENV} or "
                f"{_auth.SECRET_FILE_ENV}) and this rank {'has none' if job is None else 'has one'}"
                ": every rank of a job must get the same"
            )
    gid = token[:_GID_SIZE]
    secret = job if job is not None else token[_GID_SIZE:]
    return gid, _auth.derive_key(secret, b"mesh/" + gid)


def initiate(sock: socket.socket, key: bytes, claims: Claims) -> Claims:
    """The connecting side's handshake on a blocking ``sock``: the acceptor's claims.

    Raises ``mpdist._auth.Refused`` when the acceptor does not hold ``key``, ``OSError``.
    """
    return Claims.unpack(_auth.initiate(sock, key, claims.pack(), _CLAIMS_SIZE))


def connect_full_mesh(
    store: Any,
    rank: int,
    size: int,
    gid: bytes,
    key: bytes,
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
    pending: dict[socket.socket, _Pending] = {}  # accepted, handshake not complete
    waiting_ack: dict[socket.socket, tuple[int, _auth.Initiator, bytearray]] = {}
    ours = Claims(rank, flags, gid).pack()
    done = False

    def wanted_claims(claims: Claims, expect: int | None) -> bool:
        """Whether a peer's claims are those of a rank we are still waiting for."""
        if not hmac.compare_digest(claims.gid, gid) or claims.rank >= size:
            return False
        if expect is not None:
            return claims.rank == expect
        return claims.rank > rank and claims.rank not in links

    def handshake_lost(peer: int, cause: OSError | None = None) -> DistNetworkError:
        why = "" if cause is None else f": {cause}"
        return DistNetworkError(
            f"rank {name(rank)}: rank {name(peer)} closed or refused the connection "
            f"during the handshake{why}"
        )

    def missing_ranks() -> list[int]:
        return [name(p) for p in range(size) if p != rank and p not in links]

    def forget(sock: socket.socket) -> None:
        poll.unregister(sock.fileno())
        del fds[sock.fileno()]

    def refuse(sock: socket.socket) -> None:
        """A stranger, or garbage: closed without an answer, counted; the mesh goes on."""
        _auth.note_refusal("mesh")  # counted before the stranger can see the close
        forget(sock)
        del pending[sock]
        sock.close()

    def send_blocking(sock: socket.socket, data: bytes) -> None:
        # A few dozen bytes into a fresh socket's (tuned, 4 MiB) send buffer: never blocks.
        sock.setblocking(True)
        try:
            sock.sendall(data)
        finally:
            sock.setblocking(False)

    poll = select.poll()
    fds: dict[int, socket.socket] = {}
    try:
        _tune(listener)  # before listen(): accepted sockets inherit the buffer sizes
        listener.bind(("127.0.0.1", 0))
        listener.listen(size + 16)
        listener.setblocking(False)
        host, port = listener.getsockname()[:2]
        store.set(_addr_key(rank), f"{host}:{port}")

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
            initiator = _auth.Initiator(key, ours, _CLAIMS_SIZE)
            try:
                _tune(sock)
                sock.sendall(initiator.hello)
            except OSError as e:
                sock.close()
                raise handshake_lost(peer, e) from e
            sock.setblocking(False)
            waiting_ack[sock] = (peer, initiator, bytearray())

        poll.register(listener.fileno(), select.POLLIN)
        # an abort from another thread writes to the wake socket: watching it here is what
        # lets an abort stop a rank waiting for peers that never connect
        poll.register(wake.fileno(), select.POLLIN)
        fds.update({listener.fileno(): listener, wake.fileno(): wake})
        for sock in waiting_ack:
            poll.register(sock.fileno(), select.POLLIN)
            fds[sock.fileno()] = sock
        need_accept = size - 1 - rank
        rest = _accept.ListenerRest()  # out of descriptors: the listener is not polled a while
        while need_accept or waiting_ack:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DistNetworkError(
                    f"rank {name(rank)}: timed out after {timeout_s:g} s connecting the "
                    f"TCP mesh; no connection from rank(s) {missing_ranks()}"
                )
            check_abort()
            wait_s = remaining
            resting = rest.left(time.monotonic())
            if resting == 0.0:  # the rest is over: poll the listener again
                rest.end()
                poll.register(listener.fileno(), select.POLLIN)
            elif resting is not None:
                wait_s = min(wait_s, resting)
            for fd, _ev in poll.poll(wait_s * 1000):
                if fd not in fds:  # closed earlier in this round (a refused stranger)
                    continue
                sock = fds[fd]
                if sock is wake:
                    with contextlib.suppress(OSError):  # BlockingIOError once it is empty
                        while wake.recv(4096):
                            pass
                    continue  # an abort woke us: the loop's check raises
                if sock is listener:
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:  # nothing to accept after all
                        continue
                    except OSError as e:
                        if _accept.listener_gone(e):
                            # our own listener broke (shut down under us): this rank's
                            # failure, not a lost peer's; the peers still to come cannot
                            raise DistBackendError(
                                f"rank {name(rank)}: the listener of its TCP mesh stopped "
                                f"listening while ranks {missing_ranks()} had yet to connect: {e}"
                            ) from e
                        if not _accept.one_client(e):  # it would fail again at once: rest
                            poll.unregister(listener.fileno())
                            rest.start()
                        continue
                    rest.accepted()
                    conn.setblocking(False)
                    pending[conn] = _Pending(_auth.Responder(key, ours, _CLAIMS_SIZE))
                    poll.register(conn.fileno(), select.POLLIN)
                    fds[conn.fileno()] = conn
                    if len(pending) > _auth.MAX_PENDING:  # a flood: the oldest goes
                        refuse(next(iter(pending)))
                    continue
                if sock in pending:
                    state = pending[sock]
                    side = state.side
                    ok, eof = _read_some(sock, state.buf, side.wanted)
                    if eof or not ok or not side.plausible(state.buf):
                        refuse(sock)
                        continue
                    if len(state.buf) < side.wanted:
                        continue
                    message = bytes(state.buf)
                    state.buf.clear()
                    try:
                        answer = side.receive(message)
                    except _auth.Refused:
                        refuse(sock)
                        continue
                    claims = Claims.unpack(side.peer_claims)
                    if not wanted_claims(claims, None):
                        refuse(sock)
                        continue
                    if answer:  # their hello: answer with ours and our proof
                        try:
                            _tune(sock)
                            send_blocking(sock, answer)
                        except OSError as e:
                            forget(sock)
                            del pending[sock]
                            sock.close()
                            raise handshake_lost(claims.rank, e) from e
                    if side.done:  # their proof checked: this is rank claims.rank
                        forget(sock)
                        del pending[sock]
                        links[claims.rank] = Link(sock, claims.flags)
                        need_accept -= 1
                elif sock in waiting_ack:
                    peer, initiator, buf = waiting_ack[sock]
                    ok, eof = _read_some(sock, buf, initiator.wanted)
                    if len(buf) < initiator.wanted and not eof:
                        continue
                    try:
                        if eof:
                            raise _auth.Refused("closed")
                        finish = initiator.receive(bytes(buf))
                        if not wanted_claims(Claims.unpack(initiator.peer_claims), peer):
                            raise _auth.Refused("not the rank we connected to")
                        send_blocking(sock, finish)
                    except (_auth.Refused, OSError) as e:
                        raise handshake_lost(peer, e if isinstance(e, OSError) else None) from e
                    forget(sock)
                    del waiting_ack[sock]
                    links[peer] = Link(sock, Claims.unpack(initiator.peer_claims).flags)
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
