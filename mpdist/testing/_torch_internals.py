"""torch's private names the harness needs, each behind a small function with a fallback.

torch's distributed test suites are written against torch's own harness
(``torch.testing._internal``); running them here means honouring what that harness
defines, and installing torch's threaded world the way it does. Each name, why,
and what happens when a torch build lacks it:

- ``common_distributed.TEST_SKIPS``: the exit codes torch's skip decorators end a
  rank with (``skip_if_lt_x_gpu`` calls ``sys.exit(77)``) and their messages; such a
  rank is skipped. Without it such an exit fails the test (``sys.exit(77)``).
- ``common_distributed.TIMEOUT_OVERRIDE``: per-test deadlines a torch suite sets.
  Read only if the suite imported that module. Without it only mpdist's own
  ``TIMEOUT_OVERRIDE`` applies.
- ``common_utils.TestCase``: torch's ``assertEqual`` (sparse, bfloat16, exact dtypes,
  ...) and torch-only assertions for the tests that expect them. Its import needs
  ``expecttest``; without either, comparisons stay mpdist's and torch-only
  assertion methods do not exist.
- ``distributed.multi_threaded_pg``: ``ProcessLocalGroup.reset()`` (a fresh state of
  torch's threaded groups), ``ProcessLocalGroup.exception_handle()`` (wakes every rank
  thread waiting in a torch collective after a failure), ``_install_threaded_pg()`` /
  ``_uninstall_threaded_pg()`` (the thread-local ``_world`` of the rank threads, as
  torch's ``MultiThreadedTestCase`` installs it). Without it a thread test that uses
  torch fails with an error saying so.
- ``torch._C._distributed_c10d._set_thread_isolation_mode``: torch's per-thread
  process-group state, switched on while the rank threads run. Torch builds from
  before it did without it: without it, nothing is switched.
- ``distributed_c10d._world``: whether the installed world is still the harness's
  when the test ends (a test may install its own). Without it the world counts as
  the harness's.
- ``distributed_c10d._get_default_group()``: the default group a derived class hands
  to its tests as ``self.pg``. Without it: ``torch.distributed.group.WORLD``.

torch is never imported here unless a test already did: every function first
looks at ``sys.modules``, or is only called for a test that uses torch.
"""

from __future__ import annotations

import sys
import types
import unittest
from typing import Any

__all__ = [
    "default_group",
    "fail_threaded_collectives",
    "install_threaded_world",
    "reset_threaded_groups",
    "set_thread_isolation",
    "skip_message",
    "test_case_class",
    "threaded_world_is",
    "timeout_override",
    "uninstall_threaded_world",
]


def skip_message(code: object) -> str | None:
    """torch's message for a ``TEST_SKIPS`` exit code (None: not one, or torch not loaded)."""
    if "torch" not in sys.modules or not isinstance(code, int) or isinstance(code, bool):
        return None
    try:
        from torch.testing._internal.common_distributed import TEST_SKIPS
    except Exception:
        return None
    for skip in TEST_SKIPS.values():
        if skip.exit_code == code:
            return str(skip.message)
    return None


def timeout_override(test_name: str) -> float | None:
    """The deadline torch's ``TIMEOUT_OVERRIDE`` sets for ``test_name`` (if a suite loaded it)."""
    torch_utils = sys.modules.get("torch.testing._internal.common_distributed")
    overrides = getattr(torch_utils, "TIMEOUT_OVERRIDE", None)
    if isinstance(overrides, dict) and test_name in overrides:
        return float(overrides[test_name])
    return None


# Set once torch's test utilities failed to import: trying again at every comparison
# would search the import path every time.
_test_utils_broken: list[bool] = []


def test_case_class() -> type[unittest.TestCase] | None:
    """torch's ``TestCase`` if torch is imported and its test utilities import, else None."""
    if "torch" not in sys.modules or _test_utils_broken:
        return None
    try:
        from torch.testing._internal.common_utils import TestCase
    except Exception:
        # torch's test utilities need expecttest, a torch dev dependency: without it
        # the comparison stays ours.
        _test_utils_broken.append(True)
        return None
    return TestCase


def _multi_threaded_pg() -> Any:
    try:
        from torch.testing._internal.distributed import multi_threaded_pg
    except ImportError as exc:
        raise RuntimeError(
            "this test uses torch, but this torch has no threaded process groups for the "
            f"rank threads (torch.testing._internal.distributed.multi_threaded_pg: {exc})"
        ) from exc
    return multi_threaded_pg


def set_thread_isolation(on: bool) -> None:
    """Switch torch's per-thread process-group state on or off (if this torch has it)."""
    import torch

    switch = getattr(torch._C._distributed_c10d, "_set_thread_isolation_mode", None)
    if switch is not None:
        switch(on)


def reset_threaded_groups() -> None:
    """Forget the state of torch's threaded process groups (the last test's)."""
    _multi_threaded_pg().ProcessLocalGroup.reset()


def install_threaded_world() -> Any:
    """Give this process's threads a thread-local torch world; returns that world."""
    return _multi_threaded_pg()._install_threaded_pg()


def threaded_world_is(world: Any) -> bool:
    """Whether ``world`` is still torch's installed world."""
    c10d = sys.modules.get("torch.distributed.distributed_c10d")
    if c10d is None:
        return False
    return getattr(c10d, "_world", world) is world


def uninstall_threaded_world() -> None:
    """Put torch's process-wide world back in place of the thread-local one."""
    _multi_threaded_pg()._uninstall_threaded_pg()


def fail_threaded_collectives(exc: BaseException) -> None:
    """Wake every rank thread waiting in a torch threaded collective; they raise."""
    _multi_threaded_pg().ProcessLocalGroup.exception_handle(exc)


def default_group(c10d: types.ModuleType) -> Any:
    """The default process group of ``c10d`` (``torch.distributed``)."""
    get = getattr(c10d.distributed_c10d, "_get_default_group", None)
    if get is None:
        return c10d.group.WORLD
    return get()
