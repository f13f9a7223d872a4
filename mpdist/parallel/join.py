"""Training on uneven inputs: the ``Join`` context manager and the ``Joinable`` protocol.

As torch's ``torch.distributed.algorithms.join``: a ``Joinable`` (``DistributedDataParallel``,
say) is something whose iterations run collectives, so a rank whose data ran out would leave
the others hanging. Inside ``Join([joinable, ...])`` every iteration of an active rank first
calls ``Join.notify_join_context(joinable)``: one all-reduce of an "active ranks" mask, plus a
flag whose meaning the joinable chooses (DDP: whether this iteration synchronises gradients).
A rank that leaves the ``with`` body shadows the others: each round it contributes a zero mask
and, while some rank is still active, runs every joinable's ``JoinHook.main_hook()``, which
issues the same collectives an active iteration issues. When the mask sums to zero every rank
has joined, and each hook's ``post_hook(is_last_joiner)`` runs (DDP: make all replicas
identical).

This module knows nothing of any particular joinable; the rounds are its whole protocol.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np

from mpdist import distributed as dist

EARLY_TERMINATION = "Detected at least one rank that exhausted inputs. Throwing across all ranks."


class JoinRound(NamedTuple):
    """What one round of the join all-reduce told this rank."""

    active: np.ndarray  # one bool per group rank: still iterating this round
    flag: bool  # some active rank raised the round's flag (the joinables give it a meaning)

    @property
    def num_active(self) -> int:
        """How many ranks were still iterating."""
        return int(self.active.sum())

    @property
    def first_active(self) -> int:
        """The lowest active group rank (requires some rank to be active)."""
        return int(np.flatnonzero(self.active)[0])

    @property
    def last_active(self) -> int:
        """The highest active group rank (requires some rank to be active)."""
        return int(np.flatnonzero(self.active)[-1])


class JoinHook:
    """What a rank that has joined does for one joinable (the defaults do nothing)."""

    def main_hook(self) -> None:
        """One shadow round while other ranks still iterate: issue the collectives an active
        iteration of the joinable issues. The round is the context's ``last_round``."""

    def post_hook(self, is_last_joiner: bool) -> None:
        """Every rank has joined; ``is_last_joiner``: this rank never had to shadow."""


class Joinable(abc.ABC):
    """Something that can take part in a ``Join`` context.

    Its iterations call ``Join.notify_join_context(self)`` before their collectives. While a
    context is entered, ``_join`` is that context (None otherwise).
    """

    _join: Join | None = None

    @abc.abstractmethod
    def join_hook(self, **kwargs: Any) -> JoinHook:
        """The hook a joined rank runs for this joinable; ``kwargs`` are ``Join``'s extra
        keyword arguments."""

    @property
    @abc.abstractmethod
    def join_device(self) -> str:
        """Where the join mask lives (mpdist: always ``"cpu"``)."""

    @property
    @abc.abstractmethod
    def join_process_group(self) -> Any:
        """The process group whose ranks join."""


class Join:
    """Context manager for uneven inputs across the ranks of the joinables' process group.

    ``enable=False`` makes it do nothing. ``throw_on_early_termination=True``: every rank
    raises as soon as one has run out of inputs, instead of shadowing. Other keyword arguments
    go to each joinable's ``join_hook``.
    """

    def __init__(
        self,
        joinables: Iterable[Joinable],
        enable: bool = True,
        throw_on_early_termination: bool = False,
        **kwargs: Any,
    ) -> None:
        self.joinables = list(joinables)
        if not self.joinables:
            raise ValueError("The join context manager requires at least one joinable")
        for j in self.joinables:
            if not isinstance(j, Joinable):
                raise TypeError(f"Join expects Joinable objects, got {type(j).__name__}")
        self.process_group = self.joinables[0].join_process_group
        if any(j.join_process_group is not self.process_group for j in self.joinables):
            raise ValueError("Using join context manager with multiple process groups")
        self.hooks = [j.join_hook(**kwargs) for j in self.joinables]
        self.enable = enable
        self.throw_on_early_termination = throw_on_early_termination
        self.world_size = dist.get_world_size(self.process_group)
        self.rank = dist.get_rank(self.process_group)
        self.last_round: JoinRound | None = None  # this rank's latest round
        self.last_active_round: JoinRound | None = None  # the latest in which a rank was active

    def __enter__(self) -> Join:
        if self.enable:
            for j in self.joinables:
                if j._join is not None:
                    raise RuntimeError(f"{type(j).__name__}.join() contexts cannot be nested")
            for j in self.joinables:
                j._join = self
        return self

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
            for j in self.joinables:
                j._join = None

    def hook_of(self, joinable: Joinable) -> JoinHook:
        """The hook this context made for ``joinable``."""
        for j, hook in zip(self.joinables, self.hooks, strict=True):
            if j is joinable:
                return hook
        raise ValueError(f"{type(joinable).__name__} is not a joinable of this Join context")

    @staticmethod
    def notify_join_context(joinable: Joinable, flag: bool = False) -> JoinRound | None:
        """Called by an active rank at the start of each iteration of ``joinable``: run this
        round of the join context it is in (only the context's first joinable does; None
        otherwise, and outside a context). ``flag`` is this rank's bit for ``JoinRound.flag``.
        """
        join = joinable._join
        if join is None or joinable is not join.joinables[0]:
            return None
        rnd = join._round(active=True, flag=flag)
        if join.throw_on_early_termination and rnd.num_active < join.world_size:
            raise RuntimeError(EARLY_TERMINATION)
        return rnd

    def _round(self, active: bool, flag: bool) -> JoinRound:
        """One all-reduce of the mask: slots 0..n-1 say who is active, slot n how many active
        ranks raised the flag."""
        mask = np.zeros(self.world_size + 1, dtype=np.int64)
        if active:
            mask[self.rank] = 1
            mask[-1] = int(flag)
        dist.all_reduce(mask, group=self.process_group)
        rnd = JoinRound(mask[: self.world_size] > 0, bool(mask[-1]))
        self.last_round = rnd
        if rnd.active.any():
            self.last_active_round = rnd
        return rnd

    def _shadow_until_all_joined(self) -> None:
        is_last_joiner = True
        while True:
            rnd = self._round(active=False, flag=False)
            if not rnd.active.any():
                break
            if self.throw_on_early_termination:
                raise RuntimeError(EARLY_TERMINATION)
            is_last_joiner = False
            for hook in self.hooks:
                hook.main_hook()
        for hook in self.hooks:
            hook.post_hook(is_last_joiner)
