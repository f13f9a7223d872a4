"""Activation checkpointing: keep a segment's inputs, not its intermediate values, and
recompute the segment in backward.

``checkpoint(fn, *args, use_reentrant=...)`` runs ``fn`` so that nothing it computes on the
way to its outputs stays referenced by the graph; backward runs ``fn`` again, with the random
generator (``mpdist.random``) as it was in forward, and differentiates the recomputation.
The two variants of torch:

* ``use_reentrant=True``: a ``Function`` whose forward runs ``fn`` without recording and whose
  backward recomputes it with recording on and runs a backward pass of its own, nested inside
  the running one, into detached copies of the inputs. The parameters ``fn`` reads get their
  gradients from that inner pass, so a parameter used by two checkpoints (or inside and
  outside one) receives gradients in several passes, which is what DDP rejects without
  ``static_graph``. Only the tensor arguments tie the segment to the outer graph: when none
  requires grad nothing is differentiated (a warning says so). Keyword arguments are refused.
* ``use_reentrant=False``: torch replaces every tensor the segment saves for backward by a
  handle that recomputes the segment when first unpacked. mpdist's ops keep what they need in
  their backward closures, not in saved-tensor slots, so there is nothing to replace. Instead
  forward records the segment once, only to learn which leaves requiring grad it reaches (the
  arguments and the parameters ``fn`` reads), lets that recording go (the segment's values are
  freed when ``checkpoint`` returns, not as it goes), and gives the outputs one node whose
  inputs are those arguments and leaves. The first and only time backward needs anything of
  the segment is when it reaches that node: it recomputes the segment and differentiates it
  into the node's inputs without accumulating anything (``run_backward(..., sink=)``); the
  outer pass then accumulates as for any other op. Every parameter thus gets its total
  gradient once per backward, as with torch's variant, and keyword arguments work.

A tensor ``fn`` reads that is neither an argument nor a leaf (a result computed outside the
segment) is differentiated through, back to its leaves, by the recomputation's pass.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from mpdist import random as _random
from mpdist.autograd import Function, Tensor, backward, enable_grad, is_grad_enabled
from mpdist.autograd.graph import reachable_leaves, run_backward

__all__ = ["checkpoint", "checkpoint_sequential"]

_UNSPECIFIED = (
    "mpdist.utils.checkpoint: the use_reentrant parameter should be passed explicitly "
    "(as torch asks); without it the reentrant variant runs, torch's default. "
    "use_reentrant=False is recommended: it supports keyword arguments and gives each "
    "parameter its gradient in one pass."
)


class _Rng:
    """The random generator's state when a segment first ran, put back for its recompute."""

    def __init__(self, preserve: bool) -> None:
        self.state = _random.get_rng_state() if preserve else None

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        """Inside, the generator is as it was in forward; afterwards as it was before."""
        if self.state is None:
            yield
            return
        now = _random.get_rng_state()
        _random.set_rng_state(self.state)
        try:
            yield
        finally:
            _random.set_rng_state(now)


def _detached(args: Sequence[Any]) -> list[Any]:
    """The arguments with every Tensor cut from the graph (same data, same requires_grad)."""
    return [
        a.detach().requires_grad_(a.requires_grad) if isinstance(a, Tensor) else a for a in args
    ]


def _items(out: Any) -> list[Any]:
    """A segment's outputs as a list: the items of a tuple or list, else the one value."""
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _rebuild(like: Any, items: list[Any]) -> Any:
    """``items`` in the container ``like`` came in (tuple, named tuple, list or a single value)."""
    if isinstance(like, tuple) and hasattr(like, "_fields"):
        return type(like)(*items)
    if isinstance(like, (tuple, list)):
        return type(like)(items)
    return items[0]


class _Layout:
    """Where a segment's tensor outputs sit among its outputs, and the other outputs as they
    were (a recompute must produce the same layout)."""

    def __init__(self, out: Any) -> None:
        self.like = out if isinstance(out, (tuple, list)) else None
        items = _items(out)
        self.positions = [i for i, x in enumerate(items) if isinstance(x, Tensor)]
        self.others = {i: x for i, x in enumerate(items) if not isinstance(x, Tensor)}
        self.count = len(items)

    def tensors(self, out: Any) -> list[Tensor]:
        """The tensor outputs of a run of the segment, checked against this layout."""
        items = _items(out)
        if len(items) != self.count or any(
            not isinstance(items[i], Tensor) for i in self.positions
        ):
            raise RuntimeError(
                "mpdist.utils.checkpoint: the recomputation in backward returned other outputs "
                "than the forward did; the checkpointed function must be deterministic"
            )
        return [items[i] for i in self.positions]

    def assemble(self, tensors: Sequence[Tensor]) -> Any:
        """The segment's result with ``tensors`` in the tensor positions."""
        items: list[Any] = [None] * self.count
        for i, t in zip(self.positions, tensors, strict=True):
            items[i] = t
        for i, x in self.others.items():
            items[i] = x
        return items[0] if self.like is None else _rebuild(self.like, items)


