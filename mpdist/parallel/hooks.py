"""Communication hooks for DistributedDataParallel: ``allreduce_hook``, ``fp16_compress_hook``.

A hook is ``hook(state, bucket) -> Future`` whose value is the reduced flat buffer (or a
one-element list of it). ``state`` is what was given to ``register_comm_hook``: a process
group, or None for the DDP instance's own group.
"""

from __future__ import annotations

import inspect
import types
from typing import Any

import numpy as np

from mpdist import distributed as dist
from mpdist.parallel.powersgd import PowerSGDState, batched_powerSGD_hook, powerSGD_hook
from mpdist.parallel.reducer import GradBucket, all_reduce_future
from mpdist.process_group import Future, ProcessGroup


def _names(annotation: Any, cls: type) -> bool:
    """Whether an annotation names ``cls``: the class, a subscripted form of it
    (``Future[Tensor]``), or a string whose last dotted name is the class's (an annotation
    left unevaluated under ``from __future__ import annotations``, or one naming torch's)."""
    if annotation is cls:
        return True
    if isinstance(annotation, types.GenericAlias):
        return annotation.__origin__ is cls
    if isinstance(annotation, str):
        return annotation.split("[", 1)[0].rsplit(".", 1)[-1] == cls.__name__
    return False


def check_signature(hook: Any) -> None:
    """Refuse at registration, with torch's errors, a hook that cannot be one: not callable
    (``TypeError``), not taking ``(state, bucket)``, or annotated with a bucket other than a
    ``GradBucket`` or a return other than a ``Future`` (``ValueError``)."""
    if not callable(hook):
        raise TypeError(
            f"Communication hook must be callable. Got {type(hook).__name__}; a hook is "
            "hook(state, bucket) -> Future."
        )
    try:
        sig = inspect.signature(hook)
    except (TypeError, ValueError):  # a builtin without a signature: judged when it runs
        return
    params = list(sig.parameters.values())
    if len(params) != 2:
        raise ValueError(
            f"Communication hook must take (state, bucket), got {len(params)} parameters"
        )
    bucket = params[1].annotation
    if bucket is not inspect.Parameter.empty and not _names(bucket, GradBucket):
        raise ValueError(
            "Communication hook: bucket annotation should be dist.GradBucket. "
            f"(mpdist.parallel.GradBucket), got {bucket!r}"
        )
    ret = sig.return_annotation
    if ret is not inspect.Signature.empty and not _names(ret, Future):
        raise ValueError(
            "Communication hook: return annotation should be torch.futures.Future[torch.Tensor]. "
            f"(mpdist.Future), got {ret!r}"
        )


def _group(state: Any, bucket: GradBucket) -> ProcessGroup:
    if isinstance(state, ProcessGroup):
        return state
    if state is None:
        return bucket.process_group
    raise TypeError(f"hook state must be a ProcessGroup or None, got {type(state).__name__}")


def _allreduce_fut(pg: ProcessGroup, array: np.ndarray) -> Future:
    array /= dist.get_world_size(pg)
    return all_reduce_future(array, pg).then(lambda fut: fut.value()[0])


def allreduce_hook(process_group: ProcessGroup | None, bucket: GradBucket) -> Future:
    """Average the bucket over the group: divide by the world size, then all-reduce(SUM)."""
    return _allreduce_fut(_group(process_group, bucket), bucket.buffer())


def fp16_compress_hook(process_group: ProcessGroup | None, bucket: GradBucket) -> Future:
    """Like ``allreduce_hook`` but communicates float16: cast, divide, all-reduce, cast back
    into the bucket's buffer."""
    pg = _group(process_group, bucket)
    buffer = bucket.buffer()
    compressed = buffer.astype(np.float16)
    compressed /= dist.get_world_size(pg)
    reduced = all_reduce_future(compressed, pg)

    def decompress(fut: Future) -> np.ndarray:
        np.copyto(buffer, np.asarray(fut.value()[0]), casting="unsafe")
        return buffer

    return reduced.then(decompress)


__all__ = [
    "GradBucket",
    "PowerSGDState",
    "allreduce_hook",
    "batched_powerSGD_hook",
    "fp16_compress_hook",
    "powerSGD_hook",
]
