"""Bandwidth-optimal allreduce for large arrays: ring reduce-scatter then ring all-gather.

The array is cut into p segments and each segment into chunks. A chunk is forwarded to the
right neighbour as soon as it has been reduced, so sending, receiving and reducing overlap;
receives are posted a step ahead into two scratch slots (reduce-scatter) or straight into
the array (all-gather), so data lands where it belongs without being stashed. Each element
is reduced exactly once, on one rank, and then copied around: results are bitwise identical.
"""

from __future__ import annotations

import numpy as np

from mpdist.algorithms.communicator import Communicator
from mpdist.algorithms.reduction import ReduceOp, reduce_into
from mpdist.transport.base import as_bytes

__all__ = ["allreduce", "CHUNK_BYTES"]

CHUNK_BYTES = 256 << 10


def allreduce(
    comm: Communicator, flat: np.ndarray, op: ReduceOp, op_name: str, chunk_bytes: int = 0
) -> None:
    """Reduce the flat array ``flat`` in place across the communicator (no AVG division)."""
    t = comm.transport
    p, r = comm.size, comm.rank
    timeout = comm.timeout_s
    n = flat.size
    item = flat.itemsize
    right, left = (r + 1) % p, (r - 1) % p
    bounds = [(n * i) // p for i in range(p + 1)]
    maxseg = max(bounds[i + 1] - bounds[i] for i in range(p))
    chunk = max(1, (chunk_bytes or CHUNK_BYTES) // item)
    K = max(1, -(-maxseg // chunk))

    def chunks(seg: int) -> list[tuple[int, int]]:
        s0, s1 = bounds[seg], bounds[seg + 1]
        return [(a, min(a + chunk, s1)) for a in range(s0, s1, chunk)] or [(s0, s0)]

    layout = [chunks(seg) for seg in range(p)]
    fb = as_bytes(flat)
    slots = [comm.scratch(i, maxseg, flat.dtype) for i in range(2)]
    slot_b = [as_bytes(s) for s in slots]
    last = p - 2

    def post_rs(s: int) -> list:
        seg = (r - s - 1) % p
        base = bounds[seg]
        bv = slot_b[s % 2]
        return [
            (t.irecv(left, s * K + k, bv[(a - base) * item : (b - base) * item]), a, b, base)
            for k, (a, b) in enumerate(layout[seg])
        ]

    pending = {0: post_rs(0)}
    if last >= 1:
        pending[1] = post_rs(1)
    rs_sends = [t.isend(right, k, fb[a * item : b * item]) for k, (a, b) in enumerate(layout[r])]
    ag_sends = []
    ag_base = (p - 1) * K
    for s in range(p - 1):
        sc = slots[s % 2]
        nxt = (s + 1) * K if s < last else ag_base
        out = rs_sends if s < last else ag_sends
        for k, (req, a, b, base) in enumerate(pending.pop(s)):
            if not req.done:
                t.wait([req], op_name, timeout)
            dst = flat[a:b]
            reduce_into(dst, sc[a - base : b - base], dst, op)
            out.append(t.isend(right, nxt + k, fb[a * item : b * item]))
        if s + 2 <= last:
            pending[s + 2] = post_rs(s + 2)

    # all-gather: receive straight into the array once our sends out of it are done
    t.wait(rs_sends, op_name, timeout)
    ag = []
    for s in range(p - 1):
        seg = (r - s) % p
        ag.append(
            [
                (t.irecv(left, ag_base + s * K + k, fb[a * item : b * item]), a, b)
                for k, (a, b) in enumerate(layout[seg])
            ]
        )
    for s in range(p - 1):
        fwd = s < p - 2
        for k, (req, a, b) in enumerate(ag[s]):
            if not req.done:
                t.wait([req], op_name, timeout)
            if fwd:
                ag_sends.append(t.isend(right, ag_base + (s + 1) * K + k, fb[a * item : b * item]))
    t.wait(ag_sends, op_name, timeout)
