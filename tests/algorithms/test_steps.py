"""Allreduce as a generator of steps: ``Stepped`` advances it without blocking, to the same
bits as the blocking collective, and keeps a failure to raise it again."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from mesh_helpers import run_ranks
from reduce_reference import reference
from test_algorithms import data

import mpdist.algorithms as A
from mpdist.algorithms import (
    ReduceOp,
    Stepped,
    halving_doubling,
    recursive_doubling,
    ring_allreduce,
)
from mpdist.errors import DistBackendError

STEPS = {
    "rd": recursive_doubling.allreduce_steps,
    "hd": halving_doubling.allreduce_steps,
    "ring": ring_allreduce.allreduce_steps,
}


def algo_steps(comm: A.Communicator, algo: str, x: np.ndarray, op: ReduceOp) -> A.Steps:
    comm.start("all_reduce", x.dtype, x.nbytes, x.shape, -1, op.value)
    if comm.size > 1:
        yield from STEPS[algo](comm, x.reshape(-1), op, "all_reduce")
    comm.finish()


def spin(stepped: Stepped) -> int:
    """Advance without blocking until done; how many advances found no data yet."""
    idle = 0
    while not stepped.advance(block=False):
        idle += 1
    return idle


@pytest.mark.parametrize("kind", ["local", "tcp"])
@pytest.mark.parametrize("algo", sorted(STEPS))
@pytest.mark.parametrize("size", [2, 3, 4, 5])
def test_stepped_equals_blocking_bitwise(algo: str, size: int, kind: str) -> None:
    """Each rank advances every algorithm without ever blocking; the result is the same
    bits as the blocking run of the same algorithm, on every rank."""

    def fn(comm: A.Communicator):
        out = []
        for i, n in enumerate((1, size + 1, 30011, 300_007)):
            x = data(comm.rank, "float32", n, i)
            spin(Stepped(comm, algo_steps(comm, algo, x, ReduceOp.SUM), "all_reduce"))
            y = data(comm.rank, "float32", n, i)
            A.run(comm, algo_steps(comm, algo, y, ReduceOp.SUM), "all_reduce")
            out.append((x, y))
        return out

    res = run_ranks(size, fn, kind)
    for i, n in enumerate((1, size + 1, 30011, 300_007)):
        ref = reference([data(r, "float32", n, i) for r in range(size)], ReduceOp.SUM)
        for r in range(size):
            x, y = res[r][i]
            assert np.array_equal(x, ref), (algo, n, r)
            assert x.tobytes() == y.tobytes() == res[0][i][0].tobytes()


@pytest.mark.parametrize("kind", ["local", "tcp"])
def test_advance_returns_while_the_peer_has_not_sent(kind: str) -> None:
    """Rank 0 starts a stepped allreduce (AVG, so the division step runs too) while rank 1
    has not entered it: advancing returns False without waiting; once rank 1 runs the
    blocking allreduce, rank 0's advances finish it."""
    go = threading.Event()

    def fn(comm: A.Communicator):
        x = np.full(50_000, comm.rank + 1.0)
        if comm.rank == 0:
            s = Stepped(comm, A.allreduce_steps(comm, x, ReduceOp.AVG), "all_reduce")
            before = [s.advance(block=False) for _ in range(20)]
            go.set()
            spin(s)
            return before, x
        assert go.wait(20)
        A.allreduce(comm, x, ReduceOp.AVG)
        return None, x

    res = run_ranks(2, fn, kind)
    before, x0 = res[0]
    assert before == [False] * 20
    np.testing.assert_array_equal(x0, np.full(50_000, 1.5))
    np.testing.assert_array_equal(res[1][1], x0)


def test_argument_errors_raise_before_anything_is_sent() -> None:
    def fn(comm: A.Communicator):
        seq = comm.seq
        with pytest.raises(ValueError, match="C-contiguous"):
            A.allreduce_steps(comm, np.zeros((4, 4))[:, ::2], ReduceOp.SUM)
        with pytest.raises((TypeError, ValueError)):
            A.allreduce_steps(comm, np.zeros(3), ReduceOp.BAND)
        return comm.seq == seq

    assert run_ranks(2, fn, "local") == [True, True]


def test_a_failure_is_kept_and_raised_again() -> None:
    """A mismatch found while stepping raises, marks the collective done, and every later
    advance raises the same error (the generator is gone, it must not look finished)."""

    def fn(comm: A.Communicator):
        x = np.zeros(8, np.float32 if comm.rank == 0 else np.float64)
        s = Stepped(comm, A.allreduce_steps(comm, x, ReduceOp.SUM), "all_reduce")
        errors = []
        for block in (True, False):
            try:
                s.advance(block=block)
            except DistBackendError as e:
                errors.append(e)
        return s.done, errors

    for done, errors in run_ranks(2, fn, "local", raise_first=False):
        assert done
        assert len(errors) == 2 and errors[0] is errors[1]
        assert "dtype" in str(errors[0])


def test_an_interrupt_is_raised_once_then_reported_as_an_error() -> None:
    """Ctrl-C in the middle of a step propagates as itself; the collective is half done, so
    later advances raise a DistBackendError saying it was interrupted (not the interrupt)."""

    def fn(comm: A.Communicator):
        x = np.ones(4)

        def interrupted() -> A.Steps:
            yield from A.allreduce_steps(comm, x, ReduceOp.SUM)
            raise KeyboardInterrupt

        s = Stepped(comm, interrupted(), "all_reduce")
        try:
            s.advance(block=True)
        except KeyboardInterrupt:
            first = "KeyboardInterrupt"
        with pytest.raises(DistBackendError, match="all_reduce was interrupted"):
            s.advance(block=False)
        return first, s.done

    assert run_ranks(2, fn, "local") == [("KeyboardInterrupt", True)] * 2
