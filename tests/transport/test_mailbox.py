"""Mailboxes: the shared-memory queue of collective messages between two ranks of one host."""

from __future__ import annotations

import os
import time

import numpy as np
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mesh_helpers import DirStore, run_ranks

import mpdist.algorithms as A
from mpdist.errors import DistNetworkError
from mpdist.transport import TcpTransport
from mpdist.transport.mailbox import BYTES, INLINE_MAX, SLOTS, SUPPORTED, Mailbox

needs_mailbox = pytest.mark.skipif(not SUPPORTED, reason="mailboxes are used on x86-64 only")


def test_the_queue_holds_slots_records_in_order_and_says_when_the_receiver_sleeps() -> None:
    region = memoryview(bytearray(BYTES))
    tx, rx = Mailbox(region), Mailbox(region)
    assert not rx.pending()
    for i in range(SLOTS):
        off = tx.slot()
        assert off is not None
        tx.slots[off] = i
        assert tx.publish() is False  # nobody asleep
    assert tx.slot() is None  # full: the sender must go elsewhere
    for i in range(3):
        assert rx.pending()
        assert rx.slots[rx.next_offset()] == i
        rx.consumed()
    off = tx.slot()  # three slots free again, the oldest first
    assert off == 0
    tx.slots[off] = 99
    rx.sleep(True)
    assert tx.publish() is True  # the receiver said it blocks: wake it
    rx.sleep(False)
    seen = []
    while rx.pending():
        seen.append(rx.slots[rx.next_offset()])
        rx.consumed()
    assert seen == [*range(3, SLOTS), 99]
    with pytest.raises(ValueError, match="needs"):
        Mailbox(memoryview(bytearray(100)))


def _tx_counts(comm: A.Communicator) -> int:
    """Records this rank wrote into its peers' mailboxes."""
    t = comm.transport
    return sum(p.tx_box._count for p in t._peers if p is not None and p.tx_box is not None)


@needs_mailbox
def test_collectives_between_local_ranks_go_through_the_mailbox() -> None:
    def fn(comm: A.Communicator):
        before = _tx_counts(comm)
        x = np.array([comm.rank + 1.0])
        for _ in range(20):
            A.allreduce(comm, x)
        return float(x[0]), _tx_counts(comm) - before

    results = run_ranks(2, fn, "tcp")
    assert [r[0] for r in results] == [3.0 * 2**19] * 2
    assert all(r[1] >= 20 for r in results)  # every one went through the mailbox
    results = run_ranks(2, fn, "tcp-nobox")  # the switch keeps them on TCP
    assert [r[1] for r in results] == [0, 0]


