"""``device``: where a tensor lives (always the CPU here), and reading the arguments of ``to()``.

mpdist computes with numpy in host memory, so the one device type is ``"cpu"``. The class
exists so that torch code naming devices (``device("cpu")``, ``t.to("cpu")``,
``model.to(device)``, ``device=`` keywords) ports unchanged; naming any other device type is a
``ValueError`` at once rather than a silent CPU run of code that meant a GPU.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

_CPU_ONLY = "mpdist runs on the CPU: the only device type is 'cpu'"


def _index_of(value: Any) -> int:
    """A device index: a non-negative int."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"device index must be an int, not {type(value).__name__}")
    if value < 0:
        raise RuntimeError("Device index must not be negative")
    return int(value)


class device:  # noqa: N801  (torch's spelling: torch.device -> mpdist.device)
    """A device: ``device("cpu")``, ``device("cpu:0")``, ``device("cpu", 0)``, ``device(0)`` (an
    index alone names the CPU), or a copy of another device. ``.type`` is ``"cpu"``, ``.index``
    the index or None; ``str()`` gives ``"cpu"`` / ``"cpu:0"``. Devices compare equal when type
    and index do (``device("cpu") != device("cpu:0")``, as in torch) and are hashable.

    Any other device type (``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"meta"``, ...) is a
    ``ValueError``: mpdist runs on the CPU.
    """

    __slots__ = ("_type", "_index")

    _type: str
    _index: int | None

    def __init__(self, type: str | int | np.integer | device, index: int | None = None) -> None:  # noqa: A002
        if isinstance(type, device):
            if index is not None:
                raise TypeError("device(): an index cannot be given with a device")
            name, idx = type._type, type._index
        elif isinstance(type, str):
            name, idx = self._parse(type, index)
        elif isinstance(type, (int, np.integer)) and not isinstance(type, bool):
            if index is not None:
                raise TypeError("device(): an index cannot be given twice")
            name, idx = "cpu", _index_of(type)
        else:
            raise TypeError(
                f"device() expects a device string such as 'cpu', an index or a device, got "
                f"{type.__class__.__name__}"
            )
        object.__setattr__(self, "_type", name)
        object.__setattr__(self, "_index", idx)

    @staticmethod
    def _parse(text: str, index: int | None) -> tuple[str, int | None]:
        """``"cpu"`` / ``"cpu:N"`` (plus an optional separate index) -> (type, index)."""
        if not text:
            raise RuntimeError("Device string must not be empty")
        name, colon, rest = text.partition(":")
        if name != "cpu":
            raise ValueError(f"{_CPU_ONLY}, got device {text!r}")
        if not colon:
            return name, None if index is None else _index_of(index)
        if not rest.isdigit() or (len(rest) > 1 and rest[0] == "0"):
            raise RuntimeError(f"Invalid device string: {text!r}")
        if index is not None:
            raise RuntimeError(
                f"type (string) must not include an index because index was passed explicitly: {text}"
            )
        return name, int(rest)

    @property
    def type(self) -> str:
        """The device type: always ``"cpu"``."""
        return self._type

    @property
    def index(self) -> int | None:
        """The device index, or None when none was given."""
        return self._index

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("device objects are immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, device):
            return NotImplemented
        return self._type == other._type and self._index == other._index

    def __hash__(self) -> int:
        return hash((self._type, self._index))

    def __str__(self) -> str:
        return self._type if self._index is None else f"{self._type}:{self._index}"

    def __repr__(self) -> str:
        if self._index is None:
            return f"device(type={self._type!r})"
        return f"device(type={self._type!r}, index={self._index})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (device, (str(self),))


CPU = device("cpu")


def check_device(value: Any) -> device | None:
    """A ``device=`` keyword's value as a device (None stays None); anything that is not the
    CPU raises here, before any work is done."""
    return None if value is None else device(value)


class ToArgs(NamedTuple):
    """What a ``to(...)`` call asks for (None: keep)."""

    device: device | None
    dtype: np.dtype | None
    non_blocking: bool
    copy: bool


def _device_or_dtype(value: Any) -> tuple[device | None, np.dtype | None]:
    """One positional ``to()`` argument: a device (a device, a string naming one, an index) or
    a dtype (anything ``np.dtype`` accepts, strings included)."""
    if isinstance(value, device) or (
        isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    ):
        return device(value), None
    if isinstance(value, str):
        try:
            return None, np.dtype(value)
        except TypeError:
            return device(value), None
    try:
        return None, np.dtype(value)
    except TypeError:
        raise TypeError(
            f"to() expects a device, a dtype or a tensor, got {type(value).__name__}"
        ) from None


def parse_to(args: tuple[Any, ...], kwargs: dict[str, Any]) -> ToArgs:
    """Read torch's ``to`` overloads: ``to(dtype)``, ``to(device, dtype)``, ``to(tensor)``
    (its dtype), each optionally followed by ``non_blocking`` and ``copy``, or all as
    keywords (``device=``, ``dtype=``, ``non_blocking=``, ``copy=``; ``memory_format=`` is
    accepted and means nothing here). A tensor is recognised by having a ``device`` that is a
    device and a ``dtype``."""
    unknown = set(kwargs) - {"device", "dtype", "non_blocking", "copy", "memory_format"}
    if unknown:
        raise TypeError(f"to() got an unexpected keyword argument {sorted(unknown)[0]!r}")
    dev = check_device(kwargs.get("device"))
    dt = None if kwargs.get("dtype") is None else np.dtype(kwargs["dtype"])
    rest = list(args)
    while rest and not isinstance(rest[0], bool):
        first = rest.pop(0)
        if isinstance(getattr(first, "device", None), device) and hasattr(first, "dtype"):
            d, t = first.device, np.dtype(first.dtype)
        else:
            d, t = _device_or_dtype(first)
        if (d is not None and dev is not None) or (t is not None and dt is not None):
            raise TypeError("to() received a device or a dtype twice")
        dev, dt = dev if d is None else d, dt if t is None else t
    if len(rest) > 2:
        raise TypeError(f"to() takes at most 2 flags (non_blocking, copy), got {len(rest)}")
    flags = rest + [False] * (2 - len(rest))
    non_blocking = bool(kwargs.get("non_blocking", flags[0]))
    copy = bool(kwargs.get("copy", flags[1]))
    return ToArgs(dev, dt, non_blocking, copy)
