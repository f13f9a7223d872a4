"""Which modules the harness's forkserver preloads, and when restarting it pays.

multiprocessing reads a forkserver's preload list only when it starts the server, and a
running server cannot import anything more. Ranks forked from it inherit what it imported;
anything else each rank imports itself, at every start. For light test modules that is
cheap, but a heavy package (torch: 1-3 s per 2-rank test) is worth one restart of an idle
server that preloads it (see ``ForkserverPreload``). multiprocessing's private forkserver
names are reached through ``_mp_internals``; without them nothing is restarted.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import types
import warnings
from collections import Counter
from collections.abc import Iterable
from typing import Any

import psutil

from mpdist.testing import _mp_internals, _pytest_internals, _worker

__all__ = [
    "BASE_PRELOAD",
    "HEAVY_PACKAGE_MODULES",
    "ForkserverPreload",
    "forkserver_preload",
    "imports_of",
]

# What every forkserver imports before it forks a rank.
BASE_PRELOAD = ("mpdist.testing._worker", "numpy", "numpy.random")
# Top-level packages a forkserver has once BASE_PRELOAD (and pytest) are imported.
_BASE_PACKAGES = frozenset({"mpdist", "numpy", "pytest", "_pytest", "pluggy", "psutil", "filelock"})
# A package with at least this many modules loaded here is heavy: ranks importing it at
# every start cost more than restarting the forkserver once with it preloaded. Measured
# on 2 cores: a restart costs 0.2-0.3 s once; not preloaded, hypothesis (77 modules)
# costs 0.1-0.15 s and torch (766 modules) 1-3 s per 2-rank test; attr (13 modules) or
# psutil (6) about 20 ms.
HEAVY_PACKAGE_MODULES = 50


def imports_of(module_names: Iterable[str], sizes: Counter[str]) -> dict[str, set[str]]:
    """The modules (not stdlib) the given modules' globals come from, by top-level package.

    Small modules reached that way (a test's helper module) are looked into as well,
    so ``from helpers import model`` where ``helpers`` imports torch counts torch.
    """
    found: dict[str, set[str]] = {}
    visited: set[str] = set()
    todo = [n for n in module_names if n in sys.modules]
    while todo:
        name = todo.pop()
        if name in visited:
            continue
        visited.add(name)
        for value in list(vars(sys.modules[name]).values()):
            try:
                # Deprecated module attributes warn when touched; this look is not a use.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    source = value.__name__ if isinstance(value, types.ModuleType) else None
                    source = source or getattr(value, "__module__", None)
            except Exception:  # an object whose attributes misbehave tells nothing
                continue
            if not isinstance(source, str) or not isinstance(
                sys.modules.get(source), types.ModuleType
            ):
                continue
            top = source.partition(".")[0]
            if top in sys.stdlib_module_names or top in ("builtins", "__main__", "__mp_main__"):
                continue
            found.setdefault(top, set()).add(source)
            if sizes[top] < HEAVY_PACKAGE_MODULES and top not in _BASE_PACKAGES:
                todo.append(source)
    return found


class ForkserverPreload:
    """Which modules the harness's forkserver imports before it forks ranks.

    multiprocessing reads the preload list only when it starts the server, and a
    running server cannot import anything more. The first server preloads the first
    test's module (and through it its imports). A later test module using a heavy
    package (see HEAVY_PACKAGE_MODULES) the running server lacks gets the server
    stopped, only while it has no live child (no rank, no pool worker), and the next
    start launches one that also preloads the modules of every heavy package seen so
    far: installed packages import cleanly anywhere, where a test module might not.
    Light test modules never cost a restart: importing them in each rank is cheap.
    """

    def __init__(self) -> None:
        self.heavy: dict[str, None] = {}  # modules of heavy packages, in order of first use
        self.test_tops: set[str] = set()  # top-level names of test modules: the suite's own code
        self.server_pid: int | None = None
        self.server_modules: tuple[str, ...] = ()
        self.last_set: tuple[str, ...] = ()
        self.light: set[str] = set()  # test modules needing nothing the server lacks
        self.restarts = 0

    def modules(self, wanted: list[str]) -> list[str]:
        """The modules the next server start loads: its imports and the ``wanted`` tests."""
        modules = list(BASE_PRELOAD)
        if "pytest" in sys.modules:
            modules.append("pytest")
        return modules + [m for m in [*self.heavy, *wanted] if m not in modules]

    def _set_list(self, ctx: Any, wanted: list[str], tests: dict[str, str]) -> None:
        """Give ``ctx`` the preload list for the next server start.

        Test modules that run with rewritten asserts (``tests``: name -> path, and those
        of ``wanted`` pytest rewrote) are not imported plainly: the server runs them as
        the ranks would, listed in ``$MPDIST_SERVER_TEST_MODULES`` for ``_server_modules``.
        """
        tests = dict(tests)
        plain = []
        for name in wanted:
            module = sys.modules.get(name)
            path = getattr(module, "__file__", None)
            if module is not None and path and _pytest_internals.was_rewritten(module):
                tests[name] = path
            else:
                plain.append(name)
        self.last_set = tuple(self.modules([*plain, *tests]))
        preload = self.modules(plain)
        if tests:
            os.environ[_worker.SERVER_MODULES_ENV] = json.dumps(list(tests.items()))
            preload.append("mpdist.testing._server_modules")
        else:
            os.environ.pop(_worker.SERVER_MODULES_ENV, None)
        ctx.set_forkserver_preload(preload)  # read when the server (re)starts

    def missing(self, wanted: list[str]) -> dict[str, set[str]]:
        """Modules of heavy packages the ``wanted`` modules use that the server has not loaded."""
        sizes = Counter(name.partition(".")[0] for name in list(sys.modules))
        tops = {m: m.partition(".")[0] for m in self.server_modules}
        have = set(_BASE_PACKAGES) | set(tops.values())
        # What the preloaded test modules imported came along into the server.
        have |= set(imports_of([m for m, t in tops.items() if t not in _BASE_PACKAGES], sizes))
        return {
            top: modules
            for top, modules in imports_of(wanted, sizes).items()
            if top not in have and top not in self.test_tops and sizes[top] >= HEAVY_PACKAGE_MODULES
        }

    def prepare(self, ctx: Any, wanted: list[str]) -> None:
        """Set the preload list for ``wanted`` test modules; restart the server if it pays."""
        self.test_tops.update(m.partition(".")[0] for m in wanted)
        pid = _own_server_pid()
        if pid is not None and pid != self.server_pid:
            # Started since the last look: with the list set then.
            self.server_pid, self.server_modules = pid, self.last_set
            self.light = set()
        new = [m for m in wanted if m not in self.server_modules and m not in self.light]
        if pid is not None and new:
            lacking = self.missing(new)
            if not lacking:
                self.light.update(new)
            elif _idle(pid):  # (not idle: a pool's workers still run; the next test looks again)
                for modules in lacking.values():
                    self.heavy.update(dict.fromkeys(sorted(modules)))
                if _mp_internals.stop_server(pid):
                    self.restarts += 1
                    self.server_pid, self.server_modules = None, ()
        self._set_list(ctx, wanted, {})

    def start_early(
        self, ctx: Any, heavy_modules: list[str], tests: dict[str, str] | None = None
    ) -> bool:
        """Start the server now, preloading ``heavy_modules``, unless one already runs.

        The server imports its preload list in its own process: started while the
        parent is still importing the same package for collection, the two imports
        run side by side instead of one after the other before the first test.
        ``tests`` (name -> path) are test modules the server runs with rewritten asserts.
        Returns whether a server was started.
        """
        if _own_server_pid() is not None or not _mp_internals.server_visible():
            return False
        self.heavy.update(dict.fromkeys(heavy_modules))
        self.test_tops.update(name.partition(".")[0] for name in tests or {})
        self._set_list(ctx, [], tests or {})
        _mp_internals.start_server()
        return True


def _own_server_pid() -> int | None:
    """The running forkserver's pid, if this process started it and it is alive."""
    pid = _mp_internals.server_pid()
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.ppid() != os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return pid


def _idle(pid: int) -> bool:
    """Whether the forkserver has no live child (ranks and pool workers are its children)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return False
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.status() != psutil.STATUS_ZOMBIE:
                return False
    return True


forkserver_preload = ForkserverPreload()  # the harness's one forkserver per process
