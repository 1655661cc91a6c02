"""Fixtures for the cxl_ring driver tests: real redis-server processes with the module.

`ring_servers` hands a test a Cluster (tests/ring/ringharness.py); every server it starts
is stopped and every /dev/shm region it names is removed, whatever the test's outcome. Its
regions are one file by default (CXL_RING_TEST_REGION=directory: directories of segment files);
a test or module runs in both forms with

    @pytest.mark.parametrize("ring_servers", FORMS, indirect=True)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from rawpeer import Region  # noqa: E402
from ringharness import (  # noqa: E402
    DEFAULT_FORM,
    MODULE,
    MODULE_ASAN,
    NO_ASAN,
    REDIS_SERVER,
    SMALL,
    Cluster,
)


def pytest_report_header(config):
    """Which server and module build the driver tests run against (CXL_TEST_SERVER)."""
    return f"cxl_ring tests: server {REDIS_SERVER}, module {MODULE}"


def _require(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} is not built (make build)")


@pytest.fixture
def ring_servers(tmp_path, request):
    """A Cluster; parametrized indirectly, the parameter is its region form."""
    _require(MODULE)
    cluster = Cluster(tmp_path, getattr(request, "param", DEFAULT_FORM))
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def server(ring_servers):
    """One server with the default geometry except small rings (fast to format)."""
    return ring_servers.server({"channels": 4, "req_ring": "2m", "resp_ring": "2m"})


@pytest.fixture(params=["plain", "asan"])
def module_path(request):
    """The module build under test: parametrizes hostile tests over plain and ASan builds."""
    path = MODULE if request.param == "plain" else MODULE_ASAN
    if request.param == "asan" and NO_ASAN:
        pytest.skip(f"no ASan build in {REDIS_SERVER}: {NO_ASAN}")
    _require(path)
    return path


@pytest.fixture
def peer():
    """open_peer(srv, chan=0): a raw peer holding channel chan, heartbeating; released after."""
    opened = []

    def open_peer(srv, chan=0):
        region = Region(srv.region)
        ch = region.channel(chan)
        ch.claim()
        ch.start_heartbeat()
        opened.append((region, ch))
        return ch

    yield open_peer
    for region, ch in opened:
        ch.release()
        region.close()


@pytest.fixture
def srv(ring_servers):
    """One server with SMALL rings (a test file may define its own srv)."""
    return ring_servers.server(SMALL)


@pytest.fixture
def ring(srv):
    """A Python ring client of srv (20 s waits: a hang catcher)."""
    from cxl_ring import RingClient

    with RingClient(srv.region, timeout=20) as c:
        yield c
