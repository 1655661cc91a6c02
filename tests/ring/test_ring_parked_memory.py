"""Responses parked for a client that does not read (issue 8): counted by Redis, bounded per
channel, given back when the session ends.

A response that does not fit the response ring waits in the server's private memory and the
channel is not read until it drains (driver/channel.c). That memory comes from Redis's
allocator: `INFO memory`'s used_memory grows by it and `maxmemory` refuses writes because of it;
a channel parks at most one large response (max_msg_size) besides its 64 KiB staging buffer;
a release or a reclaimed lease gives it back.
"""

from __future__ import annotations

import time

import pytest
import redis
from rawpeer import OP_CMD, OP_GET, ST_OK, ST_TOO_LARGE, Region
from ringharness import wait_for

pytestmark = pytest.mark.timeout(120)

MAX_VALUE = 1 << 20
GEOMETRY = {"channels": 6, "req_ring": "2m", "resp_ring": "2m", "max_value": "1m",
            "client_lease_ms": 1000}   # a reclaim takes a second; heartbeats every 125 ms
OUT_CAP = 64 << 10                       # driver.h DRV_OUT_CAP
MAX_MSG = MAX_VALUE + (64 << 10)         # max_value + CXL_MSG_SLACK
VALUE = bytes(range(256)) * 3600         # 900 KiB: two fill the 2 MiB ring, the third parks
SLACK = 512 << 10                        # other allocations between two INFO readings
HANG_S = 20.0


def used_memory(srv) -> int:
    return int(srv.client().info("memory")["used_memory"])


def park(srv, ch, op: int, args: list[bytes], n: int) -> list[int]:
    """Send n requests and read nothing: the ring fills, a response parks, reading stops."""
    ids = [ch.send(op, args) for _ in range(n)]
    wait_for(lambda: srv.info(ch.chan)["pending"] > OUT_CAP,
             f"a parked response on channel {ch.chan}")
    return ids


class Peers:
    """Raw peers on one server's region; close() stops their heartbeats, then unmaps."""

    def __init__(self):
        self.region = None
        self.chans = []

    def claim(self, srv, chan: int):
        self.region = self.region or Region(srv.region)
        ch = self.region.channel(chan)
        ch.claim()
        ch.start_heartbeat()
        self.chans.append(ch)
        return ch

    def close(self) -> None:
        for ch in self.chans:
            ch.stop_heartbeat()
        if self.region:
            self.region.close()


@pytest.fixture
def peers():
    p = Peers()
    yield p
    p.close()


def test_parked_responses_are_counted_and_given_back(ring_servers, peers):
    srv = ring_servers.server(GEOMETRY)
    srv.client().set("big", VALUE)
    chans = [peers.claim(srv, c) for c in range(GEOMETRY["channels"])]
    before = used_memory(srv)
    for ch in chans:
        park(srv, ch, OP_GET, [b"big"], 3)
    parked = sum(srv.info(ch.chan)["pending"] for ch in chans)
    assert parked >= len(chans) * len(VALUE)
    grown = used_memory(srv) - before
    assert grown >= parked - SLACK, f"used_memory grew {grown} bytes, {parked} are parked"

    # maxmemory sees them: with room for half of them, a write over TCP is refused
    tcp = srv.client()
    tcp.config_set("maxmemory", before + parked // 2)
    try:
        with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
            tcp.set("more", "x")
    finally:
        tcp.config_set("maxmemory", 0)

    # a release gives them back at once, a reclaimed lease too
    released, abandoned = chans[:3], chans[3:]
    for ch in released:
        ch.release()
    for ch in abandoned:
        ch.stop_heartbeat()              # the client is gone: the lease runs out
    for ch in chans:
        wait_for(lambda ch=ch: srv.info(ch.chan)["state"] == "free",
                 f"channel {ch.chan} to be free")
        info = srv.info(ch.chan)
        assert info["pending"] == 0, info
        assert info["releases" if ch in released else "reclaims"] == 1, info
    after = used_memory(srv)
    assert after - before < SLACK, f"used_memory is still {after - before} bytes above"
    assert srv.alive()


def test_a_client_that_never_reads_holds_at_most_one_large_response(ring_servers, peers):
    """CMD LRANGE of a big list to a client that never reads: one reply parks, the channel is
    not read any further; a reply over max_value is refused, not parked."""
    srv = ring_servers.server(GEOMETRY)
    tcp = srv.client()
    item = b"e" * 3000
    tcp.rpush("list", *([item] * 300))                  # ~0.9 MiB as a RESP2 reply
    tcp.rpush("huge", *([item] * 1000))                 # ~3 MiB: more than max_value
    slow, other = peers.claim(srv, 0), peers.claim(srv, 1)
    lrange = [b"LRANGE", b"list", b"0", b"-1"]
    ids = park(srv, slow, OP_CMD, lrange, 10)
    req_tail = slow.req_tail
    time.sleep(0.2)                                     # the server would read on by now
    info = srv.info(0)
    assert slow.req_tail == req_tail < slow.req_head, "a stalled channel is not read"
    assert OUT_CAP < info["pending"] <= OUT_CAP + MAX_MSG, info
    # two replies fill the ring, the third parks, the other seven wait unread in the ring
    assert info["requests"] == 3, info

    # other channels go on; a reply over max_value never parks
    assert other.request(OP_CMD, [b"LRANGE", b"huge", b"0", b"-1"])[0] == ST_TOO_LARGE
    assert srv.info(1)["pending"] == 0

    # the slow client reads at last: every reply, in order, intact
    expected = b"*300\r\n" + b"".join(b"$3000\r\n" + item + b"\r\n" for _ in range(300))
    for rid in ids:
        status, got, payload = slow.recv(timeout=HANG_S)
        assert (status, got) == (ST_OK, rid)
        assert payload == expected
    assert srv.info(0)["pending"] == 0
