"""Binomial-tree broadcast and reduce (log2 p rounds), chunk-pipelined for large broadcasts.

Virtual rank ``v = (rank - root) mod p``; a node's parent is ``v`` with its lowest set bit
cleared and its children are ``v + 2^k`` for the powers of two below that bit.
"""

from __future__ import annotations

import functools

import numpy as np

from mpdist.algorithms.communicator import Communicator
from mpdist.algorithms.reduction import ReduceOp, reduce_into
from mpdist.transport.base import as_bytes

__all__ = ["broadcast", "reduce", "tree_links", "BCAST_CHUNK_BYTES"]

BCAST_CHUNK_BYTES = 256 << 10
BCAST_CHUNK_BYTES_2 = 1 << 20
_ANNOUNCE = 1 << 30
_EMPTY = memoryview(bytearray())


@functools.lru_cache(maxsize=1024)
def tree_links(rank: int, size: int, root: int) -> tuple[int | None, tuple[int, ...]]:
    """(parent, children) of ``rank`` in the binomial tree rooted at ``root``; children
    are listed largest subtree first. Kept once computed: every broadcast and reduce asks."""
    v = (rank - root) % size
    mask = 1
    parent = None
    while mask < size:
        if v & mask:
            parent = (v - mask + root) % size
            break
        mask <<= 1
    children = []
    m = mask >> 1
    while m >= 1:
        if v + m < size:
            children.append((v + m + root) % size)
        m >>= 1
    return parent, tuple(children)


def broadcast(comm: Communicator, buf: memoryview, root: int, op_name: str) -> None:
    """Copy root's bytes ``buf`` into every rank's ``buf``."""
    t = comm.transport
    timeout = comm.timeout_s
    parent, children = tree_links(comm.rank, comm.size, root)
    n = buf.nbytes
    if n <= t.latency_bytes:
        # one piece: from the parent, then to each child, blocking (the latency path)
        if parent is not None:
            t.sendrecv(0, None, None, parent, buf, op_name, timeout)
        for c in children:
            t.sendrecv(0, c, buf, None, None, op_name, timeout)
        return
    # the same split on every rank: small chunks pipeline down the tree; with two ranks,
    # big chunks let the receiver copy one out while the sender copies the next in
    chunk = BCAST_CHUNK_BYTES if comm.size > 2 else BCAST_CHUNK_BYTES_2
    bounds = list(range(0, n, chunk)) + [n] if n > chunk else [0, n]
    pieces = [buf[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]
    sends = []
    if parent is None:
        for k, piece in enumerate(pieces):
            for c in children:
                sends.append(t.isend(c, k, piece))
    else:
        recvs = [t.irecv(parent, k, piece) for k, piece in enumerate(pieces)]
        for k, req in enumerate(recvs):
            if not req.done:
                t.wait([req], op_name, timeout)
            for c in children:
                sends.append(t.isend(c, k, pieces[k]))
    t.wait(sends, op_name, timeout)


def reduce(comm: Communicator, flat: np.ndarray, root: int, op: ReduceOp, op_name: str) -> None:
    """Reduce ``flat`` of every rank into root's ``flat``; other ranks' arrays are unchanged."""
    t = comm.transport
    timeout = comm.timeout_s
    parent, children = tree_links(comm.rank, comm.size, root)
    # The root announces itself to its children with a header-only message: if ranks disagree
    # on the root, someone sees a header with the wrong root at once instead of every rank
    # waiting for data nobody sends.
    extra = []
    if parent is None:
        extra = [t.isend(c, _ANNOUNCE, _EMPTY) for c in children]
    elif parent == root:
        extra = [t.irecv(parent, _ANNOUNCE, _EMPTY)]
    children = children[::-1]  # smallest subtree first: it is ready first
    bufs = [comm.scratch(1 + i, flat.size, flat.dtype) for i in range(len(children))]
    recvs = [t.irecv(c, 0, as_bytes(b)) for c, b in zip(children, bufs, strict=True)]
    if parent is None:
        acc = flat
    elif children:
        acc = comm.scratch(0, flat.size, flat.dtype)
    else:
        acc = flat
    src = flat
    for req, b in zip(recvs, bufs, strict=True):
        if not req.done:
            t.wait([req], op_name, timeout)
        reduce_into(acc, src, b, op)
        src = acc
    if parent is not None:
        extra.append(t.isend(parent, 0, as_bytes(acc)))
    t.wait(extra, op_name, timeout)
