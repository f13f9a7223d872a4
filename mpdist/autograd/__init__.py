"""A small numpy ``Tensor`` with reverse-mode autograd: just what nn and parallel need.

``Tensor(data, requires_grad=False)``, ``tensor``, ``stack``, ``cat``, ``matmul``,
``no_grad``/``enable_grad``/``set_grad_enabled``, ``Function`` for custom backward passes,
``backward`` for several roots, and ``queue_callback`` (run something when the current
backward pass ends; DDP uses it to finish its reduction).

Layout, each module importing only those above it: ``device`` (``device``, CPU only, and
reading ``to()``'s arguments), ``grad_mode`` (recording on/off),
``versions`` (in-place write tracking), ``graph`` (nodes and the reverse pass, on any object
with the ``graph.Variable`` interface), ``_tensor_base`` (``TensorBase``: state, accessors,
in-place writes), ``_tensor`` (``Tensor``: recorded ops, gradient and hooks; ``matmul``,
``backward``), ``_factories`` (``tensor``, ``stack``, ``cat``), ``function`` (``Function``).
"""

from __future__ import annotations

from mpdist.autograd._factories import cat, stack, tensor
from mpdist.autograd._tensor import Tensor, backward, matmul
from mpdist.autograd.device import device
from mpdist.autograd.function import Function, FunctionCtx
from mpdist.autograd.grad_mode import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from mpdist.autograd.graph import Node, RemovableHandle, in_backward, queue_callback

__all__ = [
    "Function",
    "FunctionCtx",
    "Node",
    "RemovableHandle",
    "Tensor",
    "backward",
    "cat",
    "device",
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
