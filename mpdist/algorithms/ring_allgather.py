"""Ring all-gather: p - 1 steps, each block forwarded to the right as soon as it arrives."""

from __future__ import annotations

import numpy as np

from mpdist.algorithms.communicator import Communicator
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
    _copy(outputs[r], input)
    for s in range(p - 1):
        req = recvs[s]
        if not req.done:
            t.wait([req], op_name, timeout)
        if s < p - 2:
            sends.append(t.isend(right, s + 1, blocks[(r - s - 1) % p]))
    t.wait(sends, op_name, timeout)


def _copy(dst: np.ndarray, src: np.ndarray) -> None:
    """Put this rank's own block in place, unless it is there already (an in-place gather
    whose input is its own slot of the output)."""
    # may_share_memory is a bounds test (0.2 us); the exact address test behind it builds
    # two __array_interface__ dicts (1 us), so only overlapping arrays pay for it
    if np.may_share_memory(dst, src) and (
        dst.__array_interface__["data"][0] == src.__array_interface__["data"][0]
    ):
        return
    np.copyto(dst, src.reshape(dst.shape) if src.shape != dst.shape else src)
