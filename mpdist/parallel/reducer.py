"""Gradient bucketing for DistributedDataParallel: bucket assignment, ready hooks, reduction.

Parameters are grouped, in reverse registration order (roughly the order backward produces
their gradients), into flat buffers of one dtype each: the first bucket is capped at 1 MiB so
communication starts early, the rest at ``bucket_cap_mb``. A post-accumulate-grad hook on
each parameter copies its gradient into its bucket slot; when a bucket's last slot is filled
the bucket is handed to the communication hook. Buckets are launched strictly in index order
on every rank, so ranks issue identical collective sequences. When the outermost backward
pass of the thread ends, a queued callback waits for every bucket and writes the averaged
values back into ``.grad``. (Not the innermost: a reentrant checkpoint differentiates its
segment in a backward nested inside the running one, and the gradients of the parameters
outside the segment arrive after that nested pass has ended.)

With ``static_graph`` a parameter may receive its gradient in several passes of one
iteration (a segment checkpointed twice, reentrantly): the first iteration counts each
parameter's gradient hooks, and later ones mark it ready when the last of them has fired.

The default reduction (no comm hook) is the hot path, so it avoids work the general one
does: the division by the world size happens while the gradient is copied into its slot (no
extra pass over the bucket); an all-reduce's own future is kept (no chained future, no
callback); and on mpdist's own backends the last bucket is reduced synchronously in the
caller's thread: when it fills, every gradient of the module is in, so there is nothing
left of it to overlap with. (The exception: while another DDP module of the same backward,
``replicate`` on several submodules, still waits for gradients, the backward is not over
and the last bucket stays asynchronous.)

Who moves the other buckets' all-reduces depends on the host. Where it has more cores than
ranks, the group's worker thread runs them while backward goes on. Where it has not (two
ranks on two cores), such a thread has no core of its own: it only takes CPU time and the
GIL from the backward it should hide behind (measured: 0.3-0.5 ms more per step than no
overlap at all, on a 9 ms step). There the buckets are stepped all-reduces
(``ProcessGroup.allreduce_stepped``): launching one sends this rank's data at
once, every later gradient hook advances it as far as the peers' data allows, without
blocking, and the end of backward finishes it, all in the thread that runs backward.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mpdist import distributed as dist
from mpdist._cpus import local_ranks, usable_cpus
from mpdist.autograd import Tensor
from mpdist.autograd.graph import Node, queue_outer_callback
from mpdist.process_group import AllreduceOptions, Future, ProcessGroup, ReduceOp

MiB = 1024 * 1024
DEFAULT_FIRST_BUCKET_BYTES = 1 * MiB
DEFAULT_BUCKET_CAP_MB = 25

CommHook = Callable[[Any, "GradBucket"], Future]


def communication_thread_pays(world_size: int) -> bool:
    """True if this host has more cores than ranks, so that a communication thread has a
    core to run on while the ranks compute. Ranks on this host: ``LOCAL_WORLD_SIZE`` (set
    by ``mpdist run`` and torchrun), else ``world_size`` (all of them, the safe guess)."""
    return usable_cpus() > local_ranks(world_size)


def compute_bucket_assignment(
    params: Sequence[Tensor], bucket_size_limits: Sequence[int]
) -> list[list[int]]:
    """Group parameter indices into buckets, visiting parameters in reverse order.

    Each dtype fills its own bucket; a bucket closes once it reaches the current limit. The
    i-th bucket of a dtype uses ``bucket_size_limits[i]`` (the last limit repeats).
    """
    open_: dict[np.dtype, list[int]] = {}
    sizes: dict[np.dtype, int] = {}
    closed_count: dict[np.dtype, int] = {}
    buckets: list[list[int]] = []
    for idx in reversed(range(len(params))):
        dtype = params[idx].data.dtype
        open_.setdefault(dtype, []).append(idx)
        sizes[dtype] = sizes.get(dtype, 0) + params[idx].data.nbytes
        k = closed_count.get(dtype, 0)
        limit = bucket_size_limits[min(k, len(bucket_size_limits) - 1)]
        if sizes[dtype] >= limit:
            buckets.append(open_.pop(dtype))
            sizes[dtype] = 0
            closed_count[dtype] = k + 1
    # Leftovers, in the order their first (highest-index) parameter was seen.
    buckets.extend(sorted(open_.values(), key=lambda b: -b[0]))
    return buckets


class GradBucket:
    """What a communication hook receives: one flat gradient buffer and its parameters."""

    def __init__(
        self,
        index: int,
        buffer: np.ndarray,
        parameters: list[Tensor],
        gradients: list[np.ndarray],
        is_last: bool,
        process_group: ProcessGroup,
    ) -> None:
        self._index = index
        self._buffer = buffer
        self._parameters = parameters
        self._gradients = gradients
        self._is_last = is_last
        self.process_group = process_group

    def index(self) -> int:
        """This bucket's index (bucket 0 holds the last parameters)."""
        return self._index

    def buffer(self) -> np.ndarray:
        """The flat buffer holding the bucket's gradients (reduce this)."""
        return self._buffer

    def set_buffer(self, buffer: np.ndarray) -> None:
        """Replace the flat buffer's contents."""
        np.copyto(self._buffer, np.asarray(buffer).reshape(self._buffer.shape), casting="unsafe")

    def gradients(self) -> list[np.ndarray]:
        """Per-parameter views into the buffer."""
        return self._gradients

    def parameters(self) -> list[Tensor]:
        """The bucket's parameters, in bucket order."""
        return self._parameters

    def is_last(self) -> bool:
        """True for the bucket reduced last in an iteration."""
        return self._is_last


