"""Fixtures for the cxl-ring-bench tests: the built client, unique /dev/shm names, and a
real redis-server with build/cxl_ring.so in layout v5 (a region file, or a directory of segment
files: security secdsm) or v2 (started through bench/run.py).

Tests that need the driver skip, saying so, until build/cxl_ring.so exists. Every
redis-server a fixture starts is stopped and every /dev/shm file or directory it names is
removed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import BENCH, MODULE, REPO, built, runner, shm_name  # noqa: E402


@pytest.fixture(scope="session")
def lab_report():
    """bench/lab_report.py, loaded as the module lab_report (its dataclasses look it up there)."""
    spec = importlib.util.spec_from_file_location("lab_report", REPO / "bench/lab_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["lab_report"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def bench_bin() -> Path:
    """build/cxl-ring-bench, built with the Makefile's own rule if it is missing."""
    return built(BENCH)


@pytest.fixture
def shm_path() -> Iterator[str]:
    """A fresh /dev/shm name; whatever a test makes there (file or directory) is removed."""
    path = shm_name()
    yield path
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _require_module() -> None:
    if not MODULE.exists():
        pytest.skip(f"{MODULE.relative_to(REPO)} is not built yet (the cxl_ring driver): "
                    "run `make build` once driver/ is complete")


SMALL_RINGS = ["req_ring", "262144", "resp_ring", "262144", "max_value", "131072"]


def _server(layout: str, extra: list[str], **kw) -> Iterator[runner.RedisWithRing]:
    _require_module()
    kw.setdefault("channels", 4)
    server = runner.RedisWithRing(MODULE, shm_name(), layout=layout, module_args=extra, **kw)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ring_server(bench_bin: Path) -> Iterator[runner.RedisWithRing]:
    """A redis-server serving layout v5 with 4 channels of 256 KiB rings in one region file
    (security off; shared by a module)."""
    yield from _server("v5", SMALL_RINGS)


@pytest.fixture(scope="module")
def secdsm_server(bench_bin: Path) -> Iterator[runner.RedisWithRing]:
    """A redis-server serving layout v5 on a directory of segment files (security secdsm):
    two channel groups of 2 channels, 256 KiB rings (shared by a module)."""
    yield from _server("v5", SMALL_RINGS, security="secdsm", groups=(2, 2))


@pytest.fixture(scope="module")
def ring_server_v2(bench_bin: Path) -> Iterator[runner.RedisWithRing]:
    """A redis-server serving the PoC's layout v2: 4 rings of 256 slots."""
    yield from _server("v2", ["v2_rings", "4", "v2_slots", "256"])


@pytest.fixture
def own_server(bench_bin: Path) -> Iterator[runner.RedisWithRing]:
    """A private layout v5 server for tests that stop or kill it."""
    yield from _server("v5", SMALL_RINGS)
