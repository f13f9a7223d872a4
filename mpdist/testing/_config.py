"""Harness settings: command-line options pushed by the pytest plugin, else environment, else defaults.

The plugin pushes one frame per pytest session and pops it at the end, so an
in-process pytest run (pytester) never leaks its options into the outer session.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from mpdist.testing import _torch_internals
from mpdist.timeouts import TEST_TIMEOUT

# Marked functions and spawn_ranks: the smallest world that exercises communication.
DEFAULT_WORLD_SIZE = 2
# The test case classes: torch's default, so a torch suite sees the world it was written for.
CASE_DEFAULT_WORLD_SIZE = 4
DEFAULT_TIMEOUT = TEST_TIMEOUT.total_seconds()

# Per-test deadlines in seconds, by test method name, as torch's ``TIMEOUT_OVERRIDE``
# (which is honoured as well when torch's test utilities are loaded).
TIMEOUT_OVERRIDE: dict[str, float] = {}
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


def default_world_size(default: int = DEFAULT_WORLD_SIZE) -> int:
    """``--ranks``, else ``$MPDIST_WORLD_SIZE``, else ``default``."""
    ranks = current().ranks
    if ranks is None:
        ranks = _env_int("MPDIST_WORLD_SIZE")
    return default if ranks is None else ranks


def timeout_override(test_name: str) -> float | None:
    """The deadline ``TIMEOUT_OVERRIDE`` (ours, else torch's if loaded) sets for ``test_name``."""
    if test_name in TIMEOUT_OVERRIDE:
        return float(TIMEOUT_OVERRIDE[test_name])
    return _torch_internals.timeout_override(test_name)


def default_timeout(class_timeout: float | None, test_name: str | None = None) -> float:
    """The deadline of one test, the first that is set of: the class attribute,
    ``TIMEOUT_OVERRIDE[test_name]``, ``--mp-timeout``, ``$MPDIST_TIMEOUT``, 300 s."""
    if class_timeout is not None:
        return float(class_timeout)
    if test_name is not None:
        override = timeout_override(test_name)
        if override is not None:
            return override
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
