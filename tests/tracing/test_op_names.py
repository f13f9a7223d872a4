"""mpdist.ops: the collectives' operator objects, spelled and printed as torch.ops's."""

from __future__ import annotations

import pytest

import mpdist
from mpdist import ops
from mpdist.distributed import dispatch

NAMESPACES = (
    "c10d",
    "_c10d_functional",
    "c10d_functional",
    "_c10d_functional_autograd",
    "_dtensor",
)


def _packets() -> list[ops.OpOverloadPacket]:
    return [
        p
        for ns in NAMESPACES
        for p in vars(getattr(ops, ns)).values()
        if isinstance(p, ops.OpOverloadPacket)
    ]


def test_each_name_is_one_object_printed_as_torch_prints_it() -> None:
    packet = mpdist.ops.c10d_functional.all_reduce
    assert packet is ops.c10d_functional.all_reduce  # keys compare by identity
    assert str(packet) == "c10d_functional.all_reduce"
    assert repr(packet) == "<OpOverloadPacket(op='c10d_functional.all_reduce')>"
    assert str(packet.default) == "c10d_functional.all_reduce.default"
    assert repr(packet.default) == (
        "<OpOverload(op='c10d_functional.all_reduce', overload='default')>"
    )
    assert packet.default.overloadpacket is packet and packet.overloads() == ["default"]
    assert packet.default.name() == "c10d_functional::all_reduce"
    assert ops.overload("c10d.allreduce_.default") is ops.c10d.allreduce_.default
    assert ops.overload("c10d.allreduce_.out") is None and ops.overload("nope.x.default") is None
    with pytest.raises(
        AttributeError, match="'_OpNamespace' 'c10d' object has no attribute 'nope'"
    ):
        _ = ops.c10d.nope


def test_every_module_api_collective_has_its_name_object() -> None:
    from mpdist.distributed import collectives

    named = [v for k, v in vars(collectives).items() if k.startswith("_OP_")]
    assert len(named) >= 17
    for op in named:
        assert isinstance(op, dispatch.CollectiveOp)
        assert op.overloadpacket is not None, op
        assert str(op.overloadpacket.default) == str(op)
        assert op._overloadpacket is op.overloadpacket


def test_the_names_torch_has_print_the_same_in_torch() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch.distributed._functional_collectives")
    compared = 0
    for packet in _packets():
        theirs = getattr(getattr(torch.ops, packet._namespace), packet._name, None)
        if theirs is None:  # an op this torch build does not register
            continue
        compared += 1
        assert (str(packet), repr(packet)) == (str(theirs), repr(theirs))
        assert (str(packet.default), repr(packet.default)) == (
            str(theirs.default),
            repr(theirs.default),
        )
        assert packet.default.name() == theirs.default.name()
    assert compared >= 30
