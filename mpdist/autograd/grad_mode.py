"""Whether operations record a graph: ``no_grad``, ``enable_grad`` and ``set_grad_enabled``.

The flag is thread-local because the threaded backend runs every rank as a thread of one
process, and one rank's ``no_grad`` must not switch off recording in another.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_state = threading.local()


def is_grad_enabled() -> bool:
    """True when new operations on tensors that require grad record a graph (this thread)."""
    return getattr(_state, "enabled", True)


def _set(enabled: bool) -> None:
    _state.enabled = bool(enabled)


class set_grad_enabled:
    """Context manager (and function) that turns graph recording on or off for this thread."""

    def __init__(self, mode: bool) -> None:
        self._prev = is_grad_enabled()
        self._mode = bool(mode)
        _set(self._mode)

    def __enter__(self) -> set_grad_enabled:
        return self

    def __exit__(self, *exc: object) -> None:
        _set(self._prev)


class _GradModeContext:
    """Shared body of ``no_grad`` / ``enable_grad``: a context manager and a decorator, used
    as ``@no_grad()`` or ``@no_grad``."""

    _mode = True

    def __new__(cls, func: F | None = None) -> Any:
        # ``@no_grad`` without parentheses: the class is called with the function itself.
        self = super().__new__(cls)
        return self if func is None else self(func)

    def __enter__(self) -> _GradModeContext:
        # A stack of previous values lets one instance be entered re-entrantly.
        self.__dict__.setdefault("_prev", []).append(is_grad_enabled())
        _set(self._mode)
        return self

    def __exit__(self, *exc: object) -> None:
        _set(self.__dict__["_prev"].pop())

    def __call__(self, func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with type(self)():
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


class no_grad(_GradModeContext):
    """Operations inside do not record a graph; results do not require grad."""

    _mode = False


class enable_grad(_GradModeContext):
    """Turns recording back on inside a ``no_grad`` region."""

    _mode = True
