"""The module API around the collectives: setup errors, groups, Work/Future, the Backend
registry with Python ProcessGroup subclasses, the fake backend, argument checks, object
collectives, point to point, monitored_barrier and the harness hooks.

Multi-rank behaviour runs on the threaded backend (``spawn_threads``: ranks are threads; same
algorithms).
"""

from __future__ import annotations

import threading
import warnings
from datetime import timedelta

import numpy as np
import pytest

import mpdist
import mpdist as dist
from mpdist import (
    AllgatherOptions,
    AllreduceOptions,
    Backend,
    BroadcastOptions,
    DistBackendError,
    DistError,
    Future,
    ProcessGroup,
    ReduceOp,
    Work,
    create_work_from_future,
)
from mpdist.distributed.debug import abort_all_groups, collective_trace
from mpdist.store import HashStore
from mpdist.testing import FakeProcessGroup, FakeStore, spawn_threads

UNINIT = (
    "Default process group has not been initialized, please make sure to call init_process_group."
)


@pytest.fixture
def fake4():
    """Rank 1 of a fake world of 4."""
    dist.init_process_group("fake", rank=1, world_size=4, store=FakeStore())
    yield
    dist.destroy_process_group()


# ------------------------------------------------------------------ setup


def test_use_before_init_raises_the_spec_text():
    assert not dist.is_initialized()
    for call in (
        lambda: dist.all_reduce(np.zeros(1)),
        lambda: dist.get_rank(),
        lambda: dist.get_world_size(),
        lambda: dist.barrier(),
        lambda: dist.new_group([0]),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value) == UNINIT
    # torch's text and type for this one: its tests' tearDown catches AssertionError
    with pytest.raises(AssertionError, match="Process group cannot be None"):
        dist.destroy_process_group()


def test_init_argument_errors():
    s = HashStore()
    with pytest.raises(TypeError, match="timedelta"):
        dist.init_process_group("fake", store=s, rank=0, world_size=1, timeout=30)
    with pytest.raises(ValueError, match="Cannot specify both"):
        dist.init_process_group("fake", init_method="env://", store=s, rank=0, world_size=1)
    with pytest.raises(ValueError, match="world_size"):
        dist.init_process_group("tcp", store=s, rank=0, world_size=0)
    with pytest.raises(ValueError, match="rank"):
        dist.init_process_group("tcp", store=s, rank=-1, world_size=2)
    with pytest.raises(ValueError, match="out of range"):
        dist.init_process_group("tcp", store=s, rank=2, world_size=2)
    with pytest.raises(ValueError, match="Invalid backend"):
        dist.init_process_group("nope", store=s, rank=0, world_size=1)
    assert not dist.is_initialized()
    dist.init_process_group("fake", rank=0, world_size=1)  # store is optional for fake
    try:
        with pytest.raises(ValueError) as info:
            dist.init_process_group("fake", rank=0, world_size=1)
        assert str(info.value) == "trying to initialize the default process group twice!"
    finally:
        dist.destroy_process_group()


def test_default_group_queries(fake4):
    assert dist.is_initialized()
    assert dist.get_rank() == 1 and dist.get_world_size() == 4
    assert dist.get_backend() == "fake"
    world = dist.group.WORLD
    assert isinstance(world, FakeProcessGroup) and world is dist.GroupMember.WORLD
    assert world is mpdist.distributed._get_default_group()
    assert world.rank() == 1 and world.size() == 4 and world.name() == "fake"
    assert dist.get_group_rank(world, 3) == 3 and dist.get_global_rank(world, 2) == 2
    assert dist.get_process_group_ranks(world) == [0, 1, 2, 3]


