"""Testing tools for distributed code: test cases, fakes, decorators and the pytest plugin."""

from __future__ import annotations

from typing import Any

from mpdist.backends.fake import FakeProcessGroup as FakeProcessGroup
from mpdist.backends.fake import FakeStore as FakeStore
from mpdist.distributed.dispatch import CollectiveMode as CollectiveMode
from mpdist.testing._config import TIMEOUT_OVERRIDE as TIMEOUT_OVERRIDE
from mpdist.testing._report import MultiProcessFailure as MultiProcessFailure
from mpdist.testing._report import MultiProcessTimeout as MultiProcessTimeout
from mpdist.testing.decorators import requires_world_size as requires_world_size
from mpdist.testing.decorators import skip_if_lt_x_ranks as skip_if_lt_x_ranks
from mpdist.testing.decorators import with_comms as with_comms
from mpdist.testing.derived import DistributedTestBase as DistributedTestBase
from mpdist.testing.derived import MultiProcContinuousTest as MultiProcContinuousTest
from mpdist.testing.filecheck import FileCheck as FileCheck
from mpdist.testing.multiprocess import MultiProcessTestCase as MultiProcessTestCase
from mpdist.testing.multithreaded import MultiThreadedTestCase as MultiThreadedTestCase
from mpdist.testing.multithreaded import spawn_threads as spawn_threads
from mpdist.testing.multithreaded import (
    spawn_threads_and_init_comms as spawn_threads_and_init_comms,
)
from mpdist.testing.spawn import spawn_ranks as spawn_ranks
from mpdist.testing.trace import trace_collectives as trace_collectives

# the DTensor test helpers (testing/dtensor.py) import nn and the device mesh: only on demand
_DTENSOR_HELPERS = ("DTensorTestBase", "MLPModule", "MLPStacked")


def __getattr__(name: str) -> Any:
    if name in _DTENSOR_HELPERS:
        from mpdist.testing import dtensor

        return getattr(dtensor, name)
    raise AttributeError(f"module 'mpdist.testing' has no attribute {name!r}")
