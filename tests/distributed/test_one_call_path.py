"""The module API reaches every group through its public methods, telling it whether the caller waits.

A Python group sees exactly what mpdist's own groups see: the torch-style method
with an options object whose ``asyncOp`` says whether the call blocks, and, for
point-to-point, ``caller_blocks()``; the extension interface has defaults a Python
group need not override.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import mpdist as dist
from mpdist.process_group import (
    AllreduceOptions,
    Backend,
    ProcessGroup,
    Work,
    caller_blocks,
    completed_work,
)
from mpdist.store import HashStore


class RecordingGroup(ProcessGroup):
    """A one-rank Python group that notes how each call reached it."""

    def __init__(self, rank: int, size: int) -> None:
        super().__init__(rank, size)
        self.calls: list[tuple[str, Any]] = []

    def allreduce(self, tensors: list[Any], opts: AllreduceOptions | None = None) -> Work:
        self.calls.append(("allreduce", opts.asyncOp if opts is not None else None))
        return completed_work(list(tensors))

    def broadcast(self, tensors: list[Any], opts: Any = None) -> Work:
        self.calls.append(("broadcast", opts.asyncOp))
        return completed_work(list(tensors))

    def barrier(self, opts: Any = None) -> Work:
        self.calls.append(("barrier", opts.asyncOp))
        return completed_work([])

    def send(self, tensors: list[Any], dstRank: int, tag: int = 0) -> Work:
        self.calls.append(("send", caller_blocks()))
        return completed_work(list(tensors))

    def recv(self, tensors: list[Any], srcRank: int, tag: int = 0) -> Work:
        self.calls.append(("recv", caller_blocks()))
        return completed_work(list(tensors), srcRank)


@pytest.fixture
def recording() -> Any:
    made: list[RecordingGroup] = []

    def create(store: Any, rank: int, size: int, timeout: Any) -> RecordingGroup:
        made.append(RecordingGroup(rank, size))
        return made[-1]

    Backend.register_backend("recording", create)
    # A second rank is never started: the group answers by itself.
    dist.init_process_group("recording", store=HashStore(), rank=0, world_size=2)
    try:
        yield made[0]
    finally:
        dist.destroy_process_group()
        del Backend._plugins["recording"]
        delattr(Backend, "RECORDING")


def test_blocking_and_async_calls_say_so_to_a_python_group(recording: RecordingGroup) -> None:
    a = np.ones(2)
    dist.all_reduce(a)
    dist.all_reduce(a, async_op=True).wait()
    dist.broadcast(a, src=0)
    dist.barrier(async_op=True).wait()
    dist.send(a, 1)
    dist.isend(a, 1).wait()
    assert dist.recv(a, 1) == 1
    dist.irecv(a, 1).wait()
    assert recording.calls == [
        ("allreduce", False),
        ("allreduce", True),
        ("broadcast", False),
        ("barrier", True),
        ("send", True),
        ("send", False),
        ("recv", True),
        ("recv", False),
    ]
    assert not caller_blocks()  # the hint is put back after each call


def test_the_extension_interface_has_defaults_for_python_groups(
    recording: RecordingGroup,
) -> None:
    assert not recording.runs_in_caller
    a = np.ones(2)
    work = recording.allreduce_stepped([a], AllreduceOptions())  # an ordinary allreduce
    assert work.wait() and recording.calls == [("allreduce", True)]
    dist.monitored_barrier()  # a plain barrier, waited for
    assert recording.calls[-1] == ("barrier", False)


def test_mpdist_groups_run_blocking_calls_in_the_caller() -> None:
    dist.init_process_group("threaded", store=HashStore(), rank=0, world_size=1)
    try:
        pg = dist.group.WORLD
        assert pg.runs_in_caller
        a = np.ones(3)
        # Blocking: done on return, nothing to wait for; asynchronous: a Work.
        assert pg.allreduce([a], AllreduceOptions(asyncOp=False)) is None
        work = pg.allreduce([a], AllreduceOptions())
        assert isinstance(work, Work) and work.wait()
    finally:
        dist.destroy_process_group()
