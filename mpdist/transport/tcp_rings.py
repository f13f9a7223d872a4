"""The shared-memory rings and mailboxes a tcp transport's pairs on one host share: created, offered in the hello, attached, dropped.

:class:`PairRings` belongs to one :class:`~mpdist.transport.tcp.TcpTransport`. Before the
mesh is connected it creates the rings this rank's peers will write to (:meth:`~PairRings.create`,
whose flags go out in the hello); once the mesh is complete it maps the rings the peers
offered onto the :class:`~mpdist.transport.tcp_peer.Peer` objects (:meth:`~PairRings.attach`),
where the transport's hot paths read them; on close it drops the rings it created
(:meth:`~PairRings.drop_own`).
"""

from __future__ import annotations

import contextlib
import os

from mpdist.transport.header import HELLO_SHM
from mpdist.transport.mailbox import BYTES as MAILBOX_BYTES
from mpdist.transport.mailbox import SUPPORTED, Mailbox
from mpdist.transport.shm import Ring, ring_path, shm_dir, sweep_stale_rings
from mpdist.transport.tcp_peer import Peer

__all__ = ["RING_BYTES", "PairRings"]

RING_BYTES = 16 << 20  # bytes per ring (one per direction and pair; pages only when touched)


class PairRings:
    """One rank's rings and mailboxes of its pairs (see the module docstring):
    ``PairRings(rank, size, shm, mailbox)``, then :meth:`create`, :meth:`attach`."""

    __slots__ = ("_rank", "_size", "_shm_dir", "_send_mail", "_own_rings", "_gid")

    def __init__(self, rank: int, size: int, shm: bool | None, mailbox: bool | None) -> None:
        self._rank = rank
        self._size = size
        # shared-memory rings for big payloads: on by default where /dev/shm exists
        # (env MPDIST_SHM=0 or shm=False turns them off)
        self._shm_dir = shm_dir() if size > 1 and shm is not False else None
        # collective messages to peers with a ring go through its mailbox where the machine
        # allows (transport.mailbox); mailbox=False keeps them on TCP
        self._send_mail = SUPPORTED and mailbox is not False
        self._own_rings: dict[int, Ring] = {}  # rings we created, by the peer that writes to them
        self._gid = b""  # the group's id, in the rings' file names

    def create(self, gid: bytes) -> int:
        """Create the shared-memory rings our peers will write to; returns the hello flags.

        The receiver owns each ring: it keeps it mapped until it closes, so data a sender
        put there is never lost, and a sender that cannot map it any more (the receiver
        already left) simply sends over TCP.
        """
        self._gid = gid
        if self._shm_dir is None:
            return 0
        sweep_stale_rings(self._shm_dir)
        try:
            for peer in range(self._size):
                if peer != self._rank:
                    path = ring_path(self._shm_dir, os.getpid(), self._gid, peer, self._rank)
                    self._own_rings[peer] = Ring(path, RING_BYTES, create=True, front=MAILBOX_BYTES)
        except OSError:
            self.drop_own()
            return 0
        return HELLO_SHM | os.getpid() << 1  # the peer needs our pid to find the file

    def attach(
        self, peers: list[Peer | None], peer_flags: dict[int, int]
    ) -> list[tuple[Peer, Mailbox]]:
        """Mesh complete: map the ring of every peer that offered one (``peer_flags``: the
        flags of each peer's hello); drop unused rings. Returns the peers' mailboxes to us."""
        inboxes: list[tuple[Peer, Mailbox]] = []
        for peer in range(self._size):
            p = peers[peer]
            if p is None:
                continue
            offered = bool(peer_flags.get(peer, 0) & HELLO_SHM)
            own = self._own_rings.get(peer)
            if own is not None and offered:
                p.rx_ring = own
                p.rx_box = Mailbox(own.front)
                inboxes.append((p, p.rx_box))
            elif own is not None:
                own.unlink()  # that peer will never write to it
                with contextlib.suppress(BufferError):
                    own.close()
                del self._own_rings[peer]
            if offered and self._shm_dir is not None:
                owner = peer_flags[peer] >> 1
                path = ring_path(self._shm_dir, owner, self._gid, self._rank, peer)
                try:
                    tx = Ring(path, RING_BYTES, create=False, front=MAILBOX_BYTES)
                except OSError:
                    continue  # the peer is gone already: TCP it is
                tx.unlink()  # both ends mapped: the file is no longer needed
                p.tx_ring = tx
                if self._send_mail:
                    p.tx_box = Mailbox(tx.front)
        return inboxes

    def drop_own(self) -> None:
        """Remove the files of the rings we created, and unmap them."""
        for ring in self._own_rings.values():
            ring.unlink()
            with contextlib.suppress(BufferError):
                ring.close()
        self._own_rings.clear()
