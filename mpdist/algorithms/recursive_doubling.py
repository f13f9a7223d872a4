"""Latency-optimal allreduce for small arrays: recursive doubling (log2 p exchanges).

Groups that are not a power of two are folded onto one (``fold.folded``). At every exchange
both partners compute op(lower rank's value, higher rank's value), so every rank ends with
bitwise identical results. A small reduce-scatter of a power-of-two group is the same
butterfly over every rank's whole input, each rank keeping its own block.
"""

from __future__ import annotations

import numpy as np

from mpdist.algorithms.communicator import Communicator, reduce_received
from mpdist.algorithms.fold import folded
from mpdist.algorithms.reduction import ReduceOp, reduce_into
from mpdist.algorithms.steps import Steps, run
from mpdist.transport.base import as_bytes

__all__ = ["allreduce", "allreduce_steps", "allreduce_blocking", "reduce_scatter_blocking"]


def allreduce(comm: Communicator, flat: np.ndarray, op: ReduceOp, op_name: str) -> None:
    """Reduce the flat array ``flat`` in place across the communicator (no AVG division)."""
    run(comm, allreduce_steps(comm, flat, op, op_name), op_name)


def allreduce_steps(comm: Communicator, flat: np.ndarray, op: ReduceOp, op_name: str) -> Steps:
    """:func:`allreduce` as a generator of the requests it waits for (``steps.Stepped``)."""
    size = comm.size
    if size & (size - 1) == 0:
        # nobody to fold in: the butterfly alone, one generator fewer to resume per step
        return _butterfly(comm, flat, as_bytes(flat), size, op, op_name)
    return folded(_butterfly, comm, flat, op, op_name, 0)


def _butterfly(
    comm: Communicator, flat: np.ndarray, fb: memoryview, p2: int, op: ReduceOp, op_name: str
) -> Steps:
    t = comm.transport
    r = comm.rank
    sc = comm.scratch(0, flat.size, flat.dtype)
    sb = as_bytes(sc)
    mask = 1
    step = 1
    while mask < p2:
        partner = r ^ mask
        rv = t.irecv_borrow(partner, step, sb)
        sd = t.isend(partner, step, fb)
        if not (rv.done and sd.done):
            yield [rv, sd]
        reduce_received(t, rv, sc, flat, op, r < partner)
        mask <<= 1
        step += 1


def allreduce_blocking(comm: Communicator, flat: np.ndarray, op: ReduceOp, op_name: str) -> None:
    """The butterfly of a power-of-two group, blocking: one ``sendrecv`` per exchange (the
    transport's latency path), the same messages and bitwise the same results as
    :func:`allreduce_steps`."""
    t = comm.transport
    r = comm.rank
    sc, sb = comm.small_scratch(flat.dtype, flat.size)
    fb = as_bytes(flat)
    timeout = comm.timeout_s
    mask = 1
    step = 1
    # numpy 2 checks an output that overlaps an input the slow way when the arrays hold a
    # few items (1 item: 1.6 us against 0.7 us into another array, and a 0.15 us copy back)
    res, rb = comm.small_scratch(flat.dtype, flat.size, 1) if flat.size < 16 else (flat, fb)
    while mask < comm.size:
        partner = r ^ mask
        t.sendrecv(step, partner, fb, partner, sb, op_name, timeout)
        if r < partner:
            reduce_into(res, flat, sc, op)
        else:
            reduce_into(res, sc, flat, op)
        if res is not flat:
            fb[:] = rb
        mask <<= 1
        step += 1


def reduce_scatter_blocking(
    comm: Communicator, output: np.ndarray, inputs: list[np.ndarray], op: ReduceOp, op_name: str
) -> None:
    """``output`` <- op over ranks of their ``inputs[my_rank]`` (no AVG division), for a
    power-of-two group whose whole input takes the transport's latency path: the blocking
    butterfly over a copy of every block, this rank's block kept (when:
    ``algorithms.butterfly_shift``)."""
    p, n = comm.size, output.size
    whole, wb = comm.small_scratch(output.dtype, n * p, 2)  # apart from the butterfly's slots
    nb = output.nbytes
    for i, block in enumerate(inputs):
        wb[i * nb : (i + 1) * nb] = as_bytes(block)
    allreduce_blocking(comm, whole, op, op_name)
    r = comm.rank
    as_bytes(output)[:] = wb[r * nb : (r + 1) * nb]
