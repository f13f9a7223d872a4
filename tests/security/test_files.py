"""Files others could use to get in: FileStore logs and shared-memory rings are private."""

from __future__ import annotations

import os
import stat

import psutil
import pytest

from mpdist.errors import DistStoreError
from mpdist.store import FileStore
from mpdist.transport.shm import Ring


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_store_file_and_its_lock_are_0600(tmp_path) -> None:
    path = str(tmp_path / "store")
    old = os.umask(0)  # even with no umask at all
    try:
        with FileStore(path, -1) as s:
            s.set("k", b"v")
            assert mode_of(path) == 0o600
            assert mode_of(path + ".lock") == 0o600
    finally:
        os.umask(old)


def test_a_file_made_with_the_usual_umask_is_accepted(tmp_path) -> None:
    path = str(tmp_path / "store")
    with open(path, "wb"):
        pass
    os.chmod(path, 0o644)
    with FileStore(path, -1) as s:
        s.set("k", b"v")
        assert s.get("k") == b"v"


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666, 0o620])
def test_a_file_others_may_write_is_refused_naming_it_and_its_mode(tmp_path, mode) -> None:
    path = str(tmp_path / "store")
    with open(path, "wb"):
        pass
    os.chmod(path, mode)
    fds = psutil.Process().num_fds()
    with pytest.raises(DistStoreError, match=rf"refusing '{path}' \(mode {mode:04o}\): others may"):
        FileStore(path, -1)
    assert psutil.Process().num_fds() == fds  # the descriptor it opened is closed
    assert os.path.getsize(path) == 0  # and nothing was written to it


def test_a_file_another_user_owns_is_refused(tmp_path, monkeypatch) -> None:
    path = str(tmp_path / "store")
    with open(path, "wb"):
        pass
    os.chmod(path, 0o600)
    owner = os.stat(path).st_uid
    # this process pretends to be someone else: the file is then another user's
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
    with pytest.raises(
        DistStoreError, match=rf"refusing '{path}' \(mode 0600\): it belongs to uid"
    ):
        FileStore(path, -1)


def test_ring_files_are_0600_and_a_foreign_one_is_not_mapped(tmp_path) -> None:
    path = str(tmp_path / "ring")
    old = os.umask(0)
    try:
        ring = Ring(path, 4096, create=True)
    finally:
        os.umask(old)
    try:
        assert mode_of(path) == 0o600
        peer = Ring(path, 4096, create=False)  # the peer (same user) maps it
        peer.close()
    finally:
        ring.unlink()
        ring.close()
    foreign = tmp_path / "foreign"
    foreign.write_bytes(b"\0" * (4096 + 64))
    foreign.chmod(0o644)
    with pytest.raises(PermissionError, match="not private to this user"):
        Ring(str(foreign), 4096, create=False)