# ------------------------------------------------------------------------ reentrant


class _Reentrant(Function):
    """The reentrant variant: ``apply(state, fn, preserve_rng_state, *args)``."""

    @staticmethod
    def forward(
        ctx: Any, state: dict[str, Any], fn: Callable[..., Any], preserve: bool, *args: Any
    ) -> Any:
        ctx.fn = fn
        ctx.rng = _Rng(preserve)
        ctx.args = args  # the segment's inputs: all that is kept of it
        out = fn(*args)  # not recorded: Function.apply runs forward under no_grad
        layout = state["layout"] = _Layout(out)
        ctx.layout = layout
        return tuple(layout.tensors(out))

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> Any:
        inputs = _detached(ctx.args)
        with ctx.rng.restored(), enable_grad():
            out = ctx.fn(*inputs)
        tensors = ctx.layout.tensors(out)
        roots = [t for t in tensors if t.requires_grad]
        grads = [g for t, g in zip(tensors, grad_outputs, strict=True) if t.requires_grad]
        if not roots:
            raise RuntimeError(
                "none of output has requires_grad=True, this checkpoint() is not necessary"
            )
        backward(roots, grads)  # the nested pass: parameters accumulate here
        return (None, None, None) + tuple(
            x.grad if isinstance(x, Tensor) and x.requires_grad else None for x in inputs
        )


def _checkpoint_reentrant(fn: Callable[..., Any], preserve: bool, args: tuple[Any, ...]) -> Any:
    if is_grad_enabled() and not any(isinstance(a, Tensor) and a.requires_grad for a in args):
        warnings.warn(
            "None of the inputs have requires_grad=True. Gradients will be None", stacklevel=3
        )
    state: dict[str, Any] = {}
    tensors = _Reentrant.apply(state, fn, preserve, *args)
    return state["layout"].assemble(tensors)


# ------------------------------------------------------------------------ non-reentrant


class _Recompute(Function):
    """The non-reentrant variant's node: ``apply(segment, *inputs)`` returns the outputs
    already computed and, in backward, recomputes the segment for the inputs' gradients."""

    @staticmethod
    def forward(ctx: Any, segment: _Segment, *inputs: Any) -> Any:
        ctx.segment = segment
        return tuple(segment.outputs[k] for k in segment.recorded)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> Any:
        return (None,) + tuple(ctx.segment.recompute_grads([g.data for g in grad_outputs]))


class _Segment:
    """One non-reentrant checkpoint: what it needs to recompute, and its output arrays until
    they are handed to the node."""

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        preserve: bool,
    ) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.rng = _Rng(preserve)
        inputs = _detached(args)
        out = fn(*inputs, **kwargs)  # recorded, to find the leaves; dropped on return
        self.layout = _Layout(out)
        tensors = self.layout.tensors(out)
        self.recorded = [k for k, t in enumerate(tensors) if t.requires_grad]
        self.outputs: list[np.ndarray] = [t.data for t in tensors]
        self.shapes = [a.shape for a in self.outputs]
        self.grad_args = [
            i for i, a in enumerate(inputs) if isinstance(a, Tensor) and a.requires_grad
        ]
        mine = {id(inputs[i]) for i in self.grad_args}
        roots = [tensors[k] for k in self.recorded]
        # the leaves outside the arguments: the parameters fn reads
        self.leaves = [v for v in reachable_leaves(roots) if id(v) not in mine]

    def node_inputs(self) -> list[Any]:
        """What the node's gradients flow to: the arguments requiring grad, then the leaves."""
        return [self.args[i] for i in self.grad_args] + self.leaves

    def recompute_grads(self, grads: list[np.ndarray]) -> list[np.ndarray | None]:
        """Run the segment again and differentiate it, from ``grads`` (one per output that
        requires grad), into ``node_inputs()``."""
        inputs = _detached(self.args)
        with self.rng.restored(), enable_grad():
            out = self.fn(*inputs, **self.kwargs)
        tensors = self.layout.tensors(out)
        roots = [tensors[k] for k in self.recorded]
        for k, t in zip(self.recorded, roots, strict=True):
            if not t.requires_grad or t.data.shape != self.shapes[k]:
                raise RuntimeError(
                    "mpdist.utils.checkpoint: the recomputation in backward produced output "
                    f"{k} with other metadata than the forward did (shape "
                    f"{list(t.data.shape)} vs {list(self.shapes[k])}, requires_grad "
                    f"{t.requires_grad}); the checkpointed function must be deterministic"
                )
        targets = [inputs[i] for i in self.grad_args] + self.leaves
        wanted = {id(t) for t in targets}
        found: dict[int, np.ndarray] = {}

        def sink(leaf: Any, grad: np.ndarray) -> None:
            if id(leaf) not in wanted:
                raise RuntimeError(
                    "mpdist.utils.checkpoint: the recomputation in backward reached a tensor "
                    "requiring grad that the forward did not; the checkpointed function must "
                    "use the same tensors every time it runs"
                )
            found[id(leaf)] = grad

        run_backward(roots, grads, sink=sink)
        return [found.get(id(t)) for t in targets]


