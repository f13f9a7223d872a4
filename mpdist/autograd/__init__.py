"""A small numpy ``Tensor`` with reverse-mode autograd, and torch's tensor-level functions.

``Tensor(data, requires_grad=False)``; the torch-level functions under torch's names
(``torch.X`` -> ``mpdist.autograd.X``): factories (``tensor``, ``zeros``, ``ones``, ``full``,
``empty``, ``*_like``, ``arange``, ``randn``, ``rand``, ``randint``, ``randperm``, with
``dtype``/``device``/``requires_grad``), ``manual_seed`` (the one generator per rank that
the random factories and parameter initialisation share), joins and cuts (``stack``, ``cat``,
``split``, ``chunk``, ``flatten``), math (``sin`` ... ``sigmoid``, ``sum``, ``mean``,
``where``, ``matmul``), tests (``allclose``, ``equal``, ``isnan``) and ``device``;
``no_grad``/``enable_grad``/``set_grad_enabled``, ``Function`` for custom backward passes,
``backward`` for several roots, and ``queue_callback`` (run something when the current
backward pass ends; DDP uses it to finish its reduction).

Layout, each module importing only those above it: ``device`` (``device``, CPU only, and
reading ``to()``'s arguments), ``grad_mode`` (recording on/off),
``versions`` (in-place write tracking), ``graph`` (nodes and the reverse pass, on any object
with the ``graph.Variable`` interface), ``_tensor_base`` (``TensorBase``: state, accessors,
in-place writes), ``_tensor`` (``Tensor``: recorded ops, gradient and hooks; ``matmul``,
``backward``), ``_factories`` (functions that build tensors), ``_ops`` (the torch-level
functions on tensors), ``function`` (``Function``).
"""

from __future__ import annotations

from mpdist.autograd._factories import (
    arange,
    cat,
    empty,
    empty_like,
    full,
    ones,
    ones_like,
    rand,
    randint,
    randn,
    randperm,
    stack,
    tensor,
    zeros,
    zeros_like,
)
from mpdist.autograd._ops import (
    abs,
    allclose,
    chunk,
    cos,
    equal,
    exp,
    flatten,
    isnan,
    log,
    mean,
    relu,
    sigmoid,
    sin,
    split,
    sqrt,
    sum,
    tanh,
    where,
)
from mpdist.autograd._tensor import Tensor, backward, matmul
from mpdist.autograd.device import device
from mpdist.autograd.function import Function, FunctionCtx
from mpdist.autograd.grad_mode import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from mpdist.autograd.graph import Node, RemovableHandle, in_backward, queue_callback
from mpdist.random import manual_seed

__all__ = [
    "Function",
    "FunctionCtx",
    "Node",
    "RemovableHandle",
    "Tensor",
    "abs",
    "allclose",
    "arange",
    "backward",
    "cat",
    "chunk",
    "cos",
    "device",
    "empty",
    "empty_like",
    "enable_grad",
    "equal",
    "exp",
    "flatten",
    "full",
    "in_backward",
    "is_grad_enabled",
    "isnan",
    "log",
    "manual_seed",
    "matmul",
    "mean",
    "no_grad",
    "ones",
    "ones_like",
    "queue_callback",
    "rand",
    "randint",
    "randn",
    "randperm",
    "relu",
    "set_grad_enabled",
    "sigmoid",
    "sin",
    "split",
    "sqrt",
    "stack",
    "sum",
    "tanh",
    "tensor",
    "where",
    "zeros",
    "zeros_like",
]
