"""ProcessGroup base class, Work and Future, collective option objects and the Backend registry.

A ``ProcessGroup`` is one communicator: the ranks that take part in a collective.
The built-in backends (``mpdist.backends``) subclass it, and so may users: a
Python subclass overrides ``allreduce(arrays, opts)``, ``allgather(...)``,
``broadcast(...)`` and friends, plus the attribute hooks ``getRank``,
``getSize``, ``getBackendName``, ``setGroupName``/``getGroupName``,
``setGroupDesc``/``getGroupDesc``. The torch-style accessors (``rank()``,
``size()``, ``name()``, ``group_name``, ...) route through those hooks, so an
override is honoured everywhere. Ranks given to a ``ProcessGroup`` method
(``opts.rootRank``, ``dstRank``, ...) are ranks *of the group*; the module API
in ``mpdist.distributed`` translates global ranks before calling.
"""

from __future__ import annotations

import logging
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from mpdist.algorithms.reduction import ReduceOp
from mpdist.errors import DistError
from mpdist.timeouts import FOREVER_S, GROUP_TIMEOUT, seconds

__all__ = [
    "AllToAllOptions",
    "AllgatherOptions",
    "AllreduceOptions",
    "Backend",
    "BarrierOptions",
    "BroadcastOptions",
    "Future",
    "GatherOptions",
    "ProcessGroup",
    "ReduceOp",
    "ReduceOptions",
    "ReduceScatterOptions",
    "ScatterOptions",
    "Work",
    "create_work_from_future",
]

# The default deadline of a group's operations (mpdist.timeouts: torch's for CPU groups).
DEFAULT_TIMEOUT = GROUP_TIMEOUT

_TIMED_OUT = "Operation timed out!"

_log = logging.getLogger(__name__)


def _seconds(timeout: float | timedelta | None) -> float | None:
    """A wait's timeout as seconds: ``None`` waits forever, else mpdist.timeouts' rule."""
    if timeout is None:
        return None
    if type(timeout) is timedelta:  # the common case (a group's timeout), answered quickly
        secs = timeout.total_seconds()
        if 0 < secs <= FOREVER_S:
            return secs
    return seconds(timeout)


# ---------------------------------------------------------------------- Future


class Future:
    """The eventual result of an asynchronous operation (like ``torch.futures.Future``).

    ``set_result`` / ``set_exception`` complete it once; ``wait`` blocks and returns the
    value or raises the stored exception; ``then`` chains a callback into a new Future.
    """

    def __class_getitem__(cls, item: Any) -> types.GenericAlias:
        """``Future[Tensor]`` in annotations works at run time, as with torch's generic Future."""
        return types.GenericAlias(cls, item)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Made by the first waiter that has to block: most futures are waited for only
        # once they are done, or never, and a Condition costs microseconds to build.
        self._cond: threading.Condition | None = None
        self._done = False
        self._value: Any = None
        self._exc: BaseException | None = None
        self._callbacks: list[Callable[[Future], Any]] = []

    def done(self) -> bool:
        """True once a result or an exception is set."""
        return self._done

    def _complete(self, value: Any, exc: BaseException | None) -> None:
        with self._lock:
            if self._done:
                raise RuntimeError("Future can only be marked completed once.")
            self._value, self._exc, self._done = value, exc, True
            callbacks, self._callbacks = self._callbacks, []
            if self._cond is not None:
                self._cond.notify_all()
        for cb in callbacks:
            self._run_callback(cb)

    def _run_callback(self, callback: Callable[[Future], Any]) -> None:
        # Like torch: a failing callback is logged and ignored. Raising here would skip the
        # remaining callbacks and, on a group's worker thread, kill the worker, so every
        # operation queued after it would never complete.
        try:
            callback(self)
        except Exception:
            _log.exception("Got the following error when running the callback")

    def set_result(self, result: Any) -> None:
        """Complete the future with ``result`` and run its callbacks."""
        self._complete(result, None)

    def set_exception(self, result: BaseException) -> None:
        """Complete the future with an exception that ``wait``/``value`` re-raise."""
        if not isinstance(result, BaseException):
            raise TypeError(f"set_exception needs an exception, got {type(result).__name__}")
        self._complete(None, result)

    def _wait_done(self, timeout: float | timedelta | None) -> bool:
        secs = _seconds(timeout)  # a bad timeout is an error even when already done
        if self._done:
            return True
        with self._lock:
            if self._cond is None:
                self._cond = threading.Condition(self._lock)
            return self._cond.wait_for(lambda: self._done, secs)

    def wait(self, timeout: float | timedelta | None = None) -> Any:
        """Block until complete; return the value or raise the stored exception.

        With a ``timeout`` that passes first: ``DistError("Operation timed out!")``.
        """
        if not self._wait_done(timeout):
            raise DistError(_TIMED_OUT)
        if self._exc is not None:
            raise self._exc
        return self._value

    def value(self) -> Any:
        """The result (waiting for it if needed); raises the stored exception."""
        return self.wait()

    def exception(self) -> BaseException | None:
        """The stored exception, or None (does not wait)."""
        return self._exc

    def then(self, callback: Callable[[Future], Any]) -> Future:
        """A new Future completed with ``callback(self)`` once this one completes."""
        nxt = Future()

        def run(fut: Future) -> None:
            try:
                nxt.set_result(callback(fut))
            except BaseException as exc:  # the callback's failure belongs to the new future
                nxt.set_exception(exc)

        self.add_done_callback(run)
        return nxt

    def add_done_callback(self, callback: Callable[[Future], Any]) -> None:
        """Run ``callback(self)`` when complete (at once if already complete); an exception
        it raises is logged and ignored (use ``then`` to keep it)."""
        with self._lock:
            if not self._done:
                self._callbacks.append(callback)
                return
        self._run_callback(callback)

    def __repr__(self) -> str:
        state = "done" if self._done else "pending"
        return f"<mpdist.Future {state}>"


