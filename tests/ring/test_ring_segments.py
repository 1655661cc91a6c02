"""Layout 5 in the driver: channel groups addressed through their segments, regions as one file
or as a directory of segment files, and the rule that the server never writes a client segment
(docs/ring-protocol.md sections 1, 2, 2.1 and 7)."""

from __future__ import annotations

import hashlib
import os
import stat
import struct

import pytest
from rawpeer import (
    CHAN_FREE,
    GEOMETRY,
    MAGIC,
    PAGE,
    SEG_CLIENT,
    SEGMENT_TABLE,
    ST_NOT_FOUND,
    ST_OK,
    PeerError,
    Region,
    plan_layout,
)
from ringharness import DIRECTORY, FILE, FORMS, ServerFailed

pytestmark = pytest.mark.timeout(90)

RING = 256 * 1024
SMALL = {"req_ring": "256k", "resp_ring": "256k", "max_value": 65536}
GROUPS = {**SMALL, "groups": "2,3"}


def refused(ring_servers, region, args) -> str:
    srv = ring_servers.server(args, region=region, start=False)
    with pytest.raises(ServerFailed):
        srv.start()
    return srv.log_text()


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def opened():
    """open_region(path, **kw): a Region, closed after the test."""
    regions = []

    def open_region(path, **kw):
        regions.append(Region(path, **kw))
        return regions[-1]

    yield open_region
    for region in regions:
        for ch in getattr(region, "_held", []):
            ch.release()
        region.close()


def hold(region: Region, chan: int):
    """Claim `chan` with heartbeats; released when the test's regions close."""
    ch = region.channel(chan)
    ch.claim()
    ch.start_heartbeat()
    region.__dict__.setdefault("_held", []).append(ch)
    return ch


# ---- channel groups ------------------------------------------------------------------------

@pytest.mark.parametrize("ring_servers", FORMS, indirect=True)
def test_groups_address_channels_through_their_segments(ring_servers, opened):
    srv = ring_servers.server(GROUPS)
    region = opened(srv.region)
    segments, size = plan_layout([2, 3], RING, RING)
    assert region.groups == [2, 3] and region.channel_count == 5
    assert [s.astuple() for s in region.segments] == [s.astuple() for s in segments]
    assert region.region_size == size
    info = srv.info()
    assert info["group_count"] == 2 and info["channel_count"] == 5
    assert [c["group"] for c in info["channels"]] == [0, 0, 1, 1, 1]

    # channel 3 is the second channel of group 1: its sections are in client-1 and server-1
    assert region.client_off(3) == segments[3].offset + region.client_size
    assert region.server_off(3) == segments[4].offset + region.server_size
    ch = hold(region, 3)
    assert ch.set(b"g1", b"served in group 1") == (ST_OK, b"")
    assert ch.get(b"g1") == (ST_OK, b"served in group 1")
    assert srv.client().get("g1") == b"served in group 1"
    assert srv.info(3)["state"] == "active" and srv.info(3)["group"] == 1
    # nothing of that session landed in another channel's sections
    for other in (0, 1, 2, 4):
        peer = region.channel(other)
        assert (peer.ack_token, peer.state, peer.req_tail, peer.resp_head) == (0, CHAN_FREE, 0, 0)
        assert srv.info(other)["requests"] == 0

    # a client of group 0 is served beside it
    ch0 = hold(region, 1)
    assert ch0.get(b"g1") == (ST_OK, b"served in group 1")
    assert ch.get(b"absent")[0] == ST_NOT_FOUND


def test_segment_align_places_every_segment(ring_servers, opened):
    srv = ring_servers.server({**SMALL, "channels": 1, "segment_align": "64k"},
                              region=ring_servers.region(DIRECTORY))
    region = opened(srv.region)
    assert region.segment_align == 65536 and srv.info()["segment_align"] == 65536
    assert [s.span for s in region.segments] == [65536, 512 * 1024, 512 * 1024]
    assert os.path.getsize(os.path.join(srv.region, "header")) == 65536
    assert hold(region, 0).ping()[0] == ST_OK


# ---- directory regions ---------------------------------------------------------------------

def test_directory_region_gets_every_segment_file(ring_servers, opened):
    srv = ring_servers.server(GROUPS, region=ring_servers.region(DIRECTORY))
    assert srv.info()["region"] == "dir"
    segments, _ = plan_layout([2, 3], RING, RING)
    names = sorted(os.listdir(srv.region))
    assert names == sorted(s.name for s in segments)
    for seg in segments:
        st = os.stat(os.path.join(srv.region, seg.name))
        assert st.st_size == seg.span and stat.S_IMODE(st.st_mode) == 0o600, seg.name
    region = opened(srv.region)
    assert [m.name for m in region.maps] == [s.name for s in segments]
    assert hold(region, 4).set(b"k", b"v") == (ST_OK, b"")


