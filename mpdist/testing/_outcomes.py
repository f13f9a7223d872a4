"""How a rank's end becomes its result: skipped, passed or failed, the same in both harnesses.

Ranks are processes (``_worker``) or threads (``multithreaded``); either way a test
body that raises is judged here, so a skip means the same in both:

- ``unittest.SkipTest`` and pytest's ``skip()``: skipped, with their message;
- ``SystemExit`` with one of torch's ``TEST_SKIPS`` exit codes (``skip_if_lt_x_gpu``
  and friends call ``sys.exit(77)``): skipped, with torch's message for that code;
- ``SystemExit`` with no code or 0: passed (its exit code kept: a rank that leaves this
  way while its peers still run is named as the cause if they then fail);
- anything else: failed.

A rank process that ended without a word is described by its exit status
(:func:`signal_name`).
"""

from __future__ import annotations

import signal
import sys
import traceback
import unittest
from dataclasses import dataclass

from mpdist.testing import _torch_internals

# What torch's threaded process group raises in every rank once one rank has failed.
TORCH_THREADS_TERMINATED = "Test termination event occurs."


@dataclass
class Verdict:
    """A rank's result as its exception decides it."""

    status: str  # passed | skipped | failed
    message: str = ""
    exc_type: str | None = None
    traceback: str = ""
    exit_code: int | None = None  # the code of a ``sys.exit(code)`` that ended the test


def format_exception(exc: BaseException, harness_file: str | None = None) -> str:
    """The traceback of ``exc`` without the harness's own leading frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == harness_file:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def exception_name(kind: type[BaseException]) -> str:
    """``ValueError`` for builtins, ``package.module.Error`` for everything else."""
    if kind.__module__ in ("builtins", "__main__", "__mp_main__"):
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _pytest_skip_exception() -> type[BaseException] | None:
    """What ``pytest.skip()`` raises (public as ``pytest.skip.Exception``), if pytest is imported."""
    pytest = sys.modules.get("pytest")
    kind = getattr(getattr(pytest, "skip", None), "Exception", None)
    return kind if isinstance(kind, type) and issubclass(kind, BaseException) else None


def judge(exc: BaseException, harness_file: str | None = None) -> Verdict:
    """The result of a rank whose test body raised ``exc``."""
    kind = type(exc)
    if isinstance(exc, unittest.SkipTest):
        return Verdict("skipped", str(exc))
    pytest_skip = _pytest_skip_exception()
    if pytest_skip is not None and isinstance(exc, pytest_skip):
        return Verdict("skipped", str(getattr(exc, "msg", exc)))
    if isinstance(exc, SystemExit):
        message = _torch_internals.skip_message(exc.code)
        if message is not None:
            return Verdict("skipped", message)
        if exc.code in (None, 0):
            return Verdict("passed", exit_code=0)
        return Verdict(
            "failed",
            f"sys.exit({exc.code!r})",
            "SystemExit",
            format_exception(exc, harness_file),
            exc.code if isinstance(exc.code, int) else None,
        )
    return Verdict("failed", str(exc), exception_name(kind), format_exception(exc, harness_file))


def signal_name(exitcode: int | None) -> str:
    """Describe a multiprocessing exit code: ``"exit code 3"`` or ``"signal SIGKILL"``."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"
