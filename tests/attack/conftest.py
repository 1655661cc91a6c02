"""Fixtures of the attack suite's tests: the repository on sys.path (attack/, the ring client)
and /dev/shm paths removed whatever the outcome."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
for p in (REPO, REPO / "client", Path(__file__).resolve().parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from attackutil import remove, shm_name  # noqa: E402


@pytest.fixture
def shm():
    """shm(tag) -> a fresh /dev/shm path, removed (file or directory) after the test."""
    made = []

    def new(tag: str) -> str:
        made.append(shm_name(tag))
        return made[-1]

    yield new
    remove(*made)
