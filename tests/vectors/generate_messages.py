#!/usr/bin/env python3
"""Write tests/vectors/messages.json: protocol test vectors shared by the C and Python sides.

The expected bytes are spelled out field by field here (not produced by the client's encoder),
so the Python tests check client/cxl_ring/protocol.py against them like the C tests check
ring/. Run it after changing a case; tests/client/test_vectors.py fails if the JSON is stale.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

OUT = Path(__file__).with_name("messages.json")
LIMITS = {"max_value_size": 64, "max_msg_size": 256}

FORMAT = """\
Shared protocol test vectors for docs/ring-protocol.md (layout version 5) and the PoC layout v2.
All integers little-endian; "hex" is the exact bytes, lowercase, no separators.
limits: the max_value_size/max_msg_size the cases assume (a decoder under test uses these).
requests: valid requests. Fields: op (name), flags, argc, id, ttl_ms (0 = none), args_hex
  (list of argument bytes). hex = the framed message including its zero padding to 8 bytes.
  Encoders must produce hex from the fields; a server decoder must accept hex and recover them.
malformed_requests: hex = the bytes the client published (head - tail == len(hex)/2).
  expect = the status name the server answers (with the header's id, message skipped), or
  "QUARANTINE" (the stream is not framed: PROTOCOL_ERROR response with id 0, channel
  QUARANTINED, last_error = 7). Each case has exactly one defect.
session_ids: request ids bind a request to its session (section 4.3): id = session_gen << 32 |
  seq. Fields gen, seq, id; hex = a GET of key "k" with that id.
session_requests: the server's verdict for a request published on a session whose generation is
  session_gen: "OK" (executed), "STALE" (another generation: never executed, channel
  quarantined), or "QUARANTINE" (not framed; checked before the generation).
responses: valid responses. for_op = the request op they answer; status (name), id,
  payload_hex; hex = framed bytes with padding. value = what a client returns: {"bytes": hex},
  {"none": true}, {"int": n}, {"true": true}, {"resp_hex": hex} (CMD: the RESP2 reply), or
  {"error": status name} (the client raises the matching error).
malformed_responses: hex = the bytes the server published in the response ring; for_op and
  expect_id = the request in flight. expect is always "protocol_error": the client raises,
  never hangs or crashes.
v2_requests / v2_responses / v2_malformed_responses: layout v2 slots. hex = the first
  16 + payload bytes of the 4096-byte slot; the rest of the slot is zero. v2_responses carry
  status (OK/MISS/ERR) and value_hex (null unless a GET hit).
"""


def u8(v):
    return struct.pack("<B", v)


def u16(v):
    return struct.pack("<H", v)


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def frame(length, op, flags, argc, rid, payload, pad=True):
    raw = u32(length) + u8(op) + u8(flags) + u16(argc) + u64(rid) + payload
    return raw + b"\0" * ((-len(raw)) % 8) if pad else raw


OPS = {"GET": 1, "SET": 2, "DEL": 3, "CMD": 4, "PING": 5}
STATUS = {"OK": 0, "NOT_FOUND": 1, "ERR": 2, "OOM": 3, "TOO_LARGE": 4, "BAD_REQUEST": 5,
          "UNKNOWN_OP": 6, "PROTOCOL_ERROR": 7}


def args_payload(args):
    return b"".join(u32(len(a)) + a for a in args)


def request(name, op, rid, args, ttl_ms=0):
    payload = (u64(ttl_ms) if ttl_ms else b"") + args_payload(args)
    hexed = frame(16 + len(payload), OPS[op], 1 if ttl_ms else 0, len(args), rid, payload)
    return {"name": name, "op": op, "flags": 1 if ttl_ms else 0, "argc": len(args), "id": rid,
            "ttl_ms": ttl_ms, "args_hex": [a.hex() for a in args], "hex": hexed.hex()}


def response(name, for_op, status, rid, payload, value):
    return {"name": name, "for_op": for_op, "status": status, "id": rid,
            "payload_hex": payload.hex(),
            "hex": frame(16 + len(payload), STATUS[status], 0, 0, rid, payload).hex(),
            "value": value}


def build():
    big_key = b"k" * 64
    requests = [
        request("get", "GET", 1, [b"user:1"]),
        request("get_empty_key", "GET", 2, [b""]),
        request("get_key_at_max_value", "GET", 3, [big_key]),
        request("set", "SET", 4, [b"k", b"hello"]),
        request("set_empty_value", "SET", 5, [b"k", b""]),
        request("set_ttl", "SET", 6, [b"k", b"v"], ttl_ms=1500),
        request("set_value_at_max_value", "SET", 7, [b"k", b"v" * 64]),
        request("del_one", "DEL", 8, [b"k"]),
        request("del_three", "DEL", 9, [b"a", b"bb", b"ccc"]),
        request("cmd_incr", "CMD", 10, [b"INCR", b"counter"]),
        request("cmd_no_args", "CMD", 11, [b"DBSIZE"]),
        request("ping", "PING", 12, []),
        request("id_high_bits", "GET", 0xFEDCBA9876543210, [b"x"]),
        request("binary_key", "GET", 13, [bytes(range(0, 256, 17))]),
    ]

    def bad(name, raw, expect):
        return {"name": name, "hex": raw.hex(), "expect": expect}

    key65 = b"k" * 65
    malformed = [
        bad("len_over_max_msg", frame(264, 4, 0, 1, 21, u32(244) + b"x" * 244), "TOO_LARGE"),
        bad("arg_over_max_value", frame(16 + 4 + 65, 1, 0, 1, 22, u32(65) + key65), "TOO_LARGE"),
        bad("set_value_over_max_value",
            frame(16 + 4 + 1 + 4 + 65, 2, 0, 2, 23, args_payload([b"k", b"v" * 65])),
            "TOO_LARGE"),
        bad("unknown_op", frame(16 + 5, 9, 0, 1, 24, args_payload([b"k"])), "UNKNOWN_OP"),
        bad("op_zero", frame(16, 0, 0, 0, 25, b""), "UNKNOWN_OP"),
        bad("get_argc_2", frame(16 + 10, 1, 0, 2, 26, args_payload([b"a", b"b"])),
            "BAD_REQUEST"),
        bad("set_argc_1", frame(16 + 5, 2, 0, 1, 27, args_payload([b"k"])), "BAD_REQUEST"),
        bad("ping_argc_1", frame(16 + 5, 5, 0, 1, 28, args_payload([b"k"])), "BAD_REQUEST"),
        bad("del_argc_0", frame(16, 3, 0, 0, 29, b""), "BAD_REQUEST"),
        bad("cmd_argc_0", frame(16, 4, 0, 0, 30, b""), "BAD_REQUEST"),
        bad("unknown_flag", frame(16 + 5, 1, 0x02, 1, 31, args_payload([b"k"])),
            "BAD_REQUEST"),
        bad("ttl_flag_on_get", frame(16 + 8 + 5, 1, 1, 1, 32, u64(100) + args_payload([b"k"])),
            "BAD_REQUEST"),
        bad("ttl_zero", frame(16 + 8 + 10, 2, 1, 2, 33, u64(0) + args_payload([b"k", b"v"])),
            "BAD_REQUEST"),
        bad("arg_overruns_payload", frame(16 + 5, 1, 0, 1, 34, u32(9) + b"k"), "BAD_REQUEST"),
        bad("trailing_bytes", frame(16 + 7, 1, 0, 1, 35, args_payload([b"k"]) + b"zz"),
            "BAD_REQUEST"),
        bad("argc_more_than_args", frame(16 + 5, 3, 0, 2, 36, args_payload([b"k"])),
            "BAD_REQUEST"),
        bad("len_below_header", u32(8) + u8(1) + u8(0) + u16(0) + u64(37), "QUARANTINE"),
        bad("len_zero", u32(0) + u8(1) + u8(0) + u16(0) + u64(38), "QUARANTINE"),
        bad("len_past_published", frame(16 + 5 + 64, 1, 0, 1, 39, args_payload([b"k"]),
                                        pad=False) + b"\0" * 3, "QUARANTINE"),
        bad("len_over_max_and_past_published", u32(100000) + u8(1) + u8(0) + u16(1) + u64(40),
            "QUARANTINE"),
    ]

    def session_id(gen, seq):
        rid = (gen << 32) | seq
        return {"gen": gen, "seq": seq, "id": rid, "hex": frame(16 + 5, 1, 0, 1, rid,
                                                                args_payload([b"k"])).hex()}

    session_ids = [session_id(1, 1), session_id(7, 0), session_id(0x80000000, 0x7FFFFFFF),
                   session_id(0xFFFFFFFF, 0xFFFFFFFF)]

    def in_session(name, gen, raw, expect):
        return {"name": name, "session_gen": gen, "hex": raw.hex(), "expect": expect}

    get_k = args_payload([b"k"])
    session_requests = [
        in_session("current_generation", 5, frame(21, 1, 0, 1, (5 << 32) | 9, get_k), "OK"),
        in_session("earlier_generation", 5, frame(21, 1, 0, 1, (4 << 32) | 9, get_k), "STALE"),
        in_session("later_generation", 5, frame(21, 1, 0, 1, (6 << 32) | 9, get_k), "STALE"),
        in_session("generation_zero", 5, frame(21, 1, 0, 1, 9, get_k), "STALE"),
        in_session("generation_in_low_half", 5, frame(21, 1, 0, 1, 5, get_k), "STALE"),
        in_session("stale_and_unknown_op", 5, frame(21, 9, 0, 1, (4 << 32) | 9, get_k),
                   "STALE"),
        in_session("stale_and_over_max_msg", 5,
                   frame(264, 4, 0, 1, (4 << 32) | 9, u32(244) + b"x" * 244), "STALE"),
        in_session("stale_and_not_framed", 5, u32(8) + u8(1) + u8(0) + u16(0) + u64(4 << 32),
                   "QUARANTINE"),
    ]

    responses = [
        response("get_hit", "GET", "OK", 1, b"hello", {"bytes": b"hello".hex()}),
        response("get_miss", "GET", "NOT_FOUND", 2, b"", {"none": True}),
        response("get_empty_value", "GET", "OK", 3, b"", {"bytes": ""}),
        response("set_ok", "SET", "OK", 4, b"", {"true": True}),
        response("del_count", "DEL", "OK", 5, u64(2), {"int": 2}),
        response("cmd_integer", "CMD", "OK", 6, b":42\r\n", {"resp_hex": b":42\r\n".hex()}),
        response("cmd_error_reply", "CMD", "OK", 7, b"-WRONGTYPE Operation against a key\r\n",
                 {"resp_hex": b"-WRONGTYPE Operation against a key\r\n".hex()}),
        response("ping_ok", "PING", "OK", 8, b"", {"true": True}),
        response("err", "CMD", "ERR", 9, b"ERR something", {"error": "ERR"}),
        response("oom", "SET", "OOM", 10, b"OOM command not allowed", {"error": "OOM"}),
        response("too_large", "GET", "TOO_LARGE", 11, b"value too large",
                 {"error": "TOO_LARGE"}),
        response("bad_request", "GET", "BAD_REQUEST", 12, b"argc", {"error": "BAD_REQUEST"}),
        response("unknown_op", "GET", "UNKNOWN_OP", 13, b"op 9", {"error": "UNKNOWN_OP"}),
        response("protocol_error", "GET", "PROTOCOL_ERROR", 0, b"len < 16",
                 {"error": "PROTOCOL_ERROR"}),
    ]

    def badr(name, raw, for_op="GET", expect_id=1):
        return {"name": name, "hex": raw.hex(), "for_op": for_op, "expect_id": expect_id,
                "expect": "protocol_error"}

    malformed_responses = [
        badr("len_below_header", u32(8) + u8(0) + u8(0) + u16(0) + u64(1)),
        badr("len_over_max_msg", frame(264, 0, 0, 0, 1, b"v" * 248)),
        badr("len_past_published", frame(64, 0, 0, 0, 1, b"v" * 8, pad=False)),
        badr("partial_header", (u32(24) + u8(0) + u8(0) + u16(0))),
        badr("unknown_status", frame(16, 10, 0, 0, 1, b"")),
        # status 9 is a push (section 15): only on a session that subscribed, only id 0
        badr("push_on_a_session_that_did_not_subscribe",
             frame(16 + 4, 9, 0, 0, 0, b"*0\r\n")),
        badr("unknown_outcome_on_wire", frame(16, 8, 0, 0, 1, b"")),
        badr("id_mismatch", frame(16, 0, 0, 0, 2, b""), for_op="SET"),
        badr("del_count_short", frame(20, 0, 0, 0, 1, u32(2)), for_op="DEL"),
        badr("cmd_truncated_resp", frame(16 + 5, 0, 0, 0, 1, b"$5\r\nh"), for_op="CMD"),
        badr("cmd_trailing_resp", frame(16 + 8, 0, 0, 0, 1, b":1\r\n:2\r\n"), for_op="CMD"),
        badr("not_found_for_set", frame(16, 1, 0, 0, 1, b""), for_op="SET"),
        badr("two_responses_one_request", frame(16, 0, 0, 0, 1, b"") + frame(16, 0, 0, 0, 2, b""),
             for_op="SET"),
    ]

    def v2_slot(cid, typ, payload):
        return u32(cid) + u16(typ) + u16(0) + u32(len(payload)) + u32(0) + payload

    v2_requests = [
        {"name": "get", "client_id": 7, "op": "GET", "key_hex": b"user:1".hex(), "value_hex": "",
         "hex": v2_slot(7, 1, u8(1) + u8(6) + u16(0) + b"user:1").hex()},
        {"name": "set", "client_id": 7, "op": "SET", "key_hex": b"k".hex(),
         "value_hex": b"hello".hex(),
         "hex": v2_slot(7, 1, u8(2) + u8(1) + u16(5) + b"k" + b"hello").hex()},
    ]
    v2_responses = [
        {"name": "get_hit", "status": "OK", "value_hex": b"hello".hex(),
         "hex": v2_slot(7, 1, u8(0) + u16(5) + b"hello").hex()},
        {"name": "get_miss", "status": "MISS", "value_hex": None,
         "hex": v2_slot(7, 1, u8(1) + u16(0)).hex()},
        {"name": "set_ok", "status": "OK", "value_hex": "", "hex": v2_slot(7, 1, u8(0) + u16(0))
         .hex()},
        {"name": "err", "status": "ERR", "value_hex": None,
         "hex": v2_slot(7, 1, u8(2) + u16(0)).hex()},
    ]
    v2_malformed = [
        {"name": "val_len_mismatch", "hex": v2_slot(7, 1, u8(0) + u16(9) + b"abc").hex(),
         "expect": "protocol_error"},
        {"name": "unknown_status", "hex": v2_slot(7, 1, u8(7) + u16(0)).hex(),
         "expect": "protocol_error"},
        {"name": "close_type", "hex": v2_slot(7, 2, u8(0) + u16(0)).hex(),
         "expect": "protocol_error"},
        {"name": "payload_len_over_slot", "hex": (u32(7) + u16(1) + u16(0) + u32(5000) + u32(0)
                                                  + u8(0) + u16(0)).hex(),
         "expect": "protocol_error"},
    ]
    return {
        "_format": FORMAT.splitlines(),
        "limits": LIMITS,
        "requests": requests,
        "malformed_requests": malformed,
        "session_ids": session_ids,
        "session_requests": session_requests,
        "responses": responses,
        "malformed_responses": malformed_responses,
        "v2_requests": v2_requests,
        "v2_responses": v2_responses,
        "v2_malformed_responses": v2_malformed,
    }


def render() -> str:
    return json.dumps(build(), indent=1) + "\n"


if __name__ == "__main__":
    if "--check" in sys.argv:
        sys.exit(0 if OUT.read_text() == render() else 1)
    OUT.write_text(render())
    print(f"wrote {OUT}")
