"""Direct gather and scatter: the root exchanges one message with every other rank at once."""

from __future__ import annotations

import numpy as np

from mpdist.algorithms.communicator import Communicator
from mpdist.transport.base import as_bytes

__all__ = ["gather", "scatter"]

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
