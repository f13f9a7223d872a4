"""Every transport test must leave no socket, thread, process or ring file behind."""

from __future__ import annotations

from mesh_helpers import _nothing_left_behind  # noqa: F401  (an autouse fixture)