def test_a_partial_view_serves_a_client_of_its_group(ring_servers, opened):
    """What a guest of group 0 sees: header, client-0 and server-0, nothing of group 1."""
    srv = ring_servers.server(GROUPS, region=ring_servers.region(DIRECTORY))
    view = ring_servers.keep(srv.region[:-2] + ".view")
    os.mkdir(view, 0o750)
    for name in ("header", "client-0", "server-0"):
        os.symlink(os.path.join(srv.region, name), os.path.join(view, name))
    region = opened(view)
    assert [m.name for m in region.maps] == ["header", "client-0", "server-0"]
    ch = hold(region, 1)
    assert ch.set(b"guest", b"group 0") == (ST_OK, b"")
    assert srv.client().get("guest") == b"group 0"
    # group 1's segments are not mapped: the peer says so instead of faulting
    with pytest.raises(PeerError, match="no mapped segment"):
        _ = region.channel(2).claim_token


@pytest.mark.parametrize("ring_servers", FORMS, indirect=True)
def test_server_never_writes_a_client_segment(ring_servers, opened):
    """Client segments full of another run's bytes: formatting, sessions, a restart and a stop
    leave every byte of them as their writers left it (protocol rule 1). Bytes are compared,
    not permissions (root may write a file mode 0444), in both region forms."""
    path = ring_servers.region()
    directory = os.path.isdir(path)
    segments, size = plan_layout([2, 3], RING, RING)
    clients = [s for s in segments if s.kind == SEG_CLIENT]
    if not directory:
        with open(path, "wb") as f:
            f.truncate(size)
    claims = {}
    for seg in clients:
        data = bytearray(os.urandom(seg.span))
        for i in range(seg.channel_count):     # a claim on every channel, as a crash leaves
            claims[seg.first_channel + i] = struct.unpack_from(
                "<Q", data, i * (PAGE + RING))[0]
        with open(os.path.join(path, seg.name) if directory else path,
                  "wb" if directory else "r+b") as f:
            f.seek(0 if directory else seg.offset)
            f.write(data)

    def segment_bytes(seg) -> bytes:
        if directory:
            return read(os.path.join(path, seg.name))
        with open(path, "rb") as f:
            f.seek(seg.offset)
            return f.read(seg.span)

    before = {s.name: digest_of(segment_bytes(s)) for s in clients}
    srv = ring_servers.server(GROUPS, region=path)
    assert srv.info()["formatted"] == 1
    assert {s.name: digest_of(segment_bytes(s)) for s in clients} == before
    region = opened(path, journal=True)
    # formatting retired every claim it found (dead_token := claim_token) and accepted none
    for chan, claim in claims.items():
        ch = region.channel(chan)
        assert (ch.dead_token, ch.ack_token, ch.state) == (claim, 0, CHAN_FREE), chan

    ch = hold(region, 3)
    for i in range(50):
        assert ch.set(b"k%d" % i, os.urandom(3000)) == (ST_OK, b"")
        assert ch.get(b"k%d" % i)[0] == ST_OK
    srv.stop()
    srv.start()                                  # reused: retires the session, writes none
    assert srv.info()["formatted"] == 0
    ch.stop_heartbeat()
    srv.stop()
    client0, client1 = clients
    assert digest_of(segment_bytes(client0)) == before["client-0"]
    # client-1 holds exactly what the raw client wrote there, and nothing else changed
    assert digest_of(segment_bytes(client1)) != before["client-1"]
    if directory:
        written = region.written("client-1")
    else:
        written = region.written("region")[client1.offset: client1.offset + client1.span]
    assert segment_bytes(client1) == written


@pytest.mark.parametrize("ring_servers", FORMS, indirect=True)
def test_a_stale_claim_is_retired_at_format(ring_servers, opened):
    srv = ring_servers.server({**SMALL, "channels": 4})
    srv.stop()
    stale = 0x5EED_5EED_5EED_5EED
    region = opened(srv.region)
    region.put_u64(region.client_off(2), stale)  # a client that claimed and never came back
    srv.module_args["format"] = "always"
    srv.start()
    assert srv.info()["formatted"] == 1
    ch = region.channel(2)
    assert (ch.dead_token, ch.ack_token, ch.state) == (stale, 0, CHAN_FREE)
    assert ch.claim_token == stale                   # the server left the client's byte alone
    with pytest.raises(PeerError, match="no ack"):
        ch.claim(timeout=1.0, token=stale)           # the retired token is never served
    ch.claim()                                       # a new one is
    ch.start_heartbeat()
    region.__dict__.setdefault("_held", []).append(ch)
    assert ch.ping()[0] == ST_OK


def test_a_segment_file_too_small_is_refused_by_name(ring_servers):
    path = ring_servers.region(DIRECTORY)
    with open(os.path.join(path, "client-1"), "wb") as f:
        f.truncate(PAGE)
    log = refused(ring_servers, path, GROUPS)
    assert f"segment file {path}/client-1 is 4096 bytes" in log
    assert "needs at least" in log


