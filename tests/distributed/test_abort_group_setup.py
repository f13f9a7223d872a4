"""``abort_all_groups`` reaches a group that is still being built: a rank waiting in
``new_group`` for a peer that never comes raises ``DistBackendError(reason)`` at once instead
of waiting out its timeout, both while it waits in the store and while the tcp transport
waits for the peer's connection."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import pytest

import mpdist as dist
from mpdist import DistBackendError, DistStoreError
from mpdist.backends.group_store import GroupStore
from mpdist.distributed.debug import abort_all_groups
from mpdist.store import FileStore, HashStore
from mpdist.testing import spawn_ranks, spawn_threads


class _Signalling:
    """Mixin: once ``armed``, ``touched`` is set when a key containing ``needle`` is set or
    waited on; that is how a test knows a rank is inside the step it wants to abort."""

    needle = ""
    armed = False

    def _signal(self, keys: list[str]) -> None:
        if self.armed and any(self.needle in k for k in keys):
            self.touched.set()

    def _set(self, key, value):
        super()._set(key, value)
        self._signal([key])

    def _wait(self, keys, timeout):
        self._signal(keys)
        super()._wait(keys, timeout)


class SignallingHashStore(_Signalling, HashStore):
    def __init__(self, needle: str) -> None:
        super().__init__()
        self.needle, self.touched = needle, threading.Event()


class SignallingFileStore(_Signalling, FileStore):
    def __init__(self, path: str, world_size: int, needle: str) -> None:
        super().__init__(path, world_size)
        self.needle, self.touched = needle, threading.Event()


REASON = "harness: rank 3 failed, stop"


def stuck_in_new_group(rank: int, n: int, path: str, stuck: int, needle: str) -> str | None:
    store = SignallingFileStore(path, n, needle)
    dist.init_process_group(
        "tcp", rank=rank, world_size=n, store=store, timeout=timedelta(seconds=120)
    )
    try:
        if rank != stuck:
            return None  # never calls new_group
        store.armed = True

        def abort() -> None:
            store.touched.wait()
            abort_all_groups(REASON)

        aborter = threading.Thread(target=abort)
        aborter.start()
        try:
            with pytest.raises(DistBackendError) as info:
                dist.new_group([0, 1])
        finally:
            store.touched.set()
            aborter.join()
        assert str(info.value) == REASON
        return "aborted"
    finally:
        dist.destroy_process_group()
        store.close()


@pytest.mark.parametrize(
    ("stuck", "needle"),
    [
        # rank 1 waits in the store for the group's token, which rank 0 never publishes
        (1, "mpdist_tcp/token"),
        # rank 0 published its address and waits for rank 1 to connect
        (0, "mpdist_tcp/addr/0"),
    ],
    ids=["waiting-in-store", "waiting-for-connection"],
)
def test_abort_reaches_a_tcp_group_being_built(tmp_path, stuck, needle):
    res = spawn_ranks(
        stuck_in_new_group, 2, str(tmp_path / "store"), stuck, needle, backend=None, timeout=60
    )
    assert res[stuck] == "aborted"


def rank_0_aborts_rank_1(rank: int, store: SignallingHashStore, stuck: Callable[[], object]) -> str:
    """Rank 1 calls ``stuck()``, which waits in the store for rank 0, which never comes:
    rank 0 aborts every group once rank 1 is waiting, and ``stuck()`` must raise the reason."""
    if rank == 0:
        store.touched.wait()
        abort_all_groups(REASON)
        return "aborter"
    store.armed = True
    try:
        with pytest.raises(DistBackendError) as info:
            stuck()
    finally:
        store.touched.set()
    assert str(info.value) == REASON
    return "aborted"


def stuck_in_a_threaded_world(
    rank: int, n: int, store: SignallingHashStore, stuck: Callable[[], object]
) -> str:
    dist.init_process_group("threaded", rank=rank, world_size=n, store=store)
    try:
        return rank_0_aborts_rank_1(rank, store, stuck)
    finally:
        dist.destroy_process_group()


def test_abort_reaches_a_threaded_group_being_built():
    # rank 0 never calls new_group: rank 1 waits for the group's hub id
    store = SignallingHashStore("mpdist_local/hub")

    def stuck() -> object:
        return dist.new_group([0, 1])

    res = spawn_threads(stuck_in_a_threaded_world, 2, store, stuck, init=False, timeout=60)
    assert res == ["aborter", "aborted"]


# ------------------------------------------------------------------ GroupStore


def test_group_store_wait_is_interrupted_by_abort_from_another_thread():
    inner = SignallingHashStore("never")
    inner.armed = True
    inner.needle = "g/missing"
    store = GroupStore("g", inner)
    seen: list[str] = []
    store.add_abort_callback(seen.append)
    store.add_abort_callback(seen.append)  # the same callback again: still run once
    aborter = threading.Thread(target=lambda: (inner.touched.wait(), store.abort("go away")))
    aborter.start()
    try:
        with pytest.raises(DistBackendError, match="^go away$"):
            store.get("missing")
    finally:
        inner.touched.set()
        aborter.join()
    assert seen == ["go away"]
    with pytest.raises(DistBackendError, match="^go away$"):
        store.wait(["other"])
    late: list[str] = []
    store.add_abort_callback(late.append)  # registered after the abort: runs at once
    store.add_abort_callback(late.append)  # ... once
    assert late == ["go away"] and store.aborted
    store.abort("second reason")  # the first reason stays
    with pytest.raises(DistBackendError, match="^go away$"):
        store.multi_get(["x"])


def test_group_store_without_abort_behaves_like_a_prefix_store():
    inner = HashStore()
    store = GroupStore("g", inner)
    store.set("k", b"v")
    assert inner.get("g/k") == b"v"
    assert store.get("k") == b"v"
    assert store.multi_get(["k", "k"]) == [b"v", b"v"]
    store.wait(["k"], timedelta(seconds=1))
    with pytest.raises(DistStoreError, match="'g/nope'"):
        store.wait(["nope"], timedelta(milliseconds=120))


def test_abort_reaches_a_rank_waiting_in_monitored_barrier():
    # rank 0 never enters the barrier: rank 1 waits in the store for its verdict
    store = SignallingHashStore("monitored_barrier/1/result")

    def stuck() -> object:
        return dist.monitored_barrier(timeout=timedelta(seconds=60))

    res = spawn_threads(stuck_in_a_threaded_world, 2, store, stuck, init=False, timeout=60)
    assert res == ["aborter", "aborted"]


def init_stuck(rank: int, n: int, store: SignallingHashStore) -> str:
    # rank 0 never initialises: rank 1 waits in init_process_group for the group's hub
    res = rank_0_aborts_rank_1(
        rank,
        store,
        lambda: dist.init_process_group("threaded", rank=rank, world_size=n, store=store),
    )
    assert not dist.is_initialized()
    return res


def test_abort_reaches_a_rank_waiting_in_init_process_group():
    store = SignallingHashStore("mpdist_local/hub")
    store.armed = True
    assert spawn_threads(init_stuck, 2, store, init=False, timeout=60) == ["aborter", "aborted"]


# ------------------------------------------------------------------ rendezvous


def rank_0_fails_before_its_master(rank: int, n: int, port: int) -> None:
    if rank == 0:
        raise RuntimeError("rank 0 broke before starting the TCPStore master")
    dist.init_process_group(
        "tcp",
        init_method=f"tcp://127.0.0.1:{port}?rank={rank}&world_size={n}",
        timeout=timedelta(seconds=120),
    )


def test_harness_abort_reaches_a_rank_still_waiting_for_its_tcpstore_master():
    """Rank 1 waits in init_process_group for a master that rank 0 never starts. The
    harness's abort (``abort_all_groups``) ends that wait with an error naming the master,
    instead of rank 1 being killed when the abort grace period runs out."""
    import socket

    from mpdist.testing._report import MultiProcessFailure

    with socket.socket() as holder:  # the port: bound, never listening (connects refused)
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        with pytest.raises(MultiProcessFailure) as info:
            spawn_ranks(rank_0_fails_before_its_master, 2, port, backend=None)
    report = str(info.value)
    assert "rank 0 broke before starting the TCPStore master" in report
    assert f"connecting to the master at 127.0.0.1:{port} was aborted" in report
    assert "grace period" not in report
