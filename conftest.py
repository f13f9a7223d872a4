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

import importlib.util
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# pytester drives inner pytest runs in the harness and compat tests. Its in-process runs
# drop the modules first imported inside them, while the packages imported before keep
# those modules as attributes (``from mpdist.testing import _worker`` then returns the
# dropped one, and its functions no longer pickle by name); mpdist's package also caches
# the names it hands out. So the module API and every harness module are imported here,
# once, before any inner run.
pytest_plugins = ["pytester"]

import mpdist.distributed  # noqa: E402, F401
import mpdist.process_group  # noqa: E402, F401
import mpdist.store  # noqa: E402, F401
import mpdist.testing  # noqa: E402

for _name in dir(mpdist.testing):  # the lazy names: import the module behind each
    getattr(mpdist.testing, _name)
import mpdist.testing._coordinator  # noqa: E402, F401
import mpdist.testing._worker  # noqa: E402, F401

# The same for torch's compiler stack, which torch imports the first time a rank thread's
# seeding calls torch.manual_seed: imported again after an inner run dropped it, it
# registers its test operator library twice (a RuntimeError in the next inner run).
if importlib.util.find_spec("torch") is not None:
    import torch._dynamo  # noqa: E402, F401

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


# -- fixtures of the data-parallel tests (tests/parallel, tests/fsdp) --------------------

# How long a thread that is already finishing (a group's worker after destroy) may take.
JOIN_GRACE = 5.0


@pytest.fixture
def no_thread_left_behind() -> Iterator[None]:
    """Fail the test if a thread it started (rank, group worker, ...) outlives it."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before]
    for t in leaked:
        t.join(timeout=JOIN_GRACE)
    names = [t.name for t in leaked if t.is_alive()]
    assert not names, f"threads left behind: {names}"


@pytest.fixture
def allreduce_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(thread ident, element count) of every all-reduce the groups run, in the order they
    start: the thread is the one that starts the collective (``allreduce`` runs its
    ``allreduce_steps``; a stepped all-reduce starts in whichever thread advances it)."""
    import mpdist.algorithms as alg

    calls: list[tuple[int, int]] = []
    orig = alg.allreduce_steps
    lock = threading.Lock()

    def recording(comm: Any, array: Any, *args: Any, **kwargs: Any) -> Any:
        steps = orig(comm, array, *args, **kwargs)

        def started_here() -> Any:
            with lock:
                calls.append((threading.get_ident(), array.size))
            yield from steps

        return started_here()

    monkeypatch.setattr(alg, "allreduce_steps", recording)
    return calls


@pytest.fixture(params=["comm thread", "stepped"])
def ddp_progress(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with DDP's buckets reduced on the group's worker thread ("comm thread",
    chosen where the host has a core to spare) and advanced by the gradient hooks
    ("stepped", chosen where it has not)."""
    from mpdist.parallel import reducer

    pays = request.param == "comm thread"
    monkeypatch.setattr(reducer, "communication_thread_pays", lambda world_size: pays)
    return request.param
