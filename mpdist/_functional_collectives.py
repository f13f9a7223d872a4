"""Functional collectives: each returns a new tensor whose collective is waited for on first use.

``torch.distributed._functional_collectives`` -> ``mpdist._functional_collectives``. The
input is never modified: ``all_reduce(t, "sum", group)`` copies ``t``, issues the module
API's collective on the copy with ``async_op=True`` and returns an
:class:`AsyncCollectiveTensor` at once; its data is waited for (``wait_tensor``) the first
time anything reads it. ``group`` is a ProcessGroup, a group name, a list of the members'
global ranks (an existing group), a 1-D DeviceMesh or ``(mesh, dim)``.

Each op is a ``dispatch.CollectiveOp`` named as torch names it
(``_c10d_functional.all_reduce.default``, ...), so collective modes see it, with torch's
arguments (the input, then ``reduce_op`` as a string, ``group_size``, the group's name).
A mode sees the functional op once: the module-API collective inside it runs below the
modes (``dispatch.run``). It also sees ``_c10d_functional.wait_tensor.default`` for each
explicit ``wait_tensor`` / ``.wait()`` and for the wait on first use (torch's graph under
``make_fx`` has that wait; a torch dispatch mode would not see the implicit one).

Autograd, as torch 2.13 (every op is differentiable, backward issues the adjoint functional
collective): all_reduce -> all_reduce; all_gather -> reduce_scatter("sum");
reduce_scatter -> all_gather; all_to_all_single -> the same with the splits swapped;
wait_tensor -> identity. Only "sum" reductions have a backward in torch; mpdist also
differentiates "avg" (as ``mpdist.parallel.functional`` does), and ``broadcast``, whose
gradient torch passes through unchanged, gets its adjoint (the gradients summed onto ``src``,
zeros elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mpdist import distributed as dist
from mpdist.autograd import Tensor, cat, chunk
from mpdist.autograd.grad_mode import is_grad_enabled
from mpdist.autograd.graph import Node
from mpdist.device_mesh import DeviceMesh
from mpdist.distributed import dispatch
from mpdist.distributed.queries import _find_pg_by_ranks_and_tag
from mpdist.process_group import ProcessGroup, ReduceOp, Work

__all__ = [
    "AsyncCollectiveTensor",
    "all_gather_single",
    "all_gather_single_autograd",
    "all_gather_tensor",
    "all_gather_tensor_autograd",
    "all_reduce",
    "all_to_all_single",
    "all_to_all_single_autograd",
    "broadcast",
    "reduce_scatter_single",
    "reduce_scatter_single_autograd",
    "reduce_scatter_tensor",
    "reduce_scatter_tensor_autograd",
    "wait_tensor",
]

RANK_TYPES = ProcessGroup | str | list[int] | DeviceMesh | tuple[DeviceMesh, int | str]

# torch's reduce-op strings (compared lower-cased, as torch does)
_REDUCE_OPS = {
    "sum": ReduceOp.SUM,
    "avg": ReduceOp.AVG,
    "product": ReduceOp.PRODUCT,
    "min": ReduceOp.MIN,
    "max": ReduceOp.MAX,
    "band": ReduceOp.BAND,
    "bor": ReduceOp.BOR,
    "bxor": ReduceOp.BXOR,
}


class AsyncCollectiveTensor(Tensor):
    """The result of a functional collective: a Tensor whose data is waited for on first use.

    Reading the data (any op, ``np.asarray``, ``.numpy()``, ``repr``) waits for the
    collective once, as ``wait_tensor`` (which modes see); shape, dtype and ``ndim`` are known
    at once and do not wait. ``wait()`` returns the result as a plain Tensor.
    """

    def __init__(self, out: np.ndarray, work: Work | None) -> None:
        # state first: Tensor.__init__ reads self.data (our getter) for the grad checks
        self._work = work
        self._completed = True
        self._waiting = False
        super().__init__(out)
        self._completed = False

    @property
    def data(self) -> np.ndarray:
        """The result, waited for on first access."""
        if not self._completed:
            self.trigger_wait()
        return self._data

    @data.setter
    def data(self, value: Any) -> None:
        self._data = value.data if isinstance(value, Tensor) else np.asarray(value)

    @property
    def completed(self) -> bool:
        """Whether the collective has been waited for."""
        return self._completed

    # metadata is known before the data arrives: no wait
    @property
    def shape(self) -> tuple[int, ...]:
        """The result's shape (no wait)."""
        return self._data.shape

    @property
    def dtype(self) -> np.dtype:
        """The result's dtype (no wait)."""
        return self._data.dtype

    @property
    def ndim(self) -> int:
        """The result's number of dimensions (no wait)."""
        return self._data.ndim

    def dim(self) -> int:
        """The number of dimensions (no wait)."""
        return self._data.ndim

    def size(self, dim: int | None = None) -> Any:
        """The shape, or one dimension's length (no wait)."""
        return self._data.shape if dim is None else self._data.shape[dim]

    def numel(self) -> int:
        """The number of elements (no wait)."""
        return int(self._data.size)

    def __len__(self) -> int:
        return len(self._data)

    def trigger_wait(self) -> AsyncCollectiveTensor:
        """Wait for the collective (once; a mode sees ``wait_tensor``) and return self."""
        if self._completed:
            return self
        if self._waiting:  # a mode reading us while it handles our wait: no second wait op
            self._finish()
            return self
        self._waiting = True
        try:
            _call(_OP_WAIT_TENSOR, (self,))
        finally:
            self._waiting = False
        self._finish()  # in case a mode kept the wait to itself
        return self

    def _finish(self) -> None:
        if not self._completed:
            if self._work is not None:
                self._work.wait()
            self._work = None
            self._completed = True

    def wait(self) -> Tensor:
        """The result as a plain Tensor (``wait_tensor(self)``)."""
        return wait_tensor(self)

    def __repr__(self) -> str:
        self.trigger_wait()
        return f"AsyncCollectiveTensor({Tensor.__repr__(self)})"