def test_new_group_members_and_non_members(fake4):
    g = dist.new_group([3, 1])  # any order; sorted
    assert dist.get_rank(g) == 0 and dist.get_world_size(g) == 2
    assert dist.get_group_rank(g, 3) == 1 and dist.get_global_rank(g, 1) == 3
    assert dist.get_process_group_ranks(g) == [1, 3]
    with pytest.raises(ValueError, match="not part of group"):
        dist.get_group_rank(g, 2)
    with pytest.raises(ValueError, match="not part of group"):
        dist.get_global_rank(g, 2)
    other = dist.new_group([0, 2])
    assert other == dist.GroupMember.NON_GROUP_MEMBER
    assert dist.get_rank(other) == -1 and dist.get_world_size(other) == -1
    a = np.ones(3)
    with pytest.warns(UserWarning, match="does not belong to the given group"):
        assert dist.all_reduce(a, group=other) is None
    with pytest.warns(UserWarning):
        dist.barrier(group=other)
    assert np.array_equal(a, np.ones(3))
    with pytest.raises(ValueError, match="out of range"):
        dist.new_group([0, 4])
    with pytest.raises(ValueError, match="duplicates"):
        dist.new_group([1, 1])
    # src/dst are global ranks: rank 0 is not in g
    with pytest.raises(ValueError, match="not part of group"):
        dist.broadcast(a, src=0, group=g)
    dist.broadcast(a, src=3, group=g)


# ------------------------------------------------------------------ Future and Work


def test_future_semantics():
    f = Future()
    assert not f.done()
    with pytest.raises(DistError, match="Operation timed out!"):
        f.wait(timeout=0.01)
    chained = f.then(lambda fut: fut.value() * 2)
    seen = []
    f.add_done_callback(lambda fut: seen.append(fut.value()))
    f.set_result(21)
    assert f.done() and f.wait() == 21 and f.value() == 21 and seen == [21]
    assert chained.wait() == 42
    with pytest.raises(RuntimeError):
        f.set_result(1)
    bad = Future()
    failing = bad.then(lambda fut: fut.value())
    bad.set_exception(KeyError("boom"))
    with pytest.raises(KeyError):
        bad.wait()
    with pytest.raises(KeyError):
        failing.value()
    assert isinstance(bad.exception(), KeyError)


def test_a_failing_done_callback_is_logged_and_the_others_still_run(caplog):
    f = Future()
    seen = []
    f.add_done_callback(lambda fut: 1 / 0)
    f.add_done_callback(lambda fut: seen.append(fut.value()))
    f.set_result(7)
    assert seen == [7] and f.value() == 7
    f.add_done_callback(lambda fut: 1 / 0)  # already complete: runs at once, same rule
    errors = [r for r in caplog.records if "error when running the callback" in r.message]
    assert len(errors) == 2 and all(r.exc_info[0] is ZeroDivisionError for r in errors)


def failing_callback_job(rank: int, n: int) -> None:
    # the callback runs on the group's worker thread: the worker must survive it
    a = np.ones(2)
    w = dist.all_reduce(a, async_op=True)
    w.get_future().add_done_callback(lambda fut: 1 / 0)
    w.wait()
    b = np.ones(3)
    w2 = dist.all_reduce(b, async_op=True)
    w2.wait(timedelta(seconds=30))
    assert np.array_equal(b, [2.0] * 3)


def test_a_failing_done_callback_does_not_stop_the_groups_worker():
    spawn_threads(failing_callback_job, 2)


def test_create_work_from_future():
    f = Future()
    w = create_work_from_future(f)
    assert isinstance(w, Work) and not w.is_completed()
    with pytest.raises(DistError, match="Operation timed out!"):
        w.wait(timedelta(milliseconds=10))
    threading.Thread(target=f.set_result, args=([1, 2],)).start()
    assert w.wait() is True
    assert w.is_completed() and w.is_success() and w.exception() is None
    assert w.get_future() is f and w.result() == [1, 2]
    with pytest.raises(TypeError):
        create_work_from_future(object())
    g = Future()
    g.set_exception(DistBackendError("lost"))
    w2 = create_work_from_future(g)
    with pytest.raises(DistBackendError, match="lost"):
        w2.wait()
    assert not w2.is_success()


