"""Round trips of every op through a real redis-server, and the keyspace seen over TCP, with
the region as one file and as a directory of segment files."""

from __future__ import annotations

import struct

import pytest
from rawpeer import (
    CHAN_ACTIVE,
    OP_GET,
    ST_ERR,
    ST_NOT_FOUND,
    ST_OK,
    ST_TOO_LARGE,
    Region,
)
from ringharness import FORMS

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.parametrize("ring_servers", FORMS, indirect=True)]


@pytest.fixture
def chan(server):
    region = Region(server.region)
    ch = region.channel(0)
    ch.claim()
    ch.start_heartbeat()
    yield ch
    ch.release()
    region.close()


def test_ping(chan):
    assert chan.ping() == (ST_OK, b"")
    assert chan.state == CHAN_ACTIVE


def test_set_get_delete(chan, server):
    assert chan.set(b"k1", b"v1") == (ST_OK, b"")
    assert chan.get(b"k1") == (ST_OK, b"v1")
    assert chan.get(b"missing") == (ST_NOT_FOUND, b"")
    assert chan.set(b"k2", b"v2") == (ST_OK, b"")
    status, payload = chan.delete(b"k1", b"k2", b"missing")
    assert status == ST_OK and struct.unpack("<Q", payload) == (2,)
    assert chan.get(b"k1") == (ST_NOT_FOUND, b"")


def test_set_with_ttl(chan, server):
    assert chan.set(b"ttl", b"x", ttl_ms=60000) == (ST_OK, b"")
    pttl = server.client().pttl("ttl")
    assert 55000 < pttl <= 60000
    assert chan.set(b"ttl", b"y") == (ST_OK, b"")          # SET without TTL clears it
    assert server.client().pttl("ttl") == -1


def test_keys_visible_over_tcp_both_ways(chan, server):
    tcp = server.tcp_client()
    assert chan.set(b"from-ring", b"ring value") == (ST_OK, b"")
    assert tcp.get("from-ring") == b"ring value"
    tcp.set("from-tcp", b"tcp value")
    assert chan.get(b"from-tcp") == (ST_OK, b"tcp value")
    tcp.set("num", 12345)                                    # int-encoded inside Redis
    assert chan.get(b"num") == (ST_OK, b"12345")


def test_cmd_returns_resp2(chan, server):
    assert chan.cmd(b"INCR", b"counter") == (ST_OK, b":1\r\n")
    assert chan.cmd(b"INCRBY", b"counter", b"41") == (ST_OK, b":42\r\n")
    assert chan.cmd(b"HSET", b"h", b"f", b"v") == (ST_OK, b":1\r\n")
    assert chan.cmd(b"HGET", b"h", b"f") == (ST_OK, b"$1\r\nv\r\n")
    assert chan.cmd(b"GET", b"nokey") == (ST_OK, b"$-1\r\n")
    assert chan.cmd(b"RPUSH", b"l", b"a", b"b") == (ST_OK, b":2\r\n")
    assert chan.cmd(b"LRANGE", b"l", b"0", b"-1") == (ST_OK, b"*2\r\n$1\r\na\r\n$1\r\nb\r\n")
    assert server.client().hget("h", "f") == b"v"
    # Redis errors come back as RESP error replies with status OK
    status, payload = chan.cmd(b"INCR", b"h")
    assert status == ST_OK and payload.startswith(b"-WRONGTYPE")
    status, payload = chan.cmd(b"NOSUCHCOMMAND", b"x")
    assert status == ST_OK and payload.startswith(b"-ERR")
    status, payload = chan.cmd(b"MONITOR")                  # needs a connection: refused
    assert status == ST_OK and payload.startswith(b"-ERR 'monitor' cannot run")


def test_get_wrong_type_is_err(chan):
    assert chan.cmd(b"SADD", b"s", b"m") == (ST_OK, b":1\r\n")
    status, payload = chan.get(b"s")
    assert status == ST_ERR and b"WRONGTYPE" in payload


@pytest.mark.parametrize("size", [0, 1, 4096, 1 << 20])
def test_value_sizes(chan, server, size):
    value = bytes((i * 7) & 0xFF for i in range(size))
    assert chan.set(b"v", value) == (ST_OK, b"")
    assert chan.get(b"v") == (ST_OK, value)
    assert server.client().strlen("v") == size


def test_value_over_max_is_too_large(chan, server):
    status, payload = chan.set(b"big", b"x" * ((1 << 20) + 1))
    assert status == ST_TOO_LARGE and payload
    assert server.client().exists("big") == 0
    # a value stored over TCP that is too large to answer: TOO_LARGE, key untouched
    server.client().set("huge", b"y" * ((1 << 20) + 1))
    status, _ = chan.get(b"huge")
    assert status == ST_TOO_LARGE
    assert server.client().strlen("huge") == (1 << 20) + 1
    assert chan.ping() == (ST_OK, b"")                      # channel still fine


def test_pipelined_requests_answer_in_order(chan):
    ids = [chan.send(OP_GET, [b"p%d" % i]) for i in range(200)]
    got = [chan.recv()[1] for _ in ids]
    assert got == ids


def test_info_counts(chan, server):
    chan.ping()
    chan.get(b"nope")
    info = server.info(0)
    assert info["state"] == "active"
    assert info["requests"] >= 2 and info["not_found"] >= 1
    top = server.info()
    assert top["layout"] == "v5" and top["server_state"] == "running"
    assert top["region"] == ("dir" if chan.r.directory else "file")
    assert top["group_count"] == 1 and top["segment_align"] == 4096
    assert int(top["epoch"]) == chan.r.epoch != 0
    assert len(top["channels"]) == 4
    assert [c["group"] for c in top["channels"]] == [0, 0, 0, 0]
