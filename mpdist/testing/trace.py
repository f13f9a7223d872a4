"""trace_collectives: run a function and get the collectives (and waits) it issued, in order, as text and records.

The numpy counterpart of torch's ``make_fx(fn)(*args)`` followed by ``str(gm.graph)``, for
collectives only: the function runs for real (its collectives communicate, or not on the
fake backend) under a collective mode that notes each op before running it::

    trace = trace_collectives(fn)(x)
    FileCheck().check("all_gather_into_tensor").check("wait_tensor").run(trace.graph)
    trace.result  # what fn returned

``trace.graph`` prints one line per op::

    graph():
        %0 = c10d.allreduce_.default(tensor=float32[3, 3], op=ReduceOp.SUM, async_op=False)  group="0" ranks=[0, 1]
        %1 = _c10d_functional.wait_tensor.default(tensor=%0)

Arguments are shown by parameter name: arrays and Tensors as ``dtype[shape]``, the value an
earlier op returned as ``%<its index>``, the group (a ProcessGroup, None for the default
group, a group name, a list of ranks or a DeviceMesh) at the end of the line. ``trace.ops``
has the same as :class:`TracedOp` records.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

from mpdist.distributed import queries
from mpdist.distributed.dispatch import CollectiveMode, CollectiveOp
from mpdist.process_group import ProcessGroup

__all__ = ["CollectiveTrace", "GroupMeta", "TensorMeta", "TracedOp", "trace_collectives"]

# Parameters that name the group an op runs on (the module API says group, torch's
# functional ops group_name).
_GROUP_PARAMS = ("group", "group_name", "pg", "process_group")


class TensorMeta(NamedTuple):
    """An array argument as the trace shows it: its shape and dtype name."""

    shape: tuple[int, ...]
    dtype: str

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(map(str, self.shape))}]"


class GroupMeta(NamedTuple):
    """The group an op ran on: its name and global ranks (None where unknown)."""

    name: str | None
    ranks: tuple[int, ...] | None

    def __str__(self) -> str:
        name = "?" if self.name is None else f'"{self.name}"'
        ranks = "?" if self.ranks is None else f"[{', '.join(map(str, self.ranks))}]"
        return f"group={name} ranks={ranks}"


class Arg(NamedTuple):
    """One argument of a traced op: its parameter name and its value as printed."""

    name: str
    text: str


@dataclasses.dataclass(frozen=True)
class TracedOp:
    """One collective or wait, as issued.

    ``index`` counts from 0 in issue order; ``name`` is torch's op name
    (``"c10d.allreduce_.default"``); ``args`` the arguments but the group, as printed;
    ``inputs`` the array arguments' metadata, in argument order (arrays in lists included;
    values returned by earlier ops are in ``uses`` instead, by index); ``group`` the group,
    or None for ops without one (waits).
    """

    index: int
    name: str
    args: tuple[Arg, ...]
    inputs: tuple[TensorMeta, ...]
    uses: tuple[int, ...]
    group: GroupMeta | None

    def __str__(self) -> str:
        args = ", ".join(f"{a.name}={a.text}" for a in self.args)
        line = f"%{self.index} = {self.name}({args})"
        return line if self.group is None else f"{line}  {self.group}"


@dataclasses.dataclass(frozen=True)
class CollectiveTrace:
    """What :func:`trace_collectives` returns: the ops, their text, and the function's result."""

    ops: tuple[TracedOp, ...]
    result: Any

    @property
    def graph(self) -> str:
        """The ops as text, one line each, in issue order."""
        return "".join(["graph():\n", *(f"    {op}\n" for op in self.ops)])

    def __str__(self) -> str:
        return self.graph


def trace_collectives(fn: Callable[..., Any]) -> Callable[..., CollectiveTrace]:
    """Wrap ``fn``: calling the wrapper runs ``fn`` and returns the :class:`CollectiveTrace` of its collectives.

    The trace covers the calling thread (collective modes are per thread). An exception of
    ``fn`` propagates, and the mode is gone.
    """
    if not callable(fn):
        raise TypeError(f"trace_collectives: fn must be callable, got {fn!r}")

    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> CollectiveTrace:
        with _Tracer() as tracer:
            result = fn(*args, **kwargs)
            _wait_outputs(result)
        return CollectiveTrace(tuple(tracer.ops), result)

    return traced