def async_job(rank: int, n: int, go: threading.Event) -> None:
    if rank == 0:
        a = np.ones(2)
        w = dist.all_reduce(a, async_op=True)
        # rank 1 has not joined yet: the wait times out, the op stays pending
        with pytest.raises(DistError, match="^Operation timed out!$"):
            w.wait(timeout=0.05)
        assert not w.is_completed()
        go.set()
        assert w.wait(timeout=timedelta(seconds=10))
        assert w.get_future().value()[0] is a and np.array_equal(a, [2, 2])
        doubled = w.get_future().then(lambda f: f.value()[0] * 2)
        assert np.array_equal(doubled.wait(), [4, 4])
    else:
        go.wait()
        a = np.ones(2)
        dist.all_reduce(a)
    # async ops run in issue order; a synchronous op queues behind pending ones
    works = []
    outs = []
    for i in range(5):
        x = np.full(3, float(rank + i))
        outs.append(x)
        works.append(dist.all_reduce(x, async_op=True))
    y = np.full(1, float(rank))
    dist.all_reduce(y, op=ReduceOp.MAX)
    assert y[0] == n - 1
    for i, w in enumerate(works):
        w.wait()
        assert np.array_equal(outs[i], np.full(3, float(sum(range(n)) + n * i)))
    # a failure is stored and re-raised by wait()
    bad = dist.all_reduce(np.zeros(2 + rank), async_op=True)
    with pytest.raises(DistBackendError, match="all_reduce"):
        bad.wait()
    assert bad.is_completed() and not bad.is_success()
    assert isinstance(bad.exception(), DistBackendError)


def callback_job(rank: int, n: int) -> None:
    # a future callback (run on the group's worker) issues a synchronous collective while
    # another async op is still queued: it must neither deadlock nor reorder across ranks
    a, b = np.ones(2), np.ones(3)
    seen = []

    def then(fut):
        c = np.array([rank * 1.0])
        dist.all_reduce(c)
        seen.append(c[0])
        return fut.value()[0] * 10

    w1 = dist.all_reduce(a, async_op=True)
    chained = w1.get_future().then(then)
    w2 = dist.all_reduce(b, async_op=True)
    assert np.array_equal(chained.wait(), [20.0, 20.0])
    w2.wait()
    assert seen == [sum(range(n))] and np.array_equal(b, [2.0] * 3)


def test_future_callback_may_issue_a_synchronous_collective():
    spawn_threads(callback_job, 2)


def test_async_work_timeout_order_and_stored_failure():
    spawn_threads(async_job, 2, threading.Event())


def abort_job(rank: int, n: int, entered: threading.Event) -> str:
    dist.barrier()
    if rank == 0:
        w = dist.all_reduce(np.ones(4), async_op=True)
        dist.barrier(async_op=True)
        entered.set()
        with pytest.raises(DistBackendError, match="harness says stop"):
            w.wait()
        return ""
    entered.wait()
    trace = collective_trace()
    abort_all_groups("harness says stop")
    return trace


def test_abort_all_groups_and_collective_trace():
    assert collective_trace() == "no collective entered"
    traces = spawn_threads(abort_job, 2, threading.Event())
    assert "barrier seq=1 on group 'default'" in traces[1], traces[1]


# ------------------------------------------------------------------ argument checks


