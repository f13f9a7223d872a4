"""What the benchmarks share about the processes they start: the BLAS thread variables those
start with, and whether torch runs beside them."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["THREAD_VARS", "blas_threads", "torch_side"]

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