def _wait_outputs(result: Any) -> None:
    """Wait, inside the trace, for the functional collectives ``fn`` returned unwaited.

    A traced function's outputs are complete values, as in torch's ``make_fx`` graph, which
    ends with a ``wait_tensor`` for each collective whose result it returns.
    """
    collectives = sys.modules.get("mpdist._functional_collectives")
    if collectives is None:  # nothing can be pending
        return
    pending = collectives.AsyncCollectiveTensor
    todo = [result]
    while todo:
        value = todo.pop()
        if isinstance(value, pending):
            if not value.completed:
                value.trigger_wait()
        elif isinstance(value, (list, tuple)):
            todo.extend(value)
        elif isinstance(value, dict):
            todo.extend(value.values())


class _Tracer(CollectiveMode):
    def __init__(self) -> None:
        self.ops: list[TracedOp] = []
        # id of each op's result -> (its index, the object: held so the id stays its own)
        self._produced: dict[int, tuple[int, Any]] = {}

    def __collective__(
        self,
        func: CollectiveOp,
        types: tuple[type, ...],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        index = len(self.ops)
        self.ops.append(self._record(index, func, args, kwargs))
        out = func(*args, **kwargs)
        for value in out if isinstance(out, (list, tuple)) else (out,):
            if value is not None and not isinstance(value, (bool, int, float, str)):
                self._produced[id(value)] = (index, value)
        return out

    def _record(
        self, index: int, func: CollectiveOp, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> TracedOp:
        inputs: list[TensorMeta] = []
        uses: list[int] = []
        shown: list[Arg] = []
        group: GroupMeta | None = None
        for name, value in _named(func, args, kwargs):
            if name in _GROUP_PARAMS or isinstance(value, ProcessGroup):
                group = _group_meta(value)
            else:
                shown.append(Arg(name, self._show(value, inputs, uses)))
        return TracedOp(index, str(func), tuple(shown), tuple(inputs), tuple(uses), group)

    def _show(self, value: Any, inputs: list[TensorMeta], uses: list[int]) -> str:
        """``value`` as the trace prints it; arrays are noted in ``inputs``, earlier results in ``uses``."""
        produced = self._produced.get(id(value))
        if produced is not None and produced[1] is value:
            uses.append(produced[0])
            return f"%{produced[0]}"
        meta = _tensor_meta(value)
        if meta is not None:
            inputs.append(meta)
            return str(meta)
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(self._show(v, inputs, uses) for v in value) + "]"
        if isinstance(value, enum.Enum):
            return str(value)
        return repr(value)


def _named(
    func: CollectiveOp, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[tuple[str, Any]]:
    """The op's arguments by parameter name (``arg<i>`` where its function's signature is unknown)."""
    sig = _signature(func.fn)
    if sig is not None:
        try:
            return list(sig.bind(*args, **kwargs).arguments.items())
        except TypeError:
            pass
    return [(f"arg{i}", a) for i, a in enumerate(args)] + list(kwargs.items())


@functools.cache
def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _tensor_meta(value: Any) -> TensorMeta | None:
    """Shape and dtype of an array or Tensor (anything with both), else None."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is None or dtype is None or isinstance(value, type):
        return None
    try:
        return TensorMeta(tuple(int(n) for n in shape), str(dtype))
    except TypeError:
        return None


def _group_meta(group: Any) -> GroupMeta:
    """Name and global ranks of whatever an op was given as its group."""
    if isinstance(group, str):  # a group name, as torch's functional ops take it
        try:
            group = queries._resolve_process_group(group)
        except (ValueError, KeyError, RuntimeError):
            return GroupMeta(group, None)
    if isinstance(group, tuple) and len(group) == 2 and hasattr(group[0], "get_group"):
        group = group[0].get_group(group[1])  # (DeviceMesh, dim)
    elif hasattr(group, "get_group"):  # a 1-D DeviceMesh
        group = group.get_group()
    if isinstance(group, (list, tuple)) and all(isinstance(r, int) for r in group):
        return GroupMeta(None, tuple(group))
    if group is not None and not isinstance(group, ProcessGroup):
        return GroupMeta(None, None)
    try:
        pg = queries._get_default_group() if group is None else group
        name = pg.group_name
    except (ValueError, RuntimeError, AssertionError):  # no default group: uninitialized
        return GroupMeta(None, None)
    try:
        ranks: tuple[int, ...] | None = tuple(queries.get_process_group_ranks(pg))
    except (ValueError, RuntimeError):  # a group the world does not know (made directly)
        ranks = None
    return GroupMeta(name, ranks)
