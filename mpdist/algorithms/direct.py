"""Direct collectives: every message of the collective posted at once.

Gather and scatter: the root exchanges one message with every other rank. All-gather and
reduce-scatter of small blocks: every rank exchanges one block with every other rank. That
moves the bytes a ring moves, in one round instead of p - 1 hops that each wait for the
previous rank; with more ranks than cores every hop can cost a trip through the scheduler.
"""

from __future__ import annotations

import numpy as np

from mpdist.algorithms.communicator import Communicator
from mpdist.algorithms.reduction import ReduceOp, reduce_into
from mpdist.transport.base import as_bytes

__all__ = ["allgather", "gather", "reduce_scatter", "scatter"]

_ANNOUNCE = 1 << 30
_EMPTY = memoryview(bytearray())


def gather(
    comm: Communicator, input: np.ndarray, outputs: list[np.ndarray] | None, root: int, op_name: str
) -> None:
    """Root's ``outputs[i]`` <- rank i's ``input``."""
    t = comm.transport
    if comm.rank == root:
        assert outputs is not None  # the root's list, checked by the caller
        reqs = [t.irecv(i, 0, as_bytes(outputs[i])) for i in range(comm.size) if i != root]
        # header-only announcement: ranks that disagree on the root fail at once, not on timeout
        reqs += [t.isend(i, _ANNOUNCE, _EMPTY) for i in range(comm.size) if i != root]
        np.copyto(outputs[root], input.reshape(outputs[root].shape))
        t.wait(reqs, op_name, comm.timeout_s)
    else:
        reqs = [t.irecv(root, _ANNOUNCE, _EMPTY), t.isend(root, 0, as_bytes(input))]
        t.wait(reqs, op_name, comm.timeout_s)


def scatter(
    comm: Communicator, output: np.ndarray, inputs: list[np.ndarray] | None, root: int, op_name: str
) -> None:
    """Rank i's ``output`` <- root's ``inputs[i]``."""
    t = comm.transport
    if comm.rank == root:
        assert inputs is not None  # the root's list, checked by the caller
        reqs = [t.isend(i, 0, as_bytes(inputs[i])) for i in range(comm.size) if i != root]
        np.copyto(output, inputs[root].reshape(output.shape))
        t.wait(reqs, op_name, comm.timeout_s)
    else:
        t.wait([t.irecv(root, 0, as_bytes(output))], op_name, comm.timeout_s)


def allgather(
    comm: Communicator, outputs: list[np.ndarray], input: np.ndarray, op_name: str
) -> None:
    """``outputs[i]`` <- rank i's ``input``: this rank's block to every other rank at once."""
    t = comm.transport
    r = comm.rank
    peers = [i for i in range(comm.size) if i != r]
    reqs = [t.irecv(i, 0, as_bytes(outputs[i])) for i in peers]
    mine = as_bytes(input)
    reqs += [t.isend(i, 0, mine) for i in peers]
    place_own_block(outputs[r], input)
    t.wait(reqs, op_name, comm.timeout_s)


def place_own_block(dst: np.ndarray, src: np.ndarray) -> None:
    """Put this rank's own block in place, unless it is there already (an in-place gather
    whose input is its own slot of the output)."""
    # may_share_memory is a bounds test (0.2 us); the exact address test behind it builds
    # two __array_interface__ dicts (1 us), so only overlapping arrays pay for it
    if np.may_share_memory(dst, src) and (
        dst.__array_interface__["data"][0] == src.__array_interface__["data"][0]
    ):
        return
    np.copyto(dst, src.reshape(dst.shape) if src.shape != dst.shape else src)


def reduce_scatter(
    comm: Communicator, output: np.ndarray, inputs: list[np.ndarray], op: ReduceOp, op_name: str
) -> None:
    """``output`` <- op over ranks of their ``inputs[my_rank]`` (no AVG division), reduced in
    rank order: every rank's block ``i`` goes to rank ``i`` at once."""
    t = comm.transport
    p, r = comm.size, comm.rank
    out = output.reshape(-1)
    n = out.size
    theirs = comm.scratch(0, n * p, out.dtype).reshape(p, n)
    reqs = [t.irecv(i, 0, as_bytes(theirs[i])) for i in range(p) if i != r]
    reqs += [t.isend(i, 0, as_bytes(inputs[i].reshape(-1))) for i in range(p) if i != r]
    t.wait(reqs, op_name, comm.timeout_s)
    theirs[r] = inputs[r].reshape(-1)
    np.copyto(out, theirs[0])
    for i in range(1, p):
        reduce_into(out, out, theirs[i], op)
