"""Wire format: the shared test vectors, header validation, RESP2 parsing with torn input."""

from __future__ import annotations

import subprocess
import sys

import pytest
from clientutil import VECTORS, VECTORS_DIR
from cxl_ring import protocol as P
from cxl_ring.exceptions import (
    LayoutMismatchError,
    NotFormattedError,
    ProtocolError,
    ResponseError,
)
from cxl_ring.resp import CommandReader, Incomplete, RespError, decode_one_reply, parse_reply

LIMITS = VECTORS["limits"]
OPS = {v: k for k, v in P.OP_NAMES.items()}


def test_vectors_file_is_current():
    r = subprocess.run([sys.executable, str(VECTORS_DIR / "generate_messages.py"), "--check"])
    assert r.returncode == 0, "tests/vectors/messages.json is stale: run generate_messages.py"


@pytest.mark.parametrize("case", VECTORS["requests"], ids=lambda c: c["name"])
def test_request_encoding(case):
    args = [bytes.fromhex(a) for a in case["args_hex"]]
    op = OPS[case["op"]]
    assert P.encode_request(op, args, case["id"], case["ttl_ms"]).hex() == case["hex"]
    if op == P.OP_GET:
        assert P.encode_get(args[0], case["id"]).hex() == case["hex"]
    if op == P.OP_SET:
        assert P.encode_set(args[0], args[1], case["id"], case["ttl_ms"]).hex() == case["hex"]
    raw = bytes.fromhex(case["hex"])
    n = P.MSG_HEADER.unpack_from(raw)[0]
    req = P.decode_request(raw[:n], LIMITS["max_msg_size"], LIMITS["max_value_size"])
    assert (req.op, req.flags, req.id, req.ttl_ms, req.args) == (
        op, case["flags"], case["id"], case["ttl_ms"], args)


@pytest.mark.parametrize("case", VECTORS["session_ids"], ids=lambda c: f"gen{c['gen']:#x}")
def test_session_ids(case):
    """A request id carries the session generation in its high half (section 4.3)."""
    rid = P.make_id(case["gen"], case["seq"])
    assert rid == case["id"] and P.id_gen(rid) == case["gen"]
    assert rid & P.ID_SEQ_MASK == case["seq"]
    assert P.encode_get(b"k", rid).hex() == case["hex"]


@pytest.mark.parametrize("case", VECTORS["session_requests"], ids=lambda c: c["name"])
def test_session_request_verdict(case):
    """What the server decides for a request of another generation, from the header alone:
    framing first, then the generation (the client never sends one of another session)."""
    raw = bytes.fromhex(case["hex"])
    n, _op, _flags, _argc, rid = P.MSG_HEADER.unpack_from(raw)
    if n < 16 or P.align8(n) > len(raw):
        verdict = "QUARANTINE"
    elif P.id_gen(rid) != case["session_gen"]:
        verdict = "STALE"
    else:
        verdict = "OK"
    assert verdict == case["expect"]


@pytest.mark.parametrize("case", VECTORS["malformed_requests"], ids=lambda c: c["name"])
def test_malformed_request_status(case):
    """The fake server's decoder (the server-side rules of section 6) agrees with the file."""
    raw = bytes.fromhex(case["hex"])
    published = len(raw)
    n = P.MSG_HEADER.unpack_from(raw)[0]
    if n < 16 or P.align8(n) > published:
        assert case["expect"] == "QUARANTINE"
        return
    with pytest.raises(P.RequestRejected) as e:
        P.decode_request(raw[:n], LIMITS["max_msg_size"], LIMITS["max_value_size"])
    assert P.STATUS_NAMES[e.value.status] == case["expect"]
    assert e.value.id == P.MSG_HEADER.unpack_from(raw)[4]


@pytest.mark.parametrize("case", VECTORS["responses"], ids=lambda c: c["name"])
def test_response_decoding(case):
    raw = bytes.fromhex(case["hex"])
    status = P.STATUS_BY_NAME[case["status"]]
    payload = bytes.fromhex(case["payload_hex"])
    assert P.encode_response(status, case["id"], payload) == raw
    (resp,), used = P.decode_responses(raw, LIMITS["max_msg_size"])
    assert used == len(raw)
    assert resp == P.Response(status, case["id"], payload)


@pytest.mark.parametrize("case", [c for c in VECTORS["malformed_responses"]
                                  if c["name"] in ("len_below_header", "len_over_max_msg",
                                                   "len_past_published", "partial_header",
                                                   "unknown_status", "unknown_outcome_on_wire")],
                         ids=lambda c: c["name"])
def test_malformed_response_framing(case):
    with pytest.raises(ProtocolError):
        P.decode_responses(bytes.fromhex(case["hex"]), LIMITS["max_msg_size"])


