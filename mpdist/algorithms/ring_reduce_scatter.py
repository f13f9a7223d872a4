"""Ring reduce-scatter: p - 1 steps; a block's partial result travels right, gaining one
rank's contribution per hop, and ends fully reduced on its owner. Each partial result is
reduced straight from where the transport holds it (a borrowing receive: the shared ring,
no copy out first)."""

from __future__ import annotations

import numpy as np

from mpdist.algorithms.communicator import Communicator, received
from mpdist.algorithms.reduction import ReduceOp, reduce_into
from mpdist.transport.base import RecvReq, as_bytes

__all__ = ["reduce_scatter"]


def reduce_scatter(
    comm: Communicator, output: np.ndarray, inputs: list[np.ndarray], op: ReduceOp, op_name: str
) -> None:
    """``output`` <- op over ranks of their ``inputs[my_rank]`` (no AVG division)."""
    t = comm.transport
    p, r = comm.size, comm.rank
    timeout = comm.timeout_s
    right, left = (r + 1) % p, (r - 1) % p
    out = output.reshape(-1)
    n = out.size
    # three slots: one being received, one being sent, one being reduced
    slots = [comm.scratch(i, n, out.dtype) for i in range(min(3, p - 1))]
    nslot = len(slots)

    def post(s: int) -> RecvReq:
        return t.irecv_borrow(left, s, as_bytes(slots[s % nslot]))

    recvs = {0: post(0)}
    if p > 2:
        recvs[1] = post(1)
    sends = [t.isend(right, 0, as_bytes(inputs[(r - 1) % p]))]
    for s in range(p - 1):
        req = recvs.pop(s)
        if not req.done:
            t.wait([req], op_name, timeout)
        blk = (r - s - 2) % p
        mine = inputs[blk].reshape(-1)
        sc = slots[s % nslot]
        theirs = received(req, sc)
        last = s == p - 2
        reduce_into(out if last else sc, theirs, mine, op)
        del theirs  # no view of the lent bytes may outlive the release
        t.release(req)
        if last:
            break
        sends.append(t.isend(right, s + 1, as_bytes(sc)))
        if s + 2 <= p - 2:
            # slot (s + 2) % 3 was sent at step s; it must be out before we receive into it
            t.wait([sends[-2]], op_name, timeout)
            recvs[s + 2] = post(s + 2)
    t.wait(sends, op_name, timeout)
