"""Region ownership: format an all-zero region, reuse a matching one, refuse the rest
with a log line that says why (docs/ring-protocol.md section 7, driver argument format).
Tests marked BOTH run with the region as one file and as a directory of segment files."""

from __future__ import annotations

import os

import pytest
from rawpeer import Region
from ringharness import FILE, FORMS, ServerFailed

pytestmark = pytest.mark.timeout(60)
BOTH = pytest.mark.parametrize("ring_servers", FORMS, indirect=True)

SMALL = {"channels": 4, "req_ring": "256k", "resp_ring": "256k", "max_value": 65536}


def refused(ring_servers, region, args) -> str:
    srv = ring_servers.server(args, region=region, start=False)
    with pytest.raises(ServerFailed):
        srv.start()
    return srv.log_text()


def test_new_file_is_created_and_formatted(ring_servers):
    srv = ring_servers.server(SMALL, region=ring_servers.region(FILE))
    region = Region(srv.region)
    try:
        assert region.channel_count == 4 and region.req_ring_size == 256 * 1024
        assert region.max_value == 65536 and region.max_msg == 65536 + 65536
        assert os.path.getsize(srv.region) == region.region_size
        assert srv.info()["formatted"] == 1
    finally:
        region.close()


@BOTH
def test_matching_region_is_reused(ring_servers):
    srv = ring_servers.server(SMALL)
    srv.stop()
    srv.start()
    assert srv.info()["formatted"] == 0
    assert "reused" in srv.log_text()


@BOTH
def test_mismatching_region_is_refused_with_reason(ring_servers):
    srv = ring_servers.server(SMALL)
    srv.stop()
    log = refused(ring_servers, srv.region, {**SMALL, "channels": 2})
    assert "channels 4 (configured 2)" in log
    # format always takes it over
    ring_servers.server({**SMALL, "channels": 2, "format": "always"}, region=srv.region)


def test_garbage_header_is_refused(ring_servers):
    path = ring_servers.region(FILE)
    with open(path, "wb") as f:
        f.write(os.urandom(4096) + bytes(4 << 20))
    assert "unknown magic" in refused(ring_servers, path, SMALL)


def test_v2_region_is_refused_in_layout_5(ring_servers):
    srv = ring_servers.server({"layout": "v2", "v2_rings": 2, "v2_slots": 512})
    srv.stop()
    assert "layout v2" in refused(ring_servers, srv.region, SMALL)


@BOTH
def test_format_never_refuses_a_blank_region(ring_servers):
    path = ring_servers.region()        # a directory gets zero segment files from the driver
    if not os.path.isdir(path):
        with open(path, "wb") as f:
            f.truncate(8 << 20)
    assert "not formatted" in refused(ring_servers, path, {**SMALL, "format": "never"})


def test_larger_file_and_map_size(ring_servers):
    path = ring_servers.region(FILE)
    with open(path, "wb") as f:
        f.truncate(64 << 20)
    srv = ring_servers.server({**SMALL, "map_size": "32m"}, region=path)
    assert srv.info()["map_size"] == 32 << 20


def test_region_too_small_is_refused(ring_servers):
    path = ring_servers.region(FILE)
    with open(path, "wb") as f:
        f.truncate(1 << 20)
    assert "needs" in refused(ring_servers, path, SMALL)


@pytest.mark.parametrize("args, words", [
    ({"bogus": 1}, "unknown argument"),
    ({"channels": 0}, "bad value"),
    ({"req_ring": "100000"}, "powers of two"),
    ({"layout": "v9"}, "bad value"),
    ({"layout": "v3"}, "no longer served"),
    ({"notify": "sometimes"}, "bad value"),
    ({"sleep_max_ms": 0}, "bad value"),
])
def test_bad_arguments_fail_the_load(ring_servers, args, words):
    assert words in refused(ring_servers, ring_servers.region(), {**SMALL, **args})


@BOTH
def test_second_server_on_a_live_region_is_refused(ring_servers):
    srv = ring_servers.server(SMALL)
    log = refused(ring_servers, srv.region, SMALL)
    assert "another server" in log
    assert srv.client().ping()
