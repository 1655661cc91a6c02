#!/usr/bin/env python3
"""Write tests/vectors/layout5.json: layout 5 test vectors shared by the C and Python sides.

The layout rule and the header bytes are spelled out here from docs/ring-protocol.md sections 2
and 2.1 (not produced by the client's plan_layout or format_header), so the Python tests check
client/cxl_ring/protocol.py against them like the C tests check cxl_layout_plan() and the
driver's header check in ring/. Run it after changing a case; tests/client/test_layout5.py
fails if the JSON is stale.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

OUT = Path(__file__).with_name("layout5.json")

FORMAT = """\
Layout 5 test vectors for docs/ring-protocol.md sections 2 and 2.1 (region map, header,
segment table). All integers little-endian; "hex" is the exact bytes, lowercase, no separators.
plans: valid inputs of the layout rule (cxl_layout_plan() in C, plan_layout() in Python):
  groups (channels per group), req_ring_size, resp_ring_size, segment_align; the answer:
  region_size and segments (in segment order: name, kind 1 header / 2 client / 3 server, group
  (65535 for the header), first_channel, channel_count, offset, size, span); channels: for
  every channel c, [group, client section offset, server section offset] in the region.
  header_hex: the header a server formats for this plan with max_value_size, max_msg_size,
  heartbeat_interval_ms and client_lease_ms as given: bytes 0 .. 256 + 32 * segment_count
  (geometry, liveness fields zero, segment table); the rest of the 4096-byte header is zero.
  A reader must accept it and recover every field.
invalid_plans: inputs the rule refuses (C: cxl_layout_plan() returns 0; Python: ValueError).
  error names the input at fault: group_count (not 1..32 groups), group_channels (a group of
  0 channels), channel_count (more than 256 in all), segment_align (not a power of two
  >= 4096), req_ring_size / resp_ring_size (not a power of two in 4096..2^30).
invalid_headers: a header (hex, as header_hex above, possibly cut short) with exactly one
  defect against the plan named by "plan". A reader refuses it before trusting any of it:
  error "not_formatted" is the all-zero magic (no server formatted the region yet); every
  other error is a layout mismatch, and error names the check that fails, as the field
  name the reader's message carries: magic, version, header_size, channel_count,
  group_count, segment_count, segment_align, req_ring_size, client_section_size,
  max_msg_size, heartbeat_interval_ms, kind, group, first_channel, size, span, offset,
  region_size, truncated.
