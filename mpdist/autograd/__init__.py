"""A small numpy ``Tensor`` with reverse-mode autograd: just what nn and parallel need.

``Tensor(data, requires_grad=False)``, ``tensor``, ``stack``, ``cat``, ``matmul``,
``no_grad``/``enable_grad``/``set_grad_enabled``, ``Function`` for custom backward passes,
``backward`` for several roots, and ``queue_callback`` (run something when the current
backward pass ends; DDP uses it to finish its reduction).
"""

from __future__ import annotations

from mpdist.autograd.function import Function, FunctionCtx
from mpdist.autograd.grad_mode import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from mpdist.autograd.graph import Node, RemovableHandle, in_backward, queue_callback
from mpdist.autograd.tensor import Tensor, backward, cat, matmul, stack, tensor

__all__ = [
    "Function",
    "FunctionCtx",
    "Node",
    "RemovableHandle",
    "Tensor",
    "backward",
    "cat",
    "enable_grad",
    "in_backward",
    "is_grad_enabled",
    "matmul",
    "no_grad",
    "queue_callback",
    "set_grad_enabled",
    "stack",
    "tensor",
]
