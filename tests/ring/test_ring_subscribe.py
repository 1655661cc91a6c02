"""A ring session subscribes, the server pushes (docs/ring-protocol.md section 15), seen by a
raw peer that reads every message the server writes, with its status and id.

The driver subscribes for its sessions on a connection of its own (ACL user
cxl-ring-pubsub), so a message reaches a ring subscriber whoever published it: a TCP client,
another ring session, a transaction, a script. Redis 8 refuses the family (it would make every
ring request wait, docs/servers.md). What the driver's connection holds is checked from
outside, with CLIENT LIST. Every wait only catches a hang.
"""

from __future__ import annotations

import socket
import time

import pytest
from rawpeer import ST_OK
from ringharness import DIRECTORY, wait_for

pytestmark = pytest.mark.timeout(120)

PUSH = 9
SMALL = {"channels": 4, "req_ring": "256k", "resp_ring": "256k", "max_value": 65536}


def redis8(srv) -> bool:
    info = srv.client().info("server")
    return (info.get("server_name", "redis") != "valkey"
            and int(str(info["redis_version"]).split(".")[0]) >= 8)


def bulk(b: bytes | None) -> bytes:
    return b"$-1\r\n" if b is None else b"$%d\r\n%s\r\n" % (len(b), b)


def confirm(word: bytes, name: bytes | None, count: int) -> bytes:
    return b"*3\r\n" + bulk(word) + bulk(name) + b":%d\r\n" % count


def message(*words: bytes) -> bytes:
    return b"*%d\r\n" % len(words) + b"".join(bulk(w) for w in words)


def pushes(ch, n: int) -> list[bytes]:
    """The next n messages: each must be a push (status 9, id 0)."""
    out = []
    for _ in range(n):
        status, rid, payload = ch.recv(timeout=20)
        assert (status, rid) == (PUSH, 0), (status, rid, payload)
        out.append(payload)
    return out


def driver_connection(srv) -> dict | None:
    """The driver's own subscriber in CLIENT LIST, or None."""
    for c in srv.client().client_list():
        if c.get("user") == "cxl-ring-pubsub":
            return c
    return None


def served(srv):
    if redis8(srv):
        pytest.skip("Redis 8 refuses pub/sub over the ring (test_redis8_refuses_it)")