def bad_args_job(rank: int, n: int) -> int:
    f32 = np.zeros(4, np.float32)
    ro = np.zeros(4)
    ro.setflags(write=False)
    ro32 = np.zeros(4, np.float32)
    ro32.setflags(write=False)
    bad = [
        (ValueError, lambda: dist.all_reduce(np.zeros((4, 4))[:, 0])),  # non-contiguous
        (TypeError, lambda: dist.all_reduce([1.0, 2.0])),
        (TypeError, lambda: dist.all_reduce(np.array(["a"], dtype=object))),
        (ValueError, lambda: dist.all_reduce(f32, op=ReduceOp.BAND)),
        (ValueError, lambda: dist.all_reduce(np.zeros(2, bool), op=ReduceOp.AVG)),
        (TypeError, lambda: dist.all_reduce(f32, op="sum")),
        (ValueError, lambda: dist.all_reduce(ro)),
        (ValueError, lambda: dist.broadcast(f32, src=n)),
        (TypeError, lambda: dist.broadcast(f32, src="0")),
        (ValueError, lambda: dist.reduce(f32, dst=-1)),
        (ValueError, lambda: dist.all_gather([f32], f32)),  # wrong length
        (TypeError, lambda: dist.all_gather([f32, np.zeros(4)], f32)),  # mixed dtypes
        (ValueError, lambda: dist.all_gather([f32, np.zeros(5, np.float32)], f32)),
        (ValueError, lambda: dist.all_gather([f32, np.zeros((2, 2), np.float32)], f32)),
        (ValueError, lambda: dist.all_gather([f32, np.zeros((4, 2), np.float32)[:, 0]], f32)),
        (ValueError, lambda: dist.all_gather([f32, ro.astype(np.float32)[::-1]], f32)),
        (ValueError, lambda: dist.all_gather([ro32, f32], f32)),  # an output read-only
        (TypeError, lambda: dist.all_gather(f32, f32)),
        (ValueError, lambda: dist.all_gather_into_tensor(np.zeros(5, np.float32), f32)),
        (TypeError, lambda: dist.all_gather_into_tensor(np.zeros(8), f32)),
        (ValueError, lambda: dist.reduce_scatter_tensor(f32, np.zeros(4, np.float32))),
        (ValueError, lambda: dist.reduce_scatter(f32, [f32])),
        (ValueError, lambda: dist.all_to_all([f32], [f32, f32])),
        (TypeError, lambda: dist.all_to_all([f32, f32], [f32, np.zeros(4)])),
        (ValueError, lambda: dist.all_to_all_single(np.zeros(3), np.zeros(3))),  # uneven
        (ValueError, lambda: dist.all_to_all_single(np.zeros(4), np.zeros(4), [1, 1], [2, 1])),
        (ValueError, lambda: dist.all_to_all_single(np.zeros(4), np.zeros(4), [4], [4])),
        (ValueError, lambda: dist.all_to_all_single(np.zeros(4), np.zeros(4), [5, -1], None)),
        (ValueError, lambda: dist.all_to_all_single(np.zeros((4, 2)), np.zeros((4, 3)))),
        (TypeError, lambda: dist.all_to_all_single(np.zeros(4), f32)),
        (TypeError, lambda: dist.send(f32, dst=1 - rank, tag="x")),
        (ValueError, lambda: dist.send(f32, dst=rank)),
        (ValueError, lambda: dist.recv(f32, src=rank)),
        (ValueError, lambda: dist.isend(f32, dst=n)),
        (TypeError, lambda: dist.all_gather_object((None, None), 1)),
        (ValueError, lambda: dist.all_gather_object([None], 1)),
        (ValueError, lambda: dist.scatter_object_list([], None, src=0)),
    ]
    if rank == 0:
        bad += [
            (ValueError, lambda: dist.gather(f32, None, dst=0)),
            (ValueError, lambda: dist.scatter(f32, None, src=0)),
            (ValueError, lambda: dist.gather(f32, [f32], dst=0)),
            (ValueError, lambda: dist.gather_object(1, None, dst=0)),
        ]
    else:
        bad += [
            (ValueError, lambda: dist.gather(f32, [f32, f32], dst=0)),
            (ValueError, lambda: dist.scatter(f32, [f32, f32], src=0)),
            (ValueError, lambda: dist.gather_object(1, [None, None], dst=0)),
            (ValueError, lambda: dist.scatter_object_list([None], ["a", "b"], src=0)),
        ]
    for i, (exc, call) in enumerate(bad):
        with pytest.raises(exc):
            call()
        # nothing was sent: the group is still in step and usable
        a = np.full(2, float(i))
        dist.all_reduce(a)
        assert np.array_equal(a, np.full(2, float(n * i))), i
    with pytest.raises(ValueError, match="must be specified on destination rank"):
        dist.gather(f32, None, dst=rank)
    with pytest.raises(ValueError, match="must NOT be specified on non-destination ranks"):
        dist.gather(f32, [f32, f32], dst=1 - rank)
    with pytest.raises(ValueError, match="must be specified on source rank"):
        dist.scatter(f32, None, src=rank)
    with pytest.raises(ValueError, match="must NOT be specified on non-source ranks"):
        dist.scatter(f32, [f32, f32], src=1 - rank)
    with pytest.raises(
        ValueError,
        match="Invalid destination rank: should not be the same as rank of the current process.",
    ):
        dist.send(f32, dst=rank)
    return len(bad)


