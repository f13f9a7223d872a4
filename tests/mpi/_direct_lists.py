"""Run under mpiexec -n 2: a group's torch-style list methods called directly with entries
that disagree (size, count, dtype) raise before anything is sent, and the group stays in
step. The cases are test_pg_direct_methods' own, run here on the mpi backend."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from _out import report

import mpdist as dist

sys.path.insert(0, str(Path(__file__).parents[1] / "distributed"))
from test_pg_direct_methods import bad_list_calls  # noqa: E402

dist.init_process_group("mpi")
R, N = dist.get_rank(), dist.get_world_size()
pg = dist.distributed._get_default_group()
raised = 0
for exc, text, call in bad_list_calls(pg, N):
    with pytest.raises(exc, match=text):
        call()
    raised += 1
    x = np.ones(3)
    dist.all_reduce(x)  # still in step
    assert (x == N).all(), x
report(R, f"rank {R} raised {raised}")
dist.destroy_process_group()