def tcp_replies(srv, *commands: list[bytes], size: int) -> bytes:
    """What Redis writes on a plain connection for these commands: `size` bytes."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(20)
    s.connect(srv.sock)
    try:
        for argv in commands:
            s.sendall(b"*%d\r\n" % len(argv) + b"".join(bulk(a) for a in argv))
        got = b""
        while len(got) < size:
            chunk = s.recv(65536)
            assert chunk, got
            got += chunk
        return got
    finally:
        s.close()


def test_confirmations_are_redis_own(ring_servers, peer):
    """The reply to each (un)subscribe is byte for byte what Redis writes on a connection for
    the same commands; counts as Redis counts (channels and patterns together, shard channels
    apart); an unsubscribe with nothing to end answers a nil name and 0."""
    srv = ring_servers.server(SMALL)
    served(srv)
    ch = peer(srv)
    commands = [[b"SUBSCRIBE", b"a", b"b"], [b"PSUBSCRIBE", b"p*"], [b"SSUBSCRIBE", b"s1"],
                [b"SUBSCRIBE", b"a"], [b"UNSUBSCRIBE", b"b", b"zz"], [b"SUNSUBSCRIBE", b"s1"],
                [b"SUNSUBSCRIBE"], [b"PUNSUBSCRIBE", b"p*"]]
    ring = b""
    for argv in commands:
        status, payload = ch.cmd(*argv)
        assert status == ST_OK, payload
        ring += payload
    assert ring == tcp_replies(srv, *commands, size=len(ring))
    assert ring.startswith(confirm(b"subscribe", b"a", 1) + confirm(b"subscribe", b"b", 2) +
                           confirm(b"psubscribe", b"p*", 3) + confirm(b"ssubscribe", b"s1", 1))
    assert ch.cmd(b"UNSUBSCRIBE") == (ST_OK, confirm(b"unsubscribe", b"a", 0))
    assert ch.cmd(b"PUNSUBSCRIBE") == (ST_OK, confirm(b"punsubscribe", None, 0))
    wait_for(lambda: int(srv.info()["pubsub_names"]) == 0, "the driver's names to go")
    wait_for(lambda: driver_connection(srv)["sub"] == "0", "the driver to unsubscribe")


def test_messages_from_every_publisher_arrive_in_order(ring_servers, peer):
    """A TCP PUBLISH, a ring session's PUBLISH, a PUBLISH in EXEC, one from a script (to a
    pattern) and an SPUBLISH all reach the ring subscriber, in the order published, as Redis
    writes them; a discarded transaction's and an unsubscribed channel's do not."""
    srv = ring_servers.server(SMALL)
    served(srv)
    ch = peer(srv)
    assert ch.cmd(b"SUBSCRIBE", b"news", b"sport")[0] == ST_OK
    assert ch.cmd(b"PSUBSCRIBE", b"we*") == (ST_OK, confirm(b"psubscribe", b"we*", 3))
    assert ch.cmd(b"SSUBSCRIBE", b"shard") == (ST_OK, confirm(b"ssubscribe", b"shard", 1))
    tcp = srv.client()
    other = peer(srv, 1)
    assert tcp.publish("news", "1") == 1
    assert other.cmd(b"PUBLISH", b"sport", b"2") == (ST_OK, b":1\r\n")
    pipe = tcp.pipeline(transaction=True)
    pipe.publish("news", "3")
    assert pipe.execute() == [1]
    assert tcp.eval("return redis.call('publish', KEYS[1], ARGV[1])", 1, "weather", "4") == 1
    assert other.cmd(b"MULTI") == (ST_OK, b"+OK\r\n")
    assert other.cmd(b"PUBLISH", b"news", b"discarded") == (ST_OK, b"+QUEUED\r\n")
    assert other.cmd(b"DISCARD") == (ST_OK, b"+OK\r\n")
    assert tcp.publish("nobody", "x") == 0
    assert tcp.execute_command("SPUBLISH", "shard", "5") == 1
    assert pushes(ch, 5) == [message(b"message", b"news", b"1"),
                             message(b"message", b"sport", b"2"),
                             message(b"message", b"news", b"3"),
                             message(b"pmessage", b"we*", b"weather", b"4"),
                             message(b"smessage", b"shard", b"5")]
    assert ch.ping() == (ST_OK, b"")                   # nothing else came before it
    info = srv.info()
    assert int(info["pushes"]) == 5 and int(info["pushes_dropped"]) == 0, info
    assert int(srv.info(0)["subscriptions"]) == 4


def test_two_sessions_share_the_driver_subscription(ring_servers, peer):
    """Two sessions on one channel: the driver subscribes once; each session gets the
    message; one session unsubscribing keeps the other's; the last one ends it."""
    srv = ring_servers.server(SMALL)
    served(srv)
    a, b = peer(srv, 0), peer(srv, 1)
    assert a.cmd(b"SUBSCRIBE", b"c")[0] == ST_OK and b.cmd(b"SUBSCRIBE", b"c")[0] == ST_OK
    assert driver_connection(srv)["sub"] == "1"
    assert srv.client().publish("c", "x") == 1           # one subscriber to Redis: the driver
    assert pushes(a, 1) == pushes(b, 1) == [message(b"message", b"c", b"x")]
    assert a.cmd(b"UNSUBSCRIBE", b"c") == (ST_OK, confirm(b"unsubscribe", b"c", 0))
    assert driver_connection(srv)["sub"] == "1"
    srv.client().publish("c", "y")
    assert pushes(b, 1) == [message(b"message", b"c", b"y")]
    assert a.ping() == (ST_OK, b"")
    b.release()                                          # a session that ends unsubscribes
    wait_for(lambda: driver_connection(srv)["sub"] == "0", "the driver to unsubscribe")
    assert srv.client().publish("c", "z") == 0


