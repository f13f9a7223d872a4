"""The ``fake`` backend: a process group that never communicates, for tracing and unit tests.

Every Work is complete at once and shapes never change. all_reduce, broadcast, reduce,
barrier, send and recv leave the data alone; the gathering collectives copy the local
input where the output would have come from another rank.
With ``FakeProcessGroup.Options(error_on_collective=True)`` every collective raises.
As in torch, the class has no public constructor: ``init_process_group("fake", ...)`` or
``FakeProcessGroup._create_internal(rank, world_size, options)`` builds one, and the store
it is given is never touched (an empty ``Store`` subclass, torch's ``FakeStore``, will do).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mpdist.process_group import ReduceOp, completed_work
from mpdist.store import HashStore

from .builtin import BuiltinProcessGroup

__all__ = ["FakeProcessGroup", "FakeStore"]

_ERROR = "FakeProcessGroup collective operation error (error_on_collective=true)"


class FakeStore(HashStore):
    """A store for ``init_process_group("fake", ...)``: an in-memory store nobody else reads."""


def _copy(dst: np.ndarray, src: np.ndarray) -> None:
    if dst.shape == src.shape:
        np.copyto(dst, src)
    else:  # uneven all_to_all splits: shapes never change, copy what fits
        n = min(dst.size, src.size)
        dst.reshape(-1)[:n] = src.reshape(-1)[:n]


class FakeProcessGroup(BuiltinProcessGroup):
    """A group of ``world_size`` ranks where this process plays ``rank`` and nothing is sent.

    Built by ``_create_internal`` (torch's spelling); calling the class is a ``TypeError``.
    """

    backend_name = "fake"
    options: FakeProcessGroup.Options

    class Options:
        """Options of the fake backend: ``error_on_collective`` makes every collective raise."""

        def __init__(self, error_on_collective: bool = False) -> None:
            self.error_on_collective = bool(error_on_collective)

        def __repr__(self) -> str:
            return f"FakeProcessGroup.Options(error_on_collective={self.error_on_collective})"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "mpdist.backends.fake.FakeProcessGroup: No constructor defined! Build one with "
            "FakeProcessGroup._create_internal(rank, world_size, options), or through "
            "init_process_group('fake', ...)"
        )

    @classmethod
    def _create_internal(
        cls, rank: int, world_size: int, options: FakeProcessGroup.Options | None = None
    ) -> FakeProcessGroup:
        """A fake group in which this process plays ``rank`` of ``world_size`` ranks."""
        pg = cls.__new__(cls)
        BuiltinProcessGroup.__init__(pg, rank, world_size)
        pg.options = options if options is not None else FakeProcessGroup.Options()
        return pg

    def _done(self, outputs: list[Any], async_op: bool, value: Any = None) -> Any:
        if async_op:
            return completed_work(outputs, value if isinstance(value, int) else -1)
        return value

    def _collective(self) -> None:
        if self.options.error_on_collective:
            raise RuntimeError(_ERROR)

    def _c_allreduce(
        self, arr: np.ndarray, op: ReduceOp, name: str, outputs: list[Any], async_op: bool
    ) -> Any:
        self._collective()
        return self._done(outputs, async_op)

    def _c_broadcast(
        self, arr: np.ndarray, root: int, name: str, outputs: list[Any], async_op: bool
    ) -> Any:
        self._collective()
        return self._done(outputs, async_op)

    def _c_reduce(
        self,
        arr: np.ndarray,
        root: int,
        op: ReduceOp,
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        self._collective()
        return self._done(outputs, async_op)

    def _c_allgather(
        self,
        out_list: list[np.ndarray],
        inp: np.ndarray,
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        self._collective()
        for out in out_list:
            _copy(out, inp)
        return self._done(outputs, async_op)

    def _c_gather(
        self,
        inp: np.ndarray,
        out_list: list[np.ndarray] | None,
        root: int,
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        self._collective()
        if self.rank() == root and out_list:
            for out in out_list:
                _copy(out, inp)
        return self._done(outputs, async_op)

    def _c_scatter(
        self,
        out: np.ndarray,
        in_list: list[np.ndarray] | None,
        root: int,
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        self._collective()
        if self.rank() == root and in_list:
            _copy(out, in_list[self.rank()])
        return self._done(outputs, async_op)

    def _c_reduce_scatter(
        self,
        out: np.ndarray,
        in_list: list[np.ndarray],
        op: ReduceOp,
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        self._collective()
        _copy(out, in_list[self.rank()])
        return self._done(outputs, async_op)

    def _c_alltoall(
        self,
        out_list: list[np.ndarray],
        in_list: list[np.ndarray],
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        self._collective()
        for out, inp in zip(out_list, in_list, strict=True):
            _copy(out, inp)
        return self._done(outputs, async_op)

    def _c_barrier(self, name: str, async_op: bool) -> Any:
        self._collective()
        return self._done([], async_op)

    def _c_send(
        self, arr: np.ndarray, dst: int, tag: int, outputs: list[Any], async_op: bool
    ) -> Any:
        return self._done(outputs, async_op)

    def _c_recv(
        self, arr: np.ndarray, src: int | None, tag: int, outputs: list[Any], async_op: bool
    ) -> Any:
        return self._done(outputs, async_op, src if src is not None else 0)

    def _c_monitored_barrier(self, timeout_s: float, wait_all_ranks: bool) -> None:
        self._collective()
