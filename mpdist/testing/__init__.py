"""Testing tools for distributed code: test cases, fakes, decorators and the pytest plugin."""

from __future__ import annotations

from mpdist.backends.fake import FakeProcessGroup as FakeProcessGroup
from mpdist.backends.fake import FakeStore as FakeStore
from mpdist.testing.multiprocess import MultiProcessTestCase as MultiProcessTestCase
