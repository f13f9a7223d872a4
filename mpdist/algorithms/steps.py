"""Collectives written as generators, so that one code path runs them blocking or in steps.

An algorithm that would block on transport requests instead ``yield``s the list of
requests it needs finished before it can go on. :func:`run` drives such a generator to the
end, waiting on each list (the blocking collective every caller knows). :class:`Stepped`
drives it without blocking: each :meth:`Stepped.advance` moves it as far as the data that
has already arrived allows and returns, so a thread that has other work (DDP's backward
pass producing gradients) can progress its own collective between pieces of that work
instead of handing it to a communication thread. On a machine with no core to spare for
such a thread, that thread only takes CPU time and the GIL from the computation.

    steps = allreduce_steps(comm, flat, op, "all_reduce")
    run(comm, steps, "all_reduce")            # blocking
    s = Stepped(comm, steps, "all_reduce")    # or: in steps
    while not s.advance(block=False):
        do_some_other_work()
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from mpdist.algorithms.communicator import Communicator
from mpdist.errors import DistBackendError

__all__ = ["Steps", "run", "Stepped"]

# what an algorithm generator yields: the requests it waits for before its next step
Steps = Generator[list[Any], None, None]


def run(comm: Communicator, steps: Steps, op_name: str) -> None:
    """Drive ``steps`` to the end, blocking on each list of requests it yields."""
    wait = comm.transport.wait
    timeout = comm.timeout_s
    for reqs in steps:
        wait(reqs, op_name, timeout)


class Stepped:
    """A collective advanced by whoever calls :meth:`advance` (one thread at a time)."""

    __slots__ = ("comm", "op_name", "done", "error", "_steps", "_waiting")

    def __init__(self, comm: Communicator, steps: Steps, op_name: str) -> None:
        self.comm = comm
        self.op_name = op_name
        self.done = False
        self.error: BaseException | None = None  # how it failed; raised again by advance
        self._steps = steps
        self._waiting: list[Any] = []

    def advance(self, block: bool) -> bool:
        """Run as many steps as possible; with ``block`` wait for data, up to the end.

        Returns True once the collective has finished. Errors (a dead peer, a mismatch,
        an abort; with ``block`` a timeout) raise, as the blocking collective would, and
        raise again from every later call.
        """
        if self.error is not None:
            raise self.error
        t = self.comm.transport
        try:
            while not self.done:
                if self._waiting:
                    if block:
                        t.wait(self._waiting, self.op_name, self.comm.timeout_s)
                    elif not t.test(self._waiting, self.op_name):
                        return False
                try:
                    self._waiting = next(self._steps)
                except StopIteration:
                    self.done = True
                    self._waiting = []
        except BaseException as e:
            # an interrupt (Ctrl-C) left the collective half done: later calls say so
            self.error = (
                e
                if isinstance(e, Exception)
                else DistBackendError(f"{self.op_name} was interrupted ({type(e).__name__})")
            )
            self.done = True
            self._waiting = []
            raise
        return True
