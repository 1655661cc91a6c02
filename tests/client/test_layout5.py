"""Layout 5 in Python: plan_layout() and the header/segment table reader against the shared
vectors (tests/vectors/layout5.json, which the C side is checked against too)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from clientutil import VECTORS_DIR
from cxl_ring import protocol as P
from cxl_ring.exceptions import LayoutMismatchError, NotFormattedError

LAYOUT = json.loads((VECTORS_DIR / "layout5.json").read_text())
PLANS = {p["name"]: p for p in LAYOUT["plans"]}


def test_layout_vectors_file_is_current():
    r = subprocess.run([sys.executable, str(VECTORS_DIR / "generate_layout5.py"), "--check"])
    assert r.returncode == 0, "tests/vectors/layout5.json is stale: run generate_layout5.py"


@pytest.mark.parametrize("case", LAYOUT["plans"], ids=lambda c: c["name"])
def test_plan_layout(case):
    plan = P.plan_layout(case["groups"], case["req_ring_size"], case["resp_ring_size"],
                         case["segment_align"])
    assert plan.region_size == case["region_size"]
    got = [{"name": s.name, **s._asdict()} for s in plan.segments]
    assert got == case["segments"]


@pytest.mark.parametrize("case", LAYOUT["plans"], ids=lambda c: c["name"])
def test_header_decodes_to_the_plan(case):
    raw = bytes.fromhex(case["header_hex"])
    h = P.parse_header(raw + bytes(P.HEADER_SIZE - len(raw)))
    assert (h.version, h.header_size, h.feature_flags) == (5, 4096, 0)
    assert h.groups == tuple(case["groups"]) and h.channel_count == sum(case["groups"])
    assert h.region_size == case["region_size"] and h.segment_align == case["segment_align"]
    for field in ("req_ring_size", "resp_ring_size", "max_value_size", "max_msg_size",
                  "heartbeat_interval_ms", "client_lease_ms"):
        assert getattr(h, field) == case[field], field
    assert [{"name": s.name, **s._asdict()} for s in h.segments] == case["segments"]
    assert [[h.group_of(c), h.client_section(c), h.server_section(c)]
            for c in range(h.channel_count)] == case["channels"]
    # The table alone is enough: parse_header needs no more than the table's end.
    assert P.parse_header(raw).segments == h.segments
    assert P.header_bytes_needed(raw) == len(raw)


@pytest.mark.parametrize("case", LAYOUT["plans"], ids=lambda c: c["name"])
def test_format_header_matches_the_vectors(case):
    raw = P.format_header(req_ring_size=case["req_ring_size"],
                          resp_ring_size=case["resp_ring_size"],
                          max_value_size=case["max_value_size"],
                          max_msg_size=case["max_msg_size"],
                          heartbeat_interval_ms=case["heartbeat_interval_ms"],
                          client_lease_ms=case["client_lease_ms"], groups=case["groups"],
                          segment_align=case["segment_align"])
    assert raw.hex() == case["header_hex"]


@pytest.mark.parametrize("case", LAYOUT["invalid_plans"], ids=lambda c: c["name"])
def test_plan_layout_refuses(case):
    with pytest.raises(ValueError) as e:
        P.plan_layout(case["groups"], case["req_ring_size"], case["resp_ring_size"],
                      case["segment_align"])
    words = {"group_count": "channel groups", "group_channels": "has 0 channels",
             "channel_count": "channels in all"}
    assert words.get(case["error"], case["error"]) in str(e.value)


@pytest.mark.parametrize("case", LAYOUT["invalid_headers"], ids=lambda c: c["name"])
def test_header_refused(case):
    raw = bytes.fromhex(case["hex"])
    if case["error"] == "not_formatted":
        with pytest.raises(NotFormattedError, match="not formatted"):
            P.parse_header(raw)
        return
    with pytest.raises(LayoutMismatchError) as e:
        P.parse_header(raw)
    assert case["error"] in str(e.value), str(e.value)


def test_every_header_check_has_a_vector():
    """Each kind of error the vectors name is one the reader reports (and the other way)."""
    names = {c["error"] for c in LAYOUT["invalid_headers"]}
    assert {"version", "segment_count", "kind", "group", "first_channel", "channel_count",
            "size", "span", "offset", "region_size", "truncated", "magic",
            "not_formatted"} <= names


def test_default_layout_is_the_documented_one():
    """docs/ring-protocol.md 2.1: with the defaults a region spans 64 MiB + 4 KiB."""
    h = P.parse_header(P.format_header())
    assert h.channel_count == 8 and h.groups == (8,) and h.req_ring_size == 2 << 20
    assert h.region_size == (64 << 20) + 4096
    assert h.client_segment(0).size == 8 * (4096 + (2 << 20))
    assert h.client_segment(0).span == 32 << 20
    assert h.server_section(0) == h.server_segment(0).offset == 4096 + (32 << 20)
    assert h.segment("server-0") is h.segments[2]
    assert h.server_dead_after == 1.0


def test_header_larger_than_mapping():
    with pytest.raises(LayoutMismatchError, match="larger than the mapped size"):
        P.parse_header(P.format_header(), mapped_size=1 << 20)
