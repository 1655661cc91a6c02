"""The attacker's own layout 5 reader and the markers/canaries the outcomes are measured with."""

from __future__ import annotations

import pytest
from attackutil import header_bytes

from attack import layout as L
from attack.markers import Markers, canary, score


def test_plan_follows_the_protocol_rules():
    segs = L.plan([8], 2 << 20, 2 << 20)
    assert [s.name for s in segs] == ["header", "client-0", "server-0"]
    # docs/ring-protocol.md 2: 8 client sections use 16.03 MiB and span 32 MiB.
    assert segs[1].size == 8 * (4096 + (2 << 20)) and segs[1].span == 32 << 20
    assert segs[-1].offset + segs[-1].span == (64 << 20) + 4096
    two = L.plan([4, 2], 4096, 4096, 1 << 21)
    assert [(s.name, s.first_channel, s.channel_count) for s in two] == [
        ("header", 0, 0),
        ("client-0", 0, 4),
        ("server-0", 0, 4),
        ("client-1", 4, 2),
        ("server-1", 4, 2),
    ]
    assert all(s.span == 1 << 21 for s in two) and two[3].offset == 3 << 21


def test_plan_agrees_with_the_client_library():
    protocol = pytest.importorskip("cxl_ring.protocol")
    if not hasattr(protocol, "plan_layout"):
        pytest.skip("cxl_ring.protocol has no plan_layout yet (layout 5 port not landed)")
    import inspect

    params = list(inspect.signature(protocol.plan_layout).parameters)
    for groups, ring, align in (([8], 2 << 20, 4096), ([4, 2, 1], 65536, 1 << 21)):
        kw = {"segment_align": align} if "segment_align" in params else {}
        theirs = protocol.plan_layout(groups, ring, ring, **kw)
        segs = getattr(theirs, "segments", theirs)
        ours = L.plan(groups, ring, ring, align)
        got = [
            (getattr(s, "offset", None), getattr(s, "size", None), getattr(s, "span", None))
            for s in segs
        ]
        assert got == [(s.offset, s.size, s.span) for s in ours]


def test_parse_header_roundtrip_and_refusals():
    h = L.parse_header(header_bytes([2, 3]))
    assert h.channel_count == 5 and h.group_count == 2
    assert h.client_section(3) == ("client-1", 1 * h.client_section_size)
    assert h.server_section(1) == ("server-0", 1 * h.server_section_size)
    assert list(h.channels_of(1)) == [2, 3, 4]
    with pytest.raises(L.LayoutError, match="not formatted"):
        L.parse_header(bytes(4096))
    bad = bytearray(header_bytes([2, 3]))
    bad[L.SEGMENT_TABLE_OFFSET + 32 + 8] ^= 0x10  # client-0's size
    with pytest.raises(L.LayoutError, match="layout mismatch"):
        L.parse_header(bytes(bad))
    v4 = bytearray(header_bytes([2]))
    v4[8] = 4
    with pytest.raises(L.LayoutError, match="not a layout 5"):
        L.parse_header(bytes(v4))


def test_markers_are_distinct_per_mode_and_never_small():
    off, sec = Markers("n1", "off"), Markers("n1", "secdsm")
    values = [m.value for m in off.all()] + [m.value for m in sec.all()]
    assert len(set(values)) == len(values)
    # Binary markers (tokens, epoch, heartbeat, state) have high bits: no counter reaches them.
    binary = [v for v in values if not v[:1].isalpha()]
    assert len(binary) == 10 and all(v[0] & 0x80 and v[-1] & 0x80 for v in binary)
    assert (
        Markers("n1", "off").inject_key() == off.inject_key() != Markers("n2", "off").inject_key()
    )
    assert {m.attack for m in off.all()} == {"inject", "forge", "header", "claim", "own-server"}


def test_score_counts_only_true_canaries():
    seed = "secret"
    k3, v3 = canary(seed, 3)
    k5, v5 = canary(seed, 5, 100)
    assert len(v3) == 64 and v3.startswith(b"cv:3:") and len(canary(seed, 5, 100)[1]) == 100
    fake_k, fake_v = canary("guess", 4)
    loot = b"\0".join([b"x" * 10, k3, v3, v3, fake_k, fake_v, k5[:-2], b"cv:9:" + v3[5:]])
    assert score(loot, seed, 10) == {"keys": 1, "values": 1, "bytes": len(k3) + len(v3)}
    # Canaries the honest client never sent (i >= count) are not counted.
    assert score(loot, seed, 3)["bytes"] == 0
    assert score(b"", seed, 10)["bytes"] == 0
