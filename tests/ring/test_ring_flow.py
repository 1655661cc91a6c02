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
    import sys, threading, time
    sys.path.insert(0, {here!r})
    from rawpeer import Region, OP_PING
    region = Region({path!r})
    ch = region.channel(0)
    ch.claim()
    ch.start_heartbeat()
    print("go", flush=True)
    end = time.monotonic() + {seconds}                 # a hang bound: stdin ends it first
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    while not stop.is_set() and time.monotonic() < end:
        ids = [ch.send(OP_PING) for _ in range(500)]
        for _ in ids:
            ch.recv(timeout=10)
    ch.release()
    print("stopped", flush=True)
""")


def test_tcp_clients_are_served_while_the_ring_is_busy(ring_servers):
    srv = ring_servers.server({**SMALL, "batch": 4096})
    """TCP commands are answered while the ring is flooded, not only after the flood.

    How long a TCP command waits is a benchmark (it depends on the machine); here the flood runs
    until the TCP commands are done, so each of them was served while the ring was busy.
    """
    flood = subprocess.Popen([sys.executable, "-c", FLOOD.format(
        here=str(REPO / "tests" / "ring"), path=srv.region, seconds=60)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert flood.stdout.readline().strip() == "go"
        tcp = srv.tcp_client()
        ring_before = srv.info(0)["requests"]
        for i in range(200):
            tcp.set(f"t{i}", i)
        ring_during = srv.info(0)["requests"]
        assert flood.poll() is None, "the flood ended before the TCP commands were served"
        assert ring_during > ring_before, "the ring was not served while TCP was"
        flood.stdin.close()
        assert flood.stdout.readline().strip() == "stopped"
        assert flood.wait(30) == 0
        assert tcp.get("t199") == b"199"
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
        # A pause far longer than the test: only UNPAUSE ends it, whatever the machine's speed.
        srv.client().execute_command("CLIENT", "PAUSE", 120000, "WRITE")
        rid = ch.send(2, [b"k", b"during"])                 # SET: waits for the pause
        pid = ch.send(OP_PING)                              # served, but after the SET
        time.sleep(0.5)
        assert srv.client().get("k") == b"before"           # the SET has not run
        assert srv.info(0)["pending"] == 0 and ch.resp_head == ch.resp_tail
        srv.client().execute_command("CLIENT", "UNPAUSE")
        assert ch.recv(timeout=10)[:2] == (ST_OK, rid)
        assert ch.recv(timeout=10)[:2] == (ST_OK, pid)
        assert srv.client().get("k") == b"during"
        assert srv.alive()
        srv.client().execute_command("CLIENT", "PAUSE", 120000, "WRITE")
        assert ch.get(b"k") == (ST_OK, b"during")           # reads are served meanwhile
        srv.client().execute_command("CLIENT", "UNPAUSE")
    finally:
        ch.release()
        region.close()
