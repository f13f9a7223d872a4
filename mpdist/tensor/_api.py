"""``DTensor``: a tensor whose value is spread over a device mesh, and the ways in and out of it.

A DTensor is an ``mpdist.autograd.Tensor`` whose ``.data`` is this rank's piece (so
optimizers, which update ``.data`` in place, update the piece) and whose ``shape`` is the
global shape; ``placements`` (one per mesh dimension) say how the pieces make the whole.
Every rank of the mesh runs the same DTensor code in the same order.

The ways in and out, each recorded for autograd with the transposed communication in
backward: ``DTensor.from_local`` (pieces -> DTensor; backward puts the gradient back into
the pieces' placements), ``to_local`` (DTensor -> this rank's piece; the piece's gradient
is taken to be placed like the DTensor, or by ``grad_placements``), ``redistribute``
(another placement, ``_redistribute``'s collectives; backward redistributes the gradient
back) and ``full_tensor``. ``distribute_tensor`` cuts a whole tensor into a leaf DTensor,
``distribute_module`` turns a module's parameters into DTensors.

The operators (``+``, ``@``, ``sum``, ``reshape``, ``F.linear``, ``F.softmax``, ...) are
sharding rules in ``_ops``, which registers them in ``OP_RULES``; any other op on a DTensor
is a ``NotImplementedError`` naming it and the placements.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mpdist import distributed as dist
from mpdist.autograd import Tensor
from mpdist.autograd.grad_mode import is_grad_enabled
from mpdist.autograd.graph import Node, run_backward, run_hooks
from mpdist.nn.module import Module
from mpdist.nn.parameter import Parameter
from mpdist.tensor._grad import PlacedGrad, placed, plain, to_placements
from mpdist.tensor._redistribute import (
    Spec,
    _coordinate,
    backward_placements,
    partition_value,
    redistribute_local,
)
from mpdist.tensor.placement_types import (
    Partial,
    Placement,
    Replicate,
    Shard,
    _StridedShard,
    chunk_bounds,
    cut_order,
)

__all__ = ["DTensor", "distribute_module", "distribute_tensor"]

# op name -> sharding rule (``_ops`` fills it): rule(*args, **kwargs) -> result.
OP_RULES: dict[str, Callable[..., Any]] = {}


def run_op(name: str, *args: Any, **kwargs: Any) -> Any:
    """Run the sharding rule registered for ``name``."""
    rule = OP_RULES.get(name)
    if rule is None:
        raise NotImplementedError(
            f"DTensor has no sharding rule for {name} (placements: {describe(args)})"
        )
    return rule(*args, **kwargs)


def describe(args: Any) -> str:
    """The placements of the DTensors among ``args``, for error messages."""
    found = [str(tuple(a.placements)) for a in _flat(args) if isinstance(a, DTensor)]
    return ", ".join(found) or "no DTensor"


def _flat(args: Any) -> list[Any]:
    out: list[Any] = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out.extend(_flat(a))
        else:
            out.append(a)
    return out


def check_placements(
    placements: Sequence[Placement] | None, mesh: Any, ndim: int
) -> tuple[Placement, ...]:
    """``placements`` checked against the mesh and the tensor's rank, shard dims made
    non-negative (torch's errors: ValueError for the count, IndexError for a dim)."""
    if placements is None:
        return tuple(Replicate() for _ in range(mesh.ndim))
    placements = tuple(placements)
    if len(placements) != mesh.ndim:
        raise ValueError(
            f"`placements` must have the same length as `device_mesh.ndim`! Found placements "
            f"length: {len(placements)}, and device_mesh.ndim: {mesh.ndim}."
        )
    out: list[Placement] = []
    for p in placements:
        if not isinstance(p, Placement):
            raise TypeError(
                f"placements must be Shard, Replicate or Partial objects, got {type(p).__name__}"
            )
        if isinstance(p, Shard):
            span = max(ndim, 1)
            if not -span <= p.dim < span or ndim == 0:
                raise IndexError(
                    f"Dimension out of range (expected to be in range of [{-span}, {span - 1}], "
                    f"but got {p.dim})"
                )
            p = Shard(p.dim % ndim)
        out.append(p)
    return tuple(out)


def _check_mesh(mesh: Any) -> None:
    if mesh is None:
        raise ValueError("a DTensor needs a device_mesh (mpdist.tensor.init_device_mesh)")
    if mesh.get_coordinate() is None:
        raise RuntimeError("this rank is not part of the device mesh")


def _global_shape(
    local_shape: tuple[int, ...], mesh: Any, placements: Sequence[Placement]
) -> tuple[int, ...]:
    """The global shape when every rank's piece has ``local_shape`` (torch's assumption in
    ``from_local`` without ``shape``): sharded dims times the mesh size."""
    shape = list(local_shape)
    for d, p in enumerate(placements):
        if isinstance(p, (Shard, _StridedShard)):
            shape[p.dim] *= int(mesh.size(d))
    return tuple(shape)


def _contiguous_stride(shape: Sequence[int]) -> tuple[int, ...]:
    stride, acc = [], 1
    for n in reversed(shape):
        stride.append(acc)
        acc *= max(int(n), 1)
    return tuple(reversed(stride))


def _record(
    out: Tensor, inputs: Sequence[Tensor], backward: Callable[[Any], list[Any]], name: str
) -> None:
    """Attach a one-output node to ``out`` when recording and an input requires grad."""
    if is_grad_enabled() and any(t.requires_grad for t in inputs):
        arr = out._data
        out._node = Node(inputs, lambda gs: backward(gs[0]), [(arr.shape, arr.dtype)], name, [arr])
        out._requires_grad = True


def wrap(
    local: Any,
    spec: Spec,
    grad_placements: Callable[[PlacedGrad | np.ndarray], np.ndarray] | None = None,
) -> DTensor:
    """A DTensor made of the plain Tensor ``local`` (this rank's piece), recorded: the
    DTensor's gradient, brought to the placements the piece's gradient has (by default:
    ``backward_placements`` of the spec, from_local's rule), flows into ``local``."""
    out = DTensor(local.data if isinstance(local, Tensor) else np.asarray(local), spec)
    if isinstance(local, Tensor):
        shape, dtype = local.data.shape, local.data.dtype

        def backward(g: Any) -> list[Any]:
            if grad_placements is not None:
                return [grad_placements(g)]
            if not isinstance(g, PlacedGrad) or g.spec is None:
                return [np.zeros(shape, dtype)]  # no gradient arrived: zero anywhere
            target = backward_placements(g.spec.placements, spec.placements)
            return [to_placements(plain(g), g.spec, target)]

        _record(out, [local], backward, "FromLocal")
    return out


def unwrap(
    x: DTensor,
    grad_placements: Callable[[], tuple[Placement, ...]] | Sequence[Placement] | None = None,
) -> Tensor:
    """This rank's piece of ``x`` as a plain Tensor (sharing the array), recorded: the
    piece's gradient is the DTensor's, placed by ``grad_placements`` (by default like
    ``x``; a callable is asked at backward time)."""
    out = Tensor(x.data)
    spec = x._spec

    def backward(g: np.ndarray) -> list[Any]:
        gp = grad_placements() if callable(grad_placements) else grad_placements
        return [placed(plain(g), spec.with_placements(gp or spec.placements))]

    _record(out, [x], backward, "ToLocal")
    return out


def redistribute_recorded(x: DTensor, placements: tuple[Placement, ...]) -> DTensor:
    """``x`` under ``placements`` (any, Partial included), recorded: backward redistributes
    the gradient to ``backward_placements`` of ``x``'s."""
    if placements == x._spec.placements:
        return x
    spec = x._spec
    out = DTensor(to_placements_forward(x.data, spec, placements), spec.with_placements(placements))
    shape, dtype = x.data.shape, x.data.dtype

    def backward(g: Any) -> list[Any]:
        if not isinstance(g, PlacedGrad) or g.spec is None:
            return [np.zeros(shape, dtype)]
        target = backward_placements(g.spec.placements, spec.placements)
        return [placed(to_placements(plain(g), g.spec, target), spec.with_placements(target))]

    _record(out, [x], backward, "Redistribute")
    return out


def to_placements_forward(
    arr: np.ndarray, spec: Spec, placements: tuple[Placement, ...]
) -> np.ndarray:
    """A forward value's piece under ``placements`` (``Replicate -> Partial`` divides, as torch)."""
    return redistribute_local(arr, spec, placements)


def _delegate(name: str) -> Callable[..., Any]:
    """A DTensor method that runs the sharding rule ``name``."""

    def method(self: DTensor, *args: Any, **kwargs: Any) -> Any:
        return run_op(name, self, *args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"``{name}`` by DTensor's sharding rule (``mpdist.tensor._ops``)."
    return method


def _refused(name: str) -> Callable[..., Any]:
    """A DTensor method that has no sharding rule: a NotImplementedError naming it."""

    def method(self: DTensor, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"DTensor has no sharding rule for {name} (placements: {self.placements}); use "
            ".to_local() or .full_tensor() for a plain Tensor"
        )

    method.__name__ = name
    return method


class DTensor(Tensor):
    """A tensor spread over a ``DeviceMesh``: ``.data`` is this rank's piece, ``shape`` the
    global shape, ``placements`` one ``Shard``/``Replicate``/``Partial`` per mesh dimension.

    Make one with ``distribute_tensor`` or ``DTensor.from_local``; ``to_local()`` and
    ``full_tensor()`` give plain Tensors back. Its gradient (``.grad``) is a DTensor.
    """

    _spec: Spec

    def __init__(self, local: Any, spec: Spec, *, requires_grad: bool = False) -> None:
        super().__init__(local, requires_grad)
        self._spec = spec

    # ----------------------------------------------------------------- what it is
    @property
    def device_mesh(self) -> Any:
        """The mesh the pieces live on."""
        return self._spec.mesh

    @property
    def placements(self) -> tuple[Placement, ...]:
        """One placement per mesh dimension."""
        return self._spec.placements

    @property
    def shape(self) -> tuple[int, ...]:
        """The global shape."""
        return self._spec.shape

    @property
    def ndim(self) -> int:
        """Number of dimensions of the global tensor."""
        return len(self._spec.shape)

    def dim(self) -> int:
        """Number of dimensions of the global tensor."""
        return len(self._spec.shape)

    def size(self, dim: int | None = None) -> Any:
        """The global shape, or one dimension's global length."""
        return self._spec.shape if dim is None else self._spec.shape[dim]

    def numel(self) -> int:
        """Number of elements of the global tensor."""
        return int(np.prod(self._spec.shape, dtype=np.int64))

    def __len__(self) -> int:
        if not self._spec.shape:
            raise TypeError("len() of a 0-d tensor")
        return self._spec.shape[0]

    def stride(self, dim: int | None = None) -> Any:
        """Strides (in elements) of the global tensor, laid out contiguously."""
        s = _contiguous_stride(self._spec.shape)
        return s if dim is None else s[dim]

    def __repr__(self) -> str:
        local = Tensor.__repr__(self)
        return (
            f"DTensor(local_tensor={local}, device_mesh={self._spec.mesh!r}, "
            f"placements={self._spec.placements!r})"
        )

    # ----------------------------------------------------------------- in and out
    @staticmethod
    def from_local(
        local_tensor: Any,
        device_mesh: Any = None,
        placements: Sequence[Placement] | None = None,
        *,
        run_check: bool = False,
        shape: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
    ) -> DTensor:
        """A DTensor whose piece on this rank is ``local_tensor`` (every rank passes its own).

        Without ``shape``/``stride`` every piece is assumed to have the same shape (the
        global shape is the local one times the mesh size on sharded dims); pass both for
        uneven pieces. ``run_check`` makes replicated pieces equal (broadcast from the first
        rank of each such mesh dimension). Recorded: the gradient flows back to
        ``local_tensor``, placed like the pieces (a gradient arriving ``Partial`` on a
        replicated dimension is all-reduced there).
        """
        _check_mesh(device_mesh)
        local = local_tensor if isinstance(local_tensor, Tensor) else Tensor(local_tensor)
        if isinstance(local, DTensor):
            raise TypeError("from_local() expects a plain Tensor, got a DTensor")
        placements = check_placements(placements, device_mesh, local.data.ndim)
        if (shape is None) != (stride is None):
            raise RuntimeError(
                f"Found shape:{None if shape is None else tuple(shape)}, stride:"
                f"{None if stride is None else tuple(stride)}. Please pass both shape and "
                "stride at the same time."
            )
        gshape = (
            tuple(int(n) for n in shape)
            if shape is not None
            else _global_shape(local.data.shape, device_mesh, placements)
        )
        spec = Spec(device_mesh, placements, gshape)
        if shape is not None:
            expect = spec.layout().shape
            if tuple(local.data.shape) != expect:
                raise ValueError(
                    f"from_local: this rank's piece has shape {tuple(local.data.shape)}, but a "
                    f"global shape {gshape} placed by {placements} gives it {expect}"
                )
        if run_check:
            local = _broadcast_replicated(local, spec)
        return wrap(local, spec)

    def to_local(self, *, grad_placements: Sequence[Placement] | None = None) -> Tensor:
        """This rank's piece as a plain Tensor (sharing the array). Recorded: the piece's
        gradient is taken to be placed like this DTensor, or by ``grad_placements``."""
        gp = None
        if grad_placements is not None:
            gp = check_placements(grad_placements, self._spec.mesh, self.ndim)
        return unwrap(self, gp)

    def redistribute(
        self,
        device_mesh: Any = None,
        placements: Sequence[Placement] | None = None,
        *,
        async_op: bool = False,
    ) -> DTensor:
        """The same global tensor under other ``placements`` (on the same mesh), by the
        collectives of ``_redistribute``; recorded, with the transposed communication in
        backward. Redistributing to ``Partial`` is refused, as in torch (ops make Partials)."""
        mesh = device_mesh if device_mesh is not None else self._spec.mesh
        if placements is None:
            raise RuntimeError("placements is needed for redistribute!")
        if mesh is not self._spec.mesh and mesh != self._spec.mesh:
            raise NotImplementedError(
                "redistribute only moves a DTensor within its own device mesh"
            )
        target = check_placements(placements, mesh, self.ndim)
        for cur, p in zip(self._spec.placements, target, strict=True):
            if isinstance(p, Partial) and cur != p:
                raise RuntimeError(
                    f"Can not redistribute from {cur} to {p}, redistributing to Partial is for "
                    "internal use only!"
                )
        return redistribute_recorded(self, target)

    def full_tensor(self, *, grad_placements: Sequence[Placement] | None = None) -> Tensor:
        """The whole tensor on every rank (a plain Tensor): ``redistribute`` to
        ``Replicate`` everywhere, then ``to_local``."""
        full = redistribute_recorded(self, tuple(Replicate() for _ in self._spec.placements))
        return full.to_local(grad_placements=grad_placements)

    # ----------------------------------------------------------------- autograd
    @property
    def grad(self) -> Any:
        """The accumulated gradient, a DTensor (or None)."""
        return self._grad

    @grad.setter
    def grad(self, value: Any) -> None:
        if value is not None:
            if not isinstance(value, DTensor):
                raise TypeError(
                    f"the gradient of a DTensor must be a DTensor, got {type(value).__name__}"
                )
            if value.shape != self.shape:
                raise RuntimeError(
                    f"assigned grad has shape {value.shape}, but the tensor has shape {self.shape}"
                )
        self._grad = value

    def _accumulate_grad(self, grad: np.ndarray) -> None:
        """The backward pass ends here: the gradient, brought to this DTensor's placements
        (a ``Partial`` gradient of a replicated leaf is all-reduced, so that an optimizer
        stepping the pieces keeps the replicas equal), goes into ``.grad``."""
        spec = getattr(grad, "spec", None)
        if spec is None:
            raise RuntimeError(
                "a gradient without placements reached a DTensor: an operation on it ran "
                "outside DTensor's sharding rules (mixed DTensor and plain Tensor code?)"
            )
        target = backward_placements(spec.placements, self._spec.placements)
        g = to_placements(plain(grad), spec, target)
        if self._hooks:
            g = run_hooks(self._hooks, g)
        if not isinstance(self._grad, DTensor) or self._grad._spec.placements != target:
            self._grad = DTensor(
                np.array(g, dtype=self.data.dtype, copy=True), self._spec.with_placements(target)
            )
        else:
            np.add(self._grad.data, g, out=self._grad.data, casting="unsafe")
        for hook in list(self._post_hooks.values()):
            hook(self)

    def backward(self, gradient: Any = None) -> None:
        """Backward from this DTensor: ``gradient`` (a DTensor) defaults to ones for a
        one-element tensor, replicated (the gradient of a Partial sum is whole on every rank)."""
        if not self.requires_grad:
            raise RuntimeError(
                "element 0 of tensors does not require grad and does not have a grad_fn"
            )
        if gradient is None:
            if self.numel() != 1:
                raise RuntimeError("grad can be implicitly created only for scalar outputs")
            reps = tuple(Replicate() for _ in self._spec.placements)
            g = placed(np.ones(self.data.shape, self.data.dtype), self._spec.with_placements(reps))
        else:
            if not isinstance(gradient, DTensor) or gradient.shape != self.shape:
                raise RuntimeError("the gradient of a DTensor must be a DTensor of its shape")
            g = placed(gradient.data.astype(self.data.dtype), gradient._spec)
        run_backward([self], [g])

    def detach(self) -> DTensor:
        """A leaf DTensor sharing this one's piece, outside any graph."""
        return DTensor(self.data, self._spec)

    def __deepcopy__(self, memo: dict[int, Any]) -> DTensor:
        # The mesh (and its process groups) is shared, never copied, as in torch.
        memo.setdefault(id(self._spec.mesh), self._spec.mesh)
        return super().__deepcopy__(memo)

    # ----------------------------------------------------------------- ops
    # Each goes to its sharding rule in ``_ops`` (see ``OP_RULES``).
    __add__ = _delegate("add")
    __radd__ = _delegate("radd")
    __sub__ = _delegate("sub")
    __rsub__ = _delegate("rsub")
    __mul__ = _delegate("mul")
    __rmul__ = _delegate("rmul")
    __truediv__ = _delegate("truediv")
    __rtruediv__ = _delegate("rtruediv")
    __pow__ = _delegate("pow")
    __rpow__ = _delegate("rpow")
    __matmul__ = _delegate("matmul")
    __rmatmul__ = _delegate("rmatmul")
    __neg__ = _delegate("neg")
    __eq__ = _delegate("eq")
    __ne__ = _delegate("ne")
    __hash__ = Tensor.__hash__  # identity (a class that sets __eq__ loses the inherited one)
    clone = _delegate("clone")
    astype = _delegate("astype")
    contiguous = _delegate("contiguous")
    exp = _delegate("exp")
    log = _delegate("log")
    sin = _delegate("sin")
    cos = _delegate("cos")
    tanh = _delegate("tanh")
    sigmoid = _delegate("sigmoid")
    relu = _delegate("relu")
    abs = _delegate("abs")
    sum = _delegate("sum")
    mean = _delegate("mean")
    reshape = _delegate("reshape")
    view = _delegate("reshape")
    unsqueeze = _delegate("unsqueeze")
    squeeze = _delegate("squeeze")
    flatten = _delegate("flatten")
    transpose = _delegate("transpose")
    permute = _delegate("transpose")

    # What has no rule: indexing, cutting, comparisons and reading values out.
    __getitem__ = _refused("__getitem__")
    __iter__ = _refused("__iter__")
    split = _refused("split")
    chunk = _refused("chunk")
    isnan = _refused("isnan")
    any = _refused("any")
    all = _refused("all")
    allclose = _refused("allclose")
    equal = _refused("equal")
    __lt__ = _refused("__lt__")
    __le__ = _refused("__le__")
    __gt__ = _refused("__gt__")
    __ge__ = _refused("__ge__")
    tolist = _refused("tolist")
    numpy = _refused("numpy")
    __bool__ = _refused("__bool__")
    __float__ = _refused("__float__")
    __int__ = _refused("__int__")

    def item(self) -> Any:
        """The one element of a replicated DTensor."""
        if not all(isinstance(p, Replicate) for p in self._spec.placements):
            raise _refused("item")(self)
        return self.data.item()

    # In place: the pieces are written, so the operand must be placed alike (or a scalar
    # that the placement allows: adding one to every term of a Partial would add it n times).
    def _inplace_ufunc(self, op: str, ufunc: np.ufunc, other: Any) -> Any:
        self._check_inplace_operand(op, other, scales=ufunc in (np.multiply, np.divide))
        return super()._inplace_ufunc(op, ufunc, other)

    def copy_(self, src: Any) -> Any:
        """Copy ``src`` (a DTensor placed alike, or a scalar) into the piece."""
        self._check_inplace_operand("copy_", src, scales=False)
        return super().copy_(src)

    def fill_(self, value: Any) -> Any:
        """Fill the piece with ``value`` (a Partial only with 0)."""
        if value != 0:
            self._check_inplace_operand("fill_", value, scales=False)
        return super().fill_(value)

    def __setitem__(self, index: Any, value: Any) -> None:
        raise _refused("__setitem__")(self)

    def _check_inplace_operand(self, op: str, other: Any, scales: bool) -> None:
        if isinstance(other, DTensor):
            if other._spec != self._spec and (
                other.placements != self.placements or other.shape != self.shape
            ):
                raise RuntimeError(
                    f"{op}: in-place operands must be placed alike: {self.placements} and "
                    f"{other.placements}"
                )
            return
        if isinstance(other, Tensor) or (isinstance(other, np.ndarray) and other.ndim > 0):
            raise RuntimeError(
                f"{op} got mixed Tensor and DTensor, need to convert all Tensors to DTensor "
                "before calling distributed operators!"
            )
        if not scales and any(p.is_partial() for p in self._spec.placements):
            raise RuntimeError(
                f"{op} with a scalar on a Partial DTensor would count it once per rank"
            )

    @classmethod
    def __function_apply__(cls, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """An ``autograd.Function`` applied to DTensors (``F.linear``, ``F.softmax``, ...)."""
        return run_op(fn.__name__, *args, **kwargs)

    @classmethod
    def __tensor_function__(cls, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A torch-level function given DTensors (``autograd.matmul``, ``cat``, ``where``,
        ...): its sharding rule, or a NotImplementedError naming it (never the function
        computed on this rank's piece as if it were the whole)."""
        return run_op(name, *args, **{k: v for k, v in kwargs.items() if v is not None})

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"numpy.{ufunc.__name__} on a DTensor: use the Tensor operators, or .to_local() / "
            ".full_tensor() for arrays"
        )

    @staticmethod
    def __as_parameter__(data: DTensor, requires_grad: bool) -> DTensorParameter:
        """``nn.Parameter(dtensor)``: a DTensor that is a Parameter, sharing the piece."""
        return DTensorParameter(data.data, data._spec, requires_grad=requires_grad)


class DTensorParameter(DTensor, Parameter):
    """A DTensor registered as a module parameter (what ``nn.Parameter(dtensor)`` gives):
    ``isinstance`` of both, a leaf that requires grad by default."""

    def __new__(cls, *args: Any, **kwargs: Any) -> DTensorParameter:
        return object.__new__(cls)  # not Parameter.__new__: the arguments are DTensor's

    def __init__(self, local: Any, spec: Any = None, *, requires_grad: bool = True) -> None:
        if isinstance(local, DTensor):
            return  # Parameter(dtensor): built by __as_parameter__ already
        super().__init__(local, spec, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


def _broadcast_replicated(local: Tensor, spec: Spec) -> Tensor:
    """``local`` made equal across each replicated mesh dimension (from its first rank)."""
    mesh = spec.mesh
    coord = _coordinate(mesh)
    arr = np.array(local.data, copy=True, order="C")
    ranks = np.asarray(mesh.mesh)
    for d, p in enumerate(spec.placements):
        if isinstance(p, Replicate):
            src = list(coord)
            src[d] = 0
            dist.broadcast(arr, src=int(ranks[tuple(src)]), group=mesh.get_group(d))
    # A different value must not come back with the caller's graph attached.
    return Tensor(arr) if not np.array_equal(arr, local.data) else local


def distribute_tensor(
    tensor: Any,
    device_mesh: Any = None,
    placements: Sequence[Placement] | None = None,
    *,
    src_data_rank: int | None = 0,
) -> DTensor:
    """A leaf DTensor of ``tensor`` cut by ``placements`` (Replicate everywhere by default).

    Every rank passes a tensor of the same shape; with ``src_data_rank=0`` (torch's default)
    the values of the first rank of each mesh dimension count (scatter for ``Shard``,
    broadcast for ``Replicate``), with ``None`` each rank cuts its own. ``Partial`` splits
    the value (``sum``: divided by the mesh size). ``requires_grad`` is kept; gradients stay
    on the DTensor (it is a leaf)."""
    _check_mesh(device_mesh)
    if isinstance(tensor, DTensor):
        raise ValueError(
            "distribute_tensor: the input is already a DTensor; use redistribute to change "
            "its placements"
        )
    src = tensor if isinstance(tensor, Tensor) else Tensor(tensor)
    placements = check_placements(placements, device_mesh, src.data.ndim)
    arr = np.array(src.data, copy=True, order="C")
    mesh = device_mesh
    coord = _coordinate(mesh)
    ranks = np.asarray(mesh.mesh)
    for d in cut_order(placements):
        p = placements[d]
        n = int(mesh.size(d))
        me = coord[d]
        root = list(coord)
        root[d] = 0
        root_rank = int(ranks[tuple(root)])
        if isinstance(p, (Shard, _StridedShard)):
            full = arr.shape[p.dim]
            step = -(-full // n)
            if src_data_rank is None:
                start, stop = chunk_bounds(full, n, me)
                arr = np.ascontiguousarray(
                    np.moveaxis(np.moveaxis(arr, p.dim, 0)[start:stop], 0, p.dim)
                )
                continue
            moved = np.moveaxis(arr, p.dim, 0)
            pieces = [
                np.ascontiguousarray(_pad0(moved[slice(*chunk_bounds(full, n, r))], step))
                for r in range(n)
            ]
            out = np.empty((step,) + moved.shape[1:], dtype=arr.dtype)
            dist.scatter(out, pieces if me == 0 else None, src=root_rank, group=mesh.get_group(d))
            start, stop = chunk_bounds(full, n, me)
            arr = np.ascontiguousarray(np.moveaxis(out[: stop - start], 0, p.dim))
        else:
            if src_data_rank is not None:
                dist.broadcast(arr, src=root_rank, group=mesh.get_group(d))
            if isinstance(p, Partial):
                arr = partition_value(arr, p, mesh, d)
    spec = Spec(mesh, placements, tuple(src.data.shape))
    return DTensor(arr, spec, requires_grad=src.requires_grad)


def _pad0(arr: np.ndarray, length: int) -> np.ndarray:
    if arr.shape[0] == length:
        return arr
    return np.concatenate([arr, np.zeros((length - arr.shape[0],) + arr.shape[1:], arr.dtype)])


def _replicate_params(name: str, module: Module, mesh: Any) -> None:
    """distribute_module's default partition: every parameter and buffer that is not a
    DTensor yet becomes a replicated one."""
    for key, p in list(module._parameters.items()):
        if p is not None and not isinstance(p, DTensor):
            module.register_parameter(
                key, Parameter(distribute_tensor(p.detach(), mesh, [Replicate()] * mesh.ndim))
            )
    for key, b in list(module._buffers.items()):
        if b is not None and not isinstance(b, DTensor):
            module._buffers[key] = distribute_tensor(b, mesh, [Replicate()] * mesh.ndim)


def _arity(fn: Callable[..., Any]) -> int:
    return len(inspect.signature(fn).parameters)


def distribute_module(
    module: Module,
    device_mesh: Any = None,
    partition_fn: Callable[[str, Module, Any], None] | None = None,
    input_fn: Callable[..., Any] | None = None,
    output_fn: Callable[..., Any] | None = None,
) -> Module:
    """Make ``module``'s parameters DTensors and hook its inputs and outputs (torch's API).

    ``partition_fn(name, submodule, device_mesh)`` runs on every submodule and replaces the
    parameters it wants sharded (by default every parameter and buffer becomes replicated);
    ``input_fn(module, inputs, device_mesh)`` runs before forward (its result replaces the
    inputs), ``output_fn(module, outputs, device_mesh)`` after (its result replaces the
    outputs). Returns ``module``, changed in place."""
    _check_mesh(device_mesh)
    if getattr(module, "_distribute_module_applied", False):
        raise RuntimeError(
            "distribute_module should only be called once on a module, but it has already "
            "been called on this module!"
        )
    fill = partition_fn or _replicate_params
    for name, sub in module.named_modules():
        fill(name, sub, device_mesh)
        if partition_fn is not None:
            _replicate_params(name, sub, device_mesh)
    if input_fn is not None:
        n = _arity(input_fn)
        if n == 2:
            warnings.warn(
                "Deprecating input_fn that takes two arguments (inputs, device_mesh), please "
                "use input_fn that takes in (module, inputs, device_mesh) instead!",
                FutureWarning,
                stacklevel=2,
            )
            module.register_forward_pre_hook(lambda _, inputs: input_fn(inputs, device_mesh))
        elif n == 3:
            module.register_forward_pre_hook(lambda mod, inputs: input_fn(mod, inputs, device_mesh))
        else:
            raise ValueError(f"input_fn should take in 3 arguments, but got {n} arguments!")
    if output_fn is not None:
        n = _arity(output_fn)
        if n == 2:
            warnings.warn(
                "Deprecating output_fn that takes two arguments (inputs, device_mesh), please "
                "use output_fn that takes in (module, outputs, device_mesh) instead!",
                FutureWarning,
                stacklevel=2,
            )
            module.register_forward_hook(
                lambda mod, inputs, outputs: output_fn(outputs, device_mesh)
            )
        elif n == 3:
            module.register_forward_hook(
                lambda mod, inputs, outputs: output_fn(mod, outputs, device_mesh)
            )
        else:
            raise ValueError(f"output_fn should take in 3 arguments, but got {n} arguments!")
    module._distribute_module_applied = True
    return module
