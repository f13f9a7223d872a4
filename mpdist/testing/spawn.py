"""spawn_ranks: run a module-level function in N fresh rank processes and get its return values.

For tests that want values back in the parent rather than assertions in the
ranks (compare a TCP result with a reference computed elsewhere, for example)::

    def job(rank, world_size, n):
        a = np.full(n, rank, dtype=np.int64)
        dist.all_reduce(a)
        return a

    def test_sum():
        results = spawn_ranks(job, 3, 4)        # the default group is initialized (tcp)
        assert all((r == 3).all() for r in results)

The ranks are started, watched, aborted, dumped and reaped exactly as for a
MultiProcessTestCase; a failure raises one error naming every failing rank.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable, Iterable
from typing import Any

from mpdist.testing import _config, _coordinator, _pytest_internals
from mpdist.testing._report import raise_for, rerun_command
from mpdist.testing._worker import TaskSpec
from mpdist.testing.multiprocess import make_workdir, module_path, preload_for, remove_workdir


def spawn_ranks(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    backend: str | None = "tcp",
    timeout: float | None = None,
    group_timeout: float | None = None,
    may_die: Iterable[int] = (),
    start_method: str | None = None,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` processes; their return values.

    ``fn`` must be defined at module level (ranks import it by name); ``args`` and the
    return values must pickle. With ``backend`` (default "tcp"), the default group is
    initialized on a FileStore before ``fn`` runs and destroyed after; ``None`` leaves
    it to ``fn``. ``timeout`` bounds the whole run (default ``--mp-timeout`` or 300 s);
    ``group_timeout`` (seconds) is the group's own timeout. Ranks in ``may_die`` may exit
    without a result (their value is None). A failing rank raises
    :class:`~mpdist.testing.MultiProcessFailure` (a RuntimeError; past the
    deadline its subclass :class:`~mpdist.testing.MultiProcessTimeout`).
    """
    if not callable(fn):
        raise TypeError(f"spawn_ranks needs a callable, got {type(fn).__name__}")
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    qualname = getattr(fn, "__qualname__", "")
    module = getattr(fn, "__module__", None)
    if not module or not qualname or "<" in qualname:
        raise ValueError(
            f"spawn_ranks needs a function defined at module level, got {qualname or fn!r}"
        )
    dying = tuple(sorted(set(may_die)))
    if any(not 0 <= r < world_size for r in dying):
        raise ValueError(f"may_die ranks must be in [0, {world_size}), got {dying}")
    try:
        payload = pickle.dumps(args)
    except Exception as exc:
        raise TypeError(f"spawn_ranks arguments must pickle: {exc}") from None
    workdir = make_workdir()
    try:
        file_name = os.path.join(workdir, "store")
        nodeid = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0] or None
        spec = TaskSpec(
            kind="call",
            module=module,
            path=module_path(module),
            qualname=qualname,
            method=qualname.rsplit(".", 1)[-1],
            world_size=world_size,
            file_name=file_name,
            workdir=workdir,
            test_id=nodeid or f"{module}.{qualname}",
            rewrite=_pytest_internals.was_rewritten(sys.modules.get(module, sys)),
            backend=backend,
            funcargs=payload,
            group_timeout=group_timeout,
            may_die=dying,
            env=dict(os.environ),
            sys_path=list(sys.path),
            cwd=os.getcwd(),
        )
        ctx = _coordinator.get_context(_config.start_method(start_method), preload_for(module))
        outcome = _coordinator.run_ranks(spec, ctx=ctx, timeout=_config.default_timeout(timeout))
        raise_for(outcome, rerun_command(nodeid, f"{module}.{qualname}", world_size))
        return [pickle.loads(r.value) if r.value is not None else None for r in outcome.results]
    finally:
        remove_workdir(workdir)
