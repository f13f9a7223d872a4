"""``DistributedDataParallel``: synchronous data parallelism for an ``mpdist.nn.Module``.

Every rank holds a replica. At construction the replicas are made identical (parameters and
buffers broadcast from group rank 0). Each forward arms the ``Reducer``; during backward
gradients are averaged bucket by bucket, overlapping communication with the rest of
backward; after backward every replica has the same ``.grad``, so identical optimizer steps
keep them identical.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from mpdist import distributed as dist
from mpdist.autograd import is_grad_enabled
from mpdist.nn import Module
from mpdist.parallel import reducer as _reducer
from mpdist.parallel.hooks import check_signature
from mpdist.parallel.join import Join, Joinable, JoinHook
from mpdist.parallel.reducer import (
    DEFAULT_BUCKET_CAP_MB,
    CommHook,
    MiB,
    Reducer,
)
from mpdist.process_group import ProcessGroup

# A coalesced broadcast packs arrays of one dtype into flat buffers of at most this size.
BROADCAST_BUCKET_BYTES = 250 * MiB


def sync_module_states(arrays: Sequence[np.ndarray], pg: ProcessGroup, src: int) -> None:
    """Broadcast ``arrays`` in place from global rank ``src``, packed per dtype into few
    flat buffers so a model costs a handful of collectives, not one per tensor."""
    by_dtype: dict[np.dtype, list[np.ndarray]] = {}
    for a in arrays:
        by_dtype.setdefault(a.dtype, []).append(a)
    for group in by_dtype.values():
        start = 0
        while start < len(group):
            chunk: list[np.ndarray] = []
            nbytes = 0
            while start < len(group) and (
                not chunk or nbytes + group[start].nbytes <= BROADCAST_BUCKET_BYTES
            ):
                chunk.append(group[start])
                nbytes += group[start].nbytes
                start += 1
            flat = np.concatenate([a.reshape(-1) for a in chunk])
            dist.broadcast(flat, src=src, group=pg)
            off = 0
            for a in chunk:
                a[...] = flat[off : off + a.size].reshape(a.shape)
                off += a.size


class DistributedDataParallel(Module, Joinable):
    """Wrap ``module`` so that backward averages gradients across the ranks of
    ``process_group`` (default: the world).

    ``bucket_cap_mb`` sets the bucket size after the first (1 MiB) bucket;
    ``find_unused_parameters`` lets parameters that the forward output does not depend on
    take part as zeros; ``gradient_as_bucket_view`` makes each ``.grad`` a view into its
    bucket (no copy back); ``init_sync=False`` skips the initial broadcast (no collective at
    construction); ``broadcast_buffers`` re-broadcasts buffers from rank 0 before each
    forward. ``static_graph=True`` promises that every iteration uses the same parameters:
    the first backward reduces all buckets at its end and records which parameters it used;
    later ones mark the unused as ready up front (no ``find_unused_parameters`` needed, and
    no graph traversal per iteration), and a parameter the first iteration did not use that
    gets a gradient later is an error.
    """

    def __init__(
        self,
        module: Module,
        device_ids: Sequence[Any] | None = None,
        output_device: Any = None,
        dim: int = 0,
        broadcast_buffers: bool = True,
        init_sync: bool = True,
        process_group: ProcessGroup | None = None,
        bucket_cap_mb: float | None = None,
        find_unused_parameters: bool = False,
        check_reduction: bool = False,
        gradient_as_bucket_view: bool = False,
        static_graph: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(
                f"DistributedDataParallel wraps an mpdist.nn.Module, got {type(module).__name__}"
            )
        # As torch with a CPU module: None or an empty device_ids (and a falsy output_device)
        # mean the module's own device; anything naming a device is refused.
        if device_ids is not None and len(device_ids) > 1:
            raise ValueError("device_ids can only be None or contain a single element.")
        if device_ids or output_device:
            raise ValueError(
                "DistributedDataParallel device_ids and output_device arguments only work with "
                "single-device/multiple-device GPU modules or CPU modules, but got device_ids "
                f"{device_ids}, output_device {output_device}, and module parameters "
                "{device(type='cpu')} (mpdist modules live on the CPU: pass device_ids=None)."
            )
        self.device_ids: list[int] | None = None
        self.output_device: int | None = None
        self.device_type = "cpu"
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not named:
            raise RuntimeError(
                "DistributedDataParallel is not needed when a module doesn't have any parameter "
                "that requires a gradient."
            )
        if bucket_cap_mb is None:
            bucket_cap_mb = DEFAULT_BUCKET_CAP_MB
        if not isinstance(bucket_cap_mb, (int, float)) or bucket_cap_mb <= 0:
            raise ValueError(f"bucket_cap_mb must be a positive number, got {bucket_cap_mb!r}")
        self.module = module
        pg = process_group if process_group is not None else dist.group.WORLD
        if pg is None:
            raise ValueError(
                "Default process group has not been initialized, please make sure to call "
                "init_process_group."
            )
        self.process_group = pg
        self.broadcast_buffers = broadcast_buffers
        self.find_unused_parameters = find_unused_parameters
        self.gradient_as_bucket_view = gradient_as_bucket_view
        self.static_graph = static_graph
        self.require_backward_grad_sync = True
        self.bucket_bytes_cap = int(bucket_cap_mb * MiB)
        self._comm_hook_registered = False
        self._error: str | None = None  # the last error logged, as torch's DDP logger keeps it
        self._join: Join | None = None  # the entered join() context, if any
        if init_sync:
            self._sync_states_from(0)
        self.reducer = Reducer(
            [p for _, p in named],
            [n for n, _ in named],
            pg,
            # read at construction so tests can shrink the first bucket, as torch's tests do
            [_reducer.DEFAULT_FIRST_BUCKET_BYTES, self.bucket_bytes_cap],
            find_unused_parameters,
            gradient_as_bucket_view,
            static_graph,
        )

    # ---------------------------------------------------------------- forward
    def _global(self, group_rank: int) -> int:
        """The global rank of ``group_rank`` in our group (for groups the module API does not
        know, group ranks are global ranks)."""
        try:
            return dist.get_global_rank(self.process_group, group_rank)
        except ValueError:
            return group_rank

    def _broadcast_buffers(self, src_group_rank: int) -> None:
        bufs = [b.data for b in self.module.buffers()]
        if bufs:
            sync_module_states(bufs, self.process_group, self._global(src_group_rank))

    def _sync_states_from(self, src_group_rank: int) -> None:
        states = [p.data for p in self.module.parameters()] + [
            b.data for b in self.module.buffers()
        ]
        sync_module_states(states, self.process_group, self._global(src_group_rank))

    def _pre_forward(self, *inputs: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        self.reducer.check_prior_iteration_finished()
        sync = self.require_backward_grad_sync
        src = 0
        rnd = Join.notify_join_context(self, flag=sync and is_grad_enabled())
        self.reducer.divisor = self.reducer.world_size
        if rnd is not None:
            src = rnd.first_active
            assert self._join is not None
            hook = self._join.hook_of(self)
            if isinstance(hook, _DDPJoinHook) and not hook.divide_by_initial_world_size:
                self.reducer.divisor = rnd.num_active
        if self.broadcast_buffers and sync and (self._join is None or is_grad_enabled()):
            self._broadcast_buffers(src)
        return inputs, kwargs

    def _post_forward(self, output: Any) -> Any:
        if self.require_backward_grad_sync and is_grad_enabled():
            self.reducer.prepare_for_backward(output)
        return output

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        """Run the wrapped module and arm gradient synchronisation for its backward."""
        inputs, kwargs = self._pre_forward(*inputs, **kwargs)
        return self._post_forward(self.module(*inputs, **kwargs))

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Inside, backward only accumulates local gradients; the first synced backward after
        it reduces the accumulated sum."""
        old = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = old

    def join(
        self,
        divide_by_initial_world_size: bool = True,
        enable: bool = True,
        throw_on_early_termination: bool = False,
    ) -> Join:
        """Context for uneven inputs: ranks that run out of data keep matching the others'
        collectives (with zero gradients) until every rank has left the context.

        Gradients are divided by the initial world size unless
        ``divide_by_initial_world_size=False`` (then by the number of ranks still training).
        ``throw_on_early_termination=True``: every rank raises as soon as one runs out.
        """
        return Join(
            [self],
            enable,
            throw_on_early_termination,
            divide_by_initial_world_size=divide_by_initial_world_size,
        )

    def join_hook(self, **kwargs: Any) -> JoinHook:
        """What this rank does once it has joined: shadow the others' iterations, then take
        the final model from the highest-ranked last joiner (``Joinable``)."""
        return _DDPJoinHook(self, kwargs.get("divide_by_initial_world_size", True))

    @property
    def join_device(self) -> str:
        """mpdist modules live on the CPU."""
        return "cpu"

    @property
    def join_process_group(self) -> ProcessGroup:
        """The group gradients are averaged over."""
        return self.process_group

    # ---------------------------------------------------------------- hooks
    def register_comm_hook(self, state: Any, hook: CommHook) -> None:
        """Replace bucket all-reduce with ``hook(state, bucket) -> Future`` (once)."""
        try:
            check_signature(hook)
            if self._comm_hook_registered:
                raise RuntimeError(
                    "register_comm_hook or register_builtin_comm_hook can only be called once."
                )
        except (TypeError, ValueError, RuntimeError) as e:
            # torch logs a refused hook in the logging data ("has_error", "error")
            self._error = f"{type(e)}: {e}"
            raise
        self._comm_hook_registered = True
        self.reducer.comm_hook = hook
        self.reducer.comm_state = state

    # ---------------------------------------------------------------- introspection
    def _get_ddp_logging_data(self) -> dict[str, int | str]:
        """What this DDP instance was built with and has done, under torch's
        ``DDPLoggingData`` key names (flags as 0/1, lists as ", "-joined strings).

        ``can_set_static_graph`` (present once a synced backward has run, unless
        ``static_graph``) is 1 while every backward used the same parameters.
        """
        r = self.reducer
        params = r.params
        data: dict[str, int | str] = {
            "module_name": type(self.module).__name__,
            "backend_name": self.process_group.name(),
            "world_size": r.world_size,
            "rank": r.rank,
            "device_ids": "",
            "output_device": -1,
            "is_multi_device_module": 0,
            "broadcast_buffers": int(bool(self.broadcast_buffers)),
            "bucket_cap_bytes": self.bucket_bytes_cap,
            "find_unused_parameters": int(bool(self.find_unused_parameters)),
            "gradient_as_bucket_view": int(bool(self.gradient_as_bucket_view)),
            "static_graph": int(bool(self.static_graph)),
            "has_sync_bn": 0,
            "num_parameter_tensors": len(params),
            "total_parameter_size_bytes": sum(p.data.nbytes for p in params),
            "dtypes": ", ".join(sorted({p.data.dtype.name for p in params})),
            "bucket_sizes": ", ".join(str(b.buffer.nbytes) for b in r.buckets),
            "iteration": r.num_iterations,
            "has_rebuilt_buckets": 0,  # mpdist keeps its first bucket assignment
            "master_addr": os.environ.get("MASTER_ADDR", "N/A"),
            "master_port": os.environ.get("MASTER_PORT", "N/A"),
        }
        if r.comm_hook is not None:
            data["comm_hook"] = getattr(r.comm_hook, "__qualname__", repr(r.comm_hook))
        if self._error is not None:
            data["has_error"], data["error"] = 1, self._error
        if not self.static_graph and r.first_used is not None:
            data["can_set_static_graph"] = int(r.graph_static)
        return data

    def extra_repr(self) -> str:
        return f"world_size={self.reducer.world_size}, buckets={len(self.reducer.buckets)}"


class _DDPJoinHook(JoinHook):
    """A joined rank's part in DDP's iterations: each round in which the active ranks sync
    gradients, the buffer broadcast and a backward of zero gradients; at the end, the state
    of the highest-ranked rank active in the last active round goes to every replica."""

    def __init__(self, ddp: DistributedDataParallel, divide_by_initial_world_size: bool) -> None:
        self.ddp = ddp
        self.divide_by_initial_world_size = divide_by_initial_world_size

    def main_hook(self) -> None:
        ddp = self.ddp
        assert ddp._join is not None and ddp._join.last_round is not None
        rnd = ddp._join.last_round
        if rnd.flag:
            if ddp.broadcast_buffers:
                ddp._broadcast_buffers(rnd.first_active)
            ddp.reducer.shadow_backward()

    def post_hook(self, is_last_joiner: bool) -> None:
        ddp = self.ddp
        assert ddp._join is not None
        last = ddp._join.last_active_round
        if last is not None:
            ddp._sync_states_from(last.last_active)
        ddp.reducer.divisor = ddp.reducer.world_size


__all__ = ["DistributedDataParallel", "sync_module_states"]
