"""Fixtures shared by every test folder. Keep this small: folder-specific fixtures live in
the folder's own conftest.py (tests/ring, tests/client, tests/bench, tests/ansible)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository checkout the tests run from."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def build_dir(repo_root: Path) -> Path:
    """Where `make build` puts cxl_ring.so, cxl_ring_asan.so, fuzz-decoder, the bench."""
    return repo_root / "build"
