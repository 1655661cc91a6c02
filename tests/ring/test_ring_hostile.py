"""Hostile clients (docs/ring-protocol.md section 6), against the plain and the ASan+UBSan
builds: malformed requests get an error status, unframed streams quarantine the channel,
the server stays up, other channels are unaffected, CXLRING.INFO counts it all and
CXLRING.RESET starts a channel afresh."""

from __future__ import annotations

import os
import random
import struct
import threading
import time

import pytest
from rawpeer import (
    CHAN_ACTIVE,
    CHAN_FREE,
    CHAN_QUARANTINED,
    FLAG_TTL,
    HDR,
    MSG_HEADER,
    OP_CMD,
    OP_DEL,
    OP_GET,
    OP_PING,
    OP_SET,
    ST_BAD_REQUEST,
    ST_OK,
    ST_PROTOCOL_ERROR,
    ST_TOO_LARGE,
    ST_UNKNOWN_OP,
    Region,
    encode_request,
)

pytestmark = pytest.mark.timeout(120)

SMALL = {"channels": 4, "req_ring": "256k", "resp_ring": "256k", "max_value": 65536,
         "client_lease_ms": 5000}
MAX_VALUE = 65536
MAX_MSG = MAX_VALUE + 65536


class Rig:
    """A server, a well-behaved peer on channel 0 and a hostile one on channel 1."""

    def __init__(self, srv):
        self.srv = srv
        self.region = Region(srv.region)
        self.good = self.region.channel(0)
        self.good.claim()
        self.good.start_heartbeat()
        self.bad = self.region.channel(1)
        self.bad.claim()
        self.bad.start_heartbeat()
        self.n = 0

    def good_still_works(self):
        self.n += 1
        key, value = b"good%d" % self.n, os.urandom(100)
        assert self.good.set(key, value) == (ST_OK, b"")
        assert self.good.get(key) == (ST_OK, value)
        assert self.srv.client().get(key) == value
        assert self.srv.alive()

    def reclaim_bad(self):
        """A new token starts a quarantined channel afresh (section 6)."""
        self.bad.stop_heartbeat()
        self.bad.claim()
        self.bad.start_heartbeat()
        assert self.bad.state == CHAN_ACTIVE and self.bad.last_error == 0
        assert self.bad.ping() == (ST_OK, b"")

    def close(self):
        self.good.release()
        self.bad.release()
        self.region.close()


@pytest.fixture
def rig(ring_servers, module_path):
    srv = ring_servers.server(SMALL, module=module_path)
    r = Rig(srv)
    yield r
    r.close()
    log = srv.stderr_text()
    assert "AddressSanitizer" not in log and "runtime error" not in log, log[-4000:]


def expect_error(ch, msg: bytes, status: int, req_id: int):
    """A message of this session (its id carries the session generation) answered with an
    error status."""
    ch.push_raw(ch.stamp(msg))
    got_status, got_id, payload = ch.recv()
    assert (got_status, got_id) == (status, ch.tag(req_id)), payload
    assert payload, "an error status carries a reason"
    assert ch.state == CHAN_ACTIVE
    assert ch.last_error == status


def expect_quarantine(rig, why_word: str | None = None, response: bool = True):
    ch = rig.bad
    if response:
        status, rid, payload = ch.recv()
        assert (status, rid) == (ST_PROTOCOL_ERROR, 0)
        if why_word:
            assert why_word in payload.decode()
    deadline = time.monotonic() + 30                # a hang bound
    while ch.state != CHAN_QUARANTINED and time.monotonic() < deadline:
        time.sleep(0.005)
    assert ch.state == CHAN_QUARANTINED and ch.last_error == ST_PROTOCOL_ERROR
    rig.good_still_works()


# ---- skipped with an error status ----------------------------------------------

def test_unknown_op(rig):
    expect_error(rig.bad, encode_request(99, [b"x"], req_id=7), ST_UNKNOWN_OP, 7)
    assert rig.bad.ping() == (ST_OK, b"")
    rig.good_still_works()
    assert rig.srv.info(1)["unknown_op"] == 1


