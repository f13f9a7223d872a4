"""CommDebugMode: count the collectives a block of code issues, keyed as torch's tests look them up.

torch's TP tests count communication like this, and port by changing imports
(``torch.ops`` -> ``mpdist.ops``, ``torch.distributed.tensor.debug`` -> ``mpdist.tensor.debug``)::

    c10d_functional = mpdist.ops.c10d_functional
    with CommDebugMode() as comm_mode:
        out = model(x)
    assert comm_mode.get_total_counts() == 1
    assert comm_mode.get_comm_counts()[c10d_functional.all_reduce] == 1

The keys are the operator objects of :mod:`mpdist.ops`, chosen as torch chooses them: a
functional collective counts under its older Python-level name
(``_c10d_functional.all_reduce`` under ``c10d_functional.all_reduce``), a module-API
collective under its ``c10d`` name (``c10d.allreduce_``). Waits, barriers and
point-to-point sends and receives are not counted (torch does not count them either).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from mpdist import ops
from mpdist.distributed.dispatch import CollectiveMode, CollectiveOp

__all__ = ["CommDebugMode"]

# The functional collectives count under their Python-level names, as in torch (whose
# tests look counts up by those).
_COUNTED_AS: dict[ops.OpOverloadPacket, ops.OpOverloadPacket] = {
    getattr(ops._c10d_functional, name): getattr(ops.c10d_functional, name)
    for name in (
        "all_gather_into_tensor",
        "all_gather_into_tensor_coalesced",
        "all_reduce",
        "all_reduce_coalesced",
        "all_to_all_single",
        "broadcast",
        "reduce_scatter_tensor",
        "reduce_scatter_tensor_coalesced",
    )
}
_COUNTED_AS[ops._c10d_functional_autograd.all_to_all_single] = ops.c10d_functional.all_to_all_single

# Everything else that counts, under its own name.
_COUNTED: frozenset[ops.OpOverloadPacket] = frozenset(
    [
        *_COUNTED_AS,
        *_COUNTED_AS.values(),
        ops._dtensor.shard_dim_alltoall,
        *(
            getattr(ops.c10d, name)
            for name in (
                "_allgather_base_",
                "_reduce_scatter_base_",
                "allgather_",
                "allgather_coalesced_",
                "allgather_into_tensor_coalesced_",
                "allreduce_",
                "allreduce_coalesced_",
                "alltoall_",
                "alltoall_base_",
                "broadcast_",
                "gather_",
                "scatter_",
                "reduce_",
                "reduce_scatter_",
                "reduce_scatter_tensor_coalesced_",
            )
        ),
    ]
)


class CommDebugMode(CollectiveMode):
    """Counts the collectives issued (by this thread) while it is entered.

    Entering it clears the counts; they stay readable after the block. A collective that
    raises is not counted.
    """

    def __init__(self) -> None:
        self.comm_counts: defaultdict[Any, int] = defaultdict(int)

    def __collective__(
        self,
        func: CollectiveOp,
        types: tuple[type, ...],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        if packet in _COUNTED:
            self.comm_counts[_COUNTED_AS.get(packet, packet)] += 1
        return out

    def get_total_counts(self) -> int:
        """The number of collectives counted."""
        return sum(self.comm_counts.values())

    def get_comm_counts(self) -> dict[Any, int]:
        """The counts by operator (:mod:`mpdist.ops` objects); an operator never seen counts 0."""
        return self.comm_counts

    def __enter__(self) -> CommDebugMode:
        self.comm_counts.clear()
        return super().__enter__()

    def __repr__(self) -> str:
        return f"CommDebugMode(get_total_counts()={self.get_total_counts()})"
