"""The latency path of small collectives: ``Transport.sendrecv`` through the mailboxes.

Small blocking collectives exchange their messages one ``sendrecv`` at a time; between
ranks of a host a message goes straight into the peer's mailbox and the answer is taken
straight from ours (``Mailbox.put`` / ``Mailbox.take``). These tests check that the path
gives bitwise what the general path gives, hands every unexpected record to the general
path (which names what is wrong), and behaves at a full or empty mailbox.
"""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mesh_helpers import run_ranks

import mpdist.algorithms as A
from mpdist.errors import DistBackendError
from mpdist.transport.header import HEADER
from mpdist.transport.mailbox import BYTES, INLINE_MAX, RECORD_HEAD, SLOTS, SUPPORTED, Mailbox

needs_mailbox = pytest.mark.skipif(not SUPPORTED, reason="mailboxes are used on x86-64 only")


def _fields(seq: int, step: int, nbytes: int) -> tuple[int, ...]:
    return (0x4D50, 0, 0, 7, 3, 0, -1, 0, step, seq, nbytes, 11, nbytes, 0)


def test_take_copies_the_expected_record_and_leaves_any_other_for_the_general_reader() -> None:
    region = memoryview(bytearray(BYTES))
    tx, rx = Mailbox(region), Mailbox(region)
    into = memoryview(bytearray(4))
    assert rx.take(_fields(1, 0, 4), into, spin_s=1e-4) is False  # nothing came
    assert tx.put(_fields(1, 0, 4), memoryview(b"abcd")) is False  # nobody asleep
    assert rx.take(_fields(1, 0, 4), into, spin_s=1e-4) is True
    assert bytes(into) == b"abcd" and not rx.pending()

    # a record of another collective (or step, or length) is not taken: it stays first
    tx.put(_fields(2, 0, 4), memoryview(b"wxyz"))
    assert rx.take(_fields(3, 0, 4), into, spin_s=1e-4) is False
    assert rx.take(_fields(2, 1, 4), into, spin_s=1e-4) is False
    assert rx.pending()
    assert HEADER.unpack_from(rx.slots, rx.next_offset())[9] == 2
    start = rx.next_offset() + RECORD_HEAD
    assert bytes(rx.slots[start : start + 4]) == b"wxyz"
    assert bytes(into) == b"abcd"  # untouched by the refusals


def test_put_says_when_the_queue_is_full_and_when_the_receiver_sleeps() -> None:
    region = memoryview(bytearray(BYTES))
    tx, rx = Mailbox(region), Mailbox(region)
    payload = memoryview(bytes(range(256)) * (INLINE_MAX // 256))
    for seq in range(SLOTS):
        assert tx.put(_fields(seq, 0, payload.nbytes), payload) is False
    assert tx.put(_fields(SLOTS, 0, 1), memoryview(b"x")) is None  # full: go elsewhere
    into = memoryview(bytearray(payload.nbytes))
    assert rx.take(_fields(0, 0, payload.nbytes), into, spin_s=1e-4)
    assert bytes(into) == bytes(payload)
    rx.sleep(True)
    assert tx.put(_fields(SLOTS, 0, 0), memoryview(b"")) is True  # wake it
    rx.sleep(False)
    for seq in range(1, SLOTS):
        assert rx.take(_fields(seq, 0, payload.nbytes), into, spin_s=1e-4)
    assert rx.take(_fields(SLOTS, 0, 0), memoryview(bytearray()), spin_s=1e-4)
    assert not rx.pending()


def _small_collectives(comm: A.Communicator, dtype: str, count: int, rounds: int) -> list[bytes]:
    """Every small collective the latency path serves, with rank-dependent data."""
    out: list[bytes] = []
    p, r = comm.size, comm.rank
    rng = np.random.default_rng(r)
    for i in range(rounds):
        x = (rng.standard_normal(count) * 100).astype(dtype)
        A.allreduce(comm, x)
        out.append(x.tobytes())
        b = np.full(count, r + i, dtype)
        A.broadcast(comm, b, i % p)
        out.append(b.tobytes())
        gathered = [np.empty(count, dtype) for _ in range(p)]
        A.allgather(comm, gathered, np.full(count, r * 10 + i, dtype))
        out.extend(g.tobytes() for g in gathered)
        mine = np.empty(count, dtype)
        blocks = [(rng.standard_normal(count) * 100).astype(dtype) for _ in range(p)]
        A.reduce_scatter(comm, mine, blocks, A.ReduceOp.SUM)
        out.append(mine.tobytes())
        A.barrier(comm)
    return out


@needs_mailbox
@settings(max_examples=8, deadline=None)
@given(
    world=st.sampled_from([2, 3, 4]),
    dtype=st.sampled_from(["float32", "float64", "int64", "uint8"]),
    count=st.sampled_from([1, 3, 255, INLINE_MAX // 8, 3000, 8192, 8193]),
)
def test_small_collectives_on_the_latency_path_give_bitwise_what_tcp_gives(
    world: int, dtype: str, count: int
) -> None:
    def fn(comm: A.Communicator) -> list[bytes]:
        return _small_collectives(comm, dtype, count, rounds=3)

    assert run_ranks(world, fn, "tcp") == run_ranks(world, fn, "tcp-nobox")


@needs_mailbox
@pytest.mark.parametrize(
    ("other", "expected"),
    [
        ("dtype", r"dtype (float32|int32) on rank \d vs (int32|float32) on rank \d"),
        ("count", r"(4|8) bytes on rank \d vs (8|4) bytes on rank \d"),
        ("collective", r"rank \d called (all_reduce|broadcast) but rank \d called"),
    ],
)
def test_a_mismatch_on_the_latency_path_is_named_on_both_ranks(other: str, expected: str) -> None:
    def fn(comm: A.Communicator) -> str:
        A.barrier(comm)
        x = np.zeros(1, np.float32)
        if comm.rank == 1 and other == "dtype":
            x = np.zeros(1, np.int32)
        elif comm.rank == 1 and other == "count":
            x = np.zeros(2, np.float32)
        try:
            if comm.rank == 1 and other == "collective":
                A.broadcast(comm, x, 0)
            else:
                A.allreduce(comm, x)
        except DistBackendError as e:
            return str(e)
        return "no error"

    messages = run_ranks(2, fn, "tcp", raise_first=False)
    for text in messages:  # the detecting rank's error, or the same one relayed to its peer
        assert isinstance(text, str)
        assert re.search(r"mismatch between rank (0 and rank 1|1 and rank 0)", text), text
        assert re.search(expected, text), text


def test_room_waits_for_the_receiver_to_free_a_slot_of_a_full_queue() -> None:
    region = memoryview(bytearray(BYTES))
    tx, rx = Mailbox(region), Mailbox(region)
    assert tx.room(spin_s=1e-4)  # empty: room at once
    for seq in range(SLOTS):
        tx.put(_fields(seq, 0, 0), memoryview(b""))
    assert tx.room(spin_s=1e-3) is False  # nobody reads: still full when the spin ends

    def consume_one() -> None:
        time.sleep(0.01)
        assert rx.take(_fields(0, 0, 0), memoryview(bytearray()), spin_s=1e-4)

    reader = threading.Thread(target=consume_one)
    reader.start()
    try:
        assert tx.room(spin_s=5.0)  # the reader frees the oldest slot
    finally:
        reader.join()
    assert tx.put(_fields(SLOTS, 0, 0), memoryview(b"")) is False
