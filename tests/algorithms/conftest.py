"""The algorithm tests share the rank runner and stores of the transport tests, and their
check that every test leaves no socket, thread, process or ring file behind."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "transport"))

from mesh_helpers import _nothing_left_behind  # noqa: E402, F401  (an autouse fixture)
