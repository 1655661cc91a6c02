"""Sec-DSM against a real redis-server with build/cxl_ring.so: the driver serves a directory of
segment files (``path <dir> groups 2,2``) and a client given a view with only the header and
its group's segments works against it, and provably cannot touch anything else.

Each test starts its own server on a fresh /dev/shm directory (conftest.RealServer) and stops
it; views are symlink directories next to it, removed afterwards.
"""

from __future__ import annotations

import os
import threading

import cxl_ring
import pytest
from clientutil import Proxy, run_obeying_file_modes, segment_access
from cxl_ring import protocol as P
from cxl_ring.exceptions import SegmentAccessError
from cxl_ring.region import group_segments, make_view

HANG = 20   # bounds that only catch hangs; no assertion depends on the machine's speed
pytestmark = pytest.mark.timeout(120)
NONE, RO, RW = {"---p"}, {"r--s"}, {"rw-s"}
RING = 1 << 17


@pytest.fixture
def secdsm_server(real_server_factory):
    return real_server_factory(security="secdsm", groups="2,2", max_value=16384,
                               req_ring=RING, resp_ring=RING)


@pytest.fixture
def view(secdsm_server):
    path = secdsm_server.path + "-view"
    yield path
    if os.path.isdir(path):
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)


def test_driver_made_the_segment_files(secdsm_server):
    with cxl_ring.Region(secdsm_server.path) as region:
        h = region.header()
        assert region.form == "secdsm" and h.groups == (2, 2) and h.channel_count == 4
        names = sorted(os.listdir(secdsm_server.path))
        assert names == ["client-0", "client-1", "header", "server-0", "server-1"]
        for seg, m in region.segments():
            assert m is not None and os.path.getsize(m.path) >= seg.size
            assert m.access == ("rw" if seg.kind == P.SEG_CLIENT else "ro")


def test_whole_directory_every_channel(secdsm_server, impl):
    """Four threads, four channels across both groups: each gets its own and works."""
    with cxl_ring.RingClient(secdsm_server.path, timeout=HANG) as r:
        got, errors = [], []
        barrier = threading.Barrier(4)

        def worker(i: int) -> None:
            try:
                assert r.set(f"t{i}", str(i)) and r.get(f"t{i}") == str(i).encode()
                got.append(r.session_info()[0])
                barrier.wait(HANG)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(HANG * 2)
        assert not errors, errors
        assert sorted(got) == [0, 1, 2, 3]
    assert secdsm_server.redis().get("t3") == b"3"


def test_view_of_one_group(secdsm_server, view, impl):
    make_view(secdsm_server.path, view, group_segments(1))
    with cxl_ring.RingClient(view, timeout=HANG) as r:
        assert r.set("mine", "v") and r.get("mine") == b"v"
        p = r.pipeline()
        for i in range(2000):                        # streams through the 128 KiB rings
            p.set(f"k{i}", "x" * 200)
        assert p.execute() == [True] * 2000
        assert r.execute_command("DBSIZE") == 2001
        assert r.session_info()[0] in (2, 3)
        region = r.region
        h = region.header()
        assert region.claimable_channels(h) == [2, 3]
        # /proc/self/maps: group 0's segments lie in the no-access reservation only.
        assert segment_access(region, "client-0") == NONE
        assert segment_access(region, "server-0") == NONE
        assert segment_access(region, "client-1") == RW
        assert segment_access(region, "server-1") == RO
        assert segment_access(region, "header") == RO
        with pytest.raises(SegmentAccessError, match="client-0 is not mapped"):
            region.read(h.client_section(0), 4096)
        with pytest.raises(SegmentAccessError, match="server-0 is not mapped"):
            region.load_u64(h.server_section(1) + P.OFF_RESP_HEAD)
        with pytest.raises(SegmentAccessError, match="server-1 is mapped read-only"):
            region.store_u64(h.server_section(2) + P.OFF_ACK_TOKEN, 1)
        with pytest.raises(SegmentAccessError, match="client-0 is not mapped"):
            cxl_ring.Session(region, h, 1, 1)
    assert secdsm_server.redis().get("mine") == b"v"


def test_two_views_two_groups_side_by_side(secdsm_server, view):
    """Group 0 and group 1 each through their own view, at the same time."""
    other = view + "-0"
    make_view(secdsm_server.path, view, group_segments(1))
    make_view(secdsm_server.path, other, group_segments(0))
    try:
        with cxl_ring.RingClient(other, timeout=HANG) as a, \
                cxl_ring.RingClient(view, timeout=HANG) as b:
            assert a.set("a", "0") and b.set("b", "1")
            assert a.get("b") == b"1" and b.get("a") == b"0"       # one Redis behind both
            assert a.session_info()[0] in (0, 1) and b.session_info()[0] in (2, 3)
    finally:
        for name in os.listdir(other):
            os.unlink(os.path.join(other, name))
        os.rmdir(other)


def test_read_only_client_segment_refuses_to_claim(secdsm_server, view):
    make_view(secdsm_server.path, view, group_segments(0))
    os.chmod(os.path.join(secdsm_server.path, "client-0"), 0o444)   # the driver reads it only
    out = run_obeying_file_modes(f"""
import json, cxl_ring
from clientutil import segment_access
with cxl_ring.RingClient({view!r}, timeout=5) as r:
    try:
        r.ping()
        err = None
    except cxl_ring.CxlRingError as e:
        err = [type(e).__name__, str(e)]
    print(json.dumps({{"error": err, "maps": sorted(segment_access(r.region, "client-0"))}}))
""")
    assert out["maps"] == ["r--s"]
    name, text = out["error"]
    assert name == "SegmentAccessError" and "client-0 ro" in text, text
    # The server is unharmed and serves group 1.
    make_view(secdsm_server.path, view + "-1", group_segments(1))
    try:
        with cxl_ring.RingClient(view + "-1", timeout=HANG) as r:
            assert r.ping() is True
    finally:
        for name in os.listdir(view + "-1"):
            os.unlink(os.path.join(view + "-1", name))
        os.rmdir(view + "-1")


def test_proxy_on_a_view(secdsm_server, view):
    """``cxl-ring proxy --path VIEW``: unmodified redis-py through group 1's channels."""
    pytest.importorskip("redis")
    make_view(secdsm_server.path, view, group_segments(1))
    proxy = Proxy(view)
    try:
        c = proxy.client()
        assert c.set("via-proxy", "1") and c.get("via-proxy") == b"1"
        assert c.incr("n") == 1
    finally:
        proxy.stop()
    assert secdsm_server.redis().get("via-proxy") == b"1"


def test_off_single_file_still_works(real_server):
    with cxl_ring.RingClient(real_server.path, timeout=HANG) as r:
        assert r.region.form == "off" and r.set("k", "v") and r.get("k") == b"v"
        assert [m.access for _, m in r.region.segments()] == ["rw", "rw", "rw"]
