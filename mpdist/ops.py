"""The collectives' operator names, as ``torch.ops`` spells them: ``mpdist.ops.c10d_functional.all_reduce``.

torch names every collective by an operator: ``torch.ops.c10d.allreduce_`` (the module
API), ``torch.ops._c10d_functional.all_reduce`` (the functional collectives), and
``torch.ops.c10d_functional.all_reduce`` (their older Python-level names, which
``CommDebugMode`` counts under). Tests use these objects as keys::

    comm_mode.get_comm_counts()[torch.ops.c10d_functional.all_reduce]

This module gives the same spellings under ``mpdist.ops``, so such a test ports by changing
``torch.ops`` to ``mpdist.ops``. Each name is one object (an :class:`OpOverloadPacket`, with
its :class:`OpOverload` ``.default``): keys compare by identity, as torch's do. Only the
collectives exist here; :func:`overload` finds one by the dotted name a collective mode
sees (``str(func)``, ``"c10d.allreduce_.default"``).
"""

from __future__ import annotations

__all__ = [
    "OpOverload",
    "OpOverloadPacket",
    "c10d",
    "_c10d_functional",
    "c10d_functional",
    "_c10d_functional_autograd",
    "_dtensor",
    "overload",
]


class OpOverload:
    """One overload of an operator (collectives have one, ``default``): ``str()`` is ``ns.op.default``."""

    __slots__ = ("_overloadpacket", "_overloadname")

    def __init__(self, packet: OpOverloadPacket, name: str) -> None:
        self._overloadpacket = packet
        self._overloadname = name

    @property
    def overloadpacket(self) -> OpOverloadPacket:
        """The operator this overload belongs to."""
        return self._overloadpacket

    def name(self) -> str:
        """The schema name, ``ns::op`` (``ns::op.overload`` for overloads other than default)."""
        base = f"{self._overloadpacket._namespace}::{self._overloadpacket._name}"
        return base if self._overloadname == "default" else f"{base}.{self._overloadname}"

    def __str__(self) -> str:
        return f"{self._overloadpacket}.{self._overloadname}"

    def __repr__(self) -> str:
        return f"<OpOverload(op='{self._overloadpacket}', overload='{self._overloadname}')>"


class OpOverloadPacket:
    """An operator by name, all its overloads together: ``str()`` is ``ns.op``."""

    __slots__ = ("_namespace", "_name", "default")

    def __init__(self, namespace: str, name: str) -> None:
        self._namespace = namespace
        self._name = name
        self.default = OpOverload(self, "default")

    def overloads(self) -> list[str]:
        """The names of the operator's overloads."""
        return ["default"]

    def __str__(self) -> str:
        return f"{self._namespace}.{self._name}"

    def __repr__(self) -> str:
        return f"<OpOverloadPacket(op='{self}')>"


class _OpNamespace:
    """``mpdist.ops.<namespace>``: its operators as attributes."""

    def __init__(self, name: str, ops: str) -> None:
        self._name = name
        for op in ops.split():
            setattr(self, op, OpOverloadPacket(name, op))

    def __getattr__(self, op: str) -> OpOverloadPacket:  # only for names not set above
        raise AttributeError(f"'_OpNamespace' '{self._name}' object has no attribute '{op}'")

    def __repr__(self) -> str:
        return f"<namespace mpdist.ops.{self._name}>"


# The collectives of each namespace that torch's tests and CommDebugMode name.
c10d = _OpNamespace(
    "c10d",
    "allreduce_ allreduce_coalesced_ broadcast_ reduce_ allgather_ _allgather_base_ "
    "allgather_coalesced_ allgather_into_tensor_coalesced_ gather_ scatter_ reduce_scatter_ "
    "_reduce_scatter_base_ reduce_scatter_tensor_coalesced_ alltoall_ alltoall_base_ send "
    "recv_ recv_any_source_ barrier monitored_barrier_",
)
_c10d_functional = _OpNamespace(
    "_c10d_functional",
    "all_reduce all_reduce_ all_reduce_coalesced all_reduce_coalesced_ all_gather_into_tensor "
    "all_gather_into_tensor_out all_gather_into_tensor_coalesced reduce_scatter_tensor "
    "reduce_scatter_tensor_coalesced all_to_all_single broadcast broadcast_ wait_tensor",
)
c10d_functional = _OpNamespace(
    "c10d_functional",
    "all_reduce all_reduce_coalesced all_gather_into_tensor all_gather_into_tensor_coalesced "
    "reduce_scatter_tensor reduce_scatter_tensor_coalesced all_to_all_single broadcast "
    "wait_tensor",
)
_c10d_functional_autograd = _OpNamespace(
    "_c10d_functional_autograd", "all_to_all_single reduce_scatter_tensor all_gather_into_tensor"
)
_dtensor = _OpNamespace("_dtensor", "shard_dim_alltoall")

_NAMESPACES = {
    ns._name: ns
    for ns in (c10d, _c10d_functional, c10d_functional, _c10d_functional_autograd, _dtensor)
}


def overload(qualified: str) -> OpOverload | None:
    """The overload named ``"ns.op.overload"`` (as ``str()`` prints it), or None if unknown."""
    namespace, _, rest = qualified.partition(".")
    op, _, name = rest.rpartition(".")
    ns = _NAMESPACES.get(namespace)
    packet = ns.__dict__.get(op) if ns is not None else None
    if not isinstance(packet, OpOverloadPacket) or name != "default":
        return None
    return packet.default