# -- plumbing --------------------------------------------------------------------------------


def _call(op: dispatch.CollectiveOp, args: tuple[Any, ...]) -> Any:
    """Run ``op`` through the active modes, if any (the pattern of ``collectives.py``)."""
    if dispatch.active and dispatch.intercepting():
        return dispatch.run(op, args)
    return op.fn(*args)


def _tensor(t: Any) -> Tensor:
    """The input as a Tensor; one still in flight is waited for here, before the op is
    handed to the modes, so they see its wait first (the order of a traced graph)."""
    if isinstance(t, AsyncCollectiveTensor):
        return t.trigger_wait()
    if isinstance(t, Tensor):
        return t
    return Tensor(np.asarray(t))


def _record(out: Tensor, inp: Tensor, backward: Callable[[np.ndarray], Any], name: str) -> None:
    """Attach the graph node of ``out = op(inp)`` when recording (``_tensor._make``'s rule)."""
    if is_grad_enabled() and inp.requires_grad:
        arr = out._data
        out._node = Node([inp], lambda gs: [backward(gs[0])], [(arr.shape, arr.dtype)], name, [arr])
        out._requires_grad = True


def _reduce_op(op: Any) -> str:
    """torch's reduce-op string (lower case) for a string or a ReduceOp."""
    if isinstance(op, ReduceOp):
        return op.name.lower()
    if not isinstance(op, str):
        raise TypeError(f"reduceOp must be a str such as 'sum' or a ReduceOp, got {op!r}")
    if op.lower() not in _REDUCE_OPS:
        raise RuntimeError(f"Unrecognized reduce_op: {op}")
    return op.lower()


