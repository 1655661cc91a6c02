"""Sec-DSM regions (a directory of segment files) against the in-process fake server.

A client given a view with only the header and its group's segments works, and provably cannot
touch anything else: the other segments' addresses are not mapped with any access in this
process (/proc/self/maps), and an attempted access raises SegmentAccessError instead of
faulting. A read-only client segment makes the client refuse to claim. The real-server twins
are in test_secdsm_real.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cxl_ring
import pytest
from clientutil import REPO, run_obeying_file_modes, segment_access
from cxl_ring import protocol as P
from cxl_ring.exceptions import RegionError, SegmentAccessError
from cxl_ring.region import group_segments, make_view, remove_view
from fakeserver import FakeServer

NONE = {"---p"}          # the PROT_NONE reservation: no access
RO, RW = {"r--s"}, {"rw-s"}


@pytest.fixture
def fake_dir(shm_dir):
    path, view = shm_dir
    server = FakeServer(path, groups=[2, 2], security="secdsm", ring_size=1 << 14,
                        max_value=4096).start()
    yield server, view
    server.close()


def test_whole_directory(fake_dir, impl):
    fake, _ = fake_dir
    with cxl_ring.RingClient(fake.path, timeout=10) as r:
        assert r.set("k", "v") and r.get("k") == b"v"
        p = r.pipeline()
        for i in range(300):                           # streams through the 16 KiB rings
            p.set(f"k{i}", "x" * 100)
        assert p.execute() == [True] * 300
        region = r.region
        assert region.form == "secdsm" and region.size == fake.header.region_size
        assert segment_access(region, "header") == RO
        for g in (0, 1):
            assert segment_access(region, f"client-{g}") == RW
            assert segment_access(region, f"server-{g}") == RO
        assert region.claimable_channels(region.header()) == [0, 1, 2, 3]


def test_view_of_one_group_works_and_touches_nothing_else(fake_dir, impl):
    fake, view = fake_dir
    make_view(fake.path, view, group_segments(1))
    assert sorted(os.listdir(view)) == ["client-1", "header", "server-1"]
    with cxl_ring.RingClient(view, timeout=10) as r:
        assert r.set("mine", "1") and r.get("mine") == b"1"
        index, _ = r.session_info()
        assert index in (2, 3)                         # group 1's channels
        region = r.region
        h = region.header()
        assert region.claimable_channels(h) == [2, 3]
        # Not mapped with any access: only the reservation covers group 0's segments.
        assert segment_access(region, "client-0") == NONE
        assert segment_access(region, "server-0") == NONE
        assert segment_access(region, "client-1") == RW
        assert segment_access(region, "server-1") == RO
        assert segment_access(region, "header") == RO
        # Every access elsewhere is refused before it is made.
        c0, s0 = h.client_section(0), h.server_section(0)
        with pytest.raises(SegmentAccessError, match="client-0 is not mapped"):
            region.read(c0, 8)
        with pytest.raises(SegmentAccessError, match="server-0 is not mapped"):
            region.load_u64(s0 + P.OFF_ACK_TOKEN)
        with pytest.raises(SegmentAccessError, match="server-1 is mapped read-only"):
            region.store_u64(h.server_section(2), 1)
        with pytest.raises(SegmentAccessError, match="header is mapped read-only"):
            region.write(P.OFF_SERVER_PID, b"\0\0\0\0")
        with pytest.raises(SegmentAccessError, match="client-0 is not mapped"):
            cxl_ring.Session(region, h, 0, 1)           # a session on another group's channel
        assert region.access(c0, 8) is None and region.access(h.client_section(3), 8) == "rw"
    # The other group's channels were never claimed nor written.
    for c in (0, 1):
        cs = fake.header.client_section(c)
        assert fake.u64[cs // 8] == 0 and fake.u64[(cs + P.OFF_REQ_HEAD) // 8] == 0


def test_group_full_means_no_channel_not_another_groups(fake_dir):
    fake, view = fake_dir
    make_view(fake.path, view, group_segments(0))
    with cxl_ring.Region(view) as region:
        h = region.header()
        held = [cxl_ring.claim(region, h, 10, prefer=k) for k in range(2)]
        try:
            assert sorted(s.index for s in held) == [0, 1]
            with pytest.raises(cxl_ring.NoChannelError, match="this peer may claim"):
                cxl_ring.claim(region, h, 0.2)
        finally:
            for s in held:
                s.release()


def test_view_without_its_server_segment_refuses_to_claim(fake_dir):
    fake, view = fake_dir
    make_view(fake.path, view, ["header", "client-1"])
    with cxl_ring.RingClient(view, timeout=5) as r, \
            pytest.raises(SegmentAccessError, match="client-1 rw, server-1 not mapped"):
        r.ping()


def test_view_without_header(fake_dir):
    fake, view = fake_dir
    make_view(fake.path, view, ["client-0", "server-0"])
    with pytest.raises(RegionError, match="no 'header' segment file"):
        cxl_ring.RingClient(view)


def test_segment_file_too_short(fake_dir, tmp_path):
    fake, view = fake_dir
    short = tmp_path / "short"
    short.write_bytes(bytes(4096))
    make_view(fake.path, view, ["header", "server-0"])
    os.symlink(short, os.path.join(view, "client-0"))
    with pytest.raises(RegionError, match="client-0 needs at least"):
        cxl_ring.Region(view)


def test_make_view_refuses_what_is_not_a_segment(fake_dir):
    fake, view = fake_dir
    with pytest.raises(RegionError, match="not a segment name"):
        make_view(fake.path, view, ["header", "../etc"])
    with pytest.raises(RegionError, match="no segment file 'client-7'"):
        make_view(fake.path, view, ["header", "client-7"])
    make_view(fake.path, view, ["header"])
    remove_view(view)
    assert not os.path.exists(view) and os.path.exists(os.path.join(fake.path, "header"))


def test_read_only_client_segment_refuses_to_claim(fake_dir):
    """client-1 cannot be opened for writing (mode 0444; the child obeys file modes even as
    root): it is mapped read-only, and the client refuses to claim, naming the segment."""
    fake, view = fake_dir
    make_view(fake.path, view, group_segments(1))
    os.chmod(os.path.join(fake.path, "client-1"), 0o444)
    out = run_obeying_file_modes(f"""