def test_a_guest_view_missing_a_segment_is_refused_not_filled(ring_servers):
    """A directory of symlinks (granted devices) lacking client-1: the server names it and
    creates nothing there."""
    srv = ring_servers.server(GROUPS, region=ring_servers.region(DIRECTORY))
    srv.stop()
    view = ring_servers.keep(srv.region[:-2] + ".view")
    os.mkdir(view, 0o750)
    for name in ("header", "client-0", "server-0", "server-1"):
        os.symlink(os.path.join(srv.region, name), os.path.join(view, name))
    log = refused(ring_servers, view, GROUPS)
    assert f"{view}/client-1" in log
    assert not os.path.exists(os.path.join(view, "client-1"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root opens a read-only file read-write")
def test_a_server_segment_it_cannot_write_is_refused_by_name(ring_servers):
    srv = ring_servers.server(GROUPS, region=ring_servers.region(DIRECTORY))
    srv.stop()
    os.chmod(os.path.join(srv.region, "server-1"), 0o400)
    log = refused(ring_servers, srv.region, GROUPS)
    assert "server-1" in log and "read-write" in log


# ---- headers: layout 4, and a segment table that is not the layout's ------------------------

def test_layout_v4_argument_is_refused(ring_servers):
    log = refused(ring_servers, ring_servers.region(), {**SMALL, "layout": "v4"})
    assert "layout v4 is no longer served" in log and "layout v5" in log


def test_layout_4_region_is_refused(ring_servers):
    path = ring_servers.region(FILE)
    with open(path, "wb") as f:                     # a layout 4 header: magic, version 4
        f.write(MAGIC + struct.pack("<II", 4, PAGE) + bytes(PAGE - 16) + bytes(8 << 20))
    log = refused(ring_servers, path, SMALL)
    assert "layout 4 is no longer served" in log and "reformat" in log


@pytest.mark.parametrize("ring_servers", FORMS, indirect=True)
def test_a_segment_table_off_the_layout_is_refused(ring_servers):
    srv = ring_servers.server(GROUPS)
    srv.stop()
    header = os.path.join(srv.region, "header") if os.path.isdir(srv.region) else srv.region
    with open(header, "r+b") as f:
        f.seek(SEGMENT_TABLE + 32 * 3)              # client-1's offset, moved by a page
        offset = struct.unpack("<Q", f.read(8))[0]
        f.seek(SEGMENT_TABLE + 32 * 3)
        f.write(struct.pack("<Q", offset + PAGE))
    log = refused(ring_servers, srv.region, GROUPS)
    assert "segment table entry 3" in log


def test_groups_differing_from_the_region_are_named(ring_servers):
    srv = ring_servers.server(GROUPS)
    srv.stop()
    log = refused(ring_servers, srv.region, {**SMALL, "groups": "3,2"})
    assert "groups 2,3 (configured 3,2)" in log


@pytest.mark.parametrize("args, words", [
    ({"groups": "4,x"}, "bad value"),
    ({"groups": "0,2"}, "bad value"),
    ({"groups": ",".join(["1"] * 33)}, "at most 32 channel groups"),
    ({"groups": "2,2", "channels": 8}, "differs from the sum"),
    ({"segment_align": "5000"}, "power of two"),
])
def test_bad_group_arguments_fail_the_load(ring_servers, args, words):
    assert words in refused(ring_servers, ring_servers.region(), {**SMALL, **args})


def test_header_geometry_matches_the_arguments(ring_servers, opened):
    srv = ring_servers.server(GROUPS, region=ring_servers.region(FILE))
    raw = read(srv.region)[:PAGE]
    fields = GEOMETRY.unpack_from(raw, 8)
    assert fields[:9] == (5, PAGE, 0, 5, plan_layout([2, 3], RING, RING)[1], 2, 5, PAGE, 0)
    assert opened(srv.region).groups == [2, 3]


def test_groups_in_a_directory_under_both_builds(ring_servers, module_path, opened):
    """The plain and the ASan+UBSan builds: format, serve two groups, reuse, stop."""
    srv = ring_servers.server(GROUPS, region=ring_servers.region(DIRECTORY), module=module_path)
    region = opened(srv.region)
    a, b = hold(region, 0), hold(region, 4)
    for i in range(20):
        assert a.set(b"a%d" % i, os.urandom(1000)) == (ST_OK, b"")
        assert b.get(b"a%d" % i)[0] == ST_OK
    srv.stop()
    srv.start()
    assert srv.info()["formatted"] == 0
    assert srv.stop() == 0
    log = srv.log_text() + srv.stderr_text()
    assert "AddressSanitizer" not in log and "runtime error" not in log, log[-4000:]
