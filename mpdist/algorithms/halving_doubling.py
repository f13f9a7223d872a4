"""Mid-size allreduce: recursive-halving reduce-scatter, then recursive-doubling all-gather.

Same bytes on the wire as the ring but only 2 log2(p) steps (the ring takes 2 (p - 1)),
which is what counts for arrays too big for recursive doubling and too small to pipeline.
Groups that are not a power of two are folded onto one (``fold.folded``). Each element is
reduced on exactly one rank (op(lower rank's value, higher rank's value) at every step) and
then copied: results are bitwise identical.
"""

from __future__ import annotations

import numpy as np

from mpdist.algorithms.communicator import Communicator, reduce_received
from mpdist.algorithms.fold import folded
from mpdist.algorithms.reduction import ReduceOp
from mpdist.algorithms.steps import Steps, run
from mpdist.transport.base import as_bytes

__all__ = ["allreduce", "allreduce_steps"]

_AG_STEP = 1 << 24
_MAX_CHUNKS = 4096
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
    # scratch slot 0 holds the received halves: a folded-in partner's data goes to slot 1
    return folded(_butterfly, comm, flat, op, op_name, 1, chunk_bytes or CHUNK_BYTES)


def _butterfly(
    comm: Communicator,
    flat: np.ndarray,
    fb: memoryview,
    p2: int,
    op: ReduceOp,
    op_name: str,
    chunk_bytes: int,
) -> Steps:
    t = comm.transport
    r = comm.rank
    item = flat.itemsize
    chunk = max(1, chunk_bytes // item)
    n = flat.size
    sc = comm.scratch(0, max(n - n // 2, 1), flat.dtype)
    sb = as_bytes(sc)

    # reduce-scatter: halve the range we are responsible for at every step
    lo, hi = 0, n
    steps = []
    mask = p2 >> 1
    step = 1
    while mask:
        partner = r ^ mask
        mid = (lo + hi) // 2
        if r & mask:
            keep, give = (mid, hi), (lo, mid)
        else:
            keep, give = (lo, mid), (mid, hi)
        k0, k1 = keep
        g0 = give[0]
        # chunked, so that reducing the first chunks overlaps receiving the rest
        span = max(k1 - k0, give[1] - g0)
        ch = max(chunk, -(-span // _MAX_CHUNKS))
        offs = list(range(0, span, ch)) or [0]
        rvs = [
            t.irecv_borrow(partner, (step << 12) | i, sb[o * item : min(o + ch, k1 - k0) * item])
            for i, o in enumerate(offs)
        ]
        sds = [
            t.isend(
                partner, (step << 12) | i, fb[(g0 + o) * item : min(g0 + o + ch, give[1]) * item]
            )
            for i, o in enumerate(offs)
        ]
        for rv, o in zip(rvs, offs, strict=True):
            if not rv.done:
                yield [rv]
            e = min(o + ch, k1 - k0)
            mine = flat[k0 + o : k0 + e]
            reduce_received(t, rv, sc[o:e], mine, op, r < partner)
        yield sds
        steps.append((partner, keep, give))
        lo, hi = keep
        mask >>= 1
        step += 1

    # all-gather: swap finished ranges with the same partners in reverse order
    for i, (partner, keep, give) in enumerate(reversed(steps)):
        rv = t.irecv(partner, _AG_STEP + i, fb[give[0] * item : give[1] * item])
        sd = t.isend(partner, _AG_STEP + i, fb[keep[0] * item : keep[1] * item])
        yield [rv, sd]