import json, cxl_ring
from clientutil import segment_access
with cxl_ring.RingClient({view!r}, timeout=5) as r:
    try:
        r.ping()
        err = None
    except cxl_ring.CxlRingError as e:
        err = [type(e).__name__, str(e)]
    print(json.dumps({{"error": err, "maps": sorted(segment_access(r.region, "client-1")),
                      "claim": r.region.header().client_section(2)}}))
""")
    assert out["maps"] == ["r--s"]
    name, text = out["error"]
    assert name == "SegmentAccessError"
    assert "client-1 ro" in text and "no channel this peer may claim" in text
    assert fake.u64[out["claim"] // 8] == 0                # nothing written, nothing claimed


def test_region_formatted_again_with_another_layout(shm_dir):
    path, _ = shm_dir
    fake = FakeServer(path, groups=[2], security="secdsm", ring_size=1 << 14,
                        max_value=4096).start()
    try:
        with cxl_ring.Region(path) as region:
            region.header()
            # Another server formats the directory again for groups 1,1 (same files, which
            # the new layout no longer fits the same way): the old mapping must not be used.
            raw = P.format_header(groups=[1, 1], req_ring_size=1 << 14,
                                  resp_ring_size=1 << 14, max_value_size=fake.max_value,
                                  max_msg_size=fake.max_msg)
            fake.buf[8 : len(raw)] = raw[8:]
            with pytest.raises(cxl_ring.LayoutMismatchError, match="formatted the region again"):
                region.header()
    finally:
        fake.close()


def test_single_file_still_works(fake):
    with cxl_ring.RingClient(fake.path) as r:
        assert r.set("k", "v") and r.get("k") == b"v"
        region = r.region
        assert region.form == "off"
        assert [(s.name, m.access) for s, m in region.segments()] == [
            ("header", "rw"), ("client-0", "rw"), ("server-0", "rw")]
        assert segment_access(region, "server-0") == RW


def test_cli_info_on_a_view(fake_dir):
    fake, view = fake_dir
    make_view(fake.path, view, group_segments(1))
    env = {**os.environ, "PYTHONPATH": str(REPO / "client")}
    r = subprocess.run([sys.executable, "-m", "cxl_ring.cli", "info", "--json", "--path", view],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["form"] == "secdsm" and info["layout"] == "v5"
    # info only reads: it maps every granted segment read-only
    assert {s["name"]: s["access"] for s in info["segments"]} == {
        "header": "ro", "client-0": "none", "server-0": "none", "client-1": "ro",
        "server-1": "ro"}
    assert [c["mapped"] for c in info["channels"]] == [False, False, True, True]
    assert info["channels"][2]["state"] == "FREE"
    r = subprocess.run([sys.executable, "-m", "cxl_ring.cli", "info", "--path", view],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0 and "(not mapped here)" in r.stdout, r.stdout + r.stderr
