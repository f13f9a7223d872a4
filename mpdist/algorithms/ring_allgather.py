"""Ring all-gather: p - 1 steps, each block forwarded to the right as soon as it arrives."""

from __future__ import annotations

import numpy as np

from mpdist.algorithms.communicator import Communicator
from mpdist.algorithms.direct import place_own_block
from mpdist.transport.base import as_bytes

__all__ = ["allgather"]


def allgather(
    comm: Communicator, outputs: list[np.ndarray], input: np.ndarray, op_name: str
) -> None:
    """``outputs[i]`` <- rank i's ``input`` (every receive is posted up front)."""
    t = comm.transport
    p, r = comm.size, comm.rank
    timeout = comm.timeout_s
    right, left = (r + 1) % p, (r - 1) % p
    blocks = [as_bytes(o) for o in outputs]
    recvs = [t.irecv(left, s, blocks[(r - s - 1) % p]) for s in range(p - 1)]
    sends = [t.isend(right, 0, as_bytes(input))]
    place_own_block(outputs[r], input)
    for s in range(p - 1):
        req = recvs[s]
        if not req.done:
            t.wait([req], op_name, timeout)
        if s < p - 2:
            sends.append(t.isend(right, s + 1, blocks[(r - s - 1) % p]))
    t.wait(sends, op_name, timeout)
