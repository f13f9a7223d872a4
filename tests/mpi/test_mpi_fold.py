"""The mpi backend's folded collectives: with the header check on, a small all_reduce,
broadcast, all_gather, reduce_scatter or barrier is one ``Allgather`` of fixed-size
records (header + payload slot) completed locally. Each test below is a real
``mpiexec -n N`` job (see test_mpi.py); skipped without mpi4py or mpiexec.
"""

from __future__ import annotations

import pytest

pytest.importorskip("mpi4py")

from test_mpi import mpirun  # noqa: E402

from mpdist.backends.mpi_header import GATHERED, HEADER_BYTES, MAX_SLOT, slot_size  # noqa: E402


@pytest.mark.parametrize("n", [1, 2, 3, 4, 15, 16, 64, 256, 257, 4096])
def test_slot_size(n: int) -> None:
    slot = slot_size(n)
    assert slot % 16 == 0 and 0 <= slot <= MAX_SLOT
    assert n * (HEADER_BYTES + slot) <= max(GATHERED, n * HEADER_BYTES)
    assert (slot == MAX_SLOT) == (n <= 15)
    assert (slot == 0) == (n >= 257)


@pytest.mark.parametrize(("n", "check"), [(1, "1"), (2, "1"), (3, "1"), (4, "1"), (3, "0")])
def test_folded_collectives_equal_tcp(n: int, check: str) -> None:
    """Every folded op and dtype (bool, ints, floats, complex; AVG too), both sides of the
    slot's size, blocking and async, equal tcp's results; a folded call makes one record
    exchange and no other MPI call. check "0": no exchange, plain MPI calls."""
    out = mpirun(n, "_fold.py", timeout=120, env={"MPDIST_MPI_CHECK_SHAPES": check})
    oks = [line.split() for line in out.splitlines() if line.startswith("ok ")]
    assert sorted(ok[1] for ok in oks) == [str(r) for r in range(n)], out
    counts = {ok[2] for ok in oks}
    assert len(counts) == 1 and int(counts.pop()) > 750, out


# case -> on each rank, the rank its error names (rank 1 is the odd one out; in
# "broadcast root" every rank gives a different root)
_CASES = [
    "all_reduce",
    "all_reduce huge",
    "broadcast",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter",
    "kinds",
    "gather",
    "barrier",
    "async",
    "all_to_all",
]


@pytest.mark.parametrize("n", [2, 3])
def test_mismatches_across_the_fold_boundary_raise_on_every_rank(n: int) -> None:
    out = mpirun(n, "_fold_mismatch.py", timeout=60)
    cases = {}
    for line in out.splitlines():
        if line.startswith("case "):
            head, _, text = line.partition(": ")
            cases[head[5:]] = text
    for r in range(n):
        for name in [*_CASES, "broadcast root"]:
            other = (0 if r == 1 else 1) if name != "broadcast root" else (1 if r == 0 else 0)
            got = cases.get(f"{name} rank {r}")
            assert got is not None, (name, r, out)
            assert f"mismatch between rank {r} and rank {other} in collective #" in got, (
                name,
                r,
                got,
            )
        assert f"done {r}" in out, out
    big = 4 * (slot_size(n) // 4 + 1)  # the smallest float32 all_reduce not folded
    assert f"4 bytes on rank 0 vs {big} bytes on rank 1" in cases["all_reduce rank 0"]
    assert "262144 bytes on rank 1 vs 4 bytes on rank 0" in cases["broadcast rank 1"]
    assert "rank 1 called all_reduce but rank 0 called broadcast" in cases["kinds rank 1"]
    assert "rank 0 called all_gather but rank 1 called gather" in cases["gather rank 0"]
    assert "rank 1 called barrier but rank 0 called all_reduce" in cases["barrier rank 1"]
    assert "dtype" not in cases["barrier rank 1"]  # a barrier has none to compare
