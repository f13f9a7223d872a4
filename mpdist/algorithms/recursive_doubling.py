"""Latency-optimal allreduce for small arrays: recursive doubling (log2 p exchanges).

Ranks beyond the largest power of two p2 first fold their data into rank ``r - p2`` and get
the result back at the end. At every exchange both partners compute op(lower rank's value,
higher rank's value), so every rank ends with bitwise identical results.
"""

from __future__ import annotations

import numpy as np

from mpdist.algorithms.communicator import Communicator, received
from mpdist.algorithms.reduction import ReduceOp, reduce_into
from mpdist.transport.base import as_bytes

__all__ = ["allreduce"]

_FINAL_STEP = 1 << 20


def allreduce(comm: Communicator, flat: np.ndarray, op: ReduceOp, op_name: str) -> None:
    """Reduce the flat array ``flat`` in place across the communicator (no AVG division)."""
    t = comm.transport
    p, r = comm.size, comm.rank
    p2 = 1 << (p.bit_length() - 1)
    extra = p - p2
    fb = as_bytes(flat)
    timeout = comm.timeout_s
    if r >= p2:
        partner = r - p2
        t.wait([t.isend(partner, 0, fb)], op_name, timeout)
        t.wait([t.irecv(partner, _FINAL_STEP, fb)], op_name, timeout)
        return
    sc = comm.scratch(0, flat.size, flat.dtype)
    sb = as_bytes(sc)
    if r < extra:
        t.wait([t.irecv(r + p2, 0, sb)], op_name, timeout)
        reduce_into(flat, flat, sc, op)
    mask = 1
    step = 1
    while mask < p2:
        partner = r ^ mask
        rv = t.irecv_borrow(partner, step, sb)
        sd = t.isend(partner, step, fb)
        if not (rv.done and sd.done):
            t.wait([rv, sd], op_name, timeout)
        other = received(rv, sc)
        if r < partner:
            reduce_into(flat, flat, other, op)
        else:
            reduce_into(flat, other, flat, op)
        del other
        t.release(rv)
        mask <<= 1
        step += 1
    if r < extra:
        t.wait([t.isend(r + p2, _FINAL_STEP, fb)], op_name, timeout)
