"""torch's harness classes built on MultiProcessTestCase: DistributedTestBase, MultiProcContinuousTest.

Suites built on torch's ``DistributedTestBase`` (a group per test through
``create_pg(device)``) or ``MultiProcContinuousTest`` (ranks and their group kept
for a whole class) swap to these by import. Both talk through torch's
``torch.distributed`` when the test class uses torch, else through mpdist's (see
:mod:`mpdist.testing._world`); mpdist runs on the CPU, so in mpdist's world a
device other than the CPU is an error::

    class TestSum(MultiProcContinuousTest):
        world_size = 2

        def test_sum(self):          # the default group is up in every rank
            a = np.ones(2); dist.all_reduce(a); assert (a == 2).all()
"""

from __future__ import annotations

import contextlib
import inspect
import os
import unittest
from datetime import timedelta
from typing import Any, ClassVar

from mpdist.testing import _config, _worker
from mpdist.testing._world import default_group, distributed_module, uses_torch
from mpdist.testing.multiprocess import MultiProcessTestCase

# torch's choice of backend by device type; only "cpu" (gloo) is mpdist's own.
_ACCELERATOR_BACKENDS = (("cuda", "nccl"), ("hpu", "hccl"), ("xpu", "xccl"))


def _cpu_only(device: str, what: str) -> None:
    if not str(device).startswith("cpu"):
        raise ValueError(f"{what}: mpdist runs on the CPU, got device {device!r}")


class DistributedTestBase(MultiProcessTestCase):
    """torch's ``DistributedTestBase``: ranks spawned in ``setUp``, a group per test from ``create_pg``.

    ``create_pg(device)`` initializes the default group for ``device`` ("cpu": gloo)
    and returns it; ``tearDown`` removes the store file. ``WORLD_SIZE`` is set in the
    environment, as torch's class sets it.
    """

    def setUp(self) -> None:
        super().setUp()
        os.environ["WORLD_SIZE"] = str(self.world_size)
        self._spawn_processes()

    def tearDown(self) -> None:
        with contextlib.suppress(OSError):
            os.remove(self.file_name)
        super().tearDown()

    def backend(self, device: str) -> str:
        """The backend torch picks for ``device``: gloo on the CPU."""
        if uses_torch(type(self)):
            for kind, name in _ACCELERATOR_BACKENDS:
                if kind in device:
                    return name
            return "gloo"
        _cpu_only(device, "backend")
        return "gloo"

    def create_pg(self, device: str, world_size: int | None = None) -> Any:
        """Initialize the default group of this rank for ``device`` and return it."""
        backend = self.backend(device)
        c10d = distributed_module(type(self))
        size = self.world_size if world_size is None else world_size
        c10d.init_process_group(
            backend=backend,
            world_size=size,
            rank=self.rank,
            store=c10d.FileStore(self.file_name, size),
        )
        return default_group(c10d)

    def rank_to_device(self, device: str) -> dict[int, list[int]]:
        """Each rank's device indices (one CPU: index 0 for every rank)."""
        if not uses_torch(type(self)):
            _cpu_only(device, "rank_to_device")
        return {rank: [0] for rank in range(self.world_size)}


class MultiProcContinuousTest(MultiProcessTestCase):
    """torch's ``MultiProcContinuousTest``: ranks and their default group live for the whole class.

    The ranks start at the class's first test (mpdist's worker reuse) and call
    ``_init_pg(rank, world_size, rdvz_file)`` once; each test then runs with
    ``self.rank``, ``self.world_size`` and ``cls.pg`` set. After a failing test the
    rest of the class is skipped ("Previous test failed, ..."), as in torch.

    Class attributes: ``world_size`` (an int; unset: the harness default, 4),
    ``timeout`` (a ``timedelta``: the group's timeout, as torch's; a test's deadline
    is ``TIMEOUT_OVERRIDE`` or ``--mp-timeout``), ``backend_str()`` (None: gloo),
    ``opts()`` (the group's ``pg_options``), ``device_type()`` ("cpu").
    """

    world_size: int = -2  # unset, as torch spells it
    rank: int = -2
    rdvz_file: str | None = None
    # The group's timeout here (torch's meaning for this class), not the test's deadline.
    timeout: ClassVar[timedelta] = timedelta(seconds=120)  # type: ignore[assignment]
    poison_pill: bool = False
    pg: Any = None
    reuse_processes: ClassVar[bool] = True
    _mpdist_keeps_group: ClassVar[bool] = True

    @classmethod
    def backend_str(cls) -> str | None:
        """The group's backend (None: chosen by the library, gloo on the CPU)."""
        return None

    @classmethod
    def device_type(cls) -> str:
        """The device the tests run on: the CPU."""
        return "cpu"

    @classmethod
    def opts(cls, high_priority_stream: bool = False) -> Any:
        """``pg_options`` for the group (None: the backend's defaults)."""
        return None

    @classmethod
    def _init_pg(cls, rank: int, world_size: int, rdvz_file: str) -> None:
        """Initialize this rank's default group (once per rank process) and keep it in ``cls.pg``."""
        os.environ["LOCAL_RANK"] = str(rank)
        c10d = distributed_module(cls)
        backend = cls.backend_str()
        if backend is None and not uses_torch(cls):
            backend = "gloo"
        kwargs: dict[str, Any] = {}
        options = cls.opts()
        if options is not None:
            kwargs["pg_options"] = options
        c10d.init_process_group(
            backend=backend,
            world_size=world_size,
            rank=rank,
            store=c10d.FileStore(rdvz_file, world_size),
            timeout=cls.timeout,
            **kwargs,
        )
        cls.pg = default_group(c10d)

    @classmethod
    def _get_world_size(cls, device_type: str) -> int:
        """The class's world size, from a class attribute or a property."""
        attr = inspect.getattr_static(cls, "world_size", None)
        if isinstance(attr, property) and attr.fget is not None:
            size = attr.fget(object.__new__(cls))
        else:
            size = cls.world_size
        if size == -2:
            return _config.default_world_size(_config.CASE_DEFAULT_WORLD_SIZE)
        return int(size)

    def _mpdist_resolve_world_size(self) -> int:
        device = self.device_type()
        if not uses_torch(type(self)):
            _cpu_only(device, type(self).__name__)
        return type(self)._get_world_size(device)

    def _mpdist_deadline(self) -> float:
        # ``timeout`` is the group's timedelta here, not the test's deadline.
        return _config.default_timeout(None, self._testMethodName)

    def setUp(self) -> None:
        if type(self).poison_pill:
            raise unittest.SkipTest(f"Previous test failed, skipping {self.id()}")
        super().setUp()
        self.rank = self.MAIN_PROCESS_RANK

    def _check_return_codes(self, fn: Any, elapsed_time: float) -> None:
        try:
            super()._check_return_codes(fn, elapsed_time)
        except unittest.SkipTest:
            raise
        except BaseException:
            type(self).poison_pill = True
            raise

    def _mpdist_rank_setup(self) -> None:
        cls = type(self)
        world_size = self._mpdist_world_size
        assert world_size is not None
        self.world_size = cls.world_size = world_size
        cls.rank = self.rank
        c10d = distributed_module(cls)
        if _worker.harness_group[0] and c10d.is_initialized():
            return
        cls.rdvz_file = self._mpdist_group_file or self.file_name
        cls._init_pg(self.rank, world_size, cls.rdvz_file)
        # The group serves the class's next tests in this worker.
        _worker.harness_group[0] = True
