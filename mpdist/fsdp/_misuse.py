"""What FSDP1 and ``fully_shard`` check of their users: parameters equal on every rank when
they are sharded, and no parameter used outside the forward of the unit that owns it.

A parameter is only whole inside its unit's forward (and backward); elsewhere a module holds
its shard. While a root's forward runs, every owner module of a parameter whose unit is not
running shows an ``OutsideForward`` guard under the parameter's name (an instance attribute,
which attribute lookup finds before the registered parameter; ``named_parameters()`` and the
optimizer still see the real one). Touching the guard raises an error naming the parameter,
instead of a shape mismatch deep in numpy or a DTensor/Tensor mix-up.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from mpdist import distributed as dist
from mpdist.process_group import ProcessGroup


class OutsideForward:
    """Stands for a sharded parameter while another unit's forward runs; any use raises."""

    __slots__ = ("_message",)

    def __init__(self, fqn: str, api: str, remedy: str) -> None:
        object.__setattr__(
            self,
            "_message",
            f"{api}: parameter {fqn!r} was used outside the forward of the unit that owns it; "
            f"there it is sharded, not gathered. {remedy}",
        )

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(object.__getattribute__(self, "_message"))

    def __getattr__(self, name: str) -> Any:
        return self._fail()

    __array__ = _fail
    __matmul__ = __rmatmul__ = __add__ = __radd__ = __mul__ = __rmul__ = _fail
    __sub__ = __rsub__ = __truediv__ = __rtruediv__ = __neg__ = __getitem__ = _fail

    def __repr__(self) -> str:
        return f"OutsideForward({object.__getattribute__(self, '_message')!r})"


def show_guard(module: Any, name: str, guard: OutsideForward | None) -> None:
    """Put ``guard`` in front of ``module``'s parameter ``name`` (``None``: take it away)."""
    if guard is None:
        if isinstance(module.__dict__.get(name), OutsideForward):
            del module.__dict__[name]
    else:
        module.__dict__[name] = guard


def check_same_across_ranks(
    named: list[tuple[str, np.ndarray]], pg: ProcessGroup, api: str
) -> None:
    """Raise naming the parameters whose values differ between the ranks of ``pg`` (one
    all-gather of a checksum per parameter)."""
    if not named:
        return
    sums = np.array([zlib.crc32(np.ascontiguousarray(a).tobytes()) for _, a in named], np.int64)
    world = dist.get_world_size(pg)
    flat = np.empty(world * sums.size, dtype=np.int64)
    dist.all_gather_into_tensor(flat, sums, group=pg)
    every = flat.reshape(world, sums.size)
    differ = [named[i][0] for i in np.flatnonzero((every != every[0]).any(axis=0))]
    if differ:
        remedy = (
            "Pass sync_module_states=True to broadcast rank 0's values, or seed every rank "
            "the same way."
            if api == "FSDP"
            else "Seed every rank the same way, or broadcast the values before sharding."
        )
        raise RuntimeError(
            f"{api} expects the same parameter values on every rank at construction, but "
            f"{', '.join(differ)} differ across ranks. {remedy}"
        )
