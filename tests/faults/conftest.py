"""The fault campaigns' shared fixture: the harness's helpers start before any count."""

from __future__ import annotations

import pytest
from checks import warm_up

from mpdist.testing import spawn_ranks


@pytest.fixture(scope="session", autouse=True)
def _started_helpers() -> None:
    """The forkserver and its helpers start with the first run: before any count is taken."""
    spawn_ranks(warm_up, 2)
