"""The Python client's pub/sub (client/cxl_ring/pubsub.py, docs/ring-protocol.md section 15).

Against the fake server: pushes framed by hand (status PUSH, id 0), so what the client accepts
and refuses is exact: a push only on a subscribed session and only with id 0, status 8 never
from the wire, pushes in ring order. Against a real redis-server with the driver: messages
from TCP and from the ring, confirmations, decode_responses, the CLI. Every wait only catches
a hang."""

from __future__ import annotations

import subprocess
import sys
import time

import cxl_ring
import pytest
from cxl_ring import DataError, ProtocolError, ResponseError
from cxl_ring import protocol as P
from cxl_ring.resp import encode_bulk

HANG = 20.0


def push(*words: bytes) -> bytes:
    array = b"*%d\r\n" % len(words) + b"".join(encode_bulk(w) for w in words)
    return P.encode_response(P.ST_PUSH, 0, array)


def test_wire_status_8_is_never_accepted_and_9_is_a_push():
    assert P.ST_PUSH == 9 and P.STATUS_NAMES[9] == "PUSH"
    got, _n = P.decode_responses(push(b"message", b"c", b"d"), 1 << 16)
    assert got[0].status == P.ST_PUSH and got[0].id == 0
    with pytest.raises(ProtocolError, match="unknown response status 8"):
        P.decode_responses(P.encode_response(P.ST_UNKNOWN_OUTCOME, 1, b""), 1 << 16)
    with pytest.raises(ProtocolError, match="unknown response status 10"):
        P.decode_responses(P.encode_response(10, 1, b""), 1 << 16)


def test_a_push_on_a_session_that_did_not_subscribe_is_a_protocol_error(fake):
    with cxl_ring.RingClient(fake.path, timeout=HANG) as r:
        assert r.set("k", "v") is True
        index, _ = r.session_info()
        fake.inject_response(index, push(b"message", b"c", b"d"))
        executed = fake.executed
        with pytest.raises(ProtocolError, match="unsolicited"):
            r.get("k")
        assert fake.executed == executed                 # nothing was sent


def test_pushes_come_in_ring_order_and_a_bad_one_is_refused(fake):
    """Pushes framed by hand on a PubSub's session: delivered in order as redis-py's dicts;
    then a push with an id, which breaks the session."""
    with cxl_ring.RingClient(fake.path, timeout=HANG) as r:
        p = r.pubsub()
        s = p._claim()
        assert s.subscribed
        fake.inject_response(s.index, push(b"message", b"a", b"1") +
                             push(b"pmessage", b"b*", b"bx", b"2") + push(b"smessage", b"s", b"3"))
        got = [p.get_message(timeout=HANG) for _ in range(3)]
        assert [(m["type"], m["pattern"], m["channel"], m["data"]) for m in got] == [
            ("message", None, b"a", b"1"), ("pmessage", b"b*", b"bx", b"2"),
            ("smessage", None, b"s", b"3")]
        assert p.get_message(timeout=0.05) is None
        fake.inject_response(s.index, P.encode_response(P.ST_PUSH, 7, b"*0\r\n"))
        with pytest.raises(ProtocolError, match="push"):
            p.get_message(timeout=HANG)
        assert s.broken
        p.close()


def test_a_lost_subscription_is_raised_and_ends_the_subscriptions(fake):
    with cxl_ring.RingClient(fake.path, timeout=HANG) as r, r.pubsub() as p:
        s = p._claim()
        p.channels.add(b"c")
        fake.inject_response(s.index, P.encode_response(
            P.ST_PUSH, 0, b"-ERR cxl_ring: pub/sub connection lost (ring-protocol.md 15)\r\n"))
        with pytest.raises(ResponseError, match="connection lost"):
            p.get_message(timeout=HANG)
        assert not p.subscribed


def test_execute_command_refuses_the_family_without_sending(fake):
    with cxl_ring.RingClient(fake.path, timeout=HANG) as r:
        executed = fake.executed
        for name in ("SUBSCRIBE", "psubscribe", "SSubscribe", "UNSUBSCRIBE", "PUNSUBSCRIBE",
                     "SUNSUBSCRIBE"):
            with pytest.raises(DataError, match="use RingClient.pubsub"):
                r.execute_command(name, "c")
        with pytest.raises(DataError, match="session of its own"):
            r.pipeline().execute_command("SUBSCRIBE", "c")
        assert fake.executed == executed


