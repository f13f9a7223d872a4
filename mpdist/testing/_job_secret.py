"""The job secret and private files the harness gives a test's ranks.

Each test's ranks share a fresh job secret (``MPDIST_JOB_SECRET`` in their environment, never
on a command line or in a report), so the stores and meshes they build authenticate as a
job started by ``mpdist run`` does; a secret the user set (``MPDIST_JOB_SECRET`` or
``MPDIST_JOB_SECRET_FILE``) is kept instead, so ranks can meet processes started elsewhere.
"""

from __future__ import annotations

import os
from typing import Any

from mpdist import _auth

__all__ = ["give_job_secret", "make_private_file"]


def give_job_secret(spec: Any) -> None:
    """Put a fresh job secret in ``spec.env`` (a TaskSpec's) unless one is set there already."""
    env = dict(os.environ) if spec.env is None else spec.env
    if not (env.get(_auth.SECRET_ENV) or env.get(_auth.SECRET_FILE_ENV)):
        env[_auth.SECRET_ENV] = _auth.new_secret()
    spec.env = env


def make_private_file(path: str) -> None:
    """Create ``path`` empty and readable by this user only (0600, whatever the umask)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT
