"""Harness settings: command-line options pushed by the pytest plugin, else environment, else defaults.

The plugin pushes one frame per pytest session and pops it at the end, so an
in-process pytest run (pytester) never leaks its options into the outer session.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

DEFAULT_WORLD_SIZE = 2
DEFAULT_TIMEOUT = 300.0
START_METHODS = ("forkserver", "spawn", "fork")


@dataclass
class Settings:
    """Options of one pytest session (None: not given on the command line)."""

    ranks: int | None = None
    timeout: float | None = None
    start_method: str | None = None
    debug_rank: int | None = None
    rerun_args: tuple[str, ...] = ()
    under_pytest: bool = False


_stack: list[Settings] = []


def push(settings: Settings) -> None:
    """Make ``settings`` the current ones (the plugin calls this in ``pytest_configure``)."""
    _stack.append(settings)


def pop() -> None:
    """Drop the settings pushed last."""
    if _stack:
        _stack.pop()


def current() -> Settings:
    """The settings in force: the innermost pytest session's, or defaults."""
    return _stack[-1] if _stack else Settings()


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${name} must be an integer, got {value!r}") from None


def default_world_size() -> int:
    """``--ranks``, else ``$MPDIST_WORLD_SIZE``, else 2."""
    ranks = current().ranks
    if ranks is None:
        ranks = _env_int("MPDIST_WORLD_SIZE")
    return DEFAULT_WORLD_SIZE if ranks is None else ranks


def default_timeout(class_timeout: float | None) -> float:
    """The class attribute if set, else ``--mp-timeout``, else ``$MPDIST_TIMEOUT``, else 300 s."""
    if class_timeout is not None:
        return float(class_timeout)
    option = current().timeout
    if option is None:
        env = os.environ.get("MPDIST_TIMEOUT", "").strip()
        option = float(env) if env else DEFAULT_TIMEOUT
    return option


def debug_rank() -> int | None:
    """``--mp-debug-rank``, else ``$MPDIST_DEBUG_RANK``, else None."""
    rank = current().debug_rank
    return _env_int("MPDIST_DEBUG_RANK") if rank is None else rank


def start_method(class_method: str | None) -> str:
    """``--mp-start-method``, else the class attribute, else forkserver on Linux, spawn elsewhere."""
    method = current().start_method or class_method or os.environ.get("MPDIST_START_METHOD")
    if not method:
        method = "forkserver" if sys.platform.startswith("linux") else "spawn"
    if method not in START_METHODS:
        raise ValueError(f"start method must be one of {', '.join(START_METHODS)}, got {method!r}")
    return method