def test_each_bad_argument_raises_locally_and_group_stays_usable():
    counts = spawn_threads(bad_args_job, 2)
    assert min(counts) > 30


# ------------------------------------------------------------------ groups


def groups_job(rank: int, n: int) -> None:
    evens = dist.new_group([0, 2])
    odds = dist.new_group([1, 3])
    mine = evens if rank % 2 == 0 else odds
    other = odds if rank % 2 == 0 else evens
    assert other == dist.GroupMember.NON_GROUP_MEMBER
    for i in range(3):  # interleave subgroup and WORLD collectives
        a = np.array([rank + i])
        dist.all_reduce(a, group=mine)
        assert a[0] == (2 if rank % 2 == 0 else 4) + 2 * i
        b = np.array([1])
        dist.all_reduce(b, group=dist.group.WORLD)
        assert b[0] == n
        c = np.array([rank])
        dist.broadcast(c, src=3 if rank % 2 else 2, group=mine)
        assert c[0] == (3 if rank % 2 else 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d = np.array([rank])
            dist.all_reduce(d, group=other)
            assert d[0] == rank
    # p2p in a subgroup takes global ranks
    if rank in (0, 2):
        peer = 2 - rank
        if rank == 0:
            dist.send(np.array([7.0]), dst=peer, group=mine, tag=3)
        else:
            buf = np.zeros(1)
            assert dist.recv(buf, src=None, group=mine, tag=3) == 0
            assert buf[0] == 7.0
    # gather into global dst within a subgroup
    gl = [np.zeros(1, np.int64) for _ in range(2)] if rank in (2, 3) else None
    dist.gather(np.array([rank]), gl, dst=2 if rank % 2 == 0 else 3, group=mine)
    if gl is not None:
        assert [int(x[0]) for x in gl] == ([0, 2] if rank == 2 else [1, 3])
    # destroying one subgroup leaves the rest working
    dist.destroy_process_group(mine)
    e = np.ones(1)
    dist.all_reduce(e)
    assert e[0] == n
    assert dist.get_world_size() == n and dist.is_initialized() is not False


def test_subgroups_nested_with_world():
    spawn_threads(groups_job, 4)


def test_default_group_is_thread_local():
    seen = []

    def job(rank: int, n: int) -> int:
        seen.append(dist.is_initialized())
        return dist.get_rank()

    assert spawn_threads(job, 3) == [0, 1, 2]
    assert seen == [True] * 3 and not dist.is_initialized()


# ------------------------------------------------------------------ p2p and objects


def p2p_job(rank: int, n: int) -> None:
    if rank == 0:
        dist.send(np.array([1.0]), dst=1, tag=1)
        dist.send(np.array([2.0]), dst=1, tag=2)
        w = dist.isend(np.array([3.0, 3.0]), dst=2, tag=0)
        w.wait()
    elif rank == 1:
        b2, b1 = np.zeros(1), np.zeros(1)
        # receive the later tag first: messages are matched by (source, tag)
        assert dist.recv(b2, src=0, tag=2) == 0
        assert dist.recv(b1, src=0, tag=1) == 0
        assert (b1[0], b2[0]) == (1.0, 2.0)
        dist.send(np.array([rank * 1.0]), dst=3, tag=5)
    elif rank == 2:
        buf = np.zeros(2)
        w = dist.irecv(buf, src=0)
        w.wait()
        assert np.array_equal(buf, [3.0, 3.0]) and w.get_future().value()[0] is buf
        dist.send(np.array([rank * 1.0]), dst=3, tag=5)
    else:
        got = set()
        for _ in range(2):
            buf = np.zeros(1)
            src = dist.recv(buf, tag=5)  # any source
            assert buf[0] == src
            got.add(src)
        assert got == {1, 2}
    objs = [None]
    if rank == 0:
        dist.send_object_list([{"k": [1, 2]}, "two"], dst=3)
    if rank == 3:
        objs = [None, None]
        assert dist.recv_object_list(objs) == 0
        assert objs == [{"k": [1, 2]}, "two"]


def test_send_recv_tags_any_source_and_objects():
    spawn_threads(p2p_job, 4)


def objects_job(rank: int, n: int) -> None:
    everyone = [None] * n
    dist.all_gather_object(everyone, ("r", rank, "x" * (10 * rank)))
    assert everyone == [("r", r, "x" * (10 * r)) for r in range(n)]
    lst = [1, {"a": rank}, None] if rank == 2 else [None, None, None]
    dist.broadcast_object_list(lst, src=2)
    assert lst == [1, {"a": 2}, None]
    gathered = [None] * n if rank == 1 else None
    dist.gather_object({"from": rank}, gathered, dst=1)
    if rank == 1:
        assert gathered == [{"from": r} for r in range(n)]
    out = [None]
    dist.scatter_object_list(out, [f"to {r}" * (r + 1) for r in range(n)] if rank == 0 else None)
    assert out == [f"to {rank}" * (rank + 1)]


def test_object_collectives():
    spawn_threads(objects_job, 3)


# ------------------------------------------------------------------ monitored_barrier


def monitored_job(rank: int, n: int, absent: tuple[int, ...], wait_all: bool) -> str:
    if rank in absent:
        return "absent"
    try:
        dist.monitored_barrier(timeout=timedelta(seconds=0.3), wait_all_ranks=wait_all)
    except DistBackendError as e:
        return str(e)
    return "passed"


def test_monitored_barrier_passes_and_names_missing_ranks():
    assert spawn_threads(monitored_job, 3, (), False) == ["passed"] * 3
    res = spawn_threads(monitored_job, 3, (2,), False)
    assert "Rank 2 failed to pass monitoredBarrier" in res[0]
    assert res[1] == res[0] and res[2] == "absent"
    res = spawn_threads(monitored_job, 4, (1, 3), True)
    assert "Ranks 1, 3 failed to pass monitoredBarrier" in res[0], res[0]
    res = spawn_threads(monitored_job, 2, (0,), False)
    assert "waiting for rank 0" in res[1], res[1]


# ------------------------------------------------------------------ fake backend


def test_fake_backend_semantics(fake4):
    a = np.arange(3.0)
    for call in (
        lambda: dist.all_reduce(a),
        lambda: dist.broadcast(a, src=0),
        lambda: dist.reduce(a, dst=1),
        lambda: dist.barrier(),
        lambda: dist.send(a, dst=0),
        lambda: dist.recv(a, src=0),
    ):
        call()
        assert np.array_equal(a, np.arange(3.0))
    outs = [np.zeros(3) for _ in range(4)]
    dist.all_gather(outs, a)
    assert all(np.array_equal(o, a) for o in outs)
    gl = [np.zeros(3) for _ in range(4)]
    dist.gather(a, gl, dst=1)
    assert all(np.array_equal(o, a) for o in gl)
    out = np.zeros(3)
    dist.scatter(out, [np.full(3, i * 1.0) for i in range(4)], src=1)
    assert np.array_equal(out, np.full(3, 1.0))
    out = np.zeros(3)
    dist.reduce_scatter(out, [np.full(3, i * 1.0) for i in range(4)])
    assert np.array_equal(out, np.full(3, 1.0))
    outs = [np.zeros(1) for _ in range(4)]
    dist.all_to_all(outs, [np.array([i * 1.0]) for i in range(4)])
    assert [o[0] for o in outs] == [0.0, 1.0, 2.0, 3.0]
    w = dist.all_reduce(a, async_op=True)
    assert w.is_completed() and w.wait() and w.get_future().value()[0] is a
    # argument checks as the real backend
    with pytest.raises(ValueError):
        dist.all_gather([a], a)
    with pytest.raises(ValueError):
        dist.gather(a, [a] * 4, dst=0)
    objs = [None] * 4
    dist.all_gather_object(objs, "me")
    assert objs == ["me"] * 4


def test_fake_error_on_collective():
    opts = FakeProcessGroup.Options(error_on_collective=True)
    dist.init_process_group("fake", rank=0, world_size=2, pg_options=opts)
    text = "FakeProcessGroup collective operation error (error_on_collective=true)"
    a = np.zeros(2)
    try:
        for call in (
            lambda: dist.all_reduce(a),
            lambda: dist.broadcast(a, src=0),
            lambda: dist.reduce(a, dst=0),
            lambda: dist.all_gather([a, a], a),
            lambda: dist.gather(a, [a, a], dst=0),
            lambda: dist.scatter(a, [a, a], src=0),
            lambda: dist.reduce_scatter(a, [a, a]),
            lambda: dist.all_to_all([a, a], [a, a]),
            lambda: dist.all_to_all_single(a, a),
            lambda: dist.barrier(),
            lambda: dist.all_reduce(a, async_op=True),
        ):
            with pytest.raises(RuntimeError) as info:
                call()
            assert str(info.value) == text
    finally:
        dist.destroy_process_group()
    pg = FakeProcessGroup._create_internal(0, 2)
    assert not pg.options.error_on_collective and pg.rank() == 0 and pg.size() == 2


# ------------------------------------------------------------------ Python ProcessGroup subclasses


class RelabelledGroup(ProcessGroup):
    """A Python group that answers every accessor itself, with values of its own."""

    def getRank(self):
        return 7

    def getSize(self):
        return 9

    def getBackendName(self):
        return "relabelled"

    def setGroupName(self, name):
        self._label = f"mine/{name}"

    def getGroupName(self):
        return self._label

    def setGroupDesc(self, group_desc):
        self._description = f"described: {group_desc}"

    def getGroupDesc(self):
        return self._description


def test_attribute_overrides_route_through_accessors():
    pg = RelabelledGroup(0, 1)
    assert (pg.name(), pg.rank(), pg.size()) == ("relabelled", 7, 9)
    pg._set_group_name("trainers")
    assert pg.group_name == "mine/trainers"
    pg._set_group_desc("the workers")
    assert pg.group_desc == "described: the workers"
    base = ProcessGroup(2, 4)
    assert base.rank() == 2 and base.size() == 4
    with pytest.raises(NotImplementedError):
        base.allreduce([np.zeros(1)], AllreduceOptions())


class CountingWork(Work):
    def __init__(self, result, pg):
        super().__init__()
        self.pg = pg
        self.fut = Future()
        self.fut.set_result(result)

    def wait(self, timeout):
        self.pg.waits.append(timeout)
        return True

    def get_future(self):
        return self.fut


class PlusTwoPG(ProcessGroup):
    """A one-rank Python backend: all_reduce adds 2; records what the module API passed."""

    def __init__(self, rank, size):
        super().__init__(rank, size)
        self.calls = []
        self.waits = []

    def getBackendName(self):
        return "plus-two"

    def allreduce(self, tensors, opts):
        self.calls.append(("allreduce", opts))
        for t in tensors:
            t += 2
        return CountingWork(tensors, self)

    def broadcast(self, tensors, opts):
        self.calls.append(("broadcast", opts))
        return CountingWork(tensors, self)

    def allgather(self, output_lists, inputs, opts):
        self.calls.append(("allgather", opts))
        for o, i in zip(output_lists[0], inputs * len(output_lists[0]), strict=True):
            o[...] = i
        return create_work_from_future(_done(output_lists))

    def barrier(self, opts):
        self.calls.append(("barrier", opts))
        return create_work_from_future(_done([]))


def _done(value):
    f = Future()
    f.set_result(value)
    return f


@pytest.fixture
def unregister():
    """Forget the backends a test registers (the registry is process-wide)."""
    before = set(Backend._plugins)
    yield
    for name in set(Backend._plugins) - before:
        del Backend._plugins[name]
        delattr(Backend, name.upper())


def test_registered_python_backend_serves_the_module_api(unregister):
    created = []

    def creator(store, rank, size, timeout):
        pg = PlusTwoPG(rank, size)
        created.append((store, rank, size, timeout))
        return pg

    Backend.register_backend("plustwo", creator)
    assert Backend("PLUSTWO") == "plustwo" and Backend.PLUSTWO == "plustwo"
    # registering a name again replaces its creator, as torch 2.13 does (the fake backend's
    # case is in test_torch_compat_items.py); "undefined" names no backend
    Backend.register_backend("plustwo", creator)
    with pytest.raises(ValueError, match="already exist"):
        Backend.register_backend("undefined", creator)
    dist.init_process_group("plustwo", store=HashStore(), rank=0, world_size=1)
    try:
        pg = dist.group.WORLD
        assert isinstance(pg, PlusTwoPG) and dist.get_backend() == "plustwo"
        assert created[0][1:3] == (0, 1) and isinstance(created[0][3], timedelta)
        a = np.zeros(3)
        assert dist.all_reduce(a, op=ReduceOp.MAX) is None
        assert np.array_equal(a, np.full(3, 2.0))
        kind, opts = pg.calls[-1]
        assert kind == "allreduce" and isinstance(opts, AllreduceOptions)
        assert opts.reduceOp is ReduceOp.MAX
        assert len(pg.waits) == 1  # synchronous: the module API waited, timeout positional
        w = dist.all_reduce(a, async_op=True)
        assert isinstance(w, CountingWork) and w.get_future().value()[0] is a
        dist.broadcast(a, src=0)
        assert isinstance(pg.calls[-1][1], BroadcastOptions) and pg.calls[-1][1].rootRank == 0
        outs = [np.zeros(3)]
        dist.all_gather(outs, np.ones(3))
        assert isinstance(pg.calls[-1][1], AllgatherOptions) and np.array_equal(outs[0], np.ones(3))
        dist.barrier()
        assert pg.calls[-1][0] == "barrier"
        with pytest.raises(NotImplementedError):
            dist.reduce_scatter(np.zeros(1), [np.zeros(1)])
    finally:
        dist.destroy_process_group()


def test_extended_api_backend_gets_options_and_pg_options(unregister):
    got = {}

    def creator(options, pg_options):
        got["options"], got["pg_options"] = options, pg_options
        return RelabelledGroup(options.group_rank, options.group_size)

    Backend.register_backend("relabelled", creator, extended_api=True)
    dist.init_process_group(
        "relabelled", store=HashStore(), rank=0, world_size=1, pg_options="opts", group_name="job"
    )
    try:
        pg = dist.group.WORLD
        assert got["pg_options"] == "opts" and got["options"].group_size == 1
        assert pg.rank() == 7 and pg.group_name == "mine/job"
        # the module API trusts its own bookkeeping, not the subclass's getRank
        assert dist.get_rank() == 0 and dist.get_rank(pg) == 0
    finally:
        dist.destroy_process_group()


def test_explicit_python_group_without_init():
    pg = PlusTwoPG(0, 1)
    a = np.zeros(2)
    dist.all_reduce(a, group=pg)
    assert np.array_equal(a, [2.0, 2.0]) and not dist.is_initialized()
    assert dist.get_rank(pg) == 0 and dist.get_world_size(pg) == 1


def batch_job(rank: int, n: int) -> None:
    right, left = (rank + 1) % n, (rank - 1) % n
    big = 300_000  # larger than socket buffers: both sends are posted before any receive
    send = np.full(big, float(rank))
    got = np.zeros(big)
    ops = [
        dist.P2POp(dist.isend, send, right, tag=1),
        dist.P2POp(dist.irecv, got, left, tag=1),
    ]
    for w in dist.batch_isend_irecv(ops):
        w.wait()
    assert np.array_equal(got, np.full(big, float(left)))
    with pytest.raises(ValueError):
        dist.P2POp(dist.all_reduce, send, right)


def test_batch_isend_irecv_ring_exchange():
    spawn_threads(batch_job, 3)