@needs_mailbox
@settings(max_examples=12, deadline=None)
@given(
    sizes=st.lists(
        st.sampled_from([0, 1, 7, INLINE_MAX // 8, INLINE_MAX // 8 + 1, 5000, 70000]),
        min_size=1,
        max_size=12,
    ),
    world=st.sampled_from([2, 3]),
)
def test_inline_ring_and_tcp_messages_mix_in_any_order_and_give_what_tcp_gives(
    sizes: list[int], world: int
) -> None:
    # A root that runs ahead fills the mailbox, and later messages take TCP: records, ring
    # payloads and TCP messages arrive out of order and must be matched by collective.
    def fn(comm: A.Communicator):
        out = []
        for i, n in enumerate(sizes * 3):
            x = np.arange(n, dtype=np.float64) + i if comm.rank == 0 else np.zeros(n)
            A.broadcast(comm, x, 0)
            y = np.full(n, comm.rank + i, np.float64)
            A.allreduce(comm, y)
            out.append((x.tobytes(), y.tobytes()))
        return out

    assert run_ranks(world, fn, "tcp") == run_ranks(world, fn, "tcp-nobox")


@needs_mailbox
def test_a_root_far_ahead_fills_the_mailbox_and_spills_to_tcp() -> None:
    count = SLOTS * 4

    def fn(comm: A.Communicator):
        got = []
        if comm.rank == 1:
            time.sleep(0.2)  # the root runs through all its sends first
        for i in range(count):
            x = np.array([float(i)]) if comm.rank == 0 else np.zeros(1)
            A.broadcast(comm, x, 0)
            got.append(float(x[0]))
        return got, _tx_counts(comm)

    (_, sent_by_mail), (got, _) = run_ranks(2, fn, "tcp")
    assert got == [float(i) for i in range(count)]
    assert SLOTS <= sent_by_mail < count  # the mailbox took what it held, TCP the rest


def _waits_for_a_sleeping_peer(rank: int, path: str, conn) -> None:
    store = DirStore(path)
    t = TcpTransport(store, rank, 2, 30.0).connect()
    comm = A.Communicator(t, 30.0)
    try:
        A.barrier(comm)
        x = np.array([1.0])
        if rank == 1:
            time.sleep(1.0)
            A.allreduce(comm, x)
            conn.send(None)
        else:
            me = psutil.Process()
            cpu = sum(me.cpu_times()[:2])
            A.allreduce(comm, x)  # blocked for about a second
            conn.send((float(x[0]), sum(me.cpu_times()[:2]) - cpu))
    finally:
        t.close()


def test_a_rank_blocked_on_a_sleeping_peer_does_not_burn_a_core(tmp_path) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    pipes = [ctx.Pipe(duplex=False) for _ in range(2)]
    procs = [
        ctx.Process(target=_waits_for_a_sleeping_peer, args=(r, str(tmp_path), pipes[r][1]))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    try:
        value, cpu_s = pipes[0][0].recv()
        pipes[1][0].recv()
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
    assert value == 2.0
    # the bar: under 5% of a core over the second it waited (spin, then sleep)
    assert cpu_s < 0.05, f"the waiting rank used {cpu_s:.3f} s of CPU"
    assert all(p.exitcode == 0 for p in procs)


def _sends_then_exits(rank: int, path: str, conn) -> None:
    store = DirStore(path)
    t = TcpTransport(store, rank, 2, 30.0).connect()
    comm = A.Communicator(t, 30.0)
    A.barrier(comm)
    x = np.array([7.0]) if rank == 1 else np.zeros(1)
    if rank == 1:
        A.broadcast(comm, x, 1)
        os._exit(0)  # gone at once: the message is in the mailbox, the socket closed
    time.sleep(0.3)  # the peer is gone by now
    A.broadcast(comm, x, 1)
    try:
        A.allreduce(comm, x)
        conn.send((float(x[0]), None))
    except DistNetworkError as e:
        conn.send((float(x[0]), str(e)))
    finally:
        t.close()


@needs_mailbox
def test_what_a_peer_put_in_the_mailbox_before_it_died_is_still_delivered(tmp_path) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    r, w = ctx.Pipe(duplex=False)
    procs = [ctx.Process(target=_sends_then_exits, args=(k, str(tmp_path), w)) for k in range(2)]
    for p in procs:
        p.start()
    try:
        value, error = r.recv()
    finally:
        for p in procs:
            p.join(30)
    assert value == 7.0  # the broadcast completed from the mailbox
    assert error is not None and "lost its connection to rank 1" in error


@needs_mailbox
def test_a_corrupt_mailbox_record_is_an_error_naming_the_sender() -> None:
    def fn(comm: A.Communicator):
        t = comm.transport
        x = np.array([1.0])
        A.allreduce(comm, x)
        if comm.rank == 1:
            box = t._peers[0].tx_box
            off = box.slot()
            box.slots[off : off + 64] = b"\xff" * 64  # not a header
            box.publish()
            return None
        with pytest.raises(DistNetworkError, match="corrupt mailbox record from rank 1"):
            A.allreduce(comm, x)
        return "raised"

    results = run_ranks(2, fn, "tcp", raise_first=False, timeout=10)
    assert results[0] == "raised"


def test_a_child_forked_while_the_fence_is_held_can_fence() -> None:
    from mpdist.transport import mailbox

    mailbox._fence_lock.acquire()  # as if another thread were inside fence() at the fork
    try:
        pid = os.fork()
        if pid == 0:  # the child: fence() must not wait for a lock nobody will release
            try:
                mailbox.fence()
            finally:
                os._exit(0)
    finally:
        mailbox._fence_lock.release()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung in fence()")
