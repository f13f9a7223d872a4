"""Top-level pytest configuration shared by every test directory.

Hypothesis runs few examples by default: many properties here start real
processes or threads, and the whole suite must stay fast on two cores. Set
``HYPOTHESIS_PROFILE=thorough`` for a deeper local run.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# pytester drives inner pytest runs in the harness and compat tests.
pytest_plugins = ["pytester"]

settings.register_profile(
    "ci",
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
