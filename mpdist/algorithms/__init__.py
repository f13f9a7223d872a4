"""Collective algorithms written once over the transport API (TcpTransport, LocalTransport).

Every function takes a :class:`Communicator`, works in place on C-contiguous numpy arrays,
uses the communicator's (group) ranks, and takes an ``op_name`` keyword used in headers and
error messages. ``allreduce`` switches by size between recursive doubling (latency) and the
pipelined ring (bandwidth); ``allreduce_steps`` is the same collective as a generator that
``Stepped`` advances without blocking (see ``steps``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mpdist.algorithms import (
    direct,
    halving_doubling,
    pairwise,
    recursive_doubling,
    ring_allgather,
    ring_allreduce,
    tree,
)
from mpdist.algorithms.barrier import barrier as _barrier
from mpdist.algorithms.communicator import Communicator
from mpdist.algorithms.p2p import irecv, isend, recv, send, wait
from mpdist.algorithms.reduction import (
    REDOP_CODE,
    ReduceOp,
    check_op_dtype,
    combine,
    divide,
    divide_by,
    reduce_into,
)
from mpdist.algorithms.ring_reduce_scatter import reduce_scatter as _reduce_scatter
from mpdist.algorithms.steps import Stepped, Steps, run
from mpdist.transport.base import as_bytes

__all__ = [
    "Communicator",
    "ReduceOp",
    "check_list",
    "check_root",
    "check_op_dtype",
    "combine",
    "reduce_into",
    "divide",
    "divide_by",
    "allreduce",
    "allreduce_steps",
    "Stepped",
    "run",
    "broadcast",
    "reduce",
    "allgather",
    "gather",
    "scatter",
    "reduce_scatter",
    "alltoall",
    "barrier",
    "send",
    "recv",
    "isend",
    "irecv",
    "wait",
    "allreduce_algorithm",
    "butterfly_shift",
]

# Algorithm switch for allreduce, measured with 2-4 rank processes on a 2-core machine:
# recursive doubling (fewest steps) for small arrays; recursive halving + doubling (same bytes
# as the ring in 2 log2 p steps) for mid sizes on power-of-two groups; the pipelined ring
# for large arrays and for groups that are not a power of two. Two ranks: recursive doubling
# is one exchange of the whole array, each rank then reducing all of it; with the payload in
# shared memory that beats both two-phase algorithms up to 6 MiB (1.1 MiB: 114 us of CPU
# against 152; 4.2 MiB: 403 against 522 and 544); at 8 MiB and up the ring wins.
SMALL_ALLREDUCE_BYTES = 256 << 10
SMALL_ALLREDUCE_BYTES_2 = 6 << 20
LARGE_ALLREDUCE_BYTES = 2 << 20  # power-of-two groups: halving-doubling up to here
# All-gather and reduce-scatter blocks up to this size go to every rank at once (direct.py):
# one round, where the ring's p - 1 hops each wait for a rank that may not be running
# (4 ranks on 2 cores, 4 B: ring 550-700 us). Above it the ring: its 3 scratch blocks,
# not p - 1, and a pipeline.
DIRECT_BLOCK_BYTES = 64 << 10
# All-gather moves the same bytes either way (each rank's block to every other rank) and
# needs no scratch block, so in small groups it goes direct for bigger blocks too: no hop
# waits for the one before it. 4 ranks on 2 cores, 1 MiB (256 KiB blocks): 664-702 us
# against the ring's 770-976; 4 MiB: 1989-2108 against 2000-2393; at 16 MiB (4 MiB blocks)
# the ring's pipeline was as fast or faster (7.5-9.9 ms against 9.3-10.0).
DIRECT_ALLGATHER_RANKS = 8
DIRECT_ALLGATHER_BYTES = 1 << 20
# Reduce-scatter goes direct up to bigger blocks too (their bytes reduced where the
# transport lends them, as the ring's are): 4 ranks on 2 cores, 1 MiB (256 KiB blocks):
# 922-1022 us against the ring's 878-1333; 2 ranks: no change. Above it the ring, whose
# scratch is 3 blocks, not p.
DIRECT_REDUCE_SCATTER_BYTES = 256 << 10


def butterfly_shift(size: int) -> int:
    """Small reduce-scatters of power-of-two groups of 4 and more go by recursive doubling
    (``recursive_doubling.reduce_scatter_blocking``) where the whole input (every rank's
    blocks) is at most the latency path's bytes shifted right by this: log2 p exchanges
    instead of direct's p - 1 messages each way, but each exchange the whole input. 4 ranks
    on 2 cores gain up to 64 KiB (4 B: 40-52 us against 71-86; 64 KiB: 129-143 against
    150-246); 8 ranks gain at 1 KiB (186-190 against 264-273) and lose at 16 KiB (311-332
    against 284-286): an eighth of the allowance per doubling. 2 ranks exchange once either
    way (direct)."""
    return max(0, 3 * (size.bit_length() - 3))


def allreduce_algorithm(nbytes: int, size: int) -> str:
    """Which allreduce runs for ``nbytes`` on ``size`` ranks: "rd", "hd" or "ring"."""
    if nbytes <= (SMALL_ALLREDUCE_BYTES_2 if size == 2 else SMALL_ALLREDUCE_BYTES):
        return "rd"
    if size & (size - 1) == 0 and nbytes <= LARGE_ALLREDUCE_BYTES:
        return "hd"
    return "ring"


# (comm, flat, op, op_name) -> the algorithm's steps
_ALLREDUCE_STEPS: dict[str, Callable[[Communicator, np.ndarray, ReduceOp, str], Steps]] = {
    "rd": recursive_doubling.allreduce_steps,
    "hd": halving_doubling.allreduce_steps,
    "ring": ring_allreduce.allreduce_steps,
}


def _flat(array: np.ndarray) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"expected a numpy ndarray, got {type(array).__name__}")
    if not array.flags.c_contiguous:
        raise ValueError("arrays must be C-contiguous")
    return array.reshape(-1)


def check_root(size: int, root: Any, what: str = "root") -> None:
    """``root`` must be a rank of a group of ``size`` ranks."""
    if not isinstance(root, int) or not 0 <= root < size:
        raise ValueError(f"{what} {root!r} is not a rank of this group (size {size})")


def check_list(size: int, arrays: list, like: np.ndarray, what: str) -> None:
    """A list argument of a group of ``size`` ranks: one C-contiguous array per rank, each
    of ``like``'s dtype and size."""
    if len(arrays) != size:
        raise ValueError(f"{what} must have {size} entries (the group size), got {len(arrays)}")
    for a in arrays:
        if type(a) is not np.ndarray or not a.flags.c_contiguous:
            _flat(a)  # says what is wrong with it
        if a.dtype != like.dtype:
            raise TypeError(f"{what}: mixed dtypes {a.dtype} and {like.dtype}")
        if a.nbytes != like.nbytes:
            raise ValueError(f"{what}: every array must have {like.size} elements, got {a.size}")


