"""PrefixStore specifics: the key mapping, the underlying store and the shared timeout."""

from __future__ import annotations

from datetime import timedelta

import pytest

from mpdist.store import HashStore, PrefixStore, Store


def test_keys_are_prefixed_in_underlying_store():
    base = HashStore()
    p = PrefixStore("grp", base)
    assert p.underlying_store is base
    assert isinstance(p, Store)
    p.set("k", b"v")
    assert base.get("grp/k") == b"v"
    assert not base.check(["k"])
    assert p.add("n", 2) == 2
    assert base.get("grp/n") == b"2"
    nested = PrefixStore("inner", p)
    nested.set("x", b"1")
    assert base.get("grp/inner/x") == b"1"
    assert p.num_keys() == base.num_keys() == 3


def test_timeout_is_the_underlying_ones():
    base = HashStore(timeout=timedelta(seconds=7))
    p = PrefixStore("g", base)
    assert p.timeout == timedelta(seconds=7)
    p.set_timeout(timedelta(seconds=3))
    assert base.timeout == timedelta(seconds=3)


def test_bad_constructor_args():
    with pytest.raises(TypeError):
        PrefixStore(1, HashStore())
    with pytest.raises(TypeError):
        PrefixStore("p", {})
