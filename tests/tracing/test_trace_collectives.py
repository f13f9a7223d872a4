"""mpdist.testing.trace_collectives: a function's collectives, in order, as graph text and as records."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import mpdist as dist
from mpdist.autograd import Tensor
from mpdist.distributed import dispatch
from mpdist.testing import FileCheck, spawn_threads, trace_collectives
from mpdist.testing.trace import GroupMeta, TensorMeta


def several(x: np.ndarray, sub: Any) -> np.ndarray:
    """all_reduce, all_gather, an async broadcast, an all_reduce on a subgroup, a barrier."""
    n = dist.get_world_size()
    dist.all_reduce(x)
    outs = [np.zeros_like(x) for _ in range(n)]
    dist.all_gather(outs, x)
    dist.broadcast(x, src=n - 1, async_op=True).wait()
    if sub is not None:
        dist.all_reduce(x, op=dist.ReduceOp.MAX, group=sub)
    dist.barrier()
    return np.concatenate(outs)


def expected_graph(sub: tuple[str, str] | None) -> str:
    """What ``several`` traces on 3 ranks; ``sub``: the subgroup's name and ranks, None if not a member."""
    g = 'group="0" ranks=[0, 1, 2]'
    lines = [
        "graph():",
        f"%0 = c10d.allreduce_.default(tensor=float32[2, 3], op=ReduceOp.SUM, async_op=False)  {g}",
        "%1 = c10d.allgather_.default(tensor_list=[float32[2, 3], float32[2, 3], float32[2, 3]], "
        f"tensor=float32[2, 3], async_op=False)  {g}",
        f"%2 = c10d.broadcast_.default(tensor=float32[2, 3], src=2, async_op=True)  {g}",
    ]
    if sub is not None:
        lines.append(
            "%3 = c10d.allreduce_.default(tensor=float32[2, 3], op=ReduceOp.MAX, async_op=False)  "
            f'group="{sub[0]}" ranks={sub[1]}'
        )
    lines.append(f"%{len(lines) - 1} = c10d.barrier.default(async_op=False, device_ids=None)  {g}")
    return lines[0] + "\n" + "".join(f"    {line}\n" for line in lines[1:])


def test_the_graph_of_several_collectives_on_three_rank_threads() -> None:
    def rank_fn(rank: int, n: int) -> None:
        sub = dist.new_group([0, 2])
        x = np.full((2, 3), rank + 1.0, dtype=np.float32)
        member = rank != 1
        trace = trace_collectives(several)(x, sub if member else None)
        assert trace.graph == expected_graph((sub.group_name, "[0, 2]") if member else None)
        # the collectives ran: the result is fn's
        np.testing.assert_array_equal(trace.result, np.full((6, 3), 6.0, dtype=np.float32))
        assert str(trace) == trace.graph
        checks = FileCheck().check("allreduce_").check_next("allgather_")
        checks.check_count('group="0"', 2).check("barrier").run(trace.graph)

    spawn_threads(rank_fn, 3)


def test_the_records_have_named_fields() -> None:
    def rank_fn(rank: int, n: int) -> None:
        x = np.ones((2, 3), dtype=np.float32)
        trace = trace_collectives(several)(x, None)
        first = trace.ops[0]
        assert (first.index, first.name) == (0, "c10d.allreduce_.default")
        assert first.inputs == (TensorMeta((2, 3), "float32"),)
        assert first.group == GroupMeta("0", (0, 1))
        assert [(a.name, a.text) for a in first.args] == [
            ("tensor", "float32[2, 3]"),
            ("op", "ReduceOp.SUM"),
            ("async_op", "False"),
        ]
        assert trace.ops[1].inputs == (TensorMeta((2, 3), "float32"),) * 3
        assert [op.name for op in trace.ops] == [
            "c10d.allreduce_.default",
            "c10d.allgather_.default",
            "c10d.broadcast_.default",
            "c10d.barrier.default",
        ]
        assert str(trace.ops[3]) == (
            '%3 = c10d.barrier.default(async_op=False, device_ids=None)  group="0" ranks=[0, 1]'
        )

    spawn_threads(rank_fn, 2)