# ---------------------------------------------------------------------- Work


class Work:
    """A handle on an operation issued with ``async_op=True`` (torch's ``Work``).

    ``wait(timeout)`` blocks until the operation finishes and re-raises its failure;
    past ``timeout`` it raises ``DistError("Operation timed out!")``. ``get_future()``
    gives a Future whose value is the list of output arrays. A Python subclass may
    override ``wait(self, timeout)`` and ``get_future(self)``.
    """

    def __init__(self, future: Future | None = None) -> None:
        self._fut = Future() if future is None else future
        self._source: int = -1

    def _future(self) -> Future:
        fut = self.__dict__.get("_fut")
        if fut is None:  # a subclass that skipped Work.__init__
            fut = self._fut = Future()
        return fut

    def wait(self, timeout: float | timedelta | None = None) -> bool:
        """Block until done (seconds or timedelta; None = forever); True on success."""
        self._future().wait(timeout)
        return True

    def is_completed(self) -> bool:
        """True once the operation finished, successfully or not."""
        return self._future().done()

    def _advance(self) -> bool:
        """Move the operation on without blocking, where the caller drives it (see
        ``ProcessGroup.allreduce_stepped``); True once it has completed."""
        return self.is_completed()

    def is_success(self) -> bool:
        """True if the operation finished without an error."""
        fut = self._future()
        return fut.done() and fut.exception() is None

    def exception(self) -> BaseException | None:
        """The failure of a finished operation, or None."""
        return self._future().exception()

    def get_future(self) -> Future:
        """A Future completed with the list of output arrays."""
        return self._future()

    def result(self) -> list[Any]:
        """The list of output arrays (waits for the operation)."""
        return self.get_future().wait()

    def source_rank(self) -> int:
        """For a receive: the sender's rank in the group (-1 otherwise); ``recv`` maps it
        to the global rank."""
        return self._source

    _source_rank = source_rank

    def synchronize(self) -> None:
        """Nothing to do on CPU; present for torch compatibility."""

    def __repr__(self) -> str:
        return f"<mpdist.Work completed={self.is_completed()}>"


def create_work_from_future(future: Future) -> Work:
    """A Work that completes when ``future`` does (torch's ``_create_work_from_future``)."""
    if not isinstance(future, Future):
        raise TypeError(
            f"create_work_from_future needs an mpdist.Future, got {type(future).__name__}"
        )
    return Work(future)


_create_work_from_future = create_work_from_future


