"""The one RNG per rank behind ``manual_seed``: parameter initialisation (``nn.init``) and the
random tensor functions (``autograd.randn``, ``rand``, ``randint``, ``randperm``) draw from it,
so ``manual_seed(s)`` makes both reproducible, as ``torch.manual_seed`` does.

Each thread has its own generator, because the threaded backend runs every rank as a thread
and ranks must not consume each other's random numbers. A thread's generator is created on
first use from the seed most recently passed to ``manual_seed`` in any thread (or the default
seed), so seeding once before starting threads seeds them all alike.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

DEFAULT_SEED = 67280421310721

_local = threading.local()
_process_seed = DEFAULT_SEED


def manual_seed(seed: int) -> np.random.Generator:
    """Seed this thread's generator (and set the seed new threads start from); also
    ``mpdist.autograd.manual_seed``."""
    global _process_seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"manual_seed expects an int, got {type(seed).__name__}")
    seed = int(seed) & 0xFFFF_FFFF_FFFF_FFFF
    _process_seed = seed
    _local.seed = seed
    _local.gen = np.random.default_rng(seed)
    return _local.gen


def default_generator() -> np.random.Generator:
    """This thread's generator (what ``nn.init`` and the random tensor functions draw from)."""
    gen = getattr(_local, "gen", None)
    if gen is None:
        _local.seed = _process_seed
        gen = _local.gen = np.random.default_rng(_process_seed)
    return gen


def initial_seed() -> int:
    """The seed this thread's generator started from."""
    default_generator()
    return int(_local.seed)


def get_rng_state() -> dict[str, Any]:
    """A snapshot of this thread's generator, for ``set_rng_state``."""
    # numpy types the getter as a Mapping; it builds a new dict on every read
    return dict(default_generator().bit_generator.state)


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a snapshot taken by ``get_rng_state``."""
    default_generator().bit_generator.state = state