@pytest.mark.parametrize("msg", [
    encode_request(OP_GET, [b"a", b"b"], req_id=11),                 # wrong argc
    encode_request(OP_SET, [b"a"], req_id=11),
    encode_request(OP_PING, [b"a"], req_id=11),
    encode_request(OP_DEL, [], req_id=11),
    encode_request(OP_GET, [b"a"], req_id=11, flags=0x80),           # unknown flag
    encode_request(OP_GET, [b"a"], req_id=11, flags=FLAG_TTL, ttl_ms=5),  # TTL on GET
    encode_request(OP_SET, [b"a", b"b"], req_id=11, flags=FLAG_TTL, ttl_ms=0),
    encode_request(OP_GET, [b"abc"], req_id=11, argc=2),             # argc lies
    encode_request(OP_CMD, [b"PING"], req_id=11, argc=0),
], ids=["get-argc", "set-argc", "ping-argc", "del-argc", "flags", "ttl-get", "ttl-zero",
        "argc-past-end", "cmd-argc0"])
def test_bad_request(rig, msg):
    expect_error(rig.bad, msg, ST_BAD_REQUEST, 11)
    assert rig.bad.ping() == (ST_OK, b"")
    rig.good_still_works()


def test_argument_lengths_that_do_not_fill_the_payload(rig):
    body = struct.pack("<I", 3) + b"abc" + b"junk"        # 4 bytes after the last argument
    length = HDR + len(body)
    msg = MSG_HEADER.pack(length, OP_GET, 0, 1, 12) + body
    expect_error(rig.bad, msg + bytes(-len(msg) % 8), ST_BAD_REQUEST, 12)
    body = struct.pack("<I", 1000) + b"abc"               # argument length past the end
    length = HDR + len(body)
    msg = MSG_HEADER.pack(length, OP_GET, 0, 1, 13) + body
    expect_error(rig.bad, msg + bytes(-len(msg) % 8), ST_BAD_REQUEST, 13)
    rig.good_still_works()


def test_argument_over_max_value(rig):
    msg = encode_request(OP_SET, [b"k", b"v" * (MAX_VALUE + 1)], req_id=21)
    expect_error(rig.bad, msg, ST_TOO_LARGE, 21)
    assert rig.srv.client().exists("k") == 0
    rig.good_still_works()


def test_message_over_max_msg_is_skipped(rig):
    # a framed message longer than max_msg_size, all of it published: TOO_LARGE, skipped
    length = MAX_MSG + 8
    msg = MSG_HEADER.pack(length, OP_PING, 0, 0, 22) + bytes(length - HDR)
    expect_error(rig.bad, msg, ST_TOO_LARGE, 22)
    assert rig.bad.ping() == (ST_OK, b"")
    rig.good_still_works()


# ---- quarantine: the stream is no longer framed --------------------------------

def test_length_shorter_than_header(rig):
    rig.bad.push_raw(MSG_HEADER.pack(8, OP_PING, 0, 0, 31))
    expect_quarantine(rig, "shorter")


def test_length_past_published_bytes(rig):
    msg = encode_request(OP_GET, [b"key"], req_id=32)
    rig.bad.push_raw(msg[:16], advance=16)                # header says more than published
    expect_quarantine(rig, "past")


def test_fewer_bytes_than_a_header(rig):
    rig.bad.push_raw(b"\x10\0\0\0\x05\0\0\0", advance=8)
    expect_quarantine(rig, "header")


def test_impossible_head_index(rig):
    rig.bad.publish_head(rig.bad.req_head + rig.region.req_ring_size * 5)
    expect_quarantine(rig, "exceeds")


def test_head_moving_backwards(rig):
    assert rig.bad.ping() == (ST_OK, b"")
    rig.bad.publish_head(rig.bad.req_head - 8)
    expect_quarantine(rig, "backwards")


def test_garbage_resp_tail(rig):
    ch = rig.bad
    ch.r.put_u64(ch.c + 128, ch.resp_tail + (1 << 40))    # consumer index from nowhere
    # enough requests that the server must look at resp_tail for room
    for i in range(400):
        ch.push_raw(encode_request(OP_SET, [b"g", b"v" * 1000], req_id=ch.tag(i)),
                    publish=False)
    ch.publish_head(ch.req_head)
    expect_quarantine(rig, response=False)


