"""``Function``: user-defined operations with a hand-written backward, torch style.

Subclass with static ``forward(ctx, *args)`` and ``backward(ctx, *grad_outputs)`` and call
``MyFn.apply(*args)``. Forward runs without recording; it may return one array/Tensor or a
tuple of them (several outputs share one graph node). Backward receives one gradient Tensor
per output and returns one gradient (Tensor, array or None) per forward argument.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mpdist.autograd._tensor import Tensor
from mpdist.autograd.grad_mode import is_grad_enabled, no_grad
from mpdist.autograd.graph import Node


class FunctionCtx:
    """Scratch space shared between a Function's forward and backward."""

    def __init__(self, needs_input_grad: tuple[bool, ...]) -> None:
        self.needs_input_grad = needs_input_grad
        self.saved_tensors: tuple[Any, ...] = ()

    def save_for_backward(self, *tensors: Any) -> None:
        """Keep tensors for backward (available as ``ctx.saved_tensors``)."""
        self.saved_tensors = tensors


class Function:
    """Base class of operations with a custom backward."""

    @staticmethod
    def forward(ctx: FunctionCtx, *args: Any, **kwargs: Any) -> Any:
        """Compute the outputs from the inputs."""
        raise NotImplementedError

    @staticmethod
    def backward(ctx: FunctionCtx, *grad_outputs: Any) -> Any:
        """Return one gradient (or None) per forward argument; ``grad_outputs`` are Tensors,
        one per output. (Typed Any so that a subclass may name its own parameters.)"""
        raise NotImplementedError

    @classmethod
    def apply(cls, *args: Any, **kwargs: Any) -> Any:
        """Run forward and, when recording, attach a node whose backward calls ``backward``.

        A Tensor subclass whose class defines ``__function_apply__(fn, args, kwargs)`` (DTensor:
        its data is one rank's piece) runs the Function its own way instead."""
        for a in args:
            if isinstance(a, Tensor) and type(a) is not Tensor:
                override = getattr(type(a), "__function_apply__", None)
                if override is not None:
                    return override(cls, args, kwargs)
        positions = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
        tensors = [args[i] for i in positions]
        ctx = FunctionCtx(tuple(isinstance(a, Tensor) and a.requires_grad for a in args))
        with no_grad():
            result = cls.forward(ctx, *args, **kwargs)
        single = not isinstance(result, tuple)
        # Always fresh Tensors (sharing the arrays): an input returned as-is must not
        # become the output of its own node.
        outs = [
            Tensor(np.asarray(r.data if isinstance(r, Tensor) else r))
            for r in ((result,) if single else result)
        ]
        if is_grad_enabled() and any(t.requires_grad for t in tensors):
            nargs = len(args)

            def backward(out_grads: list[np.ndarray]) -> list[np.ndarray | None]:
                grads = cls.backward(ctx, *(Tensor(g) for g in out_grads))
                if not isinstance(grads, tuple):
                    grads = (grads,)
                if len(grads) < nargs:
                    grads = grads + (None,) * (nargs - len(grads))
                picked = []
                for i in positions:
                    g = grads[i]
                    picked.append(
                        None if g is None else np.asarray(g.data if isinstance(g, Tensor) else g)
                    )
                return picked

            node = Node(
                tensors,
                backward,
                [(o.data.shape, o.data.dtype) for o in outs],
                cls.__name__,
                [o.data for o in outs],
            )
            for i, o in enumerate(outs):
                if o.data.dtype.kind in "fc":
                    o._node = node
                    o._out_index = i
                    o._requires_grad = True
        return outs[0] if single else tuple(outs)
