"""The error hierarchy: torch-compatible RuntimeError roots."""

import pytest

import mpdist


@pytest.mark.parametrize(
    "cls, parent",
    [
        (mpdist.DistError, RuntimeError),
        (mpdist.DistBackendError, mpdist.DistError),
        (mpdist.DistNetworkError, mpdist.DistError),
        (mpdist.DistStoreError, mpdist.DistError),
        (mpdist.QueueEmptyError, mpdist.DistStoreError),
    ],
)
def test_hierarchy(cls, parent):
    assert issubclass(cls, parent)
    with pytest.raises(parent):
        raise cls("boom")


def test_siblings_are_distinct():
    assert not issubclass(mpdist.DistNetworkError, mpdist.DistBackendError)
    assert not issubclass(mpdist.DistStoreError, mpdist.DistNetworkError)
