"""Compatibility mode `layout v2`: the PoC's slot rings, served against the real keyspace,
driven by tests/ring/poc_v2_client.py (written from the reference doc only)."""

from __future__ import annotations

import pytest
from poc_v2_client import ERR, MISS, OK, OP_GET, OP_SET, TYPE_CLOSE, PocV2Client

pytestmark = pytest.mark.timeout(60)

V2 = {"layout": "v2", "v2_rings": 2, "v2_slots": 64}


@pytest.fixture
def v2(ring_servers):
    srv = ring_servers.server(V2)
    client = PocV2Client(srv.region)
    yield srv, client
    client.close()


def test_header_as_the_poc_client_reads_it(v2):
    srv, client = v2
    assert client.ring_count == 2 and client.slots == 64
    req_off, req_sz, resp_off, resp_sz = client.rings[1]
    assert req_sz == resp_sz == 16 + 64 * 4096 and resp_off > req_off
    info = srv.info()
    assert info["layout"] == "v2" and info["channel_count"] == 2


def test_get_set_round_trips_and_tcp(v2):
    srv, client = v2
    assert client.set(b"k", b"hello") == (OK, b"")
    assert client.get(b"k") == (OK, b"hello")
    assert client.get(b"missing") == (MISS, b"")
    assert srv.client().get("k") == b"hello"
    srv.client().set("t", b"from tcp")
    assert client.get(b"t", ring=1) == (OK, b"from tcp")
    assert client.set(b"empty", b"") == (OK, b"")
    assert client.get(b"empty") == (OK, b"")
    big = bytes(range(256)) * 15 + b"x" * 156            # 4 KiB value: 4056 bytes
    assert client.set(b"big", big[:4000]) == (OK, b"")
    assert client.get(b"big") == (OK, big[:4000])


def test_pipelined_beyond_the_ring_in_order(v2):
    _, client = v2
    values = {}
    sent = got = 0
    while got < 300:                                     # 300 requests through 64 slots
        while sent < 300 and client.push(0, OP_SET, b"p%d" % sent, b"v%d" % sent):
            values[sent] = b"v%d" % sent
            sent += 1
        assert client.pop(0) == (OK, b"")
        got += 1
    for i in range(0, 300, 37):
        assert client.push(1, OP_GET, b"p%d" % i)
        assert client.pop(1) == (OK, values[i])


def test_bad_slots_get_err_and_close_gets_nothing(v2):
    srv, client = v2
    assert client.push(0, 0, b"", raw_payload=bytes([9, 1, 0, 0]) + b"k")    # unknown op
    assert client.pop(0) == (ERR, b"")
    assert client.push(0, 0, b"", raw_payload=bytes([OP_GET, 200, 0, 0]) + b"k")  # key past
    assert client.pop(0) == (ERR, b"")
    assert client.push(0, 0, b"", raw_payload=b"")                            # empty
    assert client.pop(0) == (ERR, b"")
    assert client.push(0, OP_GET, b"x", slot_type=TYPE_CLOSE)                # no response
    assert client.set(b"after", b"1") == (OK, b"")
    assert srv.alive()
    assert srv.info(0)["bad_request"] + srv.info(0)["unknown_op"] == 3


def test_get_of_a_value_larger_than_a_slot_is_err(v2):
    srv, client = v2
    srv.client().set("huge", b"z" * 5000)
    assert client.get(b"huge") == (ERR, b"")
