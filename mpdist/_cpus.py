"""How many CPUs this process may use, and how many ranks share them: the one rule for
every choice that depends on a spare core (DDP's communication thread, xdist workers, BLAS
threads)."""

from __future__ import annotations

import math
import os

__all__ = ["local_ranks", "usable_cpus"]


def _cgroup_cpus() -> float | None:
    """The CPU quota of this process's cgroup in cpus (v2 ``cpu.max``, v1 CFS), if limited."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota_us = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period_us = int(f.read())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup's quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def local_ranks(world_size: int) -> int:
    """Ranks of the job on this host: ``LOCAL_WORLD_SIZE`` (set by ``mpdist run`` and
    torchrun), else ``world_size`` (all of them, the safe guess)."""
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    return int(local) if local.isdigit() and int(local) > 0 else world_size
