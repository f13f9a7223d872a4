"""Bandwidth-optimal allreduce for large arrays: ring reduce-scatter then ring all-gather.

The array is cut into p segments and each segment into chunks. A chunk is forwarded to the
right neighbour as soon as it has been reduced, so sending, receiving and reducing overlap;
receives are posted a step ahead into two scratch slots (reduce-scatter) or straight into
the array (all-gather), so data lands where it belongs without being stashed. Each element
is reduced exactly once, on one rank, and then copied around: results are bitwise identical.
A rank sends its own segment at most half of what the transport holds per peer ahead of what
it has received (``Communicator.window``), not all at once: its messages then fit the pair's
shared ring, where the rest went over TCP (2 ranks, 64 MiB: 21.9-22.2 ms against 30.2-31.8;
128 MiB: 45-53 against 69-70).
"""

from __future__ import annotations

import numpy as np

from mpdist.algorithms.communicator import Communicator, reduce_received
from mpdist.algorithms.reduction import ReduceOp
from mpdist.algorithms.steps import Steps, run
from mpdist.transport.base import as_bytes

__all__ = ["allreduce", "allreduce_steps", "CHUNK_BYTES"]

CHUNK_BYTES = 1 << 20


def allreduce(
    comm: Communicator, flat: np.ndarray, op: ReduceOp, op_name: str, chunk_bytes: int = 0
) -> None:
    """Reduce the flat array ``flat`` in place across the communicator (no AVG division)."""
    run(comm, allreduce_steps(comm, flat, op, op_name, chunk_bytes), op_name)


def allreduce_steps(
    comm: Communicator, flat: np.ndarray, op: ReduceOp, op_name: str, chunk_bytes: int = 0
) -> Steps:
    """:func:`allreduce` as a generator of the requests it waits for (``steps.Stepped``)."""
    t = comm.transport
    p, r = comm.size, comm.rank
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
    # one scratch slot per reduce-scatter step: the left neighbour may run several steps ahead
    slots = [comm.scratch(i, maxseg, flat.dtype) for i in range(p - 1)]
    last = p - 2
    ag_base = (p - 1) * K

    # Post every receive up front so that data lands where it belongs, never in the stash.
    # Reduce-scatter step s brings segment (r - s - 1) into slot s. All-gather step s brings
    # the final values of segment (r - s) straight into the array: that region is still being
    # sent by our reduce-scatter step s, but its final values depend on that very send having
    # reached the right neighbour, so they cannot arrive before our send is out.
    rs_recvs = []
    for s in range(p - 1):
        seg = (r - s - 1) % p
        base = bounds[seg]
        bv = as_bytes(slots[s])
        rs_recvs.append(
            [
                (
                    t.irecv_borrow(left, s * K + k, bv[(a - base) * item : (b - base) * item]),
                    a,
                    b,
                    base,
                )
                for k, (a, b) in enumerate(layout[seg])
            ]
        )
    ag_recvs = []
    for s in range(p - 1):
        seg = (r - s) % p
        ag_recvs.append(
            [
                (t.irecv(left, ag_base + s * K + k, fb[a * item : b * item]), a, b)
                for k, (a, b) in enumerate(layout[seg])
            ]
        )

    own = layout[r]
    sent = min(len(own), comm.window(chunk * item, 2))  # chunks of our own segment sent so far
    sends = [t.isend(right, k, fb[a * item : b * item]) for k, (a, b) in enumerate(own[:sent])]
    for s in range(p - 1):
        sc = slots[s]
        nxt = (s + 1) * K if s < last else ag_base
        for k, (req, a, b, base) in enumerate(rs_recvs[s]):
            if not req.done:
                yield [req]
            reduce_received(t, req, sc[a - base : b - base], flat[a:b], op, False)
            sends.append(t.isend(right, nxt + k, fb[a * item : b * item]))
            if sent < len(own):
                a, b = own[sent]
                sends.append(t.isend(right, sent, fb[a * item : b * item]))
                sent += 1
    for s in range(p - 2):
        for k, (req, a, b) in enumerate(ag_recvs[s]):
            if not req.done:
                yield [req]
            sends.append(t.isend(right, ag_base + (s + 1) * K + k, fb[a * item : b * item]))
    yield sends + [req for req, _, _ in ag_recvs[-1]]