def all_reduce_future(array: np.ndarray, group: ProcessGroup) -> Future:
    """The Future of an asynchronous all_reduce(SUM) of ``array`` in place over ``group``.

    DDP's group always has this rank as a member (only for a non-member does
    ``dist.all_reduce`` return no Work)."""
    work = dist.all_reduce(array, group=group, async_op=True)
    assert work is not None
    return work.get_future()


def _split(buffer: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Consecutive views into the flat ``buffer``, one of each shape."""
    views, off = [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        views.append(buffer[off : off + n].reshape(shape))
        off += n
    return views


class _Bucket:
    def __init__(self, index: int, indices: list[int], params: Sequence[Tensor]) -> None:
        self.index = index
        self.indices = indices
        dtype = params[indices[0]].data.dtype
        total = sum(params[i].data.size for i in indices)
        self.buffer = np.zeros(total, dtype=dtype)
        self.views = _split(self.buffer, [params[i].data.shape for i in indices])
        self.pending = len(indices)
        # None: not launched; a Future: launched (its value is the reduced buffer, or a
        # one-element list of it); _REDUCED: reduced in place synchronously
        self.future: Future | object | None = None
        self.saved: dict[int, np.ndarray] = {}


# marks a bucket that was reduced synchronously (its buffer already holds the result)
_REDUCED = object()


def _reachable_leaves(outputs: Any) -> set[int]:
    """ids of leaf tensors reachable from the tensors inside ``outputs`` (found in dicts,
    lists, tuples and dataclass instances, nested, as torch's DDP looks for them)."""
    roots: list[Tensor] = []

    def collect(x: Any) -> None:
        if isinstance(x, Tensor):
            roots.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                collect(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                collect(v)
        elif dataclasses.is_dataclass(x) and not isinstance(x, type):
            for f in dataclasses.fields(x):
                collect(getattr(x, f.name))

    collect(outputs)
    seen_nodes: set[int] = set()
    leaves: set[int] = set()
    stack: list[Any] = [r._node if r._node is not None else r for r in roots if r.requires_grad]
    while stack:
        v = stack.pop()
        if isinstance(v, Node):
            if id(v) in seen_nodes:
                continue
            seen_nodes.add(id(v))
            for t in v.inputs:
                if t.requires_grad:
                    stack.append(t._node if t._node is not None else t)
        else:
            leaves.add(id(v))
    return leaves


_local = threading.local()


def _armed() -> weakref.WeakSet[Reducer]:
    """The reducers armed for a backward by forwards in this thread."""
    armed = getattr(_local, "armed", None)
    if armed is None:
        armed = _local.armed = weakref.WeakSet()
    return armed


def _dispatch_hook(reducer: weakref.ref[Reducer], index: int, param: Tensor) -> None:
    r = reducer()
    if r is not None:
        r._autograd_hook(index, param)


def _remove_handles(handles: list[Any]) -> None:
    for h in handles:
        h.remove()


class Reducer:
    """Owns the buckets and the per-iteration reduction state of one DDP instance."""

    def __init__(
        self,
        params: Sequence[Tensor],
        names: Sequence[str],
        process_group: ProcessGroup,
        bucket_size_limits: Sequence[int],
        find_unused_parameters: bool,
        gradient_as_bucket_view: bool,
        static_graph: bool = False,
    ) -> None:
        self.params = list(params)
        self.names = list(names)
        self.process_group = process_group
        self.find_unused_parameters = find_unused_parameters
        self.gradient_as_bucket_view = gradient_as_bucket_view
        self.world_size = dist.get_world_size(process_group)
        # what the default reduction divides by: the world size, or during join() with
        # divide_by_initial_world_size=False the number of ranks still training
        self.divisor = self.world_size
        self.rank = dist.get_rank(process_group)
        self.bucket_indices = compute_bucket_assignment(self.params, bucket_size_limits)
        self.buckets = [_Bucket(i, b, self.params) for i, b in enumerate(self.bucket_indices)]
        self.where: dict[int, tuple[_Bucket, int]] = {}
        for b in self.buckets:
            for slot, idx in enumerate(b.indices):
                self.where[idx] = (b, slot)
        self.comm_hook: CommHook | None = None
        self.comm_state: Any = None
        # mpdist's own groups run a synchronous all_reduce in the calling thread; a Python
        # ProcessGroup is driven only through allreduce() and the Work's future
        self.inline_last = process_group.runs_in_caller
        # On mpdist's own groups, where no core is left for a communication thread, the
        # buckets are reduced by stepped all-reduces that the hooks advance (module docstring)
        self.stepped = self.inline_last and not communication_thread_pays(self.world_size)
        self.in_flight: list[Any] = []  # stepped all-reduces launched and not yet finished
        self.expect_hooks = False
        self.finalize_queued = False
        self.next_bucket = 0
        self.ready = np.zeros(len(self.params), dtype=bool)
        self.locally_used = np.zeros(len(self.params), dtype=np.int32)
        self.unfinished: list[int] | None = None
        self.num_iterations = 0
        # Which parameters the first synced backward used; the graph stays "static" (the
        # logging data's can_set_static_graph) while every backward uses the same ones.
        self.first_used: np.ndarray | None = None
        self.graph_static = True
        # static_graph: the parameters this rank's first synced backward used, and which of
        # them any rank used; None until that backward is over. Later backwards must use
        # the same ones: the unused are marked ready up front, with no graph traversal.
        self.static_graph = static_graph
        self.static_used: np.ndarray | None = None  # gradient hooks per parameter, counted
        self.hooks_left: np.ndarray | None = None  # of this iteration, per parameter
        self.static_globally_used: np.ndarray | None = None
        # The hooks hold the reducer weakly, and are removed when it is collected, so a DDP
        # wrapper that is dropped stops costing anything (and its buckets are freed).
        me = weakref.ref(self)
        self.handles = [
            p.register_post_accumulate_grad_hook(functools.partial(_dispatch_hook, me, i))
            for i, p in enumerate(self.params)
        ]
        weakref.finalize(self, _remove_handles, list(self.handles))
        if gradient_as_bucket_view:
            # Existing gradients move into the buckets; from now on .grad is a view.
            for i, p in enumerate(self.params):
                if p.grad is not None:
                    b, slot = self.where[i]
                    np.copyto(b.views[slot], p.grad.data)
                    p.grad = Tensor(b.views[slot])

    def remove_hooks(self) -> None:
        """Unregister the autograd hooks (the reducer stops seeing gradients)."""
        for h in self.handles:
            h.remove()
        self.handles = []

    # ---------------------------------------------------------------- iteration
    def check_prior_iteration_finished(self) -> None:
        """Raise if the previous backward left buckets unreduced (unused parameters)."""
        if self.unfinished is None:
            return
        missing = self.unfinished
        self.unfinished = None
        names = ", ".join(self.names[i] for i in missing)
        if self.static_graph:
            cause = (
                "This error indicates that your training graph has changed in this iteration, "
                "e.g., one parameter is used in first iteration, but then got unused in the "
                "second iteration. this is not compatible with static_graph set to True."
            )
        else:
            cause = (
                "This error indicates that your module has parameters that were not used in "
                "producing loss. You can enable unused parameter detection by passing the "
                "keyword argument `find_unused_parameters=True` to "
                "`mpdist.parallel.DistributedDataParallel`, and by making sure all `forward` "
                "function outputs participate in calculating loss."
            )
        raise RuntimeError(
            "Expected to have finished reduction in the prior iteration before starting a new "
            f"one. {cause}\n"
            f"Parameter indices which did not receive grad for rank {self.rank}: "
            + " ".join(str(i) for i in missing)
            + f"\nParameters which did not receive grad for rank {self.rank}: {names}"
        )

    def prepare_for_backward(self, outputs: Any) -> None:
        """Arm the hooks for the next backward; with ``find_unused_parameters``, mark the
        parameters the outputs do not depend on as ready (they contribute zeros)."""
        self.expect_hooks = True
        self.in_flight.clear()
        self.finalize_queued = False
        self.next_bucket = 0
        _armed().add(self)
        self.ready[:] = False
        self.locally_used[:] = 0
        for b in self.buckets:
            b.pending = len(b.indices)
            b.future = None
            b.saved.clear()
        self.num_iterations += 1
        if self.static_graph:
            if self.static_used is not None:
                self.hooks_left = self.static_used.copy()
                for unused_i in np.flatnonzero(self.static_used == 0):
                    self._mark_ready(int(unused_i), unused=True)
                if self.ready.all():
                    self._finalize()
            # else: the first backward; _autograd_hook only notes what it uses
        elif self.find_unused_parameters:
            used = _reachable_leaves(outputs)
            for i, p in enumerate(self.params):
                if id(p) not in used:
                    self._mark_ready(i, unused=True)
            if self.ready.all():
                # no parameter reaches the output: no hook will fire, so finish right away
                self._finalize()

    def _autograd_hook(self, index: int, param: Tensor) -> None:
        if not self.expect_hooks:
            return  # outside a synced DDP iteration (no_sync, or a forward not through DDP)
        if not self.finalize_queued:
            self.finalize_queued = True
            queue_outer_callback(self._finalize)
        if self.static_graph and self.static_used is None:
            # the first backward of a static graph: everything is reduced at its end, when
            # the parameters it used, and how often, are known (_finalize)
            self.locally_used[index] += 1
            return
        if self.hooks_left is not None:  # static graph, after the first iteration
            if self.hooks_left[index] == 0:
                assert self.static_used is not None
                raise RuntimeError(
                    "Your training graph has changed in this iteration, e.g., one parameter is "
                    "unused in first iteration, but then got used in the second iteration. "
                    f"this is not compatible with static_graph set to True: parameter {index} "
                    f"({self.names[index]}) received more gradients than the "
                    f"{self.static_used[index]} it received in the first iteration; with "
                    "static_graph=True every iteration must use the same parameters, as often."
                )
            self.hooks_left[index] -= 1
            self.locally_used[index] = 1
            if self.hooks_left[index] == 0:
                self._mark_ready(index, unused=False)
            return
        if self.ready[index]:
            raise RuntimeError(
                f"Expected to mark a variable ready only once. Parameter {index} "
                f"({self.names[index]}) received a second gradient in one iteration; "
                "DDP supports one backward per forward and one gradient per parameter in it. "
                "The usual causes: 1) the parameter is used outside the module's `forward`, or "
                "by several forward/backward passes at once; 2) it is reused in several "
                "reentrant backward passes: every checkpoint(..., use_reentrant=True) over the "
                "same part of the model differentiates that part's parameters in a pass of "
                "its own. Use use_reentrant=False, or static_graph=True if the graph is the same "
                "every iteration; 3) find_unused_parameters=True took the parameter for unused "
                "because the forward output does not reach it through the graph (a reentrant "
                "checkpoint hides its parameters that way); again use_reentrant=False or "
                "static_graph=True."
            )
        self.locally_used[index] = 1
        self._mark_ready(index, unused=False)

    def _mark_ready(self, index: int, unused: bool) -> None:
        bucket, slot = self.where[index]
        view = bucket.views[slot]
        p = self.params[index]
        # the default reduction averages as DIVIDE then SUM; the division rides on the copy
        # into the slot (same values as dividing the whole bucket afterwards)
        div = self.divisor if self.comm_hook is None and self.divisor != 1 else None
        if unused:
            if p.grad is not None and p.grad.data is view:
                bucket.saved[slot] = view.copy()  # restored if no rank used it
            view.fill(0)
        else:
            assert p.grad is not None  # its gradient hook fired: the gradient is there
            grad = p.grad.data
            if grad is view:  # gradient_as_bucket_view: accumulated in place
                if div is not None:
                    view /= div
            elif div is not None and grad.dtype == view.dtype:
                np.divide(grad, div, out=view)
            else:
                np.copyto(view, grad, casting="unsafe")
                if div is not None:
                    view /= div
            if self.gradient_as_bucket_view and grad is not view:
                p.grad = Tensor(view)
        self.ready[index] = True
        bucket.pending -= 1
        if self.in_flight and self.in_flight[-1]._advance():
            self.in_flight.clear()
        while self.next_bucket < len(self.buckets) and self.buckets[self.next_bucket].pending == 0:
            self._launch(self.buckets[self.next_bucket])
            self.next_bucket += 1

    def _launch(self, bucket: _Bucket) -> None:
        if self.comm_hook is None:
            if (
                self.inline_last
                and bucket.index == len(self.buckets) - 1
                and not self._backward_goes_on()
            ):
                # The earlier buckets are ahead of this one in the group's queue anyway:
                # waiting for the newest of them (they complete in issue order) empties the
                # queue, so the all_reduce below runs right here instead of on the worker.
                if bucket.index > 0:
                    prev = self.buckets[bucket.index - 1].future
                    if isinstance(prev, Future):
                        prev.wait()
                dist.all_reduce(bucket.buffer, group=self.process_group)
                bucket.future = _REDUCED
                return
            if self.stepped:
                buf = bucket.buffer
                work = self.process_group.allreduce_stepped(
                    [buf], AllreduceOptions(reduceOp=ReduceOp.SUM)
                )
                self.in_flight.append(work)
                bucket.future = work.get_future()
            else:
                bucket.future = all_reduce_future(bucket.buffer, self.process_group)
            return
        bucket.future = self._reduce(self._grad_bucket(bucket, bucket.buffer, bucket.views))

    def _grad_bucket(
        self, bucket: _Bucket, buffer: np.ndarray, views: list[np.ndarray]
    ) -> GradBucket:
        """What the comm hook sees of ``bucket``, with ``buffer`` (and its ``views``) as the
        gradients."""
        return GradBucket(
            bucket.index,
            buffer,
            [self.params[i] for i in bucket.indices],
            views,
            bucket.index == len(self.buckets) - 1,
            self.process_group,
        )

    def _backward_goes_on(self) -> bool:
        """True if another DDP module armed in this thread still waits for gradients."""
        return any(
            r is not self and r.expect_hooks and r.next_bucket < len(r.buckets) for r in _armed()
        )

    def _reduce(self, gb: GradBucket) -> Future:
        """The bucket's reduction, through the comm hook if one is registered (the default
        divides by the world size and all-reduces; the hot path is in ``_launch``)."""
        if self.comm_hook is None:
            buf = gb.buffer()
            buf /= self.divisor
            return all_reduce_future(buf, self.process_group)
        fut = self.comm_hook(self.comm_state, gb)
        if not isinstance(fut, Future):
            raise RuntimeError(
                "DDP communication hook's callback must return a torch.futures.Future object, "
                f"but got {type(fut).__module__}.{type(fut).__qualname__} (an mpdist.Future)"
            )
        return fut

    def shadow_backward(self) -> None:
        """Issue exactly the collectives a synced backward issues, with zero gradients: what a
        rank that has joined does while the others still train."""
        futures = []
        for b in self.buckets:
            buf = np.zeros_like(b.buffer)
            views = _split(buf, [v.shape for v in b.views])
            futures.append(self._reduce(self._grad_bucket(b, buf, views)))
        if self.static_graph:
            self._static_global_use(np.zeros_like(self.locally_used))
        elif self.find_unused_parameters:
            dist.all_reduce(np.zeros_like(self.locally_used), group=self.process_group)
        for fut in futures:
            fut.wait()

    def _static_global_use(self, local: np.ndarray) -> np.ndarray:
        """static_graph: which parameters any rank used, all-reduced once (after the first
        backward; ``local`` is this rank's map, zeros for a rank that has joined)."""
        if self.static_globally_used is None:
            used = local.copy()
            dist.all_reduce(used, group=self.process_group)
            self.static_globally_used = used
        return self.static_globally_used

    def _finalize(self) -> None:
        self.finalize_queued = False
        self.expect_hooks = False
        self.hooks_left = None
        _armed().discard(self)
        if self.static_graph and self.static_used is None:
            self.static_used = self.locally_used.copy()
            for i in range(len(self.params)):  # buckets launch in bucket order as they fill
                self._mark_ready(i, unused=not self.locally_used[i])
        if self.graph_static:
            if self.first_used is None:
                self.first_used = self.locally_used.copy()
            elif not np.array_equal(self.first_used, self.locally_used):
                self.graph_static = False
        if self.next_bucket < len(self.buckets):
            self.unfinished = [int(i) for i in np.flatnonzero(~self.ready)]
            return
        globally_used = None
        if self.static_graph:
            globally_used = self._static_global_use(self.locally_used)
        elif self.find_unused_parameters:
            globally_used = self.locally_used.copy()
            dist.all_reduce(globally_used, group=self.process_group)
        for bucket in self.buckets:
            fut = bucket.future
            assert fut is not None
            if fut is not _REDUCED:
                assert isinstance(fut, Future)
                result = fut.wait()
                if isinstance(result, (list, tuple)):
                    result = result[0]
                result = result.data if isinstance(result, Tensor) else np.asarray(result)
                if result is not bucket.buffer:
                    np.copyto(bucket.buffer, result.reshape(bucket.buffer.shape), casting="unsafe")
            for slot, idx in enumerate(bucket.indices):
                p = self.params[idx]
                view = bucket.views[slot]
                if globally_used is not None and not globally_used[idx]:
                    # Nobody used it: leave .grad as it was before this iteration.
                    if slot in bucket.saved:
                        np.copyto(view, bucket.saved.pop(slot))
                    continue
                if self.gradient_as_bucket_view:
                    if p.grad is None or p.grad.data is not view:
                        p.grad = Tensor(view)
                elif p.grad is None:
                    p.grad = Tensor(view.copy())
                else:
                    np.copyto(p.grad.data, view, casting="unsafe")
