"""Pairwise all-to-all(v): every rank posts all its p - 1 sends and receives at once.

Sizes may differ per pair (all_to_all_single with splits); each message's byte count is
checked against the receive buffer, so disagreeing split sizes raise on the receiver.
"""

from __future__ import annotations

import numpy as np

from mpdist.algorithms.communicator import Communicator
from mpdist.transport.base import as_bytes

__all__ = ["alltoall"]


def alltoall(
    comm: Communicator, outputs: list[np.ndarray], inputs: list[np.ndarray], op_name: str
) -> None:
    """``outputs[i]`` <- rank i's ``inputs[my_rank]``."""
    t = comm.transport
    p, r = comm.size, comm.rank
    # post receives first so data lands in place, and exchange with the nearest ranks first
    reqs = [t.irecv((r - s) % p, 0, as_bytes(outputs[(r - s) % p])) for s in range(1, p)]
    reqs += [t.isend((r + s) % p, 0, as_bytes(inputs[(r + s) % p])) for s in range(1, p)]
    if outputs[r].size:
        np.copyto(outputs[r], inputs[r].reshape(outputs[r].shape))
    t.wait(reqs, op_name, comm.timeout_s)
