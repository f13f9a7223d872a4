"""A small numpy ``Tensor`` with reverse-mode autograd, and torch's tensor-level functions.

``Tensor(data, requires_grad=False)``; the torch-level functions under torch's names
(``torch.X`` -> ``mpdist.autograd.X``): factories (``tensor``, ``zeros``, ``ones``, ``full``,
``empty``, ``*_like``, ``arange``, ``randn``, ``rand``, ``randint``, ``randperm``, with
``dtype``/``device``/``requires_grad``), torch's dtype names as numpy dtypes (``float32``,
``float64``, ``int64``, ``bool``, ...), ``set_default_dtype``/``get_default_dtype``,
``manual_seed`` (the one generator per rank that the random factories and parameter
initialisation share), joins and cuts (``stack``, ``cat``,
``split``, ``chunk``, ``flatten``), math (``sin`` ... ``sigmoid``, ``sum``, ``mean``,
``where``, ``matmul``), tests (``allclose``, ``equal``, ``isnan``) and ``device``;
``no_grad``/``enable_grad``/``set_grad_enabled``, ``Function`` for custom backward passes,
``backward`` for several roots, and ``queue_callback`` (run something when the current
backward pass ends; DDP uses it to finish its reduction).

Layout, each module importing only those above it: ``device`` (``device``, CPU only, and
reading ``to()``'s arguments), ``dtypes`` (dtype names, the default floating dtype),
``grad_mode`` (recording on/off), ``versions`` (in-place write tracking), ``graph`` (nodes and
the reverse pass, on any object with the ``graph.Variable`` interface), ``_tensor_base`` (``TensorBase``: state, accessors,
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
    full_like,
    ones,
    ones_like,
    rand,
    rand_like,
    randint,
    randn,
    randn_like,
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
    is_tensor,
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
from mpdist.autograd.dtypes import (  # torch's dtype names (numpy dtypes); see dtypes.DTYPE_NAMES
    bool,  # noqa: A004, F401
    cdouble,
    cfloat,
    complex64,
    complex128,
    double,
    float,  # noqa: A004, F401
    float16,
    float32,
    float64,
    get_default_dtype,
    half,
    int,  # noqa: A004, F401
    int8,
    int16,
    int32,
    int64,
    long,
    set_default_dtype,
    short,
    uint8,
    uint16,
    uint32,
    uint64,
)
from mpdist.autograd.function import Function, FunctionCtx
from mpdist.autograd.grad_mode import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from mpdist.autograd.graph import Node, RemovableHandle, in_backward, queue_callback
from mpdist.random import manual_seed

# bool, float and int are left out of __all__: a star import would shadow the builtins.
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
    "cdouble",
    "cfloat",
    "chunk",
    "complex128",
    "complex64",
    "cos",
    "device",
    "double",
    "empty",
    "empty_like",
    "enable_grad",
    "equal",
    "exp",
    "flatten",
    "float16",
    "float32",
    "float64",
    "full",
    "full_like",
    "get_default_dtype",
    "half",
    "in_backward",
    "int16",
    "int32",
    "int64",
    "int8",
    "is_grad_enabled",
    "is_tensor",
    "isnan",
    "log",
    "long",
    "manual_seed",
    "matmul",
    "mean",
    "no_grad",
    "ones",
    "ones_like",
    "queue_callback",
    "rand",
    "rand_like",
    "randint",
    "randn",
    "randn_like",
    "randperm",
    "relu",
    "set_default_dtype",
    "set_grad_enabled",
    "short",
    "sigmoid",
    "sin",
    "split",
    "sqrt",
    "stack",
    "sum",
    "tanh",
    "tensor",
    "uint16",
    "uint32",
    "uint64",
    "uint8",
    "where",
    "zeros",
    "zeros_like",
]