def completed_work(outputs: list[Any], source: int = -1) -> Work:
    """A Work already completed with ``outputs`` (synchronous backends)."""
    fut = Future()
    fut._value, fut._done = outputs, True
    work = Work(fut)
    work._source = source
    return work


# ---------------------------------------------------------------------- options
# Plain attribute bags with torch's field names; ranks in them are group ranks.
# ``asyncOp`` is False when the caller waits for the operation at once (the module API's
# blocking calls, as torch sets it): a group may then run it in the calling thread and
# return None (or a completed Work) instead of a pending Work.


@dataclass(slots=True)
class AllreduceOptions:
    """Options of ``ProcessGroup.allreduce``."""

    reduceOp: ReduceOp = ReduceOp.SUM
    timeout: timedelta | None = None
    asyncOp: bool = True


@dataclass(slots=True)
class BroadcastOptions:
    """Options of ``ProcessGroup.broadcast``: the root's group rank."""

    rootRank: int = 0
    rootTensor: int = 0
    timeout: timedelta | None = None
    asyncOp: bool = True


@dataclass(slots=True)
class ReduceOptions:
    """Options of ``ProcessGroup.reduce``."""

    reduceOp: ReduceOp = ReduceOp.SUM
    rootRank: int = 0
    rootTensor: int = 0
    timeout: timedelta | None = None
    asyncOp: bool = True


@dataclass(slots=True)
class AllgatherOptions:
    """Options of ``ProcessGroup.allgather`` and ``_allgather_base``."""

    timeout: timedelta | None = None
    asyncOp: bool = True


# The module API's options for the small-message collectives. It has checked the arrays
# it passes (type, dtype, layout, writeability of outputs) before calling the group, so a
# built-in group skips checking them again; any other group sees ordinary options.


@dataclass(slots=True)
class CheckedAllreduceOptions(AllreduceOptions):
    """``AllreduceOptions`` from a caller that has checked the tensors (the module API)."""


@dataclass(slots=True)
class CheckedBroadcastOptions(BroadcastOptions):
    """``BroadcastOptions`` from a caller that has checked the tensors (the module API)."""


@dataclass(slots=True)
class CheckedAllgatherOptions(AllgatherOptions):
    """``AllgatherOptions`` from a caller that has checked the tensors (the module API)."""


@dataclass(slots=True)
class GatherOptions:
    """Options of ``ProcessGroup.gather``."""

    rootRank: int = 0
    timeout: timedelta | None = None
    asyncOp: bool = True


@dataclass(slots=True)
class ScatterOptions:
    """Options of ``ProcessGroup.scatter``."""

    rootRank: int = 0
    timeout: timedelta | None = None
    asyncOp: bool = True


@dataclass(slots=True)
class ReduceScatterOptions:
    """Options of ``ProcessGroup.reduce_scatter`` and ``_reduce_scatter_base``."""

    reduceOp: ReduceOp = ReduceOp.SUM
    timeout: timedelta | None = None
    asyncOp: bool = True


@dataclass(slots=True)
class CheckedReduceScatterOptions(ReduceScatterOptions):
    """``ReduceScatterOptions`` from a caller that has checked the tensors (the module API)."""


@dataclass(slots=True)
class AllToAllOptions:
    """Options of ``ProcessGroup.alltoall`` and ``alltoall_base``."""

    timeout: timedelta | None = None
    asyncOp: bool = True


@dataclass(slots=True)
class BarrierOptions:
    """Options of ``ProcessGroup.barrier``."""

    device_ids: list[int] = field(default_factory=list)
    timeout: timedelta | None = None
    asyncOp: bool = True


# ---------------------------------------------------------------------- blocking calls


class _CallHint(threading.local):
    blocking = False


_call_hint = _CallHint()


def caller_blocks() -> bool:
    """Whether the point-to-point call being made waits for its result at once.

    torch's ``send(tensors, dstRank, tag)`` / ``recv`` take no options, so no
    ``asyncOp`` can say it; the module API's blocking ``send``/``recv`` set this hint
    (thread-local) around the group call instead, and a group that can run the
    operation in the calling thread returns it completed. Other groups ignore it.
    """
    return _call_hint.blocking


