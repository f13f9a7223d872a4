"""Running a butterfly allreduce on a group that is not a power of two, by folding.

Recursive doubling and recursive halving-doubling pair rank ``r`` with ``r ^ mask``, which
needs a power-of-two group. Ranks beyond the largest power of two ``p2`` fold in: rank
``r >= p2`` sends its data to rank ``r - p2``, which reduces it (op(lower rank's value, higher
rank's value), as every exchange does), runs the butterfly with ranks ``0 .. p2 - 1`` and
hands the result back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mpdist.algorithms.communicator import Communicator
from mpdist.algorithms.reduction import ReduceOp, reduce_into
from mpdist.algorithms.steps import Steps
from mpdist.transport.base import as_bytes

__all__ = ["folded", "FINAL_STEP"]

# the step number of the result going back to a folded rank: above every butterfly step
FINAL_STEP = 1 << 30


def folded(
    butterfly: Callable[..., Steps],
    comm: Communicator,
    flat: np.ndarray,
    op: ReduceOp,
    op_name: str,
    slot: int,
    *args: Any,
) -> Steps:
    """Allreduce ``flat`` in place with ``butterfly(comm, flat, fb, p2, op, op_name, *args)``,
    an allreduce over ranks ``0 .. p2 - 1`` (``fb``: the bytes of ``flat``). A rank with a
    partner beyond ``p2`` receives the partner's data into the scratch ``slot``. Both this
    and ``butterfly`` are generators of the requests they wait for (``steps``)."""
    t = comm.transport
    r = comm.rank
    p2 = 1 << (comm.size.bit_length() - 1)
    fb = as_bytes(flat)
    if r >= p2:  # sit the butterfly out: our partner does our share
        yield [t.isend(r - p2, 0, fb)]
        yield [t.irecv(r - p2, FINAL_STEP, fb)]
        return
    partner = r + p2
    if partner < comm.size:
        theirs = comm.scratch(slot, flat.size, flat.dtype)
        yield [t.irecv(partner, 0, as_bytes(theirs))]
        reduce_into(flat, flat, theirs, op)
    yield from butterfly(comm, flat, fb, p2, op, op_name, *args)
    if partner < comm.size:
        yield [t.isend(partner, FINAL_STEP, fb)]
