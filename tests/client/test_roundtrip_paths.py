"""The unpipelined GET/SET round trip has two implementations: pure Python (channel.Session)
and the optional C core (cxl_ring/_speedups.c, channel.FastSession). Every test here runs with
both (the C one is skipped when the extension is not built); they must behave identically.

CXL_RING_PURE=1 forces the pure path for a whole run: ``CXL_RING_PURE=1 pytest tests/client``.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading

import cxl_ring
import pytest
from clientutil import REPO, VECTORS, malformed_response_pending
from cxl_ring import protocol as P
from cxl_ring.exceptions import (
    CxlRingError,
    ProtocolError,
    RequestTooLargeError,
    ResponseDecodeError,
    RingTimeoutError,
    ServerGoneError,
)

pytestmark = pytest.mark.timeout(120)
HANG = 20   # client timeouts that only catch hangs; never a claim about the machine's speed

def _session_class(r: cxl_ring.RingClient) -> str:
    return type(r._transport.session()).__name__


def test_pure_env_var_disables_the_extension():
    code = "from cxl_ring import channel; print(channel.SPEEDUPS, channel.SessionType.__name__)"
    env = {**os.environ, "PYTHONPATH": str(REPO / "client"), "CXL_RING_PURE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, env=env, check=True)
    assert out.stdout.split() == ["False", "Session"]


def test_session_class_follows_the_choice(impl, fake):
    with cxl_ring.RingClient(fake.path, timeout=HANG) as r:
        assert r.ping() is True
        assert _session_class(r) == ("FastSession" if impl == "c" else "Session")


def test_values_survive_every_ring_offset(impl, real_server_factory):
    """Small rings, random key/value sizes: requests and replies wrap at every offset."""
    server = real_server_factory(max_value=4096, req_ring=1 << 17, resp_ring=1 << 17)
    rnd = random.Random(7)
    expected: dict[bytes, bytes] = {}
    with cxl_ring.RingClient(server.path, timeout=5) as r:
        for i in range(12000):
            key = b"k%d" % rnd.randrange(300) + b"x" * rnd.randrange(40)
            if rnd.random() < 0.5:
                value = bytes(rnd.randrange(256) for _ in range(rnd.randrange(600)))
                assert r.set(key, value) is True
                expected[key] = value
            else:
                assert r.get(key) == expected.get(key), i
        assert r.get(b"") is None
        assert r.set(b"", b"") is True and r.get(b"") == b""
        session = r._transport.session()
        assert session.req_head > 8 * (1 << 17) and session.resp_tail > 2 * (1 << 17)
    tcp = server.redis()
    for key in list(expected)[:50]:
        assert tcp.get(key) == expected[key]
    tcp.close()


def test_api_semantics(impl, real_server):
    with cxl_ring.RingClient(real_server.path, timeout=5) as r:
        assert r.set("s", "v") is True and r.get("s") == b"v"
        assert r.set(bytearray(b"ba"), memoryview(b"mv")) is True and r.get(b"ba") == b"mv"
        assert r.set(b"n", 7) is True and r.get(b"n") == b"7"
        assert r.set(b"t", b"v", px=100_000) is True
        assert r.set(b"e", b"v", ex=100) is True
        assert r.get(b"missing") is None
        big = b"b" * 65536
        assert r.set(b"big", big) is True and r.get(b"big") == big
        with pytest.raises(RequestTooLargeError):
            r.set(b"big", big + b"!")
        with pytest.raises(RequestTooLargeError):
            r.get(b"k" * 65537)
        assert r.execute_command("HSET", "h", "f", "v") == 1
        with pytest.raises(cxl_ring.ResponseError):
            r.get("h")                                    # WRONGTYPE: an ERR reply
        assert r.get("s") == b"v"                         # the session goes on
    tcp = real_server.redis()
    assert 0 < tcp.pttl(b"t") <= 100_000 and 0 < tcp.ttl(b"e") <= 100
    tcp.close()
    with cxl_ring.RingClient(real_server.path, decode_responses=True) as r:
        assert r.get("s") == "v" and r.get("missing") is None


@pytest.mark.parametrize(
    "case", [c for c in VECTORS["malformed_responses"] if c["for_op"] in ("GET", "SET")],
    ids=lambda c: c["name"])
def test_malformed_responses_raise(impl, case, shm_path):
    with malformed_response_pending(shm_path, case) as (r, fake):
        call = (lambda: r.get("k")) if case["for_op"] == "GET" else (lambda: r.set("k", "v"))
        with pytest.raises(ProtocolError):
            call()
        fake.paused.clear()
        assert r.set("k", "v") is True and r.get("k") == b"v"   # a fresh session


def test_late_reply_times_out_then_recovers(impl, fake):
    with cxl_ring.RingClient(fake.path, timeout=HANG) as r:
        assert r.set("k", "v") is True
        fake.paused.set()
        r.timeout = 0.3                      # only while the server is paused
        with pytest.raises(RingTimeoutError):
            r.get("k")
        with pytest.raises(RingTimeoutError):
            r.set("k", "w")
        r.timeout = HANG
        fake.paused.clear()
        assert r.get("k") in (b"v", b"w")


def test_restart_then_stop(impl, fake):
    with cxl_ring.RingClient(fake.path, timeout=HANG) as r:
        assert r.set("k", "v") is True
        fake.restart()                       # the session is retired: claim again, silently
        assert r.get("k") == b"v"
        fake.stop()
        with pytest.raises(ServerGoneError):
            r.get("k")
        with pytest.raises(ServerGoneError):
            r.set("k", "v")


_CALLS = {
    "get": lambda r: r.get("k"),
    "set": lambda r: r.set("k", "w"),
    "pipeline": lambda r: r.pipeline().get("k").execute(),
    "cmd": lambda r: r.execute_command("ECHO", "x"),
}


@pytest.mark.parametrize("call", sorted(_CALLS))
@pytest.mark.parametrize("forged_id", ["next", "last"])
def test_unsolicited_response_is_refused(impl, fake, call, forged_id):
    """A response in the ring while no request is in flight (a server bug or a hostile peer)
    is never taken as the next answer, on either path: ProtocolError before anything is
    sent, then a fresh session. Even when it carries the id the next request will use."""
    with cxl_ring.RingClient(fake.path, timeout=HANG) as r:
        assert r.set("k", "v") is True
        index, _ = r.session_info()
        s = r._transport.session()
        rid = s.next_id if forged_id == "next" else s.next_id - 1
        fake.inject_response(index, P.encode_response(P.ST_OK, rid, b"forged"))
        executed = fake.executed
        with pytest.raises(ProtocolError, match="unsolicited"):
            _CALLS[call](r)
        assert fake.executed == executed      # nothing was sent
        assert r.get("k") == b"v"
        assert r.session_info()[1] != s.token     # on a fresh session


def test_extra_response_after_the_answer_is_refused(impl, fake):
    """The server answers one request twice: the second answer, published after the first
    was taken, makes the next call raise instead of answering it."""
    with cxl_ring.RingClient(fake.path, timeout=HANG) as r:
        assert r.set("k", "v") is True
        index, _ = r.session_info()
        rid = r._transport.session().next_id
        assert r.get("k") == b"v"
        fake.inject_response(index, P.encode_response(P.ST_OK, rid, b"v"))   # a duplicate
        with pytest.raises(ProtocolError, match="unsolicited"):
            r.get("k")
        assert r.get("k") == b"v"


def test_invalid_utf8_with_decode_responses(impl, fake):
    """decode_responses=True and a value that is not UTF-8: ResponseDecodeError (a
    CxlRingError and a UnicodeDecodeError), and the session goes on."""
    fake.store[b"bin"] = b"\xff\xfe ok"
    with cxl_ring.RingClient(fake.path, timeout=HANG, decode_responses=True) as r:
        assert r.set("t", "välue") is True
        token = r.session_info()[1]
        with pytest.raises(ResponseDecodeError) as e:
            r.get("bin")
        assert isinstance(e.value, CxlRingError) and isinstance(e.value, UnicodeDecodeError)
        assert e.value.object == b"\xff\xfe ok" and e.value.encoding == "utf-8"
        with pytest.raises(ResponseDecodeError):
            r.execute_command("GET", "bin")               # a CMD reply
        with pytest.raises(ResponseDecodeError, match="Command # 2"):
            r.pipeline().get("t").get("bin").execute()
        out = r.pipeline().get("t").get("bin").execute(raise_on_error=False)
        assert out[0] == "välue" and isinstance(out[1], ResponseDecodeError)
        assert r.get("t") == "välue"
        assert r.session_info()[1] == token               # the same session throughout
    with cxl_ring.RingClient(fake.path, decode_responses=True, encoding_errors="replace") as r:
        assert r.get("bin") == "\ufffd\ufffd ok"


def test_unencodable_argument_is_a_data_error(impl, fake):
    with cxl_ring.RingClient(fake.path, timeout=HANG, encoding="ascii") as r:
        with pytest.raises(cxl_ring.DataError):
            r.set("k", "välue")
        with pytest.raises(cxl_ring.DataError):
            r.get("ä")
        assert r.set("k", "v") is True
    with pytest.raises(ValueError, match="encoding"):
        cxl_ring.RingClient(fake.path, encoding="no-such-codec")


def test_threads_share_nothing(impl, real_server):
    errors: list[BaseException] = []
    with cxl_ring.RingClient(real_server.path, timeout=5) as r:
        def work(t: int) -> None:
            try:
                for i in range(2000):
                    key = b"t%d:%d" % (t, i % 50)
                    assert r.set(key, key * 3) is True
                    assert r.get(key) == key * 3
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors


def test_frames_match_the_encoders():
    for klen in range(0, 19):
        key = bytes(range(klen))
        frame = P.get_frame(klen)
        assert frame.pack(20 + klen, P.OP_GET, 0, 1, 9, klen, key) == P.encode_get(key, 9)
        for vlen in (0, 1, 7, 8, 13):
            value = b"v" * vlen
            frame = P.set_frame(klen, vlen)
            assert frame.pack(24 + klen + vlen, P.OP_SET, 0, 2, 5, klen, key, vlen, value) == \
                P.encode_set(key, value, 5)
            frame = P.set_frame(klen, vlen, True)
            assert frame.pack(32 + klen + vlen, P.OP_SET, P.FLAG_TTL, 2, 5, 1500, klen, key,
                              vlen, value) == P.encode_set(key, value, 5, 1500)
