"""Testing tools for distributed code: test cases, fakes, decorators and the pytest plugin.

Each name is imported on first use (PEP 562 ``__getattr__``): the pytest plugin
(``mpdist.testing.plugin``), which pytest loads in every session of an environment where
mpdist is installed, imports this package, and a session that never meets a multi-rank
test should not import the harness, numpy or the distributed stack.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

# What type checkers see; at run time the same names come from _EXPORTS
# (tests/test_lazy_imports.py checks that the two lists agree).
if TYPE_CHECKING:
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
    from mpdist.testing.dtensor import DTensorTestBase as DTensorTestBase
    from mpdist.testing.dtensor import MLPModule as MLPModule
    from mpdist.testing.dtensor import MLPStacked as MLPStacked
    from mpdist.testing.filecheck import FileCheck as FileCheck
    from mpdist.testing.multiprocess import MultiProcessTestCase as MultiProcessTestCase
    from mpdist.testing.multithreaded import MultiThreadedTestCase as MultiThreadedTestCase
    from mpdist.testing.multithreaded import spawn_threads as spawn_threads
    from mpdist.testing.multithreaded import (
        spawn_threads_and_init_comms as spawn_threads_and_init_comms,
    )
    from mpdist.testing.spawn import spawn_ranks as spawn_ranks
    from mpdist.testing.trace import trace_collectives as trace_collectives

# name -> the module it lives in (under the same name)
_EXPORTS: dict[str, str] = {
    "FakeProcessGroup": "mpdist.backends.fake",
    "FakeStore": "mpdist.backends.fake",
    "CollectiveMode": "mpdist.distributed.dispatch",
    "TIMEOUT_OVERRIDE": "mpdist.testing._config",
    "MultiProcessFailure": "mpdist.testing._report",
    "MultiProcessTimeout": "mpdist.testing._report",
    "requires_world_size": "mpdist.testing.decorators",
    "skip_if_lt_x_ranks": "mpdist.testing.decorators",
    "with_comms": "mpdist.testing.decorators",
    "DistributedTestBase": "mpdist.testing.derived",
    "MultiProcContinuousTest": "mpdist.testing.derived",
    # the DTensor test helpers import nn and the device mesh
    "DTensorTestBase": "mpdist.testing.dtensor",
    "MLPModule": "mpdist.testing.dtensor",
    "MLPStacked": "mpdist.testing.dtensor",
    "FileCheck": "mpdist.testing.filecheck",
    "MultiProcessTestCase": "mpdist.testing.multiprocess",
    "MultiThreadedTestCase": "mpdist.testing.multithreaded",
    "spawn_threads": "mpdist.testing.multithreaded",
    "spawn_threads_and_init_comms": "mpdist.testing.multithreaded",
    "spawn_ranks": "mpdist.testing.spawn",
    "trace_collectives": "mpdist.testing.trace",
}

# Not seen by type checkers, which would otherwise accept any attribute of the package.
# Nothing is cached in the package's globals: a name always reads the module sys.modules
# holds now (pytester's in-process runs drop the modules first imported inside them, and
# the plugin recognises a test class by the harness class sys.modules holds).
if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        if name not in _EXPORTS:
            raise AttributeError(f"module 'mpdist.testing' has no attribute {name!r}")
        module = sys.modules.get(_EXPORTS[name]) or importlib.import_module(_EXPORTS[name])
        return getattr(module, name)

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(_EXPORTS))
