"""What a Python ProcessGroup subclass gets from mpdist, seen from outside.

The store constructor; the tensor collectives reaching a group of several ranks found by
name; abort/shutdown defaults and destroy's shutdown; a registered Python backend serving
batch_isend_irecv between two real processes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import mpdist as dist
import mpdist.distributed as c10d
from mpdist import Backend, ProcessGroup, Work, create_work_from_future
from mpdist.process_group import (
    AllgatherOptions,
    AllreduceOptions,
    BarrierOptions,
    Future,
    ReduceScatterOptions,
)
from mpdist.store import HashStore, PrefixStore
from mpdist.testing import MultiProcessTestCase


def finished(outputs: list[Any]) -> Work:
    """A Work whose operation is already over, with ``outputs`` as its result."""
    fut = Future()
    fut.set_result(outputs)
    return create_work_from_future(fut)


@pytest.fixture
def forget_backends() -> Iterator[None]:
    """Unregister the backends a test registers (the registry is process-wide)."""
    before = set(Backend._plugins)
    yield
    for name in set(Backend._plugins) - before:
        del Backend._plugins[name]
        delattr(Backend, name.upper())


# ---------------------------------------------------------------- the store constructor


class LedgerGroup(ProcessGroup):
    """Built as ``LedgerGroup(store, rank, size)``; names its own backend."""

    def __init__(self, store: Any, rank: int, size: int) -> None:
        super().__init__(store, rank, size)

    def getBackendName(self) -> str:  # noqa: N802 (torch's name)
        return "ledger"


def test_store_constructor_keeps_the_store_the_ranks_and_the_backend_name() -> None:
    backing = HashStore()
    store = PrefixStore("ledger", backing)
    store.set("opening", "balance")
    pg = LedgerGroup(store, 2, 5)
    assert pg.get_group_store() is store
    assert pg.get_group_store().get("opening") == b"balance"
    pg.get_group_store().set("entry", "1")  # the very store: writes land under its prefix
    assert backing.get("ledger/entry") == b"1"
    assert (pg.rank(), pg.size(), pg.name()) == (2, 5, "ledger")
    assert "ledger" in repr(pg)


# ---------------------------------------------------------------- tensor collectives


class ChunkGroup(ProcessGroup):
    """Rank ``rank`` of ``size`` ranks that never communicate: a gather fills chunk ``i``
    with the input times ``i + 1`` (so the layout shows), a reduce-scatter sums ``size``
    identical contributions of this rank's chunk."""

    def __init__(self, rank: int, size: int) -> None:
        super().__init__(rank, size)
        self.called: list[str] = []

    def getBackendName(self) -> str:  # noqa: N802 (torch's name)
        return "chunks"

    def all_gather_single(
        self, output: Any, input: Any, opts: AllgatherOptions | None = None
    ) -> Work:
        assert isinstance(opts, AllgatherOptions)
        self.called.append("all_gather_single")
        for i, chunk in enumerate(np.split(output, self.size())):
            chunk[...] = input * (i + 1)
        return finished([output])

    def reduce_scatter_single(
        self, output: Any, input: Any, opts: ReduceScatterOptions | None = None
    ) -> Work:
        self.called.append("reduce_scatter_single")
        output[...] = np.split(input, self.size())[self.rank()] * self.size()
        return finished([output])


