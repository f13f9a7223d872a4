"""Point-to-point send and receive, matched by (peer, tag); receive from any rank with None."""

from __future__ import annotations

import numpy as np

from mpdist.algorithms.communicator import Communicator
from mpdist.transport.base import RecvReq, SendReq, as_bytes
from mpdist.transport.header import dtype_code, op_code

__all__ = ["send", "recv", "isend", "irecv", "wait"]


def _check_peer(comm: Communicator, peer: int, what: str) -> None:
    if not isinstance(peer, int) or isinstance(peer, bool):
        raise TypeError(f"{what} must be an int rank, got {peer!r}")
    if not 0 <= peer < comm.size:
        raise ValueError(f"{what} {peer} is not a rank of this group (size {comm.size})")
    if peer == comm.rank:
        raise ValueError(
            f"rank {comm.rank} cannot {'send to' if what == 'dst' else 'receive from'} itself"
        )


def _check_tag(tag: int) -> None:
    if not isinstance(tag, int) or isinstance(tag, bool):
        raise TypeError(f"tag must be an int, got {tag!r}")
    if not -(2**31) <= tag < 2**31:
        raise ValueError(f"tag {tag} does not fit in 32 bits")


def isend(
    comm: Communicator, array: np.ndarray, dst: int, tag: int = 0, *, op_name: str = "send"
) -> SendReq:
    """Post a send of ``array`` to ``dst``; finish it with :func:`wait` before changing ``array``."""
    _check_peer(comm, dst, "dst")
    _check_tag(tag)
    return comm.transport.isend_p2p(
        dst, tag, as_bytes(array), dtype_code(array.dtype), op_code(op_name)
    )


def irecv(
    comm: Communicator, array: np.ndarray, src: int | None, tag: int = 0, *, op_name: str = "recv"
) -> RecvReq:
    """Post a receive into ``array`` from ``src`` (None: any rank); ``req.src`` is the sender."""
    if src is not None:
        _check_peer(comm, src, "src")
    _check_tag(tag)
    return comm.transport.irecv_p2p(src, tag, as_bytes(array), dtype_code(array.dtype))


def wait(comm: Communicator, reqs: list, op_name: str) -> None:
    """Wait for posted p2p requests (progressing everything else meanwhile)."""
    comm.transport.wait(reqs, op_name, comm.timeout_s)


def send(
    comm: Communicator, array: np.ndarray, dst: int, tag: int = 0, *, op_name: str = "send"
) -> None:
    """Send ``array`` to ``dst``; returns when the data is handed to the peer/kernel."""
    req = isend(comm, array, dst, tag, op_name=op_name)
    if not req.done:
        comm.transport.wait([req], op_name, comm.timeout_s)


def recv(
    comm: Communicator, array: np.ndarray, src: int | None, tag: int = 0, *, op_name: str = "recv"
) -> int:
    """Receive into ``array`` from ``src`` (None: any rank) with ``tag``; returns the sender."""
    req = irecv(comm, array, src, tag, op_name=op_name)
    if not req.done:
        comm.transport.wait([req], op_name, comm.timeout_s)
    assert req.src is not None  # a finished receive knows its sender
    return req.src
