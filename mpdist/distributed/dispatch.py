"""Collective interception: the modes that see every collective a thread issues.

The numpy counterpart of torch's dispatch modes, for collectives only. A *mode* is any object
with ``__collective__(func, types, args=(), kwargs=None)``; :func:`push` makes it active in
the calling thread (``mpdist.testing.CollectiveMode`` and ``CommDebugMode`` are context
managers around push / pop). While a mode is active, each collective of the module API (and
of the layers above it that name their ops: functional collectives, DTensor) is handed to
the innermost mode as a :class:`CollectiveOp`; ``str(func)`` is torch's name of the op and
``func(*args, **kwargs)`` runs it, seen by the modes further out, then for real. With no mode
active anywhere, a collective pays one module-attribute test (``active``).

    >>> class Names:
    ...     def __collective__(self, func, types, args=(), kwargs=None):
    ...         print(func)
    ...         return func(*args, **(kwargs or {}))

The modes are per thread, as torch's are: the ranks of the threaded backend are threads, and
a mode entered in one rank must not see the others' collectives.

A collective that intercepts itself follows one pattern (see ``collectives.all_reduce``)::

    if dispatch.active and dispatch.intercepting():
        return dispatch.run(ALL_REDUCE, (tensor, op, group, async_op))
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from mpdist import ops

__all__ = ["CollectiveMode", "CollectiveOp", "Mode", "active", "intercepting", "pop", "push", "run"]

# Modes pushed in all threads together: the collectives' first, cheap test.
active = 0
_count_lock = threading.Lock()


class Mode(Protocol):
    """What :func:`push` accepts: an object that receives the thread's collectives."""

    def __collective__(
        self,
        func: CollectiveOp,
        types: tuple[type, ...],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any: ...


class _ThreadModes(threading.local):
    def __init__(self) -> None:
        self.modes: list[Mode] = []  # innermost last
        self.bypass = 0  # > 0 while an op runs for real, below every mode


_state = _ThreadModes()


class CollectiveOp:
    """One collective as the modes see it: named as torch names it, callable to run it.

    ``CollectiveOp("c10d.allreduce_.default", all_reduce)``; ``str(op)`` is the name, and
    ``op(*args, **kwargs)`` runs ``fn`` through the modes outside the one calling it.
    """

    __slots__ = ("_overload", "fn", "name")

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name = name
        self.fn = fn
        self._overload = ops.overload(name)

    @property
    def overloadpacket(self) -> ops.OpOverloadPacket | None:
        """The operator's name object (``mpdist.ops.c10d.allreduce_``), as torch's ``func.overloadpacket``."""
        return None if self._overload is None else self._overload.overloadpacket

    @property
    def _overloadpacket(self) -> ops.OpOverloadPacket | None:  # torch's spelling, which modes use
        return self.overloadpacket

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<CollectiveOp {self.name}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return run(self, args, kwargs)


def intercepting() -> bool:
    """Whether a collective issued now by this thread goes to a mode (not to the wire)."""
    state = _state
    return bool(state.modes) and not state.bypass


def run(op: CollectiveOp, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> Any:
    """Hand ``op`` to this thread's innermost active mode; with none left, run it for real."""
    state = _state
    kwargs = kwargs or {}
    if not state.modes or state.bypass:
        state.bypass += 1
        try:
            return op.fn(*args, **kwargs)
        finally:
            state.bypass -= 1
    mode = state.modes.pop()  # while it handles the op, the modes outside it see its calls
    try:
        return mode.__collective__(op, (), args, kwargs)
    finally:
        state.modes.append(mode)


def push(mode: Mode) -> None:
    """Make ``mode`` the innermost active mode of the calling thread."""
    global active
    if not callable(getattr(mode, "__collective__", None)):
        raise TypeError(f"a collective mode needs a __collective__ method, got {mode!r}")
    _state.modes.append(mode)
    with _count_lock:
        active += 1


def pop(mode: Mode) -> None:
    """Deactivate ``mode``, which must be the calling thread's innermost active mode."""
    global active
    modes = _state.modes
    if not modes or modes[-1] is not mode:
        raise RuntimeError(
            "collective modes must be exited in the reverse order of entering them, in the "
            "thread that entered them"
        )
    modes.pop()
    with _count_lock:
        active -= 1


_M = TypeVar("_M", bound="CollectiveMode")


class CollectiveMode:
    """A context manager that makes itself the thread's innermost collective mode while entered.

    Subclasses override :meth:`__collective__`; the default runs each op unchanged. Entering
    the same mode twice (nested) stacks it twice, as torch's dispatch modes do: it then sees
    each op twice. Modes are per thread: enter and exit a mode in the same thread, innermost
    first. Exported as ``mpdist.testing.CollectiveMode``.
    """

    def __collective__(
        self,
        func: CollectiveOp,
        types: tuple[type, ...],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """Handle one collective; ``func(*args, **kwargs)`` runs it (the default does just that)."""
        return func(*args, **(kwargs or {}))

    def __enter__(self: _M) -> _M:
        push(self)
        return self

    def __exit__(self, *exc: object) -> None:
        pop(self)