@pytest.mark.parametrize("case", VECTORS["v2_requests"], ids=lambda c: c["name"])
def test_v2_request_slot(case):
    op = P.V2_OP_GET if case["op"] == "GET" else P.V2_OP_SET
    slot = P.encode_v2_request(case["client_id"], op, bytes.fromhex(case["key_hex"]),
                               bytes.fromhex(case["value_hex"]))
    want = bytes.fromhex(case["hex"])
    assert len(slot) == P.V2_SLOT_SIZE
    assert slot[: len(want)] == want and slot[len(want) :] == bytes(P.V2_SLOT_SIZE - len(want))


@pytest.mark.parametrize("case", VECTORS["v2_responses"], ids=lambda c: c["name"])
def test_v2_response_slot(case):
    raw = bytes.fromhex(case["hex"])
    slot = raw + bytes(P.V2_SLOT_SIZE - len(raw))
    status, value = P.decode_v2_response(slot)
    assert status == {"OK": 0, "MISS": 1, "ERR": 2}[case["status"]]
    want = case["value_hex"]
    assert value == (None if want is None else bytes.fromhex(want))


@pytest.mark.parametrize("case", VECTORS["v2_malformed_responses"], ids=lambda c: c["name"])
def test_v2_malformed_response(case):
    raw = bytes.fromhex(case["hex"])
    with pytest.raises(ProtocolError):
        P.decode_v2_response(raw + bytes(P.V2_SLOT_SIZE - len(raw)))


# ---- header (the layout 5 vectors are in test_layout5.py) -----------------------------------


def test_header_roundtrip_and_helpers():
    h = P.parse_header(P.format_header(groups=[3, 5]))
    assert h.channel_count == 8 and h.req_ring_size == 2 << 20 and h.groups == (3, 5)
    assert h.group_of(2) == 0 and h.group_of(3) == 1
    assert h.client_section(3) == h.client_segment(1).offset
    assert h.server_section(4) - h.server_section(3) == h.server_section_size
    assert h.server_dead_after == 1.0


@pytest.mark.parametrize("mutate, exc", [
    (lambda b: b"\0" * 8 + b[8:], NotFormattedError),
    (lambda b: b"CXLSHM1\0" + b[8:], LayoutMismatchError),
    (lambda b: b"GARBAGE!" + b[8:], LayoutMismatchError),
    (lambda b: b[:8] + (4).to_bytes(4, "little") + b[12:], LayoutMismatchError),   # layout 4
    (lambda b: b[:20] + (0).to_bytes(4, "little") + b[24:], LayoutMismatchError),  # no channels
    (lambda b: b[:64] + (5000).to_bytes(4, "little") + b[68:], LayoutMismatchError),  # not 2^k
    (lambda b: b[:72] + (1 << 30).to_bytes(4, "little") + b[76:], LayoutMismatchError),
])
def test_header_rejects(mutate, exc):
    with pytest.raises(exc):
        P.parse_header(mutate(P.format_header()))


def test_layout_4_region_names_the_versions():
    raw = P.format_header()
    with pytest.raises(LayoutMismatchError, match="layout version 4, this client speaks 5"):
        P.parse_header(raw[:8] + (4).to_bytes(4, "little") + raw[12:])


# ---- RESP2 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, value", [
    (b"+OK\r\n", b"OK"), (b":-7\r\n", -7), (b"$-1\r\n", None), (b"$0\r\n\r\n", b""),
    (b"$5\r\nhe\r\no\r\n", b"he\r\no"), (b"*-1\r\n", None), (b"*0\r\n", []),
    (b"*3\r\n:1\r\n$1\r\na\r\n*1\r\n+x\r\n", [1, b"a", [b"x"]]),
])
def test_resp_replies(raw, value):
    assert decode_one_reply(raw) == value
    for cut in range(len(raw)):            # every torn prefix is incomplete, never wrong
        with pytest.raises(Incomplete):
            parse_reply(raw[:cut])


def test_resp_error_reply_is_returned():
    v = decode_one_reply(b"-WRONGTYPE bad\r\n")
    assert isinstance(v, ResponseError) and str(v) == "WRONGTYPE bad"


@pytest.mark.parametrize("raw", [b"?x\r\n", b":12a\r\n", b"$3\r\nabcd\r\n", b"$-5\r\n",
                                 b"*2\r\n:1\r\n", b":1\r\n:2\r\n", b"$3\r\nab"])
def test_resp_bad_replies(raw):
    with pytest.raises(ProtocolError):
        decode_one_reply(raw)


def test_command_reader_byte_by_byte():
    stream = (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\nv\r\nv\r\n" b"PING\r\n"
              b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n" b"get  k2\r\n")
    reader = CommandReader()
    got = []
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        got += reader.commands()
    assert got == [[b"SET", b"k", b"v\r\nv"], [b"PING"], [b"GET", b"k"], [b"get", b"k2"]]


@pytest.mark.parametrize("raw", [b"*x\r\n", b"*1\r\n+GET\r\n", b"*1\r\n$-3\r\n",
                                 b"*1\r\n$3\r\nGETxx", b"*99999999\r\n"])
def test_command_reader_rejects(raw):
    reader = CommandReader()
    reader.feed(raw)
    with pytest.raises(RespError):
        reader.commands()