def test_a_channel_the_user_may_not_use_is_refused_as_redis_refuses_it(ring_servers, peer):
    """Group 0 runs as "app", allowed the channels news:* only: SUBSCRIBE of another one is
    Redis's own NOPERM (and ACL LOG says so), subscribing to none of the request's names."""
    srv = ring_servers.server(
        {"req_ring": "256k", "resp_ring": "256k", "max_value": 65536, "groups": "2,2",
         "acl_users": "app,-"},
        region=ring_servers.region(DIRECTORY),
        conf=["--user", "app", "on", "nopass", "resetchannels", "&news:*", "+subscribe",
              "+unsubscribe", "+ping", "+publish"])
    served(srv)
    ch = peer(srv, 0)
    status, payload = ch.cmd(b"SUBSCRIBE", b"news:1", b"secret")
    assert status == ST_OK and payload.startswith(b"-NOPERM"), payload
    # what Redis answers app over TCP, byte for byte
    assert tcp_replies(srv, [b"AUTH", b"app", b"x"], [b"SUBSCRIBE", b"news:1", b"secret"],
                       size=5 + len(payload)) == b"+OK\r\n" + payload
    log = srv.client().acl_log()
    assert [(x["reason"], x["object"], x["username"]) for x in log[:2]] == [
        ("channel", "secret", "app")] * 2
    assert int(srv.info(0)["subscriptions"]) == 0
    assert ch.cmd(b"SUBSCRIBE", b"news:1") == (ST_OK, confirm(b"subscribe", b"news:1", 1))
    status, payload = ch.cmd(b"PSUBSCRIBE", b"*")
    assert payload.startswith(b"-NOPERM"), payload


def test_a_subscriber_that_does_not_read_loses_messages_counted(ring_servers, peer):
    """40 messages of 60 000 bytes into a 256 KiB response ring nobody reads: the server
    stays up, drops what finds the session stalled and counts it; what it kept arrives in
    order, and every one is either pushed or dropped."""
    srv = ring_servers.server(SMALL)
    served(srv)
    ch = peer(srv)
    assert ch.cmd(b"SUBSCRIBE", b"big")[0] == ST_OK
    tcp = srv.client()
    for i in range(40):
        tcp.publish("big", b"%02d" % i + b"x" * 60000)
    wait_for(lambda: int(srv.info()["pushes"]) + int(srv.info()["pushes_dropped"]) == 40,
             "every message pushed or dropped")
    kept = int(srv.info()["pushes"])
    assert 0 < kept < 40 and int(srv.info(0)["pushes_dropped"]) == 40 - kept
    got = [p.split(b"\r\n")[6][:2] for p in pushes(ch, kept)]
    assert got == sorted(got)
    assert ch.ping() == (ST_OK, b"")
    assert srv.alive()


def test_the_connection_lost_is_told_and_a_new_subscribe_connects_again(ring_servers, peer):
    """CLIENT KILL of the driver's connection: each subscribed session gets an error push and
    loses its names; the next SUBSCRIBE connects again and messages flow."""
    srv = ring_servers.server(SMALL)
    served(srv)
    ch = peer(srv)
    assert ch.cmd(b"SUBSCRIBE", b"k")[0] == ST_OK
    assert srv.client().client_kill_filter(user="cxl-ring-pubsub") == 1
    (lost,) = pushes(ch, 1)
    assert lost.startswith(b"-ERR") and b"connection lost" in lost
    assert int(srv.info(0)["subscriptions"]) == 0
    assert ch.cmd(b"SUBSCRIBE", b"k") == (ST_OK, confirm(b"subscribe", b"k", 1))
    assert srv.client().publish("k", "again") == 1
    assert pushes(ch, 1) == [message(b"message", b"k", b"again")]


