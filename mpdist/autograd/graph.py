"""The recorded graph and the reverse pass: ``Node``, ``run_backward`` and ``queue_callback``.

A ``Node`` is one recorded operation: its inputs, the shapes of its outputs, and a function
from output gradients to input gradients. The graph does not know the tensor class: its
inputs and roots are any objects with the ``Variable`` interface (a value, whether it requires
grad, the node that produced it and which output of it it is, and how a leaf accumulates a
gradient), and gradients travel as ndarrays. Leaves that require grad are the graph's sinks;
each receives its total gradient once per backward call, after every contribution has
arrived, so tensor hooks and post-accumulate hooks fire exactly once.

Backward refuses a node when an array it read or wrote was written in place after it was
recorded (``versions``), instead of differentiating with the new values. This is stricter
than torch, which checks only the values an op saved: here every input and output of a node
on the backward path counts.

The pass is Kahn's algorithm over dependency counts. Among ready vertices, leaves go first
and then the most recently recorded node, which is what lets a data-parallel wrapper start
reducing the last layer's gradients while earlier layers are still being differentiated.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from mpdist.autograd.grad_mode import no_grad
from mpdist.autograd.versions import current_version, written_since
from mpdist.autograd.versions import note_inplace_write as note_inplace_write

BackwardFn = Callable[[list[np.ndarray]], Sequence[Any]]
# A gradient hook as the graph runs it: the incoming gradient in, a replacement (anything
# ``np.asarray`` takes) or None out. Tensor hooks are stored wrapped to this shape.
GradHook = Callable[[np.ndarray], Any]

_seq = itertools.count()
_local = threading.local()


class Variable(Protocol):
    """What the graph needs of a value flowing through it (``Tensor`` provides it)."""

    _data: np.ndarray  # the value (a node remembers its inputs' arrays)
    _node: Node | None  # the node that produced it; None for a leaf
    _out_index: int  # which output of ``_node`` it is

    @property
    def requires_grad(self) -> bool:
        """Whether gradients flow to it."""
        ...

    def _accumulate_grad(self, grad: np.ndarray) -> None:
        """A leaf's total gradient of one backward pass has arrived."""
        ...


class RemovableHandle:
    """Returned by every ``register_*_hook``; ``remove()`` unregisters the hook."""

    _ids = itertools.count()

    def __init__(self, hooks: dict[int, Any]) -> None:
        self._hooks = hooks
        self.id = next(self._ids)

    def remove(self) -> None:
        """Unregister the hook; removing twice is harmless."""
        self._hooks.pop(self.id, None)

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class Node:
    """One recorded operation: ``inputs`` -> outputs, with ``backward`` mapping output grads
    (one ndarray per output) to input grads (one ndarray or None per input)."""

    __slots__ = ("inputs", "backward", "out_meta", "out_hooks", "seq", "name", "arrays", "serial")

    def __init__(
        self,
        inputs: Sequence[Variable],
        backward: BackwardFn,
        out_meta: Sequence[tuple[tuple[int, ...], np.dtype]],
        name: str = "",
        outputs: Sequence[np.ndarray] = (),
    ) -> None:
        self.inputs = tuple(inputs)
        self.backward = backward
        self.out_meta = list(out_meta)
        # Hooks registered on non-leaf outputs, per output index.
        self.out_hooks: list[dict[int, GradHook]] = [{} for _ in out_meta]
        self.seq = next(_seq)
        self.name = name
        # The arrays this op read (its inputs) and wrote (``outputs``), and the version now.
        self.arrays = [t._data for t in self.inputs]
        self.arrays.extend(outputs)
        self.serial = current_version()

    def check_unmodified(self) -> None:
        """RuntimeError when an array this op read or wrote was written in place since."""
        if current_version() == self.serial:
            return
        for a in self.arrays:
            if written_since(a, self.serial):
                raise RuntimeError(
                    "one of the variables needed for gradient computation has been modified by "
                    f"an inplace operation: an input or output of {self.name or 'an op'} "
                    f"[{a.dtype} {list(a.shape)}] was written in place after the op was "
                    "recorded. Modify a clone() instead, or make the in-place update after "
                    "backward()"
                )

    def __repr__(self) -> str:
        return f"<Node {self.name or 'op'} #{self.seq}>"


def queue_callback(callback: Callable[[], None]) -> None:
    """Run ``callback`` when the backward pass running in this thread has finished.

    Only valid from inside a hook during ``backward()``; callbacks run in queue order and may
    queue further callbacks.
    """
    stack = getattr(_local, "callbacks", None)
    if not stack:
        raise RuntimeError("queue_callback() can only be called during a backward pass")
    stack[-1].append(callback)


def queue_outer_callback(callback: Callable[[], None]) -> None:
    """Run ``callback`` when the outermost backward pass running in this thread has finished.

    Like ``queue_callback``, but a backward started inside another one (a reentrant
    checkpoint recomputing its segment) does not end the wait: DDP finishes its reduction
    only once every gradient of the iteration is in, whichever pass produced it.
    """
    stack = getattr(_local, "callbacks", None)
    if not stack:
        raise RuntimeError("queue_outer_callback() can only be called during a backward pass")
    stack[0].append(callback)


