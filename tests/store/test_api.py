"""SPEC section 1 behaviour, run against every store kind (bare and prefixed)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from mpdist.errors import DistStoreError


def test_set_get_roundtrip(store):
    store.set("a", b"1")
    store.set("s", "text")
    assert store.get("a") == b"1"
    assert store.get("s") == b"text"
    store.set("a", b"2")
    assert store.get("a") == b"2"
    store.set("empty", b"")
    assert store.get("empty") == b""


def test_add_is_decimal_ascii(store):
    assert store.add("c", 5) == 5
    assert store.add("c", 1) == 6
    assert store.get("c") == b"6"
    assert store.add("c", -10) == -4
    assert store.get("c") == b"-4"
    assert store.add("d", 0) == 0
    assert store.get("d") == b"0"


def test_add_on_non_number_is_store_error(store):
    store.set("x", b"abc")
    with pytest.raises(DistStoreError, match="x"):
        store.add("x", 1)


@pytest.mark.parametrize(
    ("initial", "expected", "desired", "returned", "after"),
    [
        (None, b"", b"new", b"new", b"new"),  # missing + expected empty: set
        (None, b"old", b"new", b"old", None),  # missing otherwise: no set, return expected
        (b"cur", b"cur", b"new", b"new", b"new"),  # present and equal: set
        (b"cur", b"other", b"new", b"cur", b"cur"),  # else: current value
        (b"", b"", b"new", b"new", b"new"),  # present, empty and equal
    ],
)
def test_compare_set_table(store, initial, expected, desired, returned, after):
    if initial is not None:
        store.set("k", initial)
    assert store.compare_set("k", expected, desired) == returned
    if after is None:
        assert not store.check(["k"])
    else:
        assert store.get("k") == after


def test_check_wait_delete_num_keys(store):
    base = store.num_keys()
    assert not store.check(["a"])
    store.set("a", b"1")
    store.set("b", b"2")
    assert store.check(["a", "b"])
    assert not store.check(["a", "zz"])
    assert store.check([])
    store.wait(["a", "b"])
    store.wait(["a"], timedelta(seconds=1))
    assert store.num_keys() == base + 2
    assert store.delete_key("a") is True
    assert store.delete_key("a") is False
    assert not store.check(["a"])
    assert store.num_keys() == base + 1
    store.set("a", b"again")
    assert store.get("a") == b"again"


def test_append_multi(store):
    store.append("l", b"ab")
    store.append("l", "cd")
    assert store.get("l") == b"abcd"
    store.multi_set(["m1", "m2"], [b"x", "y"])
    assert store.multi_get(["m1", "m2", "l"]) == [b"x", b"y", b"abcd"]
    store.multi_set([], [])
    assert store.multi_get([]) == []


def test_get_blocks_until_set_from_another_thread(store):
    t = threading.Timer(0.05, store.set, args=("late", b"v"))
    t.start()
    try:
        assert store.get("late") == b"v"
        store.wait(["late"])
    finally:
        t.join()


def test_multi_get_waits_for_all(store):
    t = threading.Timer(0.05, store.multi_set, args=(["p", "q"], [b"1", b"2"]))
    t.start()
    try:
        assert store.multi_get(["p", "q"]) == [b"1", b"2"]
    finally:
        t.join()


def test_timeouts_raise_store_error(make_store):
    s = make_store(timeout=timedelta(milliseconds=50))
    assert s.timeout == timedelta(milliseconds=50)
    with pytest.raises(DistStoreError, match=r"timed out.*missing"):
        s.get("missing")
    with pytest.raises(DistStoreError, match="timed out") as ei:
        s.wait(["here", "gone"], timedelta(milliseconds=30))
    assert "gone" in str(ei.value)
    s.set("here", b"1")
    with pytest.raises(DistStoreError, match="gone"):
        s.multi_get(["here", "gone"])
    s.set_timeout(timedelta(milliseconds=20))
    assert s.timeout == timedelta(milliseconds=20)
    with pytest.raises(DistStoreError, match="timed out"):
        s.get("missing2")
    # timedelta(0) waits forever, and so does timedelta.max: satisfied by a later set.
    for i, forever in enumerate([timedelta(0), timedelta.max]):
        s.set_timeout(forever)
        t = threading.Timer(0.05, s.set, args=(f"forever{i}", b"ok"))
        t.start()
        try:
            assert s.get(f"forever{i}") == b"ok"
            assert s.multi_get([f"forever{i}"]) == [b"ok"]
        finally:
            t.join()


def test_bad_input_raises_at_once(store):
    with pytest.raises(TypeError):
        store.set(1, b"x")
    with pytest.raises(TypeError):
        store.set("k", 3.5)
    with pytest.raises(TypeError):
        store.get(b"k")
    with pytest.raises(TypeError):
        store.add("k", "1")
    with pytest.raises(TypeError):
        store.add("k", 1.0)
    with pytest.raises(TypeError):
        store.wait("k")
    with pytest.raises(TypeError):
        store.check([1])
    with pytest.raises(TypeError):
        store.compare_set("k", None, b"x")
    with pytest.raises(ValueError, match="UTF-8"):
        store.set("bad\udc80", b"x")
    with pytest.raises(ValueError, match="lengths"):
        store.multi_set(["a", "b"], [b"1"])
    with pytest.raises(ValueError):
        store.wait(["k"], timedelta(seconds=-1))
    with pytest.raises(ValueError):
        store.set_timeout(timedelta(seconds=-1))
    with pytest.raises(TypeError):
        store.set_timeout("10")
    # nothing was written by the rejected calls
    assert not store.check(["a", "k"])


_key = hst.text(min_size=0, max_size=20)
_val = hst.binary(max_size=64)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(items=hst.dictionaries(_key, _val, max_size=8))
def test_property_roundtrip(store, items):
    for k, v in items.items():
        store.set("rt/" + k, v)
    for k, v in items.items():
        assert store.get("rt/" + k) == v
    if items:
        assert store.multi_get(["rt/" + k for k in items]) == list(items.values())
    for k in items:
        assert store.delete_key("rt/" + k)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(initial=hst.one_of(hst.none(), _val), expected=_val, desired=_val)
def test_property_compare_set(store, initial, expected, desired):
    store.delete_key("cas")
    if initial is not None:
        store.set("cas", initial)
    got = store.compare_set("cas", expected, desired)
    if initial is None:
        should_set = expected == b""
        assert got == (desired if should_set else expected)
        assert store.check(["cas"]) == should_set
    elif initial == expected:
        assert got == desired
        assert store.get("cas") == desired
    else:
        assert got == initial
        assert store.get("cas") == initial