def _resolve_group(group: Any) -> ProcessGroup:
    """A ProcessGroup for any of torch's group forms (RANK_TYPES)."""
    if isinstance(group, ProcessGroup):
        return group
    if isinstance(group, str):
        return dist._resolve_process_group(group)
    if isinstance(group, DeviceMesh):
        if group.ndim != 1:
            raise AssertionError(
                "Only 1D mesh is supported, pass in (DeviceMesh, int) together if mesh > 1D"
            )
        return group.get_group()
    if isinstance(group, tuple):
        if len(group) == 2 and isinstance(group[0], DeviceMesh):
            return group[0].get_group(group[1])
        raise ValueError(
            "Invalid tuple for group must be (DeviceMesh, int). Instead got "
            f"{tuple(type(g) for g in group)}"
        )
    if isinstance(group, list) and group and all(isinstance(r, int) for r in group):
        pg = _find_pg_by_ranks_and_tag("", group)
        if pg is None:
            raise ValueError(
                f"no process group has exactly the ranks {group}: create it with new_group "
                "(on every rank) and pass the group"
            )
        return pg
    raise ValueError(f"Unsupported group type: {type(group)}, {group}")


def _pg(group_name: str) -> ProcessGroup:
    return dist._resolve_process_group(group_name)


def _global_rank(pg: ProcessGroup, group_rank: int) -> int:
    try:
        return dist.get_global_rank(pg, group_rank)
    except ValueError:  # a group the module API did not make: its ranks are global
        return group_rank


def _contiguous_copy(t: Tensor) -> np.ndarray:
    return np.array(t.data, copy=True, order="C")


# -- the ops as modes see them (torch's arguments), each backward under its forward -----------


def _all_reduce(input: Tensor, reduce_op: str, group_name: str) -> AsyncCollectiveTensor:
    out = _contiguous_copy(input)
    work = dist.all_reduce(out, _REDUCE_OPS[reduce_op], group=_pg(group_name), async_op=True)
    res = AsyncCollectiveTensor(out, work)

    def backward(g: np.ndarray) -> np.ndarray:
        if reduce_op not in ("sum", "avg"):
            raise RuntimeError(
                f"all_reduce backward only supports 'sum' reduction, got '{reduce_op}'"
            )
        return wait_tensor(_call(_OP_ALL_REDUCE, (Tensor(g), reduce_op, group_name))).data

    _record(res, input, backward, "AllReduceBackward")
    return res


def _all_gather_into_tensor(
    input: Tensor, group_size: int, group_name: str
) -> AsyncCollectiveTensor:
    inp = np.asarray(input.data, order="C")
    shape = (group_size * inp.shape[0], *inp.shape[1:]) if inp.ndim else (group_size,)
    out = np.zeros(shape, dtype=inp.dtype)
    work = dist.all_gather_into_tensor(out, inp, group=_pg(group_name), async_op=True)
    res = AsyncCollectiveTensor(out, work)

    def backward(g: np.ndarray) -> np.ndarray:
        args = (Tensor(g), "sum", group_size, group_name)
        return wait_tensor(_call(_OP_REDUCE_SCATTER, args)).data.reshape(inp.shape)

    _record(res, input, backward, "AllGatherIntoTensorBackward")
    return res