def test_tensors_and_keyword_arguments_are_shown_by_name() -> None:
    def fn(t: Tensor) -> None:
        dist.all_reduce(tensor=t.data, op=dist.ReduceOp.AVG)
        dist.all_to_all_single(np.zeros(4, dtype=np.int64), np.arange(4), [1, 3], [1, 3])

    def rank_fn(rank: int, n: int) -> str:
        if rank == 0:
            return trace_collectives(fn)(Tensor(np.zeros((), dtype=np.float64))).graph
        # the other rank's side of the uneven all_to_all
        dist.all_reduce(np.zeros(()), op=dist.ReduceOp.AVG)
        dist.all_to_all_single(np.zeros(4, dtype=np.int64), np.arange(4), [3, 1], [3, 1])
        return ""

    graph = spawn_threads(rank_fn, 2)[0]
    assert graph.splitlines()[1:] == [
        "    %0 = c10d.allreduce_.default(tensor=float64[], op=ReduceOp.AVG, async_op=False)  "
        'group="0" ranks=[0, 1]',
        "    %1 = c10d.alltoall_base_.default(output=int64[4], input=int64[4], "
        'output_split_sizes=[1, 3], input_split_sizes=[1, 3], async_op=False)  group="0" ranks=[0, 1]',
    ]


def test_a_later_op_that_takes_an_earlier_result_names_it() -> None:
    # a wait on what a collective returned shows the collective's line number
    wait = dispatch.CollectiveOp("_c10d_functional.wait_tensor.default", lambda tensor: tensor)
    issue = dispatch.CollectiveOp(
        "_c10d_functional.all_gather_into_tensor.default",
        lambda input, group_size, group_name: np.concatenate([input] * group_size),
    )

    def fn(x: np.ndarray) -> np.ndarray:
        out = dispatch.run(issue, (x, 2, "0"))
        return dispatch.run(wait, (out,))

    def rank_fn(rank: int, n: int) -> Any:
        return trace_collectives(fn)(np.ones((2, 2), dtype=np.float32))

    trace = spawn_threads(rank_fn, 2)[0]
    assert trace.graph == (
        "graph():\n"
        "    %0 = _c10d_functional.all_gather_into_tensor.default(input=float32[2, 2], "
        'group_size=2)  group="0" ranks=[0, 1]\n'
        "    %1 = _c10d_functional.wait_tensor.default(tensor=%0)\n"
    )
    assert trace.ops[1].uses == (0,) and trace.ops[1].inputs == () and trace.ops[1].group is None
    assert trace.result.shape == (4, 2)
    FileCheck().check("all_gather").check("wait_tensor").run(trace.graph)


def test_on_the_fake_backend_in_one_process() -> None:
    # torch's test_fake_pg traces on a fake group of world size 2 in one process
    dist.init_process_group("fake", rank=1, world_size=2, store=dist.HashStore())
    try:
        out = np.ones((3, 3))
        trace = trace_collectives(dist.all_reduce)(out)
        assert trace.graph == (
            "graph():\n    %0 = c10d.allreduce_.default(tensor=float64[3, 3], op=ReduceOp.SUM, "
            'async_op=False)  group="0" ranks=[0, 1]\n'
        )
        assert trace.result is None
    finally:
        dist.destroy_process_group()


def test_an_exception_propagates_and_no_mode_is_left() -> None:
    def fails() -> None:
        dist.barrier()
        raise KeyError("inside")

    def rank_fn(rank: int, n: int) -> None:
        with pytest.raises(KeyError):
            trace_collectives(fails)()
        assert not dispatch.intercepting()

    spawn_threads(rank_fn, 2)
    with pytest.raises(TypeError, match="must be callable"):
        trace_collectives(3)  # type: ignore[arg-type]


def test_without_a_process_group_the_group_is_unknown() -> None:
    op = dispatch.CollectiveOp("c10d.barrier.default", lambda group=None: "done")
    trace = trace_collectives(lambda: dispatch.run(op, (None,)))()
    assert trace.ops[0].group == GroupMeta(None, None)
    assert trace.graph == "graph():\n    %0 = c10d.barrier.default()  group=? ranks=?\n"
    assert trace.result == "done"


def test_a_functional_collective_returned_unwaited_is_waited_inside_the_trace() -> None:
    # As torch's make_fx graph of all_gather_tensor ends with its wait_tensor: the traced
    # function's outputs are complete values.
    from mpdist import _functional_collectives as funcol

    dist.init_process_group("fake", rank=0, world_size=2, store=dist.HashStore())
    try:
        group = dist.distributed_c10d._get_default_group()
        trace = trace_collectives(lambda t: funcol.all_gather_tensor(t, 0, group))(np.ones((2, 2)))
        names = [op.name for op in trace.ops]
        assert names == [
            "_c10d_functional.all_gather_into_tensor.default",
            "_c10d_functional.wait_tensor.default",
        ]
        FileCheck().check("all_gather").check("wait_tensor").run(trace.graph)
        assert trace.result.completed and trace.result.shape == (4, 2)
    finally:
        dist.destroy_process_group()
