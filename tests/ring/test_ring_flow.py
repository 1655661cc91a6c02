"""Flow control and fairness: a client that stops reading its responses stalls only its own
channel (one response waits, nothing is lost), and a saturated ring does not starve TCP."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
from rawpeer import OP_GET, OP_PING, ST_OK, Region
from ringharness import REPO

pytestmark = pytest.mark.timeout(120)

SMALL = {"channels": 4, "req_ring": "256k", "resp_ring": "256k", "max_value": 65536}


def test_full_response_ring_stalls_only_that_channel(ring_servers):
    srv = ring_servers.server(SMALL)
    value = bytes(range(256)) * 240                      # 60 KiB: four fill the 256 KiB ring
    srv.client().set("big", value)
    region = Region(srv.region)
    slow, other = region.channel(1), region.channel(2)
    for ch in (slow, other):
        ch.claim()
        ch.start_heartbeat()
    try:
        ids = [slow.send(OP_GET, [b"big"]) for _ in range(12)]    # nobody reads them yet
        time.sleep(0.3)
        assert slow.req_tail < slow.req_head                       # the server stopped reading
        info = srv.info(1)
        assert info["resp_full"] >= 1 and info["pending"] > 0
        for i in range(50):                                        # other channels go on
            assert other.set(b"o%d" % i, b"x") == (ST_OK, b"")
        assert other.get(b"big") == (ST_OK, value)
        for rid in ids:                                            # now drain: all, in order
            status, got, payload = slow.recv()
            assert (status, got, payload) == (ST_OK, rid, value)
        assert slow.request(OP_PING) == (ST_OK, b"")
        assert srv.info(1)["pending"] == 0
    finally:
        for ch in (slow, other):
            ch.release()
        region.close()


FLOOD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {here!r})
    from rawpeer import Region, OP_PING
    region = Region({path!r})
    ch = region.channel(0)
    ch.claim()
    ch.start_heartbeat()
    print("go", flush=True)
    end = time.monotonic() + {seconds}
    while time.monotonic() < end:
        ids = [ch.send(OP_PING) for _ in range(500)]
        for _ in ids:
            ch.recv(timeout=10)
    ch.release()
""")


def test_tcp_clients_are_served_while_the_ring_is_busy(ring_servers):
    srv = ring_servers.server({**SMALL, "batch": 4096})
    flood = subprocess.Popen([sys.executable, "-c", FLOOD.format(
        here=str(REPO / "tests" / "ring"), path=srv.region, seconds=3)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert flood.stdout.readline().strip() == "go"
        tcp = srv.tcp_client()
        worst = 0.0
        for i in range(200):
            t0 = time.monotonic()
            tcp.set(f"t{i}", i)
            worst = max(worst, time.monotonic() - t0)
        assert worst < 0.25, f"a TCP command waited {worst * 1000:.0f} ms"
        assert flood.wait(30) == 0
        assert srv.info(0)["requests"] > 1000
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait(10)


def test_client_pause_makes_ring_writes_wait(ring_servers):
    """Redis asserts that nothing propagates while clients are paused: ring writes wait."""
    srv = ring_servers.server(SMALL)
    region = Region(srv.region)
    ch = region.channel(0)
    ch.claim()
    ch.start_heartbeat()
    try:
        assert ch.set(b"k", b"before") == (ST_OK, b"")
        srv.client().execute_command("CLIENT", "PAUSE", 800, "WRITE")
        t0 = time.monotonic()
        rid = ch.send(2, [b"k", b"during"])                 # SET: waits for the pause
        status, got, _ = ch.recv(timeout=10)
        waited = time.monotonic() - t0
        assert (status, got) == (ST_OK, rid)
        assert waited > 0.5, f"the write went through a pause after {waited:.3f}s"
        assert srv.client().get("k") == b"during"
        assert srv.alive()
        srv.client().execute_command("CLIENT", "PAUSE", 500, "WRITE")
        assert ch.get(b"k") == (ST_OK, b"during")           # reads are served meanwhile
        srv.client().execute_command("CLIENT", "UNPAUSE")
    finally:
        ch.release()
        region.close()
