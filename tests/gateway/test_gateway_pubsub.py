"""Pub/sub through cxl-gateway (docs/ring-protocol.md section 15, gateway/README.md): a
connection that subscribes gets a ring session of its own, the driver pushes each message
into it, and the gateway writes it to the connection as Redis would (RESP2 arrays, RESP3
pushes after HELLO 3). Unmodified clients: redis-py (RESP2 and RESP3) and redis-cli.

Messages are published over TCP to the server itself, through the gateway's shared session
and from a transaction, so what arrives is checked against what was published from outside
the gateway. Redis 8 refuses the family over the ring (tests/ring/test_ring_subscribe.py).
Every wait only catches a hang."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
from ringharness import wait_for

pytestmark = pytest.mark.timeout(120)

ASAN = "cxl-gateway-asan"


def _messages(p, n: int, timeout: float = 20.0) -> list[dict]:
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        m = p.get_message(timeout=0.5)
        if m is not None:
            out.append(m)
    return out


def _strip(msgs: list[dict]) -> list[tuple]:
    return [(m["type"], m.get("pattern"), m["channel"], m["data"]) for m in msgs]


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_pubsub_through_the_gateway(server, gateways, protocol):
    """redis-py's PubSub through the gateway: confirmations, a message from TCP, one from a
    client of the gateway's shared session, one from EXEC, one to a pattern; an unsubscribed
    channel's message does not come; unsubscribing everything ends the subscription, and the
    connection's session then goes with the connection."""
    gw = gateways(server.region, binary=server.module.parent / ASAN, channels=2)
    r = gw.client(protocol=protocol)
    p = r.pubsub()
    p.subscribe("news", "sport")
    p.psubscribe("we*")
    assert _strip(_messages(p, 3)) == [("subscribe", None, b"news", 1),
                                       ("subscribe", None, b"sport", 2),
                                       ("psubscribe", None, b"we*", 3)]
    tcp = server.client()
    assert tcp.publish("news", "1") == 1
    assert r.publish("sport", "2") == 1                  # through the gateway's shared session
    pipe = tcp.pipeline(transaction=True)
    pipe.publish("nobody", "x")
    pipe.publish("weather", "3")
    assert pipe.execute() == [0, 1]
    assert _strip(_messages(p, 3)) == [("message", None, b"news", b"1"),
                                       ("message", None, b"sport", b"2"),
                                       ("pmessage", b"we*", b"weather", b"3")]
    p.unsubscribe("sport")
    assert _strip(_messages(p, 1)) == [("unsubscribe", None, b"sport", 2)]
    assert tcp.publish("sport", "gone") == 0             # no session holds it: the driver left it
    assert tcp.publish("news", "4") == 1
    assert _strip(_messages(p, 1)) == [("message", None, b"news", b"4")]
    p.unsubscribe()
    p.punsubscribe()
    assert _strip(_messages(p, 2)) == [("unsubscribe", None, b"news", 1),
                                       ("punsubscribe", None, b"we*", 0)]
    p.close()
    wait_for(lambda: int(server.info()["pubsub_names"]) == 0, "the driver to unsubscribe")
    assert r.ping() is True and gw.alive()


def test_redis_cli_subscribe_through_the_gateway(server, gateways):
    """redis-cli SUBSCRIBE through the gateway prints the confirmation and each message."""
    cli = shutil.which("redis-cli")
    if not cli:
        pytest.skip("redis-cli is not installed")
    gw = gateways(server.region, channels=2)
    proc = subprocess.Popen([cli, "-p", str(gw.port), "--no-raw", "SUBSCRIBE", "c"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = [proc.stdout.readline() for _ in range(4)]
        assert [x.strip() for x in first][-3:] == ['1) "subscribe"', '2) "c"', "3) (integer) 1"]
        wait_for(lambda: server.client().publish("c", "hello") == 1, "the subscription")
        got = [proc.stdout.readline() for _ in range(3)]
        assert [x.strip() for x in got] == ['1) "message"', '2) "c"', '3) "hello"']
    finally:
        proc.kill()
        proc.wait(10)
    assert gw.alive()


def test_a_subscribed_connection_is_answered_in_ring_order(server, gateways):
    """A PING after SUBSCRIBE on the same connection, with a message published between:
    the message comes before PING's answer, as the server wrote them (raw RESP2)."""
    gw = gateways(server.region, channels=2)
    s = gw.sock()
    s.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nq\r\n")
    want = b"*3\r\n$9\r\nsubscribe\r\n$1\r\nq\r\n:1\r\n"
    got = b""
    while len(got) < len(want):
        got += s.recv(4096)
    assert got == want
    assert server.client().publish("q", "m") == 1
    msg = b"*3\r\n$7\r\nmessage\r\n$1\r\nq\r\n$1\r\nm\r\n"
    got = b""
    while len(got) < len(msg):
        got += s.recv(4096)
    assert got == msg
    s.sendall(b"*1\r\n$4\r\nPING\r\n")
    got = b""
    while not got.endswith(b"\r\n"):
        got += s.recv(4096)
    assert got == b"+PONG\r\n"
    s.close()