def test_tensor_collectives_reach_a_python_group_found_by_name() -> None:
    c10d._register_process_group("test-python-pg-surface-chunks", ChunkGroup(1, 3))
    try:
        pg = c10d._resolve_process_group("test-python-pg-surface-chunks")
        piece = np.array([1.5, -2.0], dtype=np.float32)
        gathered = np.zeros(6, dtype=np.float32)
        assert dist.all_gather_into_tensor(gathered, piece, group=pg) is None
        np.testing.assert_array_equal(gathered, np.concatenate([piece, 2 * piece, 3 * piece]))

        whole = np.arange(6, dtype=np.float32)
        mine = np.zeros(2, dtype=np.float32)
        work = dist.reduce_scatter_tensor(mine, whole, group=pg, async_op=True)
        assert work.wait()
        assert work.result()[0] is mine
        np.testing.assert_array_equal(mine, 3 * whole[2:4])  # rank 1's chunk, from 3 ranks

        # a call on the group itself runs the same override
        direct = np.zeros(2, dtype=np.float32)
        pg.reduce_scatter_single(direct, whole).wait()
        np.testing.assert_array_equal(direct, mine)
        assert pg.called == ["all_gather_single", "reduce_scatter_single", "reduce_scatter_single"]

        # sizes that do not fit the group's 3 ranks are refused before the group is called
        with pytest.raises(ValueError, match="world size \\(3\\) times"):
            dist.all_gather_into_tensor(np.zeros(4, dtype=np.float32), piece, group=pg)
        with pytest.raises(ValueError, match="world size \\(3\\) times"):
            dist.reduce_scatter_tensor(mine, np.zeros(5, dtype=np.float32), group=pg)
        assert len(pg.called) == 3
    finally:
        c10d._unregister_process_group("test-python-pg-surface-chunks")


# ---------------------------------------------------------------- abort / shutdown


class AddOneGroup(ProcessGroup):
    """One rank; all_reduce adds one. Leaves abort and shutdown to the base class."""

    def getBackendName(self) -> str:  # noqa: N802 (torch's name)
        return "add-one"

    def allreduce(self, tensors: list[Any], opts: AllreduceOptions | None = None) -> Work:
        for t in tensors:
            t += 1
        return finished(list(tensors))


def test_abort_and_shutdown_default_to_no_ops() -> None:
    pg = AddOneGroup(0, 1)
    assert pg.abort() is None
    assert pg.shutdown() is None
    a = np.zeros(3)
    dist.all_reduce(a, group=pg)  # still serves collectives
    np.testing.assert_array_equal(a, np.ones(3))


class ClosingGroup(AddOneGroup):
    """Counts the shutdown and abort calls it receives."""

    def __init__(self, rank: int, size: int) -> None:
        super().__init__(rank, size)
        self.shutdowns = 0
        self.aborts = 0

    def shutdown(self) -> None:
        self.shutdowns += 1

    def abort(self) -> None:
        self.aborts += 1


def test_destroy_shuts_down_a_python_backend_group(forget_backends: None) -> None:
    made: list[ClosingGroup] = []

    def create(store: Any, rank: int, size: int, timeout: Any) -> ClosingGroup:
        made.append(ClosingGroup(rank, size))
        return made[-1]

    Backend.register_backend("closingpg", create)
    dist.init_process_group("closingpg", store=HashStore(), rank=0, world_size=1)
    try:
        a = np.zeros(2)
        dist.all_reduce(a)
        np.testing.assert_array_equal(a, [1.0, 1.0])
        assert made[0].shutdowns == 0
    finally:
        dist.destroy_process_group()
    assert (made[0].shutdowns, made[0].aborts) == (1, 0)
    assert not dist.is_initialized()


# ---------------------------------------------------------------- batch_isend_irecv


class MailWork(Work):
    """A receive that completes on ``wait``: it waits for the sender's key in the store."""

    def __init__(self, store: Any, key: str, into: np.ndarray) -> None:
        super().__init__()
        self.store, self.key, self.into = store, key, into

    def wait(self, timeout: Any = None) -> bool:
        raw = self.store.get(self.key)
        np.copyto(self.into, np.frombuffer(raw, dtype=self.into.dtype).reshape(self.into.shape))
        return True


