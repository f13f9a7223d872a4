"""Harness settings: markers and class attributes, else command-line options, else environment, else ini, else defaults.

The plugin pushes one frame per pytest session and pops it at the end, so an
in-process pytest run (pytester) never leaks its options into the outer session.
Each setting is read by one function here, in one order (the README's precedence
table): the test's own value (a marker or class attribute), the command line, the
environment, the ini file (``mpdist_*`` keys), the default.
"""

from __future__ import annotations

import os
import sys
import unittest
from dataclasses import dataclass

from mpdist._cpus import usable_cpus as usable_cpus
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
# The BLAS / OpenMP thread-pool sizes the harness sets for ranks unless the user did.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class Settings:
    """Options of one pytest session (None: not given)."""

    ranks: int | None = None
    timeout: float | None = None
    start_method: str | None = None
    debug_rank: int | None = None
    max_ranks: int | None = None
    max_ranks_error: bool = False
    rerun_args: tuple[str, ...] = ()
    under_pytest: bool = False
    mpi: bool = False  # pytest --mpi: tests run SPMD on the MPI ranks (_mpi_mode)
    # the ini file's mpdist_* values (None: not set there)
    ini_ranks: int | None = None
    ini_timeout: float | None = None
    ini_start_method: str | None = None
    ini_max_ranks: int | None = None
    ini_reuse_processes: bool | None = None
    # pytest-timeout's deadline for the test running now (set by the plugin per test)
    item_timeout: float | None = None


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


def parse_int(value: str, where: str) -> int:
    """``value`` as an int, or a ValueError naming where it came from."""
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError(f"{where} must be an integer, got {value!r}") from None


def parse_float(value: str, where: str) -> float:
    """``value`` as a float, or a ValueError naming where it came from."""
    try:
        return float(value.strip())
    except ValueError:
        raise ValueError(f"{where} must be a number of seconds, got {value!r}") from None


def parse_bool(value: str, where: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off``, or a ValueError naming where it came from."""
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{where} must be 1/true/yes/on or 0/false/no/off, got {value!r}")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return parse_int(value, f"${name}") if value else None


def world_size_and_source(default: int = DEFAULT_WORLD_SIZE) -> tuple[int, str]:
    """The default world size and where it came from (``--ranks``, ``$MPDIST_WORLD_SIZE``, ...)."""
    settings = current()
    if settings.ranks is not None:
        return settings.ranks, "--ranks"
    env = _env_int("MPDIST_WORLD_SIZE")
    if env is not None:
        return env, "$MPDIST_WORLD_SIZE"
    if settings.ini_ranks is not None:
        return settings.ini_ranks, "ini mpdist_ranks"
    return default, "default"


def default_world_size(default: int = DEFAULT_WORLD_SIZE) -> int:
    """``--ranks``, else ``$MPDIST_WORLD_SIZE``, else ini ``mpdist_ranks``, else ``default``."""
    return world_size_and_source(default)[0]


def timeout_override(test_name: str) -> float | None:
    """The deadline ``TIMEOUT_OVERRIDE`` (ours, else torch's if loaded) sets for ``test_name``."""
    if test_name in TIMEOUT_OVERRIDE:
        return float(TIMEOUT_OVERRIDE[test_name])
    return _torch_internals.timeout_override(test_name)


def run_timeout_and_source() -> tuple[float, str]:
    """The run's deadline per test and where it came from: ``--mp-timeout``, env, ini, default."""
    settings = current()
    if settings.timeout is not None:
        return settings.timeout, "--mp-timeout"
    env = os.environ.get("MPDIST_TIMEOUT", "").strip()
    if env:
        return parse_float(env, "$MPDIST_TIMEOUT"), "$MPDIST_TIMEOUT"
    if settings.ini_timeout is not None:
        return settings.ini_timeout, "ini mpdist_timeout"
    return DEFAULT_TIMEOUT, "default"


def default_timeout(class_timeout: float | None, test_name: str | None = None) -> float:
    """The deadline of one test, the first that is set of: pytest-timeout's for this test
    (its marker, ``--timeout``, ini ``timeout``), the class attribute (or the marker's
    ``timeout=``), ``TIMEOUT_OVERRIDE[test_name]``, ``--mp-timeout``, ``$MPDIST_TIMEOUT``,
    ini ``mpdist_timeout``, 300 s."""
    item = current().item_timeout
    if item is not None:
        return item
    if class_timeout is not None:
        return float(class_timeout)
    if test_name is not None:
        override = timeout_override(test_name)
        if override is not None:
            return override
    return run_timeout_and_source()[0]


def debug_rank() -> int | None:
    """``--mp-debug-rank``, else ``$MPDIST_DEBUG_RANK``, else None."""
    rank = current().debug_rank
    return _env_int("MPDIST_DEBUG_RANK") if rank is None else rank


def start_method(class_method: str | None) -> str:
    """``--mp-start-method``, else the class attribute, else ``$MPDIST_START_METHOD``,
    else ini ``mpdist_start_method``, else forkserver on Linux, spawn elsewhere."""
    settings = current()
    method = (
        settings.start_method
        or class_method
        or os.environ.get("MPDIST_START_METHOD")
        or settings.ini_start_method
    )
    if not method:
        method = "forkserver" if sys.platform.startswith("linux") else "spawn"
    if method not in START_METHODS:
        raise ValueError(f"start method must be one of {', '.join(START_METHODS)}, got {method!r}")
    return method


def max_world_size() -> tuple[int, str] | None:
    """The largest world size a test may start, and where the limit came from (None: no limit)."""
    settings = current()
    if settings.max_ranks is not None:
        return settings.max_ranks, "--max-ranks"
    env = _env_int("MPDIST_MAX_WORLD_SIZE")
    if env is not None:
        return env, "$MPDIST_MAX_WORLD_SIZE"
    if settings.ini_max_ranks is not None:
        return settings.ini_max_ranks, "ini mpdist_max_ranks"
    return None


class CapacityError(RuntimeError):
    """A test needs more ranks than the run allows (``--max-ranks`` with ``--max-ranks-error``)."""


def check_capacity(world_size: int) -> None:
    """Skip (or, with ``--max-ranks-error``, fail) a test of ``world_size`` ranks over the limit."""
    limit = max_world_size()
    if limit is None or world_size <= limit[0]:
        return
    text = f"world size {world_size} is over the limit of {limit[0]} ranks ({limit[1]})"
    if current().max_ranks_error:
        raise CapacityError(text)
    raise unittest.SkipTest(text)


def reuse_processes(class_value: bool) -> bool:
    """Whether a class that asks for worker reuse gets it: not if ``$MPDIST_REUSE_PROCESSES``
    (else ini ``mpdist_reuse_processes``) turns reuse off for the run."""
    if not class_value:
        return False
    env = os.environ.get("MPDIST_REUSE_PROCESSES", "").strip()
    if env:
        return parse_bool(env, "$MPDIST_REUSE_PROCESSES")
    ini = current().ini_reuse_processes
    return True if ini is None else ini


def blas_threads(ranks: int, workers: int = 1, cpus: int | None = None) -> int:
    """Threads per rank for BLAS/OpenMP pools: the usable cpus shared by every rank of every worker."""
    cpus = usable_cpus() if cpus is None else cpus
    return max(1, cpus // max(1, ranks * workers))
