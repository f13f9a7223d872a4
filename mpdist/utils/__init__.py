"""Utilities on top of autograd and nn, named as torch's ``torch.utils``: ``checkpoint``."""

from __future__ import annotations

from . import checkpoint

__all__ = ["checkpoint"]
