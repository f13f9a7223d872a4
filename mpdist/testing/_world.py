"""Which distributed library a test's ranks talk through: mpdist's (numpy) or torch's, or both.

One harness serves numpy tests and torch tests. Every rank thread of a
``MultiThreadedTestCase`` gets mpdist's ``threaded`` default group. A test class
that uses torch also gets torch's threaded world, installed exactly as torch's own
``MultiThreadedTestCase`` installs it (thread-isolation mode, a thread-local
``_world``, one ``HashStore``, ``init_process_group("threaded")`` in every thread,
everything torn down and reset after the test), so ``torch.distributed`` calls in a
rank see that rank and nothing an earlier test left behind.

Which classes use torch: the class attribute ``torch_world`` decides when it is set
(True or False); when it is None (the default) a class uses torch if torch is
imported and the module of the class, or of one of its bases, uses it (a global
from a ``torch`` module, directly or through a small helper module). torch is never
imported here unless a test already did.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections import Counter
from typing import Any

from mpdist.testing._outcomes import TORCH_THREADS_TERMINATED
from mpdist.testing._preload import imports_of

# Modules whose classes are the harness itself, not a user's test.
_HARNESS_MODULES = ("mpdist.", "unittest", "builtins", "abc", "typing")


def uses_torch(cls: type) -> bool:
    """Whether the ranks of ``cls``'s tests need torch's world (see the module docstring)."""
    explicit = getattr(cls, "torch_world", None)
    if explicit is not None:
        return bool(explicit)
    if "torch" not in sys.modules:
        return False
    modules = {
        klass.__module__
        for klass in cls.__mro__
        if not klass.__module__.startswith(_HARNESS_MODULES)
    }
    sizes = Counter(name.partition(".")[0] for name in list(sys.modules))
    return "torch" in imports_of(modules, sizes)


def distributed_module(cls: type) -> types.ModuleType:
    """The ``torch.distributed`` of ``cls``'s world: torch's if it uses torch, else ``mpdist``."""
    if uses_torch(cls):
        import torch.distributed

        return torch.distributed
    import mpdist

    return mpdist


def default_group(c10d: types.ModuleType) -> Any:
    """The default process group of ``c10d`` (``mpdist`` or ``torch.distributed``)."""
    if c10d.__name__ == "mpdist":
        from mpdist import distributed

        return distributed._get_default_group()
    return c10d.distributed_c10d._get_default_group()


class TorchThreadedWorld:
    """torch's threaded process groups for the rank threads of one test.

    ``install()`` in the main thread before the threads start, ``enter(rank)`` and
    ``leave()`` in each rank thread around the test, ``terminate()`` from any thread
    to make every rank's pending torch collective raise, ``uninstall()`` in the main
    thread after the threads are done (or given up on).
    """

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.world: Any = None
        self.store: Any = None

    def install(self) -> None:
        import torch
        import torch.distributed as c10d
        from torch.testing._internal.distributed import multi_threaded_pg

        torch._C._distributed_c10d._set_thread_isolation_mode(True)
        try:
            multi_threaded_pg.ProcessLocalGroup.reset()
            self.world = multi_threaded_pg._install_threaded_pg()
            self.store = c10d.HashStore()
        except BaseException:
            torch._C._distributed_c10d._set_thread_isolation_mode(False)
            raise

    def _installed(self) -> bool:
        c10d = sys.modules.get("torch.distributed.distributed_c10d")
        return self.world is not None and getattr(c10d, "_world", None) is self.world

    def enter(self, rank: int) -> None:
        """Make torch's default group of this thread the threaded group of rank ``rank``."""
        import torch.distributed as c10d

        c10d.init_process_group("threaded", rank=rank, world_size=self.world_size, store=self.store)

    def leave(self) -> None:
        """Destroy this thread's torch groups (while the world is still this test's)."""
        import torch.distributed as c10d

        if self._installed() and c10d.is_initialized():
            with contextlib.suppress(Exception):
                c10d.destroy_process_group()

    def terminate(self) -> None:
        """Wake every rank waiting in a torch collective; they raise ``SystemExit``."""
        if self.world is None:
            return
        from torch.testing._internal.distributed import multi_threaded_pg

        multi_threaded_pg.ProcessLocalGroup.exception_handle(RuntimeError(TORCH_THREADS_TERMINATED))

    def uninstall(self) -> None:
        """Put torch's global world back as it was before :meth:`install`."""
        if self.world is None:
            return
        import torch
        from torch.testing._internal.distributed import multi_threaded_pg

        try:
            multi_threaded_pg.ProcessLocalGroup.reset()
            if self._installed():
                multi_threaded_pg._uninstall_threaded_pg()
        finally:
            self.world = None
            torch._C._distributed_c10d._set_thread_isolation_mode(False)
