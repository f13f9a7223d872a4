"""One peer of the tcp transport: its connection's state, and helpers that need no transport.

:class:`Peer` is what :class:`~mpdist.transport.tcp.TcpTransport` keeps per peer (the socket,
the queue of :class:`Outgoing` messages, the receive cursor, the pair's rings and mailboxes);
the transport's hot paths read its fields directly. :func:`into_ring` puts a payload into the
pair's ring; :func:`drain` and :func:`undelivered` are what closing asks of a socket.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from collections import deque
from typing import Any

from mpdist.transport.base import RecvReq, SendReq
from mpdist.transport.header import FLAG_SHM, HEADER_SIZE, Header, HeaderFields
from mpdist.transport.mailbox import Mailbox
from mpdist.transport.shm import Ring, ring_aux

__all__ = ["Outgoing", "Peer", "into_ring", "drain", "undelivered"]

_TCP_CLOSE = 7  # tcpi_state of a connection that was reset (linux/tcp_states.h)


class Outgoing:
    """A message queued for a peer's socket: what is left of it to write, and its request."""

    __slots__ = ("bufs", "req", "started")

    def __init__(self, bufs: list[Any], req: SendReq, started: bool) -> None:
        self.bufs = bufs  # the buffers (header, payload) still to write, the first partly
        self.req = req  # done once the last byte went to the kernel
        # some of it was written already: it must be finished (the stream stays well formed)
        self.started = started


class Peer:
    """Connection state for one peer: the socket, the send queue and the receive cursor."""

    __slots__ = (
        "rank",
        "sock",
        "fd",
        "txq",
        "hbuf",
        "hmv",
        "hgot",
        "rx_hdr",
        "rx_req",
        "rx_mv",
        "rx_got",
        "rx_len",
        "lowat",
        "tx_ring",
        "rx_ring",
        "tx_box",
        "rx_box",
        "parked",
        "closed",
        "gone",
    )

    def __init__(self, rank: int, sock: socket.socket) -> None:
        self.rank = rank
        self.sock = sock
        self.fd = sock.fileno()
        self.txq: deque[Outgoing] = deque()
        self.hbuf = bytearray(HEADER_SIZE)
        self.hmv = memoryview(self.hbuf)
        self.hgot = 0
        self.rx_hdr: Header | None = None
        self.rx_req: RecvReq | None = None
        self.rx_mv: memoryview | None = None
        self.rx_got = 0
        self.rx_len = 0
        self.lowat = 1  # current SO_RCVLOWAT of the socket
        self.tx_ring: Ring | None = None
        self.rx_ring: Ring | None = None
        self.tx_box: Mailbox | None = None  # collective messages to the peer ...
        self.rx_box: Mailbox | None = None  # ... and from it, on this host (mailbox)
        # the collective of the first record in rx_box, while that collective is still to
        # come (-1: none): the record waits there until it begins
        self.parked = -1
        # closed: nothing more can be sent (a write failed, or lost); gone: nothing more
        # will be read either (EOF or a read error), so the peer is lost
        self.closed = False
        self.gone = False


def into_ring(ring: Ring, fields: HeaderFields, buf: memoryview) -> HeaderFields | None:
    """Copy ``buf`` into ``ring``; the header fields that announce it there (FLAG_SHM, and
    where), or None if the ring has no room now."""
    n = buf.nbytes
    at = ring.alloc(n)
    if at is None:
        return None
    ring.put(at, buf)
    return (*fields[:5], FLAG_SHM, *fields[6:13], ring_aux(at, ring.allocated - 1))


def drain(sock: socket.socket) -> int:
    """Read and drop what ``sock`` holds: 1 if more may come, 0 at EOF, -1 if reset."""
    try:
        while sock.recv(1 << 16):
            pass
        return 0
    except (BlockingIOError, InterruptedError):
        return 1
    except OSError:
        return -1


def undelivered(sock: socket.socket) -> bool:
    """Whether the peer has yet to acknowledge some of what we sent on ``sock`` (False if
    the connection is reset or closed: then nothing more can be delivered)."""
    try:
        if sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_CLOSE:
            return False
        out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return False
    return struct.unpack("i", out)[0] > 0
