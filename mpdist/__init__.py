"""mpdist: test and run distributed numpy code for real.

``import mpdist as dist`` mirrors ``torch.distributed`` on numpy arrays:
stores for rendezvous, process groups with TCP collectives, and (in
``mpdist.testing``) a multi-process test harness.

Every name here is imported on first use (PEP 562 ``__getattr__``): ``import mpdist``
alone imports neither numpy nor the distributed stack. pytest loads mpdist's plugin in
every session of an environment where mpdist is installed, and a project that never uses
mpdist should pay only for registering the plugin's options. ``dist.all_reduce`` imports
the module API the first time it is read.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# What type checkers see; at run time the same names come from _EXPORTS and _STAR_MODULES
# (tests/test_lazy_imports.py checks that the two lists agree).
if TYPE_CHECKING:
    from mpdist import distributed as distributed
    from mpdist import distributed as distributed_c10d  # noqa: F401  (torch.distributed.distributed_c10d)
    from mpdist import process_group as process_group
    from mpdist.autograd.device import device as device
    from mpdist.distributed import *  # noqa: F403  (the module API: distributed.__all__)
    from mpdist.errors import DistBackendError as DistBackendError
    from mpdist.errors import DistError as DistError
    from mpdist.errors import DistNetworkError as DistNetworkError
    from mpdist.errors import DistStoreError as DistStoreError
    from mpdist.errors import QueueEmptyError as QueueEmptyError
    from mpdist.process_group import *  # noqa: F403  (Work, Future, options: process_group.__all__)
    from mpdist.process_group import Work as _Work  # noqa: F401  (torch.distributed._Work)
    from mpdist.random import manual_seed as manual_seed
    from mpdist.store import FileStore as FileStore
    from mpdist.store import HashStore as HashStore
    from mpdist.store import PrefixStore as PrefixStore
    from mpdist.store import Store as Store
    from mpdist.store import TCPStore as TCPStore

# name -> (module, attribute in it; None: the module itself)
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "distributed": ("mpdist.distributed", None),
    "process_group": ("mpdist.process_group", None),
    "distributed_c10d": ("mpdist.distributed", None),
    "device": ("mpdist.autograd.device", "device"),
    "DistBackendError": ("mpdist.errors", "DistBackendError"),
    "DistError": ("mpdist.errors", "DistError"),
    "DistNetworkError": ("mpdist.errors", "DistNetworkError"),
    "DistStoreError": ("mpdist.errors", "DistStoreError"),
    "QueueEmptyError": ("mpdist.errors", "QueueEmptyError"),
    "_Work": ("mpdist.process_group", "Work"),
    "manual_seed": ("mpdist.random", "manual_seed"),
    "FileStore": ("mpdist.store", "FileStore"),
    "HashStore": ("mpdist.store", "HashStore"),
    "PrefixStore": ("mpdist.store", "PrefixStore"),
    "Store": ("mpdist.store", "Store"),
    "TCPStore": ("mpdist.store", "TCPStore"),
}
# Modules whose whole __all__ is exported here (listed once, in their own modules).
_STAR_MODULES = ("mpdist.process_group", "mpdist.distributed")

_OWN_ALL = [
    "DistBackendError",
    "DistError",
    "DistNetworkError",
    "DistStoreError",
    "QueueEmptyError",
    "FileStore",
    "HashStore",
    "PrefixStore",
    "Store",
    "TCPStore",
    "device",
    "manual_seed",
]


# Filled on first use: the star-exported names (-> their module) and the submodules.
_star_names: dict[str, str] = {}
_submodules: set[str] = set()


def _module(name: str) -> Any:
    # sys.modules first: a name read in a loop costs a dict lookup, not importlib's machinery
    return sys.modules.get(name) or importlib.import_module(name)


def _public_names() -> list[str]:
    names = list(_OWN_ALL)
    for star in _STAR_MODULES:
        names += _module(star).__all__
    return names


def _resolve(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is not None:
        module = _module(target[0])
        return module if target[1] is None else getattr(module, target[1])
    if name == "__all__":
        return _public_names()
    if name.startswith("__"):  # probes of dunders (__wrapped__, ...) import nothing
        raise AttributeError(f"module 'mpdist' has no attribute {name!r}")
    if not _submodules:
        _submodules.update(info.name for info in pkgutil.iter_modules(__path__))  # noqa: F405
    if name in _submodules:
        # `from mpdist import aborts` asks for a submodule: import just that one (the
        # module API may be what is importing it, midway through its own import).
        return importlib.import_module(f"{__name__}.{name}")
    if not _star_names:
        for star in _STAR_MODULES:
            for exported in _module(star).__all__:
                _star_names.setdefault(exported, star)
    if name in _star_names:
        return getattr(_module(_star_names[name]), name)
    raise AttributeError(f"module 'mpdist' has no attribute {name!r}")


# Not seen by type checkers, which would otherwise accept any attribute of the package.
# A name is cached in the package's globals once read: ``dist.all_reduce`` is on the
# latency path, and __getattr__ on every read costs 0.5-0.75 us. (A process that drops
# mpdist's modules from sys.modules and imports them again, as pytester's in-process runs
# do with modules first imported inside them, keeps the names it read before: import the
# module API before such runs, as this repository's conftest does.)
if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        value = _resolve(name)
        if not name.startswith("__"):
            globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(_EXPORTS) | set(_public_names()))
