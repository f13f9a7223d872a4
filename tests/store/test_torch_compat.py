"""Optional: the same sequence of store operations gives the same answers as torch's stores."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from mpdist.store import FileStore, HashStore, TCPStore

td = pytest.importorskip("torch.distributed")

_keys = hst.sampled_from(["a", "b", "c"])
_vals = hst.sampled_from([b"", b"0", b"1", b"x", b"xy"])
_ops = hst.one_of(
    hst.tuples(hst.just("set"), _keys, _vals),
    hst.tuples(hst.just("add"), hst.sampled_from(["n", "m"]), hst.integers(-3, 3)),
    hst.tuples(hst.just("compare_set"), _keys, _vals, _vals),
    hst.tuples(hst.just("delete_key"), _keys),
    hst.tuples(hst.just("check"), _keys),
    hst.tuples(hst.just("append"), _keys, _vals),
    hst.tuples(hst.just("num_keys")),
)


def _apply(store, op):
    name, *args = op
    if name == "check":
        return store.check([args[0]])
    return getattr(store, name)(*args)


@settings(max_examples=30, deadline=None)
@given(ops=hst.lists(_ops, max_size=12))
def test_same_answers_as_torch_hashstore(ops):
    ours, theirs = HashStore(), td.HashStore()
    for op in ops:
        assert _apply(ours, op) == _apply(theirs, op), op
    for k in ["a", "b", "c", "n", "m"]:
        assert ours.check([k]) == theirs.check([k])
        if ours.check([k]):
            assert ours.get(k) == theirs.get(k)


def test_internal_keys_counted_like_torch(tmp_path):
    with FileStore(str(tmp_path / "ours"), 1) as ours:
        theirs = td.FileStore(str(tmp_path / "theirs"), 1)
        assert ours.num_keys() == theirs.num_keys() == 1
        del theirs
    with TCPStore("127.0.0.1", 0, 1, True, timedelta(seconds=30)) as ours:
        theirs = td.TCPStore("127.0.0.1", 0, 1, True, timedelta(seconds=30))
        assert ours.num_keys() == theirs.num_keys() == 1
        assert ours.get("init/") == b"1"
        del theirs
