"""How the launcher's rank processes start on Linux: killed with their launcher, and on request all with one address layout.

``prctl`` (``PR_SET_PDEATHSIG``, ``PR_SET_CHILD_SUBREAPER``) and ``personality`` come from
libc through ctypes; elsewhere there is no libc to ask and ranks start as plain children.

One layout (``mpdist run --no-aslr``): each exec'd process gets its own random
address-space layout (ASLR). Ranks that take turns on a core (more ranks than cores) run
small collectives faster when their code lies at the same addresses, as ranks forked
from one process do (the test harness's, from its forkserver): 4 ranks on 2 cores, a
4-byte all_reduce 41-53 us launched as is, 31-35 us with one layout. Turning ASLR off for
the ranks gives them all the same layout (what ``setarch -R`` and debuggers do); it also
gives up a defence against memory-corruption exploits, so it is the user's choice.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["PR_SET_CHILD_SUBREAPER", "libc_function", "one_layout", "rank_preexec"]

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
ADDR_NO_RANDOMIZE = 0x0040000  # personality(2): no address-space randomization
_QUERY = 0xFFFFFFFF  # personality(2) argument that only returns the current persona


def libc_function(name: str) -> Callable[..., int] | None:
    """Function ``name`` of libc on Linux (``prctl``, ``personality``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None


def rank_preexec(prctl: Callable[..., int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` making the kernel SIGKILL the rank if the launcher dies, or None."""
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os._exit(137)

    return preexec


@contextmanager
def one_layout() -> Iterator[None]:
    """Programs exec'd inside the block (by this process's children) get no address
    randomization, so all of them lie at the same addresses; this process's own persona
    is given back after. OSError, saying why, where the system refuses (not Linux, or a
    seccomp profile that forbids it, as container runtimes' defaults do)."""
    personality = libc_function("personality")
    if personality is None:
        raise OSError(errno.ENOSYS, "turning address randomization off needs Linux")
    old = personality(_QUERY)
    if old == -1 or personality(old | ADDR_NO_RANDOMIZE) == -1:
        code = ctypes.get_errno()
        raise OSError(
            code,
            f"the system refuses to turn address randomization off (personality: "
            f"{os.strerror(code)}; a container's seccomp profile can forbid it)",
        )
    try:
        yield
    finally:
        personality(old)
