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

from mpdist.testing import _torch_internals
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
    return _torch_internals.default_group(c10d)


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
        import torch.distributed as c10d

        _torch_internals.set_thread_isolation(True)
        try:
            _torch_internals.reset_threaded_groups()
            self.world = _torch_internals.install_threaded_world()
            self.store = c10d.HashStore()
        except BaseException:
            _torch_internals.set_thread_isolation(False)
            raise

    def _installed(self) -> bool:
        return self.world is not None and _torch_internals.threaded_world_is(self.world)

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
        _torch_internals.fail_threaded_collectives(RuntimeError(TORCH_THREADS_TERMINATED))

    def uninstall(self) -> None:
        """Put torch's global world back as it was before :meth:`install`."""
        if self.world is None:
            return
        try:
            _torch_internals.reset_threaded_groups()
            if self._installed():
                _torch_internals.uninstall_threaded_world()
        finally:
            self.world = None
            _torch_internals.set_thread_isolation(False)