def _start_rooted(
    comm: Communicator,
    mine: np.ndarray,
    arrays: list | None,
    root: int,
    op_name: str,
    kind: str,
    role: str,
) -> None:
    """Check and enter a gather or scatter (``kind``): ``mine`` is this rank's array and
    ``arrays`` the root's list of one array per rank (the ``role`` list, not used elsewhere)."""
    _flat(mine)
    check_root(comm.size, root)
    if comm.rank == root:
        if arrays is None:
            raise ValueError(f"{kind}: the {role} list is required on the root")
        check_list(comm.size, arrays, mine, f"{kind} list")
    comm.start(op_name, mine.dtype, mine.nbytes, mine.shape, root)


def allreduce(
    comm: Communicator,
    array: np.ndarray,
    op: ReduceOp = ReduceOp.SUM,
    *,
    op_name: str = "all_reduce",
    checked: bool = False,
) -> None:
    """Reduce ``array`` in place over every rank; the result is bitwise identical everywhere.
    ``checked``: the caller has checked the arguments (a built-in group: its methods check
    every call before it gets here), so the latency path does not check them again."""
    size = comm.size
    if 0 < array.nbytes <= comm.transport.latency_bytes and size & (size - 1) == 0:
        if checked:
            flat = array.reshape(-1)
        else:
            flat = _flat(array)
            check_op_dtype(op, array.dtype)
        comm.start(op_name, array.dtype, array.nbytes, array.shape, -1, REDOP_CODE[op])
        if size > 1:
            recursive_doubling.allreduce_blocking(comm, flat, op, op_name)
            if op is ReduceOp.AVG:
                divide(flat, size)
        comm.finish()
        return
    run(comm, allreduce_steps(comm, array, op, op_name=op_name), op_name)


