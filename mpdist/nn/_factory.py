"""The ``device=`` and ``dtype=`` keywords of layer constructors: CPU only, float32 by default."""

from __future__ import annotations

from typing import Any

import numpy as np

import mpdist.autograd as _autograd


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
    # ``mpdist.autograd.device`` judges names and indices (raising for anything not the CPU)
    make = getattr(_autograd, "device", None)
    if make is not None:
        make(device)
        return
    if isinstance(device, str):
        kind = device.split(":", 1)[0]
    elif isinstance(device, (int, np.integer)) and not isinstance(device, bool):
        kind = "cpu"
    if kind != "cpu":
        raise ValueError(f"mpdist runs on the CPU only; got device {device!r}")


def factory_dtype(device: Any = None, dtype: Any = None) -> np.dtype:
    """The dtype a layer makes its parameters and float buffers in, after checking ``device``."""
    _check_device(device)
    dt = np.dtype(np.float32 if dtype is None else dtype)
    if dt.kind != "f":
        raise TypeError(f"layers need a floating point dtype, got {dt}")
    return dt