def test_inside_multi_and_without_names_it_is_refused(ring_servers, peer):
    srv = ring_servers.server(SMALL)
    served(srv)
    ch = peer(srv)
    assert ch.cmd(b"SUBSCRIBE") == (
        ST_OK, b"-ERR wrong number of arguments for 'subscribe' command\r\n")
    assert ch.cmd(b"MULTI") == (ST_OK, b"+OK\r\n")
    status, payload = ch.cmd(b"SUBSCRIBE", b"x")
    assert payload.startswith(b"-ERR") and b"outside MULTI" in payload, payload
    assert ch.cmd(b"DISCARD")[0] == ST_OK
    assert driver_connection(srv) is None                # nothing was subscribed


def test_redis8_refuses_it(ring_servers, peer):
    """Redis 8: the family is refused with its reason; no connection is made."""
    srv = ring_servers.server(SMALL)
    if not redis8(srv):
        pytest.skip("Redis 7 and Valkey serve pub/sub over the ring")
    ch = peer(srv)
    status, payload = ch.cmd(b"SUBSCRIBE", b"x")
    assert payload.startswith(b"-ERR") and b"needs Redis 7 or Valkey" in payload, payload
    assert driver_connection(srv) is None


def test_a_session_holds_what_one_reply_can_confirm(ring_servers, peer):
    """A session's confirmations together must fit one reply (max_value, 64 KiB here), so
    that UNSUBSCRIBE of all is one reply: past that a subscribe is refused and subscribes to
    none of its names; the 1000 kept are all confirmed by one UNSUBSCRIBE."""
    srv = ring_servers.server(SMALL)
    served(srv)
    ch = peer(srv)
    names = [b"n%05d" % i for i in range(1000)]
    assert ch.cmd(b"SUBSCRIBE", *names)[0] == ST_OK
    status, payload = ch.cmd(b"PSUBSCRIBE", *[b"p%05d*" % i for i in range(300)])
    assert payload.startswith(b"-ERR") and b"max_value_size" in payload, payload
    assert int(srv.info(0)["subscriptions"]) == 1000
    status, payload = ch.cmd(b"UNSUBSCRIBE")
    assert status == ST_OK and payload.count(b"unsubscribe") == 1000, payload[:200]
    assert payload.endswith(b":0\r\n")
    wait_for(lambda: int(srv.info()["pubsub_names"]) == 0, "the driver's names to go")


def test_unload_closes_the_connection_and_deletes_the_user(ring_servers, peer):
    """MODULE UNLOAD with a subscribed session: the driver's connection and its ACL user go,
    and a reloaded driver subscribes again with a new one."""
    srv = ring_servers.server(SMALL)
    served(srv)
    ch = peer(srv)
    assert ch.cmd(b"SUBSCRIBE", b"u")[0] == ST_OK
    c = srv.client()
    assert "cxl-ring-pubsub" in c.acl_users()
    deadline = time.monotonic() + 10
    while True:                          # a queued event-loop callback defers the unload
        try:
            c.execute_command("MODULE", "UNLOAD", "cxl_ring")
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    assert "cxl-ring-pubsub" not in c.acl_users()
    wait_for(lambda: driver_connection(srv) is None, "the connection to close")
    args = ["path", srv.region] + [str(x) for kv in SMALL.items() for x in kv]
    c.execute_command("MODULE", "LOAD", str(srv.module), *args)
    ch2 = peer(srv, 1)
    assert ch2.cmd(b"SUBSCRIBE", b"u") == (ST_OK, confirm(b"subscribe", b"u", 1))
    assert c.publish("u", "x") == 1
    assert pushes(ch2, 1) == [message(b"message", b"u", b"x")]