def allreduce_steps(
    comm: Communicator,
    array: np.ndarray,
    op: ReduceOp = ReduceOp.SUM,
    *,
    op_name: str = "all_reduce",
) -> Steps:
    """:func:`allreduce` as a generator of the requests it waits for, to drive with
    :func:`run` or :class:`Stepped`. The arguments are checked at once; the collective
    starts at the first step."""
    flat = _flat(array)
    check_op_dtype(op, array.dtype)
    return _allreduce_steps(comm, array, flat, op, op_name)


def _allreduce_steps(
    comm: Communicator, array: np.ndarray, flat: np.ndarray, op: ReduceOp, op_name: str
) -> Steps:
    comm.start(op_name, array.dtype, array.nbytes, array.shape, -1, REDOP_CODE[op])
    if comm.size > 1:
        algo = "rd" if flat.size < comm.size else allreduce_algorithm(array.nbytes, comm.size)
        yield from _ALLREDUCE_STEPS[algo](comm, flat, op, op_name)
        if op is ReduceOp.AVG:
            divide(flat, comm.size)
    comm.finish()


def broadcast(
    comm: Communicator,
    array: np.ndarray,
    root: int,
    *,
    op_name: str = "broadcast",
    checked: bool = False,
) -> None:
    """Every rank's ``array`` <- root's ``array`` (``checked``: as for allreduce)."""
    if not checked:
        _flat(array)
        check_root(comm.size, root)
    comm.start(op_name, array.dtype, array.nbytes, array.shape, root)
    if comm.size > 1:
        tree.broadcast(comm, as_bytes(array), root, op_name)
    comm.finish()


def reduce(
    comm: Communicator,
    array: np.ndarray,
    root: int,
    op: ReduceOp = ReduceOp.SUM,
    *,
    op_name: str = "reduce",
) -> None:
    """Root's ``array`` <- op over every rank's ``array``; other ranks' arrays are left as they were."""
    flat = _flat(array)
    check_root(comm.size, root)
    check_op_dtype(op, array.dtype)
    comm.start(op_name, array.dtype, array.nbytes, array.shape, root, REDOP_CODE[op])
    if comm.size > 1:
        tree.reduce(comm, flat, root, op, op_name)
        if op is ReduceOp.AVG and comm.rank == root:
            divide(flat, comm.size)
    comm.finish()


def allgather(
    comm: Communicator,
    outputs: list[np.ndarray],
    input: np.ndarray,
    *,
    op_name: str = "all_gather",
    checked: bool = False,
) -> None:
    """``outputs[i]`` <- rank i's ``input`` on every rank (``checked``: as for allreduce)."""
    if not checked:
        _flat(input)
        check_list(comm.size, outputs, input, "output list")
    comm.start(op_name, input.dtype, input.nbytes, input.shape)
    if comm.size > 1:
        small_group = comm.size <= DIRECT_ALLGATHER_RANKS
        if input.nbytes <= (DIRECT_ALLGATHER_BYTES if small_group else DIRECT_BLOCK_BYTES):
            direct.allgather(comm, outputs, input, op_name)
        else:
            ring_allgather.allgather(comm, outputs, input, op_name)
    else:
        direct.place_own_block(outputs[0], input)
    comm.finish()


