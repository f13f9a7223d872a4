"""``DistributedDataParallel.join()``: training on uneven inputs.

Inside the context, every DDP forward first all-reduces an "active ranks" mask (plus whether
this iteration synchronises gradients). A rank whose data ran out leaves the ``with`` body and
shadows the others: each round it contributes a zero mask and, when the others run a synced
backward, zero gradients through the same collectives, so nobody hangs. When the mask sums to
zero every rank has joined; the model state of the highest-ranked last joiner is broadcast so
all replicas end identical.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

from mpdist import distributed as dist

if TYPE_CHECKING:
    from mpdist.parallel.ddp import DistributedDataParallel

EARLY_TERMINATION = "Detected at least one rank that exhausted inputs. Throwing across all ranks."


class Join:
    """The context manager returned by ``DistributedDataParallel.join``."""

    def __init__(
        self,
        ddp: DistributedDataParallel,
        divide_by_initial_world_size: bool = True,
        enable: bool = True,
        throw_on_early_termination: bool = False,
    ) -> None:
        self.ddp = ddp
        self.divide_by_initial_world_size = divide_by_initial_world_size
        self.enable = enable
        self.throw_on_early_termination = throw_on_early_termination
        self.world_size = ddp.reducer.world_size
        self.rank = ddp.reducer.rank
        self.last_mask: np.ndarray | None = None

    def __enter__(self) -> Join:
        if self.enable:
            if self.ddp._join is not None:
                raise RuntimeError("DistributedDataParallel.join() contexts cannot be nested")
            self.ddp._join = self
        return self

    def _round(self, active: bool, sync: bool) -> np.ndarray:
        """One all-reduce of the mask: slots 0..n-1 say who is active, slot n whether the
        active ranks synchronise gradients this iteration."""
        mask = np.zeros(self.world_size + 1, dtype=np.int64)
        if active:
            mask[self.rank] = 1
            mask[-1] = int(sync)
        dist.all_reduce(mask, group=self.ddp.process_group)
        if mask[: self.world_size].any():
            self.last_mask = mask
        return mask

    def before_forward(self, sync: bool) -> int:
        """Called by an active rank's forward; returns the lowest active group rank."""
        mask = self._round(active=True, sync=sync)
        active = mask[: self.world_size]
        if self.throw_on_early_termination and active.sum() < self.world_size:
            raise RuntimeError(EARLY_TERMINATION)
        if not self.divide_by_initial_world_size:
            self.ddp.reducer.divisor = int(active.sum())
        return int(np.flatnonzero(active)[0])

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.enable:
            return
        try:
            if exc_type is None:
                self._shadow_until_all_joined()
        finally:
            self.ddp._join = None
            self.ddp.reducer.divisor = self.world_size

    def _shadow_until_all_joined(self) -> None:
        ddp = self.ddp
        while True:
            mask = self._round(active=False, sync=False)
            active = mask[: self.world_size]
            if not active.any():
                break
            if self.throw_on_early_termination:
                raise RuntimeError(EARLY_TERMINATION)
            if ddp.broadcast_buffers and mask[-1]:
                ddp._broadcast_buffers(int(np.flatnonzero(active)[0]))
            if mask[-1]:
                ddp.reducer.shadow_backward()
        if self.last_mask is not None:
            # the highest-ranked rank that was still training in the last active round
            src = int(np.flatnonzero(self.last_mask[: self.world_size])[-1])
            ddp._sync_states_from(src)
