"""mpdist.tensor.debug.CommDebugMode counts collectives under mpdist.ops keys, as torch's counts under torch.ops keys."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import mpdist
import mpdist.distributed as dist
from mpdist import ops
from mpdist.distributed import dispatch
from mpdist.tensor.debug import CommDebugMode
from mpdist.testing import spawn_threads, trace_collectives

c10d = mpdist.ops.c10d
c10d_functional = mpdist.ops.c10d_functional


def issue(lib: Any, make: Any, rank: int) -> None:
    """The same module-API collectives on mpdist (numpy) or torch.distributed (torch tensors)."""
    x = make(4)
    lib.all_reduce(x)
    lib.all_reduce(x)
    lib.all_gather([make(4), make(4)], x)
    lib.all_gather_into_tensor(make(8), x)
    lib.broadcast(x, src=0)
    lib.reduce_scatter_tensor(make(2), x)
    lib.all_to_all_single(make(4), x)
    lib.reduce(x, dst=0)
    lib.barrier()  # not counted
    if rank == 0:  # point to point: not counted
        lib.send(x, 1)
    else:
        lib.recv(x, 0)


EXPECTED = {
    c10d.allreduce_: 2,
    c10d.allgather_: 1,
    c10d._allgather_base_: 1,
    c10d.broadcast_: 1,
    c10d._reduce_scatter_base_: 1,
    c10d.alltoall_base_: 1,
    c10d.reduce_: 1,
}


def _zeros(n: int) -> np.ndarray:
    return np.zeros(n, dtype=np.float32)


def test_counts_on_rank_threads() -> None:
    def rank_fn(rank: int, n: int) -> tuple[dict[Any, int], int, str]:
        with CommDebugMode() as comm_mode:
            issue(dist, _zeros, rank)
        return dict(comm_mode.get_comm_counts()), comm_mode.get_total_counts(), repr(comm_mode)

    for counts, total, text in spawn_threads(rank_fn, 2):
        assert counts == EXPECTED
        assert total == 8
        assert text == "CommDebugMode(get_total_counts()=8)"


@pytest.mark.mpdist(world_size=2)
def test_counts_on_rank_processes(rank: int, world_size: int) -> None:
    comm_mode = CommDebugMode()
    with comm_mode:
        issue(dist, _zeros, rank)
    assert comm_mode.get_comm_counts() == EXPECTED
    # torch's TP tests look counts up like this; an op never issued counts 0
    assert comm_mode.get_comm_counts()[c10d.allreduce_] == 2
    assert comm_mode.get_comm_counts()[c10d_functional.all_reduce] == 0
    # entering again starts from zero
    with comm_mode:
        dist.all_reduce(np.ones(1))
    assert comm_mode.get_comm_counts() == {c10d.allreduce_: 1}
    assert comm_mode.get_total_counts() == 1


def test_functional_ops_count_under_their_python_names_and_waits_not_at_all() -> None:
    # the functional collectives (mpdist._functional_collectives) are handed to modes under
    # their native names; these stand-ins are named so
    def named(name: str) -> dispatch.CollectiveOp:
        return dispatch.CollectiveOp(f"_c10d_functional.{name}.default", lambda t: t)

    with CommDebugMode() as comm_mode:
        for name in ("all_reduce", "all_gather_into_tensor", "all_reduce", "wait_tensor"):
            dispatch.run(named(name), (np.ones(1),))
        dispatch.run(dispatch.CollectiveOp("_dtensor.shard_dim_alltoall.default", len), ((),))
        dispatch.run(dispatch.CollectiveOp("not.an_op.default", len), ((),))
    assert comm_mode.get_comm_counts() == {
        c10d_functional.all_reduce: 2,
        c10d_functional.all_gather_into_tensor: 1,
        ops._dtensor.shard_dim_alltoall: 1,
    }


def test_a_collective_that_raises_is_not_counted_and_modes_compose() -> None:
    def fails(t: Any) -> None:
        raise ValueError("refused")

    with CommDebugMode() as comm_mode, pytest.raises(ValueError, match="refused"):
        dispatch.run(dispatch.CollectiveOp("c10d.allreduce_.default", fails), (None,))
    assert comm_mode.get_total_counts() == 0

    def rank_fn(rank: int, n: int) -> tuple[int, str]:
        # a trace inside CommDebugMode: both see the op
        with CommDebugMode() as comm_mode:
            trace = trace_collectives(dist.all_reduce)(np.ones(2))
        return comm_mode.get_total_counts(), trace.ops[0].name

    assert spawn_threads(rank_fn, 2) == [(1, "c10d.allreduce_.default")] * 2


# ---- against torch's CommDebugMode


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch renames two of them
def test_the_keys_are_named_as_torchs_for_the_same_collectives() -> None:
    torch = pytest.importorskip("torch")
    tdist = pytest.importorskip("torch.distributed")
    from torch.distributed.tensor.debug import CommDebugMode as TorchCommDebugMode
    from torch.testing._internal.distributed.fake_pg import FakeStore

    tdist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        with TorchCommDebugMode() as torch_mode:
            issue(tdist, torch.zeros, 0)
        torch_counts = {str(k): v for k, v in torch_mode.get_comm_counts().items()}
    finally:
        tdist.destroy_process_group()
    dist.init_process_group("fake", store=mpdist.HashStore(), rank=0, world_size=2)
    try:
        with CommDebugMode() as comm_mode:
            issue(dist, _zeros, 0)
    finally:
        dist.destroy_process_group()
    assert {str(k): v for k, v in comm_mode.get_comm_counts().items()} == torch_counts
    assert comm_mode.get_total_counts() == torch_mode.get_total_counts()


def test_what_counts_and_under_which_key_is_torchs_table() -> None:
    pytest.importorskip("torch")
    from torch.distributed.tensor.debug import _comm_mode

    from mpdist.tensor import debug

    torch_as = {str(k): str(v) for k, v in _comm_mode.NATIVE_TO_PY_MAPPING.items()}
    assert {str(k): str(v) for k, v in debug._COUNTED_AS.items()} == torch_as
    torch_counted = {str(p) for p in _comm_mode.c10d_collective_ops} | set(torch_as)
    torch_counted |= set(torch_as.values()) | {"_dtensor.shard_dim_alltoall"}
    assert {str(p) for p in debug._COUNTED} == torch_counted