def set_caller_blocks(blocking: bool) -> bool:
    """Set the hint read by :func:`caller_blocks` (the module API, around one call);
    returns the value it had, to be put back after the call."""
    before = _call_hint.blocking
    _call_hint.blocking = blocking
    return before


# ---------------------------------------------------------------------- ProcessGroup


class ProcessGroup:
    """Base class of every process group; subclass it in Python to write a backend.

    ``ProcessGroup(rank, size)`` (or ``ProcessGroup(store, rank, size)``). The collective
    methods take lists of arrays and an options object and return a ``Work``; the base
    class raises ``NotImplementedError`` for each.
    """

    def __init__(self, *args: Any) -> None:
        store = None
        if len(args) == 3:
            store, rank, size = args
        elif len(args) == 2:
            rank, size = args
        else:
            raise TypeError(
                f"ProcessGroup(rank, size) or ProcessGroup(store, rank, size), got {len(args)} args"
            )
        if not isinstance(rank, int) or not isinstance(size, int):
            raise TypeError("ProcessGroup rank and size must be int")
        self._pg_rank = rank
        self._pg_size = size
        self._pg_name = ""
        self._pg_desc = ""
        self._pg_store = store

    def get_group_store(self) -> Any:
        """The store the group was built with (the very object), or None if built without."""
        # getattr: a subclass whose __init__ skipped ours still answers
        return getattr(self, "_pg_store", None)

    # ---- overridable attribute hooks
    def getRank(self) -> int:
        """This process's rank in the group."""
        return self._pg_rank

    def getSize(self) -> int:
        """Number of ranks in the group."""
        return self._pg_size

    def getBackendName(self) -> str:
        """Name of the backend implementing the group."""
        return "undefined"

    def setGroupName(self, name: str) -> None:
        """Record the group's name."""
        self._pg_name = name

    def getGroupName(self) -> str:
        """The group's name."""
        return self._pg_name

    def setGroupDesc(self, desc: str) -> None:
        """Record the group's description."""
        self._pg_desc = desc

    def getGroupDesc(self) -> str:
        """The group's description."""
        return self._pg_desc

    def abort(self) -> None:
        """Abort pending operations (no-op by default)."""

    def shutdown(self) -> None:
        """Release the group's resources (no-op by default)."""

    # ---- torch-style accessors, routed through the hooks
    def rank(self) -> int:
        """This process's rank in the group (``getRank()``)."""
        return self.getRank()

    def size(self) -> int:
        """Number of ranks in the group (``getSize()``)."""
        return self.getSize()

    def name(self) -> str:
        """The backend name (``getBackendName()``)."""
        return self.getBackendName()

    @property
    def group_name(self) -> str:
        """The group's name (``getGroupName()``)."""
        return self.getGroupName()

    @property
    def group_desc(self) -> str:
        """The group's description (``getGroupDesc()``)."""
        return self.getGroupDesc()

    def _set_group_name(self, name: str) -> None:
        self.setGroupName(name)

    def _set_group_desc(self, desc: str) -> None:
        self.setGroupDesc(desc)

    # ---- collectives: group ranks, lists of arrays, option objects
    def _unsupported(self, op: str) -> NotImplementedError:
        return NotImplementedError(f"ProcessGroup {self.name()!r} does not support {op}")

    def broadcast(self, tensors: list[Any], opts: BroadcastOptions | None = None) -> Work:
        """Broadcast ``tensors[0]`` from ``opts.rootRank``."""
        raise self._unsupported("broadcast")

    def allreduce(self, tensors: list[Any], opts: AllreduceOptions | None = None) -> Work:
        """All-reduce ``tensors[0]`` in place with ``opts.reduceOp``."""
        raise self._unsupported("allreduce")

    def reduce(self, tensors: list[Any], opts: ReduceOptions | None = None) -> Work:
        """Reduce ``tensors[0]`` onto ``opts.rootRank``."""
        raise self._unsupported("reduce")

    def allgather(
        self,
        output_tensors: list[list[Any]],
        input_tensors: list[Any],
        opts: AllgatherOptions | None = None,
    ) -> Work:
        """``output_tensors[0][i]`` <- rank i's ``input_tensors[0]``."""
        raise self._unsupported("allgather")

    def _allgather_base(
        self, output: Any, input: Any, opts: AllgatherOptions | None = None
    ) -> Work:
        """``output`` <- every rank's ``input`` concatenated along axis 0."""
        raise self._unsupported("_allgather_base")

    def all_gather_single(
        self, output: Any, input: Any, opts: AllgatherOptions | None = None
    ) -> Work:
        """``output`` <- every rank's ``input`` concatenated along axis 0.

        What ``all_gather_into_tensor`` calls on a group (torch 2.13's name); by default
        it is ``_allgather_base``, so a subclass may override either.
        """
        return self._allgather_base(output, input, opts)

    def gather(
        self,
        output_tensors: list[list[Any]],
        input_tensors: list[Any],
        opts: GatherOptions | None = None,
    ) -> Work:
        """On the root, ``output_tensors[0][i]`` <- rank i's ``input_tensors[0]``."""
        raise self._unsupported("gather")

    def scatter(
        self,
        output_tensors: list[Any],
        input_tensors: list[list[Any]],
        opts: ScatterOptions | None = None,
    ) -> Work:
        """Rank i's ``output_tensors[0]`` <- the root's ``input_tensors[0][i]``."""
        raise self._unsupported("scatter")

    def reduce_scatter(
        self,
        output_tensors: list[Any],
        input_tensors: list[list[Any]],
        opts: ReduceScatterOptions | None = None,
    ) -> Work:
        """``output_tensors[0]`` <- reduction over ranks of ``input_tensors[0][my_rank]``."""
        raise self._unsupported("reduce_scatter")

    def _reduce_scatter_base(
        self, output: Any, input: Any, opts: ReduceScatterOptions | None = None
    ) -> Work:
        """``output`` <- reduction over ranks of chunk ``my_rank`` of ``input``."""
        raise self._unsupported("_reduce_scatter_base")

    def reduce_scatter_single(
        self, output: Any, input: Any, opts: ReduceScatterOptions | None = None
    ) -> Work:
        """``output`` <- reduction over ranks of chunk ``my_rank`` of ``input``.

        What ``reduce_scatter_tensor`` calls on a group (torch 2.13's name); by default it
        is ``_reduce_scatter_base``, so a subclass may override either.
        """
        return self._reduce_scatter_base(output, input, opts)

    def alltoall_base(
        self,
        output: Any,
        input: Any,
        output_split_sizes: list[int],
        input_split_sizes: list[int],
        opts: AllToAllOptions | None = None,
    ) -> Work:
        """All-to-all of rows of ``input`` split by ``input_split_sizes`` (empty = equal)."""
        raise self._unsupported("alltoall_base")

    def alltoall(
        self,
        output_tensors: list[Any],
        input_tensors: list[Any],
        opts: AllToAllOptions | None = None,
    ) -> Work:
        """``output_tensors[i]`` <- rank i's ``input_tensors[my_rank]``."""
        raise self._unsupported("alltoall")

    def send(self, tensors: list[Any], dstRank: int, tag: int = 0) -> Work:
        """Send ``tensors[0]`` to group rank ``dstRank``."""
        raise self._unsupported("send")

    def recv(self, tensors: list[Any], srcRank: int, tag: int = 0) -> Work:
        """Receive into ``tensors[0]`` from group rank ``srcRank``."""
        raise self._unsupported("recv")

    def recv_anysource(self, tensors: list[Any], tag: int = 0) -> Work:
        """Receive into ``tensors[0]`` from any rank; ``work.source_rank()`` says who."""
        raise self._unsupported("recv_anysource")

    def barrier(self, opts: BarrierOptions | None = None) -> Work:
        """Wait until every rank of the group arrives."""
        raise self._unsupported("barrier")

    def monitored_barrier(
        self, opts: BarrierOptions | None = None, wait_all_ranks: bool = False
    ) -> Work | None:
        """A barrier that fails naming the ranks missing at ``opts.timeout``.

        By default a plain ``barrier`` (whose Work the caller waits for); mpdist's own
        groups name the missing ranks (all of them with ``wait_all_ranks``).
        """
        return self.barrier(opts)

    # ---- mpdist's extension interface: what the module API and DDP use beyond torch's
    # methods. A Python subclass gets working defaults and need not override any of it.

    #: The group can run an operation in the calling thread: a blocking call
    #: (``asyncOp=False``, :func:`caller_blocks`) runs inline and comes back completed,
    #: and a Work of :meth:`allreduce_stepped` is advanced by its caller.
    runs_in_caller: bool = False

    def allreduce_stepped(self, tensors: list[Any], opts: AllreduceOptions | None = None) -> Work:
        """An asynchronous allreduce that the calling thread may advance itself.

        ``work._advance()`` moves it on without blocking, between pieces of the caller's
        own work, and waiting finishes it; no communication thread is involved unless
        another operation queues behind it. For callers that know a thread of their own
        costs more than it hides (DDP with no core to spare). By default an ordinary
        ``allreduce``.
        """
        return self.allreduce(tensors, opts)

    def set_global_ranks(self, ranks: list[int]) -> None:
        """Group rank i is global rank ``ranks[i]``: how the group's traces and errors
        name ranks (the module API calls it when it registers the group)."""

    def run_on_own_threads(self, setup: Callable[[], None] | None) -> None:
        """Have ``setup()`` run first on every thread the group starts for itself (the
        module API shares a rank thread's world with the group's worker this way)."""

    def abort_with_reason(self, reason: str) -> None:
        """Make this group's pending and future operations fail promptly with ``reason``."""
        self.abort()

    def last_operation(self) -> str | None:
        """The last operation this group entered ("all_reduce seq=12"), or None if unknown."""
        return None

    def __repr__(self) -> str:
        try:
            return f"<{type(self).__name__} {self.name()} rank={self.rank()} size={self.size()}>"
        except Exception:  # a half-built subclass must still print
            return f"<{type(self).__name__}>"


