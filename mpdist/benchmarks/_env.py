"""What the benchmarks share: the BLAS thread variables of the processes they start, whether
torch runs beside them, and the training step they time."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["THREAD_VARS", "blas_threads", "sgd_mse_step", "torch_side"]

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """The BLAS thread variables set to ``n`` for processes started inside the block."""
    saved = {k: os.environ.get(k) for k in THREAD_VARS}
    os.environ.update({k: str(n) for k in THREAD_VARS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def torch_side(vs: str | None, bench: str) -> bool | None:
    """Whether torch runs side by side: ``--vs torch`` asks for it, ``--vs none`` refuses it,
    no ``--vs`` means "when torch is installed". None (after saying why on stderr) when
    torch is asked for and not installed."""
    try:
        import torch  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False
    if vs == "torch" and not have_torch:
        print(f"mpdist bench {bench}: --vs torch needs torch installed", file=sys.stderr)
        return None
    return have_torch if vs is None else vs == "torch"


def sgd_mse_step(
    model: Any, x: Any, y: Any, lr: float, momentum: float = 0.0
) -> Callable[[], None]:
    """One timed step of an mpdist model: zero the gradients, MSE loss backward, SGD step."""
    from mpdist.nn import functional as F
    from mpdist.optim import SGD

    opt = SGD(model.parameters(), lr=lr, momentum=momentum)

    def step() -> None:
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()

    return step
