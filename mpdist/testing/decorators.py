"""Decorators for multi-rank test methods: world-size requirements and ``with_comms``.

``requires_world_size(n)`` / ``skip_if_lt_x_ranks(n)`` skip a test whose world
size is smaller than ``n`` (in the parent, before any rank starts).
``with_comms`` initializes the default group around a MultiProcessTestCase
method (a no-op under MultiThreadedTestCase, whose group is already up); with
``reuse_processes = True`` the group stays up for the class's next test.
"""

from __future__ import annotations

import functools
import unittest
from collections.abc import Callable
from typing import Any, TypeVar

from mpdist import distributed as dist
from mpdist.store import FileStore
from mpdist.testing import _worker

F = TypeVar("F", bound=Callable[..., Any])


def requires_world_size(n: int) -> Callable[[F], F]:
    """Skip the test unless ``self.world_size >= n``."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"requires_world_size needs a positive int, got {n!r}")

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            if self.world_size < n:
                raise unittest.SkipTest(f"Need at least {n} ranks, world size is {self.world_size}")
            return fn(self, *args, **kwargs)

        # Read by the test cases so the parent skips without starting any rank.
        wrapper._mpdist_min_world_size = max(n, getattr(fn, "_mpdist_min_world_size", 0))  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def skip_if_lt_x_ranks(n: int) -> Callable[[F], F]:
    """Skip the test if there are fewer than ``n`` ranks (torch's ``skip_if_lt_x_gpu`` for ranks)."""
    return requires_world_size(n)


def with_comms(
    fn: F | bool | None = None, *, backend: str | None = None, eager_init: bool = False
) -> Any:
    """Run the method with the default group initialized (``self.backend`` or "tcp").

    Usable bare (``@with_comms``), with a backend (``@with_comms(backend="tcp")``), or as
    torch's DTensor decorator (``@with_comms(eager_init=True)``, ``@with_comms(True)``:
    eager init binds a group to an accelerator, which means nothing on the CPU).
    """
    if fn is None or isinstance(fn, bool):
        return functools.partial(with_comms, backend=backend)

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.rank < 0:  # parent side of a test case: nothing to set up here
            return fn(self, *args, **kwargs)
        if dist.is_initialized() and dist.get_backend() == "threaded":
            return fn(self, *args, **kwargs)
        keep = getattr(self, "_mpdist_keep_group", False)
        world_size = self.world_size
        reuse = keep and dist.is_initialized() and dist.get_world_size() == world_size
        if not reuse:
            if dist.is_initialized():
                dist.destroy_process_group()
            name = backend or getattr(self, "backend", None) or "tcp"
            path = getattr(self, "_mpdist_group_file", None) or self.file_name
            dist.init_process_group(
                name, store=FileStore(path, world_size), rank=self.rank, world_size=world_size
            )
        _worker.harness_group[0] = keep
        try:
            return fn(self, *args, **kwargs)
        finally:
            if not keep and dist.is_initialized():
                dist.destroy_process_group()

    wrapper._mpdist_with_comms = True  # type: ignore[attr-defined]
    return wrapper