# ---------------------------------------------------------------------- Backend registry


@dataclass
class _DistributedBackendOptions:
    """What an ``extended_api`` backend creator receives (torch's field names)."""

    store: Any
    group_rank: int
    group_size: int
    timeout: timedelta
    group_id: str
    global_ranks_in_group: list[int]


class Backend(str):
    """A backend name (``Backend("gloo") == "gloo"``) and the registry of backends.

    ``Backend.register_backend(name, creator, extended_api=False)`` adds one: the module API
    then calls ``creator(store, rank, world_size, timeout)`` (or, with ``extended_api``,
    ``creator(options, pg_options)``) and uses the returned ``ProcessGroup``.
    """

    UNDEFINED = "undefined"
    TCP = "tcp"
    GLOO = "gloo"
    THREADED = "threaded"
    FAKE = "fake"
    MPI = "mpi"

    # lower-case name -> (creator, extended_api)
    _plugins: dict[str, tuple[Callable[..., ProcessGroup], bool]] = {}
    _plugins_lock = threading.Lock()

    def __new__(cls, name: str) -> Backend:
        if not isinstance(name, str):
            raise TypeError(f"Backend name must be a string, but got: {name!r}")
        value = name.lower()
        if value not in cls._plugins and value != cls.UNDEFINED:
            raise ValueError(f"Invalid backend: '{name}'")
        return str.__new__(cls, value)

    @classmethod
    def register_backend(
        cls,
        name: str,
        func: Callable[..., ProcessGroup],
        extended_api: bool = False,
        devices: str | list[str] | None = None,
    ) -> None:
        """Register ``func`` as the creator of backend ``name``. A name registered already
        (a built-in one too) gets the new creator, as in torch: a module that registers its
        backend at import, like torch's ``fake_pg.py``, may be imported after mpdist's own
        registration of that name, or twice."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"backend name must be a non-empty str, got {name!r}")
        if not callable(func):
            raise TypeError(f"backend creator must be callable, got {type(func).__name__}")
        key = name.lower()
        with cls._plugins_lock:
            if key == cls.UNDEFINED:  # names no backend: Backend("undefined") is the unset one
                raise ValueError(f"{name.upper()} c10d backend already exist")
            cls._plugins[key] = (func, bool(extended_api))
            setattr(cls, name.upper(), key)

    @classmethod
    def _creator(cls, name: str) -> tuple[Callable[..., ProcessGroup], bool]:
        return cls._plugins[Backend(name)]

    @classmethod
    def backend_list(cls) -> list[str]:
        """Names of every registered backend."""
        return sorted(cls._plugins)
