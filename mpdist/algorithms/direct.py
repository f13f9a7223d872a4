"""Direct collectives: every message of the collective posted at once.

Gather and scatter: the root exchanges one message with every other rank. All-gather and
reduce-scatter up to the block sizes ``algorithms`` chooses: every rank exchanges one block
with every other rank. That moves the bytes a ring moves, in one round instead of p - 1
hops that each wait for the previous rank; with more ranks than cores every hop can cost a
trip through the scheduler. Blocks past the latency path are reduced where the transport
lends them (the shared ring), as the ring algorithms' are.
"""

from __future__ import annotations

import numpy as np

from mpdist.algorithms.communicator import Communicator, received
from mpdist.algorithms.reduction import ReduceOp, reduce_into
from mpdist.transport.base import as_bytes

__all__ = ["allgather", "exchange", "gather", "post", "reduce_scatter", "scatter"]

_ANNOUNCE = 1 << 30
_COPY_ANYWAY_BYTES = 64 << 10  # own blocks up to this size are copied even onto themselves
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
    r = comm.rank
    peers = comm.peers
    mine = as_bytes(input)
    sends, recvs = [mine] * len(peers), [as_bytes(outputs[i]) for i in peers]
    if mine.nbytes > comm.transport.latency_bytes:
        reqs = post(comm, peers, sends, recvs)
        place_own_block(outputs[r], input)  # while the other blocks travel
        comm.wait(reqs, op_name)
        return
    exchange(comm, peers, sends, recvs, op_name)
    place_own_block(outputs[r], input)


def post(
    comm: Communicator,
    peers: list[int],
    sends: list[memoryview],
    recvs: list[memoryview],
    borrow: bool = False,
) -> list:
    """Message 0 of the collective, ``sends[k]`` to ``peers[k]`` and ``recvs[k]`` from it,
    all posted at once; the requests to wait for, the receives first (borrowing receives
    with ``borrow``: read them with ``received``, then release them)."""
    t = comm.transport
    irecv = t.irecv_borrow if borrow else t.irecv
    reqs = [irecv(i, 0, buf) for i, buf in zip(peers, recvs, strict=True)]
    reqs += [t.isend(i, 0, buf) for i, buf in zip(peers, sends, strict=True)]
    return reqs


def exchange(
    comm: Communicator,
    peers: list[int],
    sends: list[memoryview],
    recvs: list[memoryview],
    op_name: str,
) -> None:
    """Message 0 of the collective: ``sends[k]`` to ``peers[k]`` and ``recvs[k]`` from it,
    all of the same size. Up to the transport's ``latency_bytes``, one blocking
    ``sendrecv`` at a time (its latency path): every send first, the last with the first
    receive, so that no rank waits before it has sent what the others wait for. Bigger
    ones are all posted at once (:func:`post`) and waited for together."""
    t = comm.transport
    timeout = comm.timeout_s
    if sends[0].nbytes > t.latency_bytes:
        t.wait(post(comm, peers, sends, recvs), op_name, timeout)
        return
    last = len(peers) - 1
    for k in range(last):
        t.sendrecv(0, peers[k], sends[k], None, None, op_name, timeout)
    t.sendrecv(0, peers[last], sends[last], peers[0], recvs[0], op_name, timeout)
    for k in range(1, last + 1):
        t.sendrecv(0, None, None, peers[k], recvs[k], op_name, timeout)


def place_own_block(dst: np.ndarray, src: np.ndarray) -> None:
    """Put this rank's own block in place, unless it is there already (an in-place gather
    whose input is its own slot of the output)."""
    if src.nbytes <= _COPY_ANYWAY_BYTES:
        # a byte copy (0.1 us; memoryviews copy overlapping memory correctly) costs less
        # than finding out whether it is needed
        as_bytes(dst)[:] = as_bytes(src)
        return
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
    peers = comm.peers
    sends = [as_bytes(inputs[i]) for i in peers]  # C-contiguous: its bytes in order
    lent = []
    if output.nbytes <= t.latency_bytes:
        rows, recvs = comm.small_blocks(out.dtype, n)  # kept for this path
        exchange(comm, peers, sends, recvs, op_name)
        blocks = rows.copy()
    else:
        # bigger blocks are reduced where the transport holds them (borrowing receives:
        # the shared ring), with no copy out first
        theirs = comm.scratch(0, n * p, out.dtype).reshape(p, n)
        reqs = post(comm, peers, sends, [as_bytes(theirs[i]) for i in peers], borrow=True)
        comm.wait(reqs, op_name)
        lent = reqs[: len(peers)]
        blocks = list(theirs)
        for i, req in zip(peers, lent, strict=True):
            blocks[i] = received(req, theirs[i])
    # every rank's block in rank order (ours where it is), reduced left to right
    blocks[r] = inputs[r].reshape(-1)
    reduce_into(out, blocks[0], blocks[1], op)
    for i in range(2, p):
        reduce_into(out, out, blocks[i], op)
    del blocks  # no view of the lent bytes may outlive the release
    for req in lent:
        t.release(req)