def _reduce_scatter_tensor(
    input: Tensor, reduce_op: str, group_size: int, group_name: str
) -> AsyncCollectiveTensor:
    inp = np.asarray(input.data, order="C")
    out = np.zeros((inp.shape[0] // group_size, *inp.shape[1:]), dtype=inp.dtype)
    op = _REDUCE_OPS[reduce_op]
    work = dist.reduce_scatter_tensor(out, inp, op, group=_pg(group_name), async_op=True)
    res = AsyncCollectiveTensor(out, work)

    def backward(g: np.ndarray) -> np.ndarray:
        if reduce_op not in ("sum", "avg"):
            raise RuntimeError(
                f"reduce_scatter_tensor backward only supports 'sum' reduction, got '{reduce_op}'"
            )
        gathered = wait_tensor(_call(_OP_ALL_GATHER, (Tensor(g), group_size, group_name))).data
        return gathered / group_size if reduce_op == "avg" else gathered

    _record(res, input, backward, "ReduceScatterTensorBackward")
    return res


def _all_to_all_single(
    input: Tensor,
    output_split_sizes: list[int],
    input_split_sizes: list[int],
    group_name: str,
) -> AsyncCollectiveTensor:
    inp = np.asarray(input.data, order="C")
    out = np.zeros((sum(output_split_sizes), *inp.shape[1:]), dtype=inp.dtype)
    work = dist.all_to_all_single(
        out, inp, output_split_sizes, input_split_sizes, group=_pg(group_name), async_op=True
    )
    res = AsyncCollectiveTensor(out, work)

    def backward(g: np.ndarray) -> np.ndarray:
        # the transpose: what came from rank j goes back to rank j
        args = (Tensor(g), input_split_sizes, output_split_sizes, group_name)
        return wait_tensor(_call(_OP_ALL_TO_ALL_SINGLE, args)).data

    _record(res, input, backward, "AllToAllSingleBackward")
    return res


def _broadcast(input: Tensor, src: int, group_name: str) -> AsyncCollectiveTensor:
    pg = _pg(group_name)
    out = _contiguous_copy(input)
    work = dist.broadcast(out, _global_rank(pg, src), group=pg, async_op=True)
    res = AsyncCollectiveTensor(out, work)

    def backward(g: np.ndarray) -> np.ndarray:
        # the adjoint: every rank's gradient summed onto src; the others' inputs had no effect
        root = _global_rank(pg, src)
        gx = np.array(g, copy=True, order="C")
        dist.reduce(gx, dst=root, group=pg)
        if dist.get_rank(pg) != src:
            gx[...] = 0
        return gx

    _record(res, input, backward, "BroadcastBackward")
    return res


def _wait_tensor(tensor: Any) -> Any:
    if not isinstance(tensor, AsyncCollectiveTensor):
        return tensor  # nothing in flight
    tensor._finish()
    out = Tensor(tensor._data)
    _record(out, tensor, lambda g: g, "WaitTensorBackward")
    return out


_OP_ALL_REDUCE = dispatch.CollectiveOp("_c10d_functional.all_reduce.default", _all_reduce)
_OP_ALL_GATHER = dispatch.CollectiveOp(
    "_c10d_functional.all_gather_into_tensor.default", _all_gather_into_tensor
)
_OP_REDUCE_SCATTER = dispatch.CollectiveOp(
    "_c10d_functional.reduce_scatter_tensor.default", _reduce_scatter_tensor
)
_OP_ALL_TO_ALL_SINGLE = dispatch.CollectiveOp(
    "_c10d_functional.all_to_all_single.default", _all_to_all_single
)
_OP_BROADCAST = dispatch.CollectiveOp("_c10d_functional.broadcast.default", _broadcast)
_OP_WAIT_TENSOR = dispatch.CollectiveOp("_c10d_functional.wait_tensor.default", _wait_tensor)


# -- the public functions ----------------------------------------------------------------------


def wait_tensor(tensor: Any) -> Any:
    """Wait for ``tensor``'s collective; the result as a plain Tensor (recorded as identity)."""
    return _call(_OP_WAIT_TENSOR, (tensor,))


def all_reduce(self: Any, reduceOp: Any, group: RANK_TYPES, tag: str = "") -> Any:  # noqa: N803 (torch's name)
    """The reduction of ``self`` over the group, on every rank (``self`` is left unmodified)."""
    pg = _resolve_group(group)
    return _call(_OP_ALL_REDUCE, (_tensor(self), _reduce_op(reduceOp), pg.group_name))


def broadcast(self: Any, src: int, group: RANK_TYPES, tag: str = "") -> Any:
    """The tensor of the group's rank ``src`` (a rank *within the group*, as torch's) on every rank."""
    pg = _resolve_group(group)
    n = dist.get_world_size(pg)
    if not isinstance(src, int) or isinstance(src, bool) or not 0 <= src < n:
        raise ValueError(f"broadcast: src must be a rank of the group (0..{n - 1}), got {src!r}")
    return _call(_OP_BROADCAST, (_tensor(self), src, pg.group_name))


def _dim(dim: int, ndim: int, what: str) -> int:
    if not isinstance(dim, int) or isinstance(dim, bool) or not -max(ndim, 1) <= dim < max(ndim, 1):
        raise IndexError(f"{what} {dim!r} is out of range for a tensor of {ndim} dimensions")
    return dim % max(ndim, 1)


def all_gather_tensor(self: Any, gather_dim: int, group: RANK_TYPES, tag: str = "") -> Any:
    """Every rank's ``self`` concatenated along ``gather_dim`` (a 0-d input: stacked).

    With ``gather_dim`` 0 the result is an AsyncCollectiveTensor; otherwise the gathered
    blocks are rearranged at once, which waits (as torch).
    """
    x = _tensor(self)
    pg = _resolve_group(group)
    n = dist.get_world_size(pg)
    dim = _dim(gather_dim, x.ndim, "gather_dim")
    res = _call(_OP_ALL_GATHER, (x, n, pg.group_name))
    if dim != 0:
        res = cat(chunk(wait_tensor(res), n, dim=0), dim=dim)
    return res


def reduce_scatter_tensor(
    self: Any,
    reduceOp: Any,  # noqa: N803 (torch's name)
    scatter_dim: int,
    group: RANK_TYPES,
    tag: str = "",
) -> Any:
    """Block ``my_rank`` along ``scatter_dim`` of the reduction of every rank's ``self``."""
    x = _tensor(self)
    pg = _resolve_group(group)
    n = dist.get_world_size(pg)
    op = _reduce_op(reduceOp)
    if x.ndim == 0:
        raise ValueError("reduce_scatter_tensor: the input needs at least one dimension")
    dim = _dim(scatter_dim, x.ndim, "scatter_dim")
    if x.shape[dim] % n:
        raise AssertionError(
            f"input dimension {dim} ({x.shape[dim]}) must be a multiple of group_size {n}"
        )
    if dim != 0:  # the blocks along scatter_dim, one after the other along dim 0
        x = cat(chunk(x, n, dim=dim), dim=0)
    return _call(_OP_REDUCE_SCATTER, (x, op, n, pg.group_name))


def _check_splits(splits: Any, what: str) -> list[int] | None:
    if splits is None:
        return None
    if isinstance(splits, np.ndarray):
        splits = splits.tolist()
    if not isinstance(splits, Sequence) or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in splits
    ):
        raise AssertionError(f"All {what} must be int or SymInt, got {splits}")
    return [int(s) for s in splits]


def all_to_all_single(
    self: Any,
    output_split_sizes: list[int] | None,
    input_split_sizes: list[int] | None,
    group: RANK_TYPES,
    tag: str = "",
) -> Any:
    """Rows of ``self`` (axis 0) split by ``input_split_sizes`` go to the ranks in order; the
    result stacks what each rank sent here (``output_split_sizes`` rows from each)."""
    x = _tensor(self)
    outs = _check_splits(output_split_sizes, "output_split_sizes")
    ins = _check_splits(input_split_sizes, "input_split_sizes")
    pg = _resolve_group(group)
    n = dist.get_world_size(pg)
    if outs is None or ins is None:
        if not (outs is None and ins is None):
            raise AssertionError(
                "output_split_sizes and input_split_sizes must either be specified together "
                "or both set to None"
            )
        if x.ndim == 0 or x.shape[0] % n:
            raise ValueError(
                f"all_to_all_single: input of shape {list(x.shape)} does not split evenly "
                f"among {n} ranks on axis 0; pass the split sizes"
            )
        outs = ins = [x.shape[0] // n] * n
    return _call(_OP_ALL_TO_ALL_SINGLE, (x, outs, ins, pg.group_name))


# torch 2.13's names: every functional collective is differentiable, so the *_autograd
# variants are the same functions, and *_single the non-deprecated spelling of *_tensor
all_gather_single = all_gather_tensor
all_gather_tensor_autograd = all_gather_tensor
all_gather_single_autograd = all_gather_tensor
reduce_scatter_single = reduce_scatter_tensor
reduce_scatter_tensor_autograd = reduce_scatter_tensor
reduce_scatter_single_autograd = reduce_scatter_tensor
all_to_all_single_autograd = all_to_all_single
