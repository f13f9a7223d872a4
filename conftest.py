"""Top-level pytest configuration shared by every test directory.

Hypothesis runs few examples by default: many properties here start real
processes or threads, and the whole suite must stay fast on two cores. Set
``HYPOTHESIS_PROFILE=thorough`` for a deeper local run.

torch's test utilities, which the compat and harness tests run, make a compile cache
directory (by default ``/tmp/torchinductor_<user>``, left behind): the session points
it at a temporary directory of its own and removes that at the end.

The harness classes default to torch's 4 ranks; this suite runs at 2 (ini ``mpdist_ranks``,
which ``MPDIST_WORLD_SIZE`` beats, so CI's ws4 jobs run it at 4; ``MPDIST_WORLD_SIZE=2``
for pytester's inner sessions) to stay fast.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings

# pytester drives inner pytest runs in the harness and compat tests. Its in-process runs
# drop the modules first imported inside them; mpdist's package caches the names it hands
# out, so the module API is imported here, once, before any inner run.
pytest_plugins = ["pytester"]

import mpdist.distributed  # noqa: E402, F401
import mpdist.process_group  # noqa: E402, F401
import mpdist.store  # noqa: E402, F401

settings.register_profile(
    "ci",
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


_INDUCTOR_DIR = "TORCHINDUCTOR_CACHE_DIR"
_inductor_key = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    if _INDUCTOR_DIR not in os.environ:
        path = tempfile.mkdtemp(prefix="mpdist-tests-torchinductor-")
        os.environ[_INDUCTOR_DIR] = path
        config.stash[_inductor_key] = path


def pytest_unconfigure(config: pytest.Config) -> None:
    path = config.stash.get(_inductor_key, None)
    if path is not None:
        os.environ.pop(_INDUCTOR_DIR, None)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytester's inner sessions run at this suite's world size, 2 (ini ``mpdist_ranks``).

    The harness classes default to 4 ranks, as torch's do; an inner session does not
    read this project's addopts, so it gets the same pin through the environment. A
    test about the default itself removes ``MPDIST_WORLD_SIZE``.
    """
    monkeypatch.setenv("MPDIST_WORLD_SIZE", "2")
    return pytester
