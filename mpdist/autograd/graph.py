"""The recorded graph and the reverse pass: ``Node``, ``run_backward`` and ``queue_callback``.

A ``Node`` is one recorded operation: its input tensors, the shapes of its outputs, and a
function from output gradients to input gradients. Leaf tensors that require grad are the
graph's sinks; their gradients accumulate into ``.grad`` once per backward call, after every
contribution has arrived, so tensor hooks and post-accumulate hooks fire exactly once.

In-place writes made through Tensor methods are tracked per memory owner (the ndarray at the
root of a view chain, so views and detached aliases count as one, as torch's views share their
base's version counter). Backward refuses a node when an array it read or wrote was written in
place after it was recorded, instead of differentiating with the new values. This is stricter
than torch, which checks only the values an op saved: here every input and output of a node
on the backward path counts. Writes through ``.data`` (numpy itself) are not tracked, as in
torch.

The pass is Kahn's algorithm over dependency counts. Among ready vertices, leaves go first
and then the most recently recorded node, which is what lets a data-parallel wrapper start
reducing the last layer's gradients while earlier layers are still being differentiated.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mpdist.autograd.grad_mode import no_grad

if TYPE_CHECKING:
    # tensor.py imports this module at its top, so the functions here that build Tensors
    # import tensor.py when they run (both modules are loaded by then).
    from mpdist.autograd.tensor import Tensor

BackwardFn = Callable[[list[np.ndarray]], Sequence["np.ndarray | None"]]

_seq = itertools.count()
_local = threading.local()


# Tracked in-place writes are numbered by one global serial. ``_last_write`` maps id(memory
# owner) to the serial of its latest write; a finalizer drops the entry when the owner dies,
# before its id can be reused. A node remembers the serial at its creation, so checking it
# costs nothing unless some write happened since, and recording costs one int.
_serial = 0
_last_write: dict[int, int] = {}
_write_lock = threading.Lock()


def _owner(a: np.ndarray) -> np.ndarray:
    """The ndarray that owns ``a``'s memory (``a`` itself unless it is a view)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def note_inplace_write(a: np.ndarray) -> None:
    """Record an in-place write into ``a`` (and so into every view of its memory)."""
    global _serial
    owner = _owner(a)
    key = id(owner)
    with _write_lock:
        if key not in _last_write:
            weakref.finalize(owner, _last_write.pop, key, None)
        _serial += 1
        _last_write[key] = _serial


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
        inputs: Sequence[Tensor],
        backward: BackwardFn,
        out_meta: Sequence[tuple[tuple[int, ...], np.dtype]],
        name: str = "",
        outputs: Sequence[np.ndarray] = (),
    ) -> None:
        self.inputs = tuple(inputs)
        self.backward = backward
        self.out_meta = list(out_meta)
        # Hooks registered on non-leaf outputs, per output index.
        self.out_hooks: list[dict[int, Callable]] = [{} for _ in out_meta]
        self.seq = next(_seq)
        self.name = name
        # The arrays this op read (its inputs) and wrote (``outputs``), and the write serial now.
        self.arrays = [t._data for t in self.inputs]
        self.arrays.extend(outputs)
        self.serial = _serial

    def check_unmodified(self) -> None:
        """RuntimeError when an array this op read or wrote was written in place since."""
        if _serial == self.serial:
            return
        for a in self.arrays:
            if _last_write.get(id(_owner(a)), -1) > self.serial:
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


def in_backward() -> bool:
    """True while this thread is inside ``backward()``."""
    return bool(getattr(_local, "callbacks", None))


def _as_tensor_grad(g: Any) -> np.ndarray:
    from mpdist.autograd.tensor import Tensor

    return g.data if isinstance(g, Tensor) else np.asarray(g)


def _run_hooks(hooks: dict[int, Callable], grad: np.ndarray) -> np.ndarray:
    from mpdist.autograd.tensor import Tensor

    for hook in list(hooks.values()):
        out = hook(Tensor(grad))
        if out is not None:
            new = _as_tensor_grad(out)
            if new.shape != grad.shape:
                raise RuntimeError(
                    f"hook {hook!r} returned a gradient of shape {new.shape}, expected {grad.shape}"
                )
            grad = new
    return grad


def _collect(roots: list[Tensor]) -> dict[Any, int]:
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


def run_backward(roots: Sequence[Tensor], grads: Sequence[np.ndarray]) -> None:
    """Propagate ``grads`` (one per root) back through the graph into the leaves' ``.grad``."""
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
                            g = _run_hooks(v.out_hooks[i], g)
                        out_grads.append(g)
                    v.check_unmodified()
                    in_grads = v.backward(out_grads)
                    for t, g in zip(v.inputs, in_grads, strict=True):
                        if not t.requires_grad:
                            continue
                        child = t._node if t._node is not None else t
                        if g is not None:
                            g = _as_tensor_grad(g)
                            if g.dtype != t.data.dtype:
                                g = g.astype(t.data.dtype)
                            add(child, t._out_index, g)
                        deps[child] -= 1
                        if deps[child] == 0:
                            push(child)
                else:
                    _accumulate_leaf(v, pending.pop(v, None))
            while callbacks:
                callbacks.pop(0)()
    finally:
        stack.pop()


def _accumulate_leaf(t: Tensor, g: np.ndarray | None) -> None:
    from mpdist.autograd.tensor import Tensor

    if g is None:
        return
    if t._hooks:
        g = _run_hooks(t._hooks, g)
    if g.shape != t.data.shape:
        raise RuntimeError(
            f"gradient of shape {g.shape} does not match the leaf's shape {t.data.shape}"
        )
    if t.grad is None:
        # Own the array: the incoming one may alias an input of some op.
        t.grad = Tensor(np.array(g, dtype=t.data.dtype, copy=True))
    else:
        # In place, so a .grad that is a view (DDP's gradient_as_bucket_view) stays a view.
        np.add(t.grad.data, g, out=t.grad.data, casting="unsafe")
    for hook in list(t._post_hooks.values()):
        hook(t)
