"""What a script under mpiexec reports: one file per rank (mpiexec's forwarded stdout may
interleave the ranks' lines), else stdout."""

from __future__ import annotations

import os


def report(rank: int, line: str) -> None:
    """Append ``line`` to this rank's report file ($MPDIST_MPI_TEST_OUT/rank<r>)."""
    where = os.environ.get("MPDIST_MPI_TEST_OUT")
    if where is None:
        print(line, flush=True)
        return
    with open(os.path.join(where, f"rank{rank}"), "a") as f:
        f.write(line + "\n")
