"""Ring requests that make the server publish: keyspace notifications of ring writes and
PUBLISH through CMD, with a client subscribed; and CMD while a client is in MONITOR.

Redis 7.x and Valkey 8 deliver those messages from the driver's poll thread (it holds the
GIL). Redis 8 aborts when anything but its main thread hands a message to a connected
client (redis/redis#14823; MONITOR: redis/redis#14152, after 8.0.2), so there the driver
serves nothing while a client is subscribed or in MONITOR and says so in its log; the
requests are answered once no client is (driver/compat.c, docs/servers.md). Every check
waits for an event (a log line, a message), never for time.
"""

from __future__ import annotations

import time

import pytest
from rawpeer import OP_CMD, OP_SET, ST_OK
from ringharness import wait_for

pytestmark = pytest.mark.timeout(90)

SMALL = {"channels": 2, "req_ring": "256k", "resp_ring": "256k", "max_value": 65536}
WAITING = "ring requests wait until none"
SERVING = "serving the rings again"


def redis8(srv) -> bool:
    """Redis (not Valkey) 8 or later: publishes only from its main thread."""
    info = srv.client().info("server")
    return (info.get("server_name", "redis") != "valkey"
            and int(str(info["redis_version"]).split(".")[0]) >= 8)



def messages(pubsub, count: int, timeout: float = 10.0) -> list[tuple[bytes, bytes]]:
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        m = pubsub.get_message(timeout=0.2)
        if m and m["type"] in ("message", "pmessage"):
            got.append((m["channel"], m["data"]))
    return got


def served_after_unsubscribe(srv, ch, pubsub, rid: int):
    """Redis 8: the request waits while the client is subscribed, then is answered."""
    wait_for(lambda: WAITING in srv.log_text(), "the driver's log line")
    assert srv.alive()
    pubsub.close()                                       # no client subscribed any more
    status, got, payload = ch.recv(timeout=30)
    assert (status, got) == (ST_OK, rid), payload
    wait_for(lambda: SERVING in srv.log_text(), "the driver's log line")
    return payload


def test_keyspace_notifications_of_ring_writes(ring_servers, peer):
    srv = ring_servers.server(SMALL, conf=["--notify-keyspace-events", "KA"])
    pubsub = srv.client().pubsub()
    pubsub.psubscribe("__keyspace@0__:*")
    assert pubsub.get_message(timeout=5)["type"] == "psubscribe"
    ch = peer(srv)
    if redis8(srv):
        rid = ch.send(OP_SET, [b"k", b"v"])
        served_after_unsubscribe(srv, ch, pubsub, rid)
        assert srv.client().get("k") == b"v"
        assert ch.set(b"k2", b"v") == (ST_OK, b"")        # no subscriber: served at once
        return
    assert ch.set(b"k", b"v") == (ST_OK, b"")
    assert ch.delete(b"k")[0] == ST_OK
    assert ch.cmd(b"HSET", b"h", b"f", b"v") == (ST_OK, b":1\r\n")
    assert messages(pubsub, 3) == [(b"__keyspace@0__:k", b"set"), (b"__keyspace@0__:k", b"del"),
                                   (b"__keyspace@0__:h", b"hset")]
    assert srv.alive()


def test_publish_through_cmd_reaches_a_subscriber(ring_servers, peer):
    srv = ring_servers.server(SMALL)
    pubsub = srv.client().pubsub()
    pubsub.subscribe("news")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    ch = peer(srv)
    if redis8(srv):
        rid = ch.send(OP_CMD, [b"PUBLISH", b"news", b"hello"])
        assert served_after_unsubscribe(srv, ch, pubsub, rid) == b":0\r\n"
        return
    assert ch.cmd(b"PUBLISH", b"news", b"hello") == (ST_OK, b":1\r\n")
    assert messages(pubsub, 1) == [(b"news", b"hello")]


def test_cmd_while_a_client_monitors(ring_servers, peer):
    srv = ring_servers.server(SMALL)
    ch = peer(srv)
    client = srv.client()
    if not redis8(srv):
        with client.monitor() as monitor:
            assert ch.cmd(b"INCR", b"n") == (ST_OK, b":1\r\n")
            seen = monitor.next_command()
            assert "INCR" in seen["command"].upper() and srv.alive()
        return
    # Redis 8: the CMD waits while the client is in MONITOR, then runs.
    with client.monitor():
        rid = ch.send(OP_CMD, [b"INCR", b"n"])
        wait_for(lambda: WAITING in srv.log_text(), "the driver's log line")
        assert srv.alive()
    client.connection_pool.disconnect()                # the MONITOR connection goes
    status, got, payload = ch.recv(timeout=30)
    assert (status, got, payload) == (ST_OK, rid, b":1\r\n")
    assert srv.alive()
