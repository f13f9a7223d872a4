"""Dissemination barrier: ceil(log2 p) rounds; in round k rank r signals r + 2^k."""

from __future__ import annotations

from mpdist.algorithms.communicator import Communicator

__all__ = ["barrier"]

_EMPTY = memoryview(bytearray())


def barrier(comm: Communicator, op_name: str) -> None:
    """Return once every rank of the communicator has entered the barrier."""
    t = comm.transport
    p, r = comm.size, comm.rank
    k = 1
    step = 0
    while k < p:
        t.sendrecv(step, (r + k) % p, _EMPTY, (r - k) % p, _EMPTY, op_name, comm.timeout_s)
        k <<= 1
        step += 1
