"""Fixtures of the tests of the lab's Ansible modules (helpers in moduleutil.py)."""

import pytest

from moduleutil import make_runner


@pytest.fixture
def run_module(monkeypatch):
    """run_module(module, args, check_mode=False) -> ("exit"|"fail", result)."""
    return make_runner(monkeypatch)