def test_quarantined_channel_reclaims_and_resets(rig):
    rig.bad.push_raw(MSG_HEADER.pack(3, OP_PING, 0, 0, 1))
    expect_quarantine(rig)
    info = rig.srv.info(1)
    assert info["state"] == "quarantined" and info["protocol_errors"] == 1
    assert info["last_error"] == ST_PROTOCOL_ERROR
    rig.reclaim_bad()
    # and CXLRING.RESET frees it
    rig.bad.push_raw(MSG_HEADER.pack(3, OP_PING, 0, 0, 1))
    expect_quarantine(rig)
    assert rig.srv.client().execute_command("CXLRING.RESET", 1) in (b"OK", "OK", True)
    assert rig.bad.state == CHAN_FREE and rig.bad.ack_token == 0
    assert rig.bad.dead_token == rig.bad.token
    assert rig.srv.info(1)["resets"] == 1
    rig.reclaim_bad()


# ---- noise -----------------------------------------------------------------

def test_random_bytes_in_client_section(rig):
    ch = rig.bad
    rnd = random.Random(1234)
    for _ in range(20):
        size = rnd.choice([64, 256, 4096, 4096 + 8192])
        ch.r.mm[ch.c: ch.c + size] = rnd.randbytes(size)
        time.sleep(0.01)
        assert rig.srv.alive()
    rig.good_still_works()
    assert rig.srv.client().execute_command("CXLRING.RESET", 1)
    # a clean control page and a new claim: the channel works again
    ch.r.mm[ch.c: ch.c + 4096] = bytes(4096)
    ch.token = 0
    rig.reclaim_bad()
    assert rig.srv.info(1)["state"] == "active"


def test_random_messages(rig):
    """Random well-framed and ill-framed messages; reclaim after every quarantine."""
    ch = rig.bad
    rnd = random.Random(99)
    statuses = set()
    for i in range(300):
        kind = rnd.random()
        if kind < 0.6:
            op = rnd.choice([0, 1, 2, 3, 4, 5, 6, 200])
            args = [rnd.randbytes(rnd.randrange(0, 40)) for _ in range(rnd.randrange(0, 4))]
            if op == OP_CMD and args:
                args[0] = rnd.choice([b"PING", b"GET", b"ECHO", b"TIME"])
            msg = encode_request(op, args, req_id=ch.tag(i), flags=rnd.choice([0, 0, 0, 1, 2]),
                                 ttl_ms=rnd.randrange(0, 3), argc=rnd.choice([None, None, 7]))
        else:
            msg = rnd.randbytes(rnd.randrange(1, 200))
        ch.push_raw(msg)
        try:
            status, _, _ = ch.recv(timeout=2)
            statuses.add(status)
        except Exception:   # noqa: BLE001 - silence is fine for garbage; check the channel
            pass
        if ch.state == CHAN_QUARANTINED or ch.ack_token != ch.token:
            rig.reclaim_bad()
    assert rig.srv.alive()
    rig.good_still_works()
    info = rig.srv.info(1)
    assert info["errors"] > 0 and info["requests"] > 0


def test_message_rewritten_while_being_read(rig):
    """A peer that keeps rewriting the bytes it published: the server parses its own copy."""
    ch = rig.bad
    stop = threading.Event()
    base = ch.req_data
    size = rig.region.req_ring_size
    rnd = random.Random(5)

    def scribble():
        while not stop.is_set():
            off = rnd.randrange(0, size // 8) * 8
            ch.r.mm[base + off: base + off + 8] = struct.pack("<IBBH", rnd.choice(
                [16, 24, 40, 1 << 20, 3, 0xFFFFFFFF]), rnd.randrange(0, 8), 0, rnd.randrange(3))

    t = threading.Thread(target=scribble, daemon=True)
    t.start()
    try:
        for i in range(200):
            msg = encode_request(OP_SET, [b"rw%d" % i, os.urandom(64)], req_id=ch.tag(i))
            ch.wait_room(len(msg), timeout=2) if ch.state == CHAN_ACTIVE else None
            ch.push_raw(msg)
            if i % 20 == 0:
                time.sleep(0.002)
            if ch.state != CHAN_ACTIVE:
                stop.set()
                t.join(5)
                rig.reclaim_bad()
                stop.clear()
                t = threading.Thread(target=scribble, daemon=True)
                t.start()
    finally:
        stop.set()
        t.join(5)
    assert rig.srv.alive()
    rig.good_still_works()