def _checkpoint_non_reentrant(
    fn: Callable[..., Any], preserve: bool, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    if not is_grad_enabled():
        return fn(*args, **kwargs)  # nothing is recorded, so there is nothing to drop
    segment = _Segment(fn, args, kwargs, preserve)
    if not segment.recorded:
        # no output requires grad: hand the outputs back as they are, graph-free
        return segment.layout.assemble([Tensor(a) for a in segment.outputs])
    made = iter(_Recompute.apply(segment, *segment.node_inputs()))
    # the outputs that required grad come from the node, the others as graph-free tensors
    tensors = [
        next(made) if k in segment.recorded else Tensor(a) for k, a in enumerate(segment.outputs)
    ]
    segment.outputs = []  # the tensors own them now
    return segment.layout.assemble(tensors)


# ------------------------------------------------------------------------ public


def checkpoint(
    function: Callable[..., Any],
    *args: Any,
    use_reentrant: bool | None = None,
    preserve_rng_state: bool = True,
    **kwargs: Any,
) -> Any:
    """``function(*args, **kwargs)`` with its intermediate values dropped after forward and
    recomputed in backward (torch's ``torch.utils.checkpoint.checkpoint``).

    ``use_reentrant`` picks the variant (module docstring); left out, a warning asks for it
    and the reentrant one runs, as in torch. ``preserve_rng_state`` puts the random generator
    back to its forward state for the recompute, so random ops draw the same numbers.
    Keyword arguments for ``function`` need ``use_reentrant=False``.
    """
    if use_reentrant is None:
        warnings.warn(_UNSPECIFIED, stacklevel=2)
        use_reentrant = True
    if use_reentrant:
        if kwargs:
            raise ValueError("Unexpected keyword arguments: " + ",".join(kwargs))
        return _checkpoint_reentrant(function, preserve_rng_state, args)
    return _checkpoint_non_reentrant(function, preserve_rng_state, args, kwargs)


def checkpoint_sequential(
    functions: Any,
    segments: int,
    input: Any,
    use_reentrant: bool | None = None,
    **kwargs: Any,
) -> Any:
    """Run ``functions`` (a ``Sequential``'s children or a list of callables) one after the
    other on ``input``, in ``segments`` chunks of equal length: every chunk but the last is
    checkpointed (its intermediate values recomputed in backward); the last runs plainly.

    The only keyword argument is ``preserve_rng_state`` (default True).
    """
    if use_reentrant is None:
        warnings.warn(_UNSPECIFIED, stacklevel=2)
        use_reentrant = True
    preserve = bool(kwargs.pop("preserve_rng_state", True))
    if kwargs:
        raise ValueError("Unexpected keyword arguments: " + ",".join(kwargs))
    children = getattr(functions, "children", None)
    fns = list(children()) if callable(children) else list(functions)
    if not isinstance(segments, int) or isinstance(segments, bool) or segments < 1:
        raise ValueError(
            f"checkpoint_sequential: segments must be a positive int, got {segments!r}"
        )
    if segments > len(fns):
        raise ValueError(
            f"checkpoint_sequential: {segments} segments for {len(fns)} functions; ask for at "
            "most one segment per function"
        )
    size = len(fns) // segments

    def chain(part: list[Any]) -> Callable[[Any], Any]:
        def run(x: Any) -> Any:
            for f in part:
                x = f(x)
            return x

        return run

    x = input
    for start in range(0, size * (segments - 1), size):
        x = checkpoint(
            chain(fns[start : start + size]),
            x,
            use_reentrant=use_reentrant,
            preserve_rng_state=preserve,
        )
    return chain(fns[size * (segments - 1) :])(x)