class MailboxGroup(ProcessGroup):
    """Point-to-point through the rendezvous store: a send posts the array's bytes under a
    key naming sender, receiver, tag and sequence number; a receive reads that key when
    waited on. Its barrier meets through the default store."""

    def __init__(self, store: Any, rank: int, size: int) -> None:
        super().__init__(store, rank, size)
        self.posted: Counter[tuple[int, int]] = Counter()
        self.expected: Counter[tuple[int, int]] = Counter()
        self.barriers = 0
        self.calls: list[tuple[str, int, int]] = []

    @classmethod
    def create(cls, store: Any, rank: int, size: int, timeout: Any) -> MailboxGroup:
        return cls(store, rank, size)

    def getBackendName(self) -> str:  # noqa: N802 (torch's name)
        return "mailbox"

    @staticmethod
    def _key(src: int, dst: int, tag: int, seq: int) -> str:
        return f"mail/{src}->{dst}/tag{tag}/{seq}"

    def send(self, tensors: list[Any], dstRank: int, tag: int = 0) -> Work:  # noqa: N803
        (a,) = tensors
        self.calls.append(("send", dstRank, tag))
        seq = self.posted[(dstRank, tag)]
        self.posted[(dstRank, tag)] += 1
        key = self._key(self.rank(), dstRank, tag, seq)
        self.get_group_store().set(key, np.ascontiguousarray(a).tobytes())
        return finished([a])

    def recv(self, tensors: list[Any], srcRank: int, tag: int = 0) -> Work:  # noqa: N803
        (a,) = tensors
        self.calls.append(("recv", srcRank, tag))
        seq = self.expected[(srcRank, tag)]
        self.expected[(srcRank, tag)] += 1
        return MailWork(self.get_group_store(), self._key(srcRank, self.rank(), tag, seq), a)

    def barrier(self, opts: BarrierOptions | None = None) -> Work:
        store = c10d._get_default_store()
        key = f"mailbox-barrier/{self.barriers}"
        self.barriers += 1
        if store.add(key, 1) == self.size():
            store.set(key + "/open", "1")
        store.wait([key + "/open"])
        return finished([])


def letter(sender: int, tag: int) -> np.ndarray:
    """What ``sender`` sends under ``tag``: a different array for each pair."""
    return np.arange(6, dtype=np.float64).reshape(2, 3) * tag + 100.0 * sender


class TestPythonBackendPointToPoint(MultiProcessTestCase):
    @property
    def world_size(self) -> int:
        return 2

    def setUp(self) -> None:
        super().setUp()
        self._spawn_processes()

    def test_batch_isend_irecv_goes_through_the_python_backend(self) -> None:
        Backend.register_backend("mailbox", MailboxGroup.create)
        dist.init_process_group(
            "mailbox",
            init_method=f"file://{self.file_name}",
            rank=self.rank,
            world_size=self.world_size,
        )
        try:
            pg = dist.group.WORLD
            assert isinstance(pg, MailboxGroup) and dist.get_backend() == "mailbox"
            peer = 1 - self.rank
            inbox = {tag: np.zeros((2, 3)) for tag in (1, 2)}
            # the receives are posted in the other order than the sends: tags must match them
            works = dist.batch_isend_irecv(
                [
                    dist.P2POp(dist.isend, letter(self.rank, 1), peer, tag=1),
                    dist.P2POp(dist.isend, letter(self.rank, 2), peer, tag=2),
                    dist.P2POp(dist.irecv, inbox[2], peer, tag=2),
                    dist.P2POp(dist.irecv, inbox[1], peer, tag=1),
                ]
            )
            assert len(works) == 4 and all(isinstance(w, MailWork) for w in works[2:])
            for w in works:
                assert w.wait()
            for tag, got in inbox.items():
                np.testing.assert_array_equal(got, letter(peer, tag))
            assert pg.calls == [
                ("send", peer, 1),
                ("send", peer, 2),
                ("recv", peer, 2),
                ("recv", peer, 1),
            ]
            dist.barrier()
            assert pg.barriers == 1
        finally:
            dist.destroy_process_group()
            del Backend._plugins["mailbox"]
            delattr(Backend, "MAILBOX")