def gather(
    comm: Communicator,
    input: np.ndarray,
    outputs: list[np.ndarray] | None,
    root: int,
    *,
    op_name: str = "gather",
) -> None:
    """Root's ``outputs[i]`` <- rank i's ``input``; ``outputs`` is only used on the root."""
    _start_rooted(comm, input, outputs, root, op_name, "gather", "output")
    direct.gather(comm, input, outputs, root, op_name)
    comm.finish()


def scatter(
    comm: Communicator,
    output: np.ndarray,
    inputs: list[np.ndarray] | None,
    root: int,
    *,
    op_name: str = "scatter",
) -> None:
    """Rank i's ``output`` <- root's ``inputs[i]``; ``inputs`` is only used on the root."""
    _start_rooted(comm, output, inputs, root, op_name, "scatter", "input")
    direct.scatter(comm, output, inputs, root, op_name)
    comm.finish()


def reduce_scatter(
    comm: Communicator,
    output: np.ndarray,
    inputs: list[np.ndarray],
    op: ReduceOp = ReduceOp.SUM,
    *,
    op_name: str = "reduce_scatter",
    checked: bool = False,
) -> None:
    """``output`` <- op over every rank's ``inputs[my_rank]`` (``checked``: as for allreduce)."""
    if not checked:
        _flat(output)
        check_list(comm.size, inputs, output, "input list")
        check_op_dtype(op, output.dtype)
    comm.start(op_name, output.dtype, output.nbytes, output.shape, -1, REDOP_CODE[op])
    size = comm.size
    if size > 1:
        if (
            size >= 4
            and size & (size - 1) == 0
            and output.nbytes * size <= comm.transport.latency_bytes >> butterfly_shift(size)
        ):
            recursive_doubling.reduce_scatter_blocking(comm, output, inputs, op, op_name)
        elif output.nbytes <= DIRECT_REDUCE_SCATTER_BYTES:
            direct.reduce_scatter(comm, output, inputs, op, op_name)
        else:
            _reduce_scatter(comm, output, inputs, op, op_name)
        if op is ReduceOp.AVG:
            divide(output.reshape(-1), comm.size)
    else:
        np.copyto(output, inputs[0].reshape(output.shape))
    comm.finish()


def alltoall(
    comm: Communicator,
    outputs: list[np.ndarray],
    inputs: list[np.ndarray],
    *,
    op_name: str = "all_to_all",
) -> None:
    """``outputs[i]`` <- rank i's ``inputs[my_rank]``; sizes may differ per pair."""
    p = comm.size
    if len(outputs) != p or len(inputs) != p:
        raise ValueError(f"all_to_all: input and output lists must have {p} entries")
    dtype = inputs[0].dtype if inputs else None
    for a in list(outputs) + list(inputs):
        _flat(a)
        if a.dtype != dtype:
            raise TypeError(f"all_to_all: mixed dtypes {a.dtype} and {dtype}")
    r = comm.rank
    if outputs[r].nbytes != inputs[r].nbytes:
        raise ValueError(
            f"all_to_all: rank {r} sends {inputs[r].size} elements to itself but expects {outputs[r].size}"
        )
    comm.start(op_name, dtype, 0, None)
    pairwise.alltoall(comm, outputs, inputs, op_name)
    comm.finish()


def barrier(comm: Communicator, *, op_name: str = "barrier") -> None:
    """Return once every rank has entered the barrier."""
    comm.start(op_name, None, 0, None)
    if comm.size > 1:
        _barrier(comm, op_name)
    comm.finish()