def in_backward() -> bool:
    """True while this thread is inside ``backward()``."""
    return bool(getattr(_local, "callbacks", None))


def run_hooks(hooks: dict[int, GradHook], grad: np.ndarray) -> np.ndarray:
    """Pass ``grad`` through ``hooks`` in registration order; a hook that returns something
    replaces the gradient (same shape required)."""
    for hook in list(hooks.values()):
        out = hook(grad)
        if out is not None:
            new = np.asarray(out)
            if new.shape != grad.shape:
                raise RuntimeError(
                    f"hook {hook!r} returned a gradient of shape {new.shape}, expected {grad.shape}"
                )
            grad = new
    return grad


def _collect(roots: list[Variable]) -> dict[Any, int]:
    """Every vertex reachable from the roots, with how many edges point into it."""
    deps: dict[Any, int] = {}
    stack: list[Any] = []
    for r in roots:
        v = r._node if r._node is not None else r
        if v not in deps:
            deps[v] = 0
            stack.append(v)
    while stack:
        v = stack.pop()
        if not isinstance(v, Node):
            continue
        for t in v.inputs:
            if not t.requires_grad:
                continue
            child = t._node if t._node is not None else t
            if child in deps:
                deps[child] += 1
            else:
                deps[child] = 1
                stack.append(child)
    return deps


def reachable_leaves(roots: Sequence[Variable]) -> list[Variable]:
    """The leaves requiring grad that a backward from ``roots`` would reach, in a fixed order."""
    return [v for v in _collect(list(roots)) if not isinstance(v, Node)]


def run_backward(
    roots: Sequence[Variable],
    grads: Sequence[np.ndarray],
    sink: Callable[[Variable, np.ndarray], None] | None = None,
) -> None:
    """Propagate ``grads`` (one per root) back through the graph to the leaves, each of
    which receives its total through ``_accumulate_grad``, or, given ``sink``, through
    ``sink(leaf, total)`` instead (nothing accumulated, no leaf hooks: torch's
    ``autograd.grad``, which a non-reentrant checkpoint's recomputation uses)."""
    roots = list(roots)
    deps = _collect(roots)
    # Pending gradients: per node a list over its outputs; per leaf one ndarray.
    pending: dict[Any, Any] = {}

    def add(v: Any, index: int, g: np.ndarray) -> None:
        if isinstance(v, Node):
            slots = pending.setdefault(v, [None] * len(v.out_meta))
            slots[index] = g if slots[index] is None else slots[index] + g
        else:
            cur = pending.get(v)
            pending[v] = g if cur is None else cur + g

    for r, g in zip(roots, grads, strict=True):
        add(r._node if r._node is not None else r, r._out_index, g)

    # Leaves first (priority -inf), then newest node first.
    heap: list[tuple[float, int, Any]] = []
    tie = itertools.count()

    def push(v: Any) -> None:
        prio = -float("inf") if not isinstance(v, Node) else -v.seq
        heapq.heappush(heap, (prio, next(tie), v))

    for v, n in deps.items():
        if n == 0:
            push(v)

    callbacks: list[Callable[[], None]] = []
    stack = getattr(_local, "callbacks", None)
    if stack is None:
        stack = _local.callbacks = []
    stack.append(callbacks)
    try:
        # Gradients are never recorded themselves (no higher-order derivatives).
        with no_grad():
            while heap:
                _, _, v = heapq.heappop(heap)
                if isinstance(v, Node):
                    slots = pending.pop(v, None) or [None] * len(v.out_meta)
                    out_grads = []
                    for i, (g, (shape, dtype)) in enumerate(zip(slots, v.out_meta, strict=True)):
                        if g is None:
                            g = np.zeros(shape, dtype=dtype)
                        if v.out_hooks[i]:
                            g = run_hooks(v.out_hooks[i], g)
                        out_grads.append(g)
                    v.check_unmodified()
                    in_grads = v.backward(out_grads)
                    for t, g in zip(v.inputs, in_grads, strict=True):
                        if not t.requires_grad:
                            continue
                        child = t._node if t._node is not None else t
                        if g is not None:
                            # asanyarray: a gradient that is an ndarray subclass keeps its
                            # class (a DTensor's gradient carries its placements that way).
                            g = np.asanyarray(g)
                            if g.dtype != t._data.dtype:
                                g = g.astype(t._data.dtype)
                            add(child, t._out_index, g)
                        deps[child] -= 1
                        if deps[child] == 0:
                            push(child)
                else:
                    g = pending.pop(v, None)
                    if g is not None:
                        if sink is None:
                            v._accumulate_grad(g)
                        else:
                            sink(v, g)
            while callbacks:
                callbacks.pop(0)()
    finally:
        stack.pop()