"""

PAGE = 4096
MAGIC = b"CXLDSMR\0"
V2_MAGIC = b"CXLSHM1\0"
GROUP_NONE = 0xFFFF
HEADER, CLIENT, SERVER = 1, 2, 3
TABLE = 256
ENTRY = 32


def pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def plan(groups, req, resp, align):
    """Section 2, step by step: segment 0 the header, then client-g and server-g per group."""
    segs = []
    offset = 0
    first = 0

    def add(name, kind, group, first_channel, count, size):
        nonlocal offset
        span = max(align, pow2_at_least(size))
        segs.append({"name": name, "kind": kind, "group": group, "first_channel": first_channel,
                     "channel_count": count, "offset": offset, "size": size, "span": span})
        offset += span

    add("header", HEADER, GROUP_NONE, 0, 0, PAGE)
    for g, n in enumerate(groups):
        add(f"client-{g}", CLIENT, g, first, n, n * (PAGE + req))
        add(f"server-{g}", SERVER, g, first, n, n * (PAGE + resp))
        first += n
    return offset, segs


def header_bytes(p, segs, region_size, max_msg=None):
    """Section 2.1: the geometry (0..87), liveness zero (128..151), the table from 256."""
    groups, req, resp = p["groups"], p["req_ring_size"], p["resp_ring_size"]
    out = bytearray(TABLE + ENTRY * len(segs))
    fields = [
        (0, "8s", MAGIC), (8, "I", 5), (12, "I", PAGE), (16, "I", 0),
        (20, "I", sum(groups)), (24, "Q", region_size), (32, "I", len(groups)),
        (36, "I", 1 + 2 * len(groups)), (40, "I", p["segment_align"]), (44, "I", 0),
        (48, "Q", PAGE + req), (56, "Q", PAGE + resp), (64, "I", req), (68, "I", resp),
        (72, "I", p["max_msg_size"] if max_msg is None else max_msg),
        (76, "I", p["max_value_size"]), (80, "I", p["heartbeat_interval_ms"]),
        (84, "I", p["client_lease_ms"]),
    ]
    for off, fmt, value in fields:
        struct.pack_into("<" + fmt, out, off, value)
    for k, s in enumerate(segs):
        base = TABLE + ENTRY * k
        struct.pack_into("<QQQ", out, base, s["offset"], s["size"], s["span"])
        struct.pack_into("<BBHHH", out, base + 24, s["kind"], 0, s["group"], s["first_channel"],
                         s["channel_count"])
    return bytes(out)


PLANS = [
    # name, groups, req, resp, align, max_value, max_msg
    ("default", [8], 2 << 20, 2 << 20, 4096, 1 << 20, (1 << 20) + (64 << 10)),
    ("one_channel", [1], 4096, 4096, 4096, 1024, 4096),
    ("three_channels_round_up", [3], 4096, 4096, 4096, 1024, 4096),
    ("two_groups", [4, 2], 4096, 8192, 4096, 1024, 4096),
    ("asymmetric_rings", [1, 3], 4096, 1 << 20, 4096, 2048, 4096),
    ("hugetlbfs_2m", [2, 2, 1], 64 << 10, 64 << 10, 2 << 20, 16 << 10, 32 << 10),
    ("hugetlbfs_1g", [1], 4096, 4096, 1 << 30, 1024, 4096),
    ("lab_three_groups", [8, 8, 8], 2 << 20, 2 << 20, 4096, 1 << 20, (1 << 20) + (64 << 10)),
    ("max_groups_256_channels", [8] * 32, 4096, 4096, 4096, 1024, 4096),
    ("uneven_groups", [1, 7, 2, 16], 16 << 10, 4096, 8192, 1024, 4096),
]

INVALID_PLANS = [
    # name, groups, req, resp, align, error
    ("no_groups", [], 4096, 4096, 4096, "group_count"),
    ("33_groups", [1] * 33, 4096, 4096, 4096, "group_count"),
    ("empty_group", [2, 0, 1], 4096, 4096, 4096, "group_channels"),
    ("257_channels", [200, 57], 4096, 4096, 4096, "channel_count"),
    ("align_2048", [1], 4096, 4096, 2048, "segment_align"),
    ("align_not_power_of_two", [1], 4096, 4096, 12288, "segment_align"),
    ("align_zero", [1], 4096, 4096, 0, "segment_align"),
    ("req_ring_2048", [1], 2048, 4096, 4096, "req_ring_size"),
    ("req_ring_over_1g", [1], 1 << 31, 4096, 4096, "req_ring_size"),
    ("resp_ring_not_power_of_two", [1], 4096, 5000, 4096, "resp_ring_size"),
]


def put(buf: bytes, off: int, fmt: str, value) -> bytes:
    b = bytearray(buf)
    struct.pack_into("<" + fmt, b, off, value)
    return bytes(b)


def entry(k: int, field: str) -> int:
    return TABLE + ENTRY * k + {"offset": 0, "size": 8, "span": 16, "kind": 24, "group": 26,
                                "first_channel": 28, "channel_count": 30}[field]


def entry_fmt(field: str) -> str:
    return {"offset": "Q", "size": "Q", "span": "Q", "kind": "B"}.get(field, "H")


def invalid_headers(base: bytes, segs) -> list[dict]:
    """Each case: one defect in the header of plan "two_groups" (groups 4, 2)."""
    h = base
    cases = [
        ("all_zero_magic", put(h, 0, "8s", b"\0" * 8), "not_formatted"),
        ("layout_v2_magic", put(h, 0, "8s", V2_MAGIC), "magic"),
        ("foreign_magic", put(h, 0, "8s", b"GARBAGE!"), "magic"),
        ("layout_4", put(h, 8, "I", 4), "version"),
        ("layout_6", put(h, 8, "I", 6), "version"),
        ("header_size_8192", put(h, 12, "I", 8192), "header_size"),
        ("no_channels", put(h, 20, "I", 0), "channel_count"),
        ("channel_count_not_the_groups_sum", put(h, 20, "I", 7), "channel_count"),
        ("no_groups", put(h, 32, "I", 0), "group_count"),
        ("33_groups", put(h, 32, "I", 33), "group_count"),
        ("segment_count_not_1_plus_2g", put(h, 36, "I", 4), "segment_count"),
        ("segment_align_not_power_of_two", put(h, 40, "I", 6144), "segment_align"),
        ("segment_align_2048", put(h, 40, "I", 2048), "segment_align"),
        ("segment_align_other_than_the_spans", put(h, 40, "I", 8192), "span"),
        ("req_ring_not_power_of_two", put(h, 64, "I", 5000), "req_ring_size"),
        ("client_section_size", put(h, 48, "Q", PAGE + 4096 + 8), "client_section_size"),
        ("max_msg_larger_than_a_ring", put(h, 72, "I", 8192), "max_msg_size"),
        ("heartbeat_zero", put(h, 80, "I", 0), "heartbeat_interval_ms"),
        ("header_entry_kind_client", put(h, entry(0, "kind"), "B", CLIENT), "kind"),
        ("header_entry_group_0", put(h, entry(0, "group"), "H", 0), "group"),
        ("client_0_entry_kind_server", put(h, entry(1, "kind"), "B", SERVER), "kind"),
        ("server_0_entry_kind_client", put(h, entry(2, "kind"), "B", CLIENT), "kind"),
        ("client_1_entry_group_0", put(h, entry(3, "group"), "H", 0), "group"),
        ("server_1_entry_group_2", put(h, entry(4, "group"), "H", 2), "group"),
        ("client_0_no_channels", put(h, entry(1, "channel_count"), "H", 0), "channel_count"),
        ("server_0_disagrees_with_client_0", put(h, entry(2, "channel_count"), "H", 3),
         "channel_count"),
        ("client_1_gap_before_it", put(put(h, entry(3, "first_channel"), "H", 5),
                                       entry(4, "first_channel"), "H", 5), "first_channel"),
        ("client_0_not_from_channel_0", put(put(h, entry(1, "first_channel"), "H", 1),
                                            entry(2, "first_channel"), "H", 1),
         "first_channel"),
        ("client_0_size", put(h, entry(1, "size"), "Q", segs[1]["size"] + 4096), "size"),
        ("server_1_span", put(h, entry(4, "span"), "Q", segs[4]["span"] * 2), "span"),
        ("header_span_8192", put(h, entry(0, "span"), "Q", 8192), "span"),
        ("server_1_offset", put(h, entry(4, "offset"), "Q", segs[4]["offset"] + 4096),
         "offset"),
        ("region_size_one_page_more", put(h, 24, "Q", struct.unpack_from("<Q", h, 24)[0] + 4096),
         "region_size"),
        ("geometry_cut_short", h[:80], "truncated"),
        ("segment_table_cut_short", h[: TABLE + ENTRY * 4], "truncated"),
    ]
    return [{"name": n, "plan": "two_groups", "hex": b.hex(), "error": e} for n, b, e in cases]


def build() -> dict:
    plans = []
    base = None
    for name, groups, req, resp, align, max_value, max_msg in PLANS:
        p = {"name": name, "groups": groups, "req_ring_size": req, "resp_ring_size": resp,
             "segment_align": align, "max_value_size": max_value, "max_msg_size": max_msg,
             "heartbeat_interval_ms": 100, "client_lease_ms": 2000}
        region_size, segs = plan(groups, req, resp, align)
        channels = []
        for g in range(len(groups)):
            cseg, sseg = segs[1 + 2 * g], segs[2 + 2 * g]
            for i in range(groups[g]):
                channels.append([g, cseg["offset"] + i * (PAGE + req),
                                 sseg["offset"] + i * (PAGE + resp)])
        raw = header_bytes(p, segs, region_size)
        p.update(region_size=region_size, segments=segs, channels=channels,
                 header_hex=raw.hex())
        if name == "two_groups":
            base = (raw, segs)
        plans.append(p)
    invalid_plans = [{"name": n, "groups": g, "req_ring_size": rq, "resp_ring_size": rs,
                      "segment_align": a, "error": e} for n, g, rq, rs, a, e in INVALID_PLANS]
    return {
        "_format": FORMAT.splitlines(),
        "plans": plans,
        "invalid_plans": invalid_plans,
        "invalid_headers": invalid_headers(*base),
    }


def render() -> str:
    return json.dumps(build(), indent=1) + "\n"


if __name__ == "__main__":
    if "--check" in sys.argv:
        sys.exit(0 if OUT.read_text() == render() else 1)
    OUT.write_text(render())
    print(f"wrote {OUT}")