# ---- a real server ------------------------------------------------------------------------


def test_pubsub_with_the_real_driver(real_server):
    """Confirmations, a message from TCP and one from the ring, a pattern and a shard
    channel; unsubscribing; ignore_subscribe_messages; close ends the driver's names."""
    with cxl_ring.RingClient(real_server.path, timeout=HANG) as r:
        with r.pubsub() as p:
            p.subscribe("news", "sport")
            p.psubscribe("w*")
            p.ssubscribe("s1")
            assert [(m["type"], m["channel"], m["data"]) for m in
                    (p.get_message(timeout=HANG) for _ in range(4))] == [
                ("subscribe", b"news", 1), ("subscribe", b"sport", 2),
                ("psubscribe", b"w*", 3), ("ssubscribe", b"s1", 1)]
            assert p.subscribed and p.channels == {b"news", b"sport"}
            tcp = real_server.redis()
            assert tcp.publish("news", "1") == 1
            assert r.execute_command("PUBLISH", "weather", "2") == 1   # from the ring
            assert tcp.execute_command("SPUBLISH", "s1", "3") == 1
            got = [p.get_message(timeout=HANG) for _ in range(3)]
            assert [(m["type"], m["pattern"], m["channel"], m["data"]) for m in got] == [
                ("message", None, b"news", b"1"), ("pmessage", b"w*", b"weather", b"2"),
                ("smessage", None, b"s1", b"3")]
            p.unsubscribe()
            p.punsubscribe()
            p.sunsubscribe()
            assert p.get_message(timeout=0, ignore_subscribe_messages=True) is None
            assert not p.subscribed
            assert tcp.publish("news", "gone") == 0
        deadline = time.monotonic() + HANG             # the release reaches the driver
        while _info(real_server)["pubsub_names"] != 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)


def _info(server) -> dict:
    raw = server.redis().execute_command("CXLRING.INFO")
    d = raw if isinstance(raw, dict) else dict(zip(raw[0::2], raw[1::2]))
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def test_listen_and_decode_responses(real_server):
    with cxl_ring.RingClient(real_server.path, timeout=HANG, decode_responses=True) as r:
        p = r.pubsub(ignore_subscribe_messages=True)
        p.subscribe("q")
        real_server.redis().publish("q", "héllo")
        for m in p.listen():
            assert m == {"type": "message", "pattern": None, "channel": "q", "data": "héllo"}
            break
        p.close()


def test_an_error_reply_raises_and_subscribes_nothing(real_server):
    with cxl_ring.RingClient(real_server.path, timeout=HANG) as r, r.pubsub() as p:
        with pytest.raises(ResponseError, match="wrong number of arguments"):
            p.subscribe()
        assert not p.subscribed
        p.subscribe("after")                          # the session goes on
        assert p.get_message(timeout=HANG)["type"] == "subscribe"


def test_cli_subscribe_prints_each_message(real_server):
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxl_ring.cli", "--path", real_server.path, "subscribe",
         "--count", "2", "c"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().split() == ["subscribe", "c", "1"]
        tcp = real_server.redis()
        deadline = time.monotonic() + HANG
        for data in ("one", "two"):
            while tcp.publish("c", data) != 1:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        out, err = proc.communicate(timeout=HANG)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.splitlines() == ["message c one", "message c two"]


def test_closing_the_client_releases_a_pubsubs_session(real_server):
    """RingClient.close() releases the PubSub's channel too (the driver ends its names)."""
    r = cxl_ring.RingClient(real_server.path, timeout=HANG)
    p = r.pubsub()
    p.subscribe("c")
    assert p.get_message(timeout=HANG)["type"] == "subscribe"
    r.close()
    deadline = time.monotonic() + HANG
    while _info(real_server)["pubsub_names"] != 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    p.close()                                        # nothing left to release: no error
