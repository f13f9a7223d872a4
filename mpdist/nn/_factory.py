"""The ``device=`` and ``dtype=`` keywords of layer constructors: CPU only, the default dtype
(``mpdist.autograd.get_default_dtype()``, float32 unless changed) when none is given."""

from __future__ import annotations

from typing import Any

import numpy as np

from mpdist.autograd import device as _device
from mpdist.autograd import get_default_dtype


def _check_device(device: Any) -> None:
    """Accept what names the CPU (None, "cpu", "cpu:0", an int index, a device whose
    ``.type`` is "cpu"); anything else is a ``ValueError``."""
    if device is None:
        return
    kind = getattr(device, "type", None)
    if isinstance(kind, str):  # a device object, mpdist's or another library's
        if kind != "cpu":
            raise ValueError(f"mpdist runs on the CPU only; got device {device!r}")
        return
    _device(device)  # judges names and indices: anything but the CPU is a ValueError


def factory_dtype(device: Any = None, dtype: Any = None) -> np.dtype:
    """The dtype a layer makes its parameters and float buffers in, after checking ``device``."""
    _check_device(device)
    dt = np.dtype(get_default_dtype() if dtype is None else dtype)
    if dt.kind != "f":
        raise TypeError(f"layers need a floating point dtype, got {dt}")
    return dt
