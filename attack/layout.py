"""Layout 5 as the attacker reads it: the header, the segment table, the fields it targets.

Self-contained on purpose (like tests/ring/rawpeer.py): the attacker writes bytes a
well-behaved client library refuses to write, and must keep working while that library
changes. docs/ring-protocol.md section 2 is the reference; `plan()` is checked against
`cxl_ring.protocol.plan_layout` by tests/attack when the library has it.

    segment 0        header      the header section                    server writes
    segment 1 + 2g   client-g    client sections of group g's channels  group g's client writes
    segment 2 + 2g   server-g    server sections of group g's channels  server writes
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"CXLDSMR\0"
VERSION = 5
HEADER_SIZE = 4096
CONTROL_SIZE = 4096

# Header geometry, offsets 0..87 (docs/ring-protocol.md 2.1).
GEOMETRY = struct.Struct("<8sIIIIQIIIIQQIIIIII")
SEGMENT_TABLE_OFFSET = 256
SEGMENT_ENTRY = struct.Struct("<QQQBBHHH")
KIND_HEADER, KIND_CLIENT, KIND_SERVER = 1, 2, 3
KIND_NAMES = {KIND_HEADER: "header", KIND_CLIENT: "client", KIND_SERVER: "server"}

# Header liveness line.
OFF_SERVER_EPOCH, OFF_SERVER_HEARTBEAT, OFF_SERVER_STATE = 128, 136, 144
# Client section control page.
OFF_CLAIM_TOKEN, OFF_CLIENT_HEARTBEAT, OFF_CLIENT_PID, OFF_REQ_HEAD, OFF_RESP_TAIL = (
    0,
    8,
    16,
    64,
    128,
)
# Server section control page.
OFF_ACK_TOKEN, OFF_DEAD_TOKEN, OFF_CHAN_STATE, OFF_LAST_ERROR, OFF_SESSION_GEN = 0, 8, 16, 20, 24
OFF_REQ_TAIL, OFF_RESP_HEAD = 64, 128

MSG_HEADER = struct.Struct("<IBBHQ")  # len, op/status, flags, argc, id
OP_GET, OP_SET, OP_DEL, OP_CMD, OP_PING = 1, 2, 3, 4, 5
ST_OK = 0


class LayoutError(Exception):
    """The bytes are not a layout 5 header the suite can trust."""


@dataclass(frozen=True)
class Segment:
    index: int
    name: str
    kind: int
    group: int | None
    first_channel: int
    channel_count: int
    offset: int
    size: int
    span: int


@dataclass(frozen=True)
class Header:
    channel_count: int
    region_size: int
    group_count: int
    segment_align: int
    client_section_size: int
    server_section_size: int
    req_ring_size: int
    resp_ring_size: int
    max_msg_size: int
    max_value_size: int
    heartbeat_interval_ms: int
    client_lease_ms: int
    segments: tuple[Segment, ...]

    def segment(self, name: str) -> Segment:
        for s in self.segments:
            if s.name == name:
                return s
        raise KeyError(name)

    def group_of(self, channel: int) -> int:
        for s in self.segments:
            if (
                s.kind == KIND_CLIENT
                and s.first_channel <= channel < s.first_channel + s.channel_count
            ):
                return s.group
        raise KeyError(channel)

    def client_section(self, channel: int) -> tuple[str, int]:
        """(segment name, offset in that segment) of channel's client section."""
        g = self.group_of(channel)
        seg = self.segment(f"client-{g}")
        return seg.name, (channel - seg.first_channel) * self.client_section_size

    def server_section(self, channel: int) -> tuple[str, int]:
        g = self.group_of(channel)
        seg = self.segment(f"server-{g}")
        return seg.name, (channel - seg.first_channel) * self.server_section_size

    def channels_of(self, group: int) -> range:
        seg = self.segment(f"client-{group}")
        return range(seg.first_channel, seg.first_channel + seg.channel_count)


def _span(size: int, align: int) -> int:
    p = 1
    while p < size:
        p <<= 1
    return max(p, align)


def plan(
    groups: list[int], req_ring: int, resp_ring: int, segment_align: int = 4096
) -> list[Segment]:
    """The segments of a layout with these channel groups (docs/ring-protocol.md 2)."""
    client_section = CONTROL_SIZE + req_ring
    server_section = CONTROL_SIZE + resp_ring
    out = [
        Segment(
            0, "header", KIND_HEADER, None, 0, 0, 0, HEADER_SIZE, _span(HEADER_SIZE, segment_align)
        )
    ]
    offset = out[0].span
    first = 0
    for g, count in enumerate(groups):
        for kind, section in ((KIND_CLIENT, client_section), (KIND_SERVER, server_section)):
            size = count * section
            seg = Segment(
                len(out),
                f"{KIND_NAMES[kind]}-{g}",
                kind,
                g,
                first,
                count,
                offset,
                size,
                _span(size, segment_align),
            )
            out.append(seg)
            offset += seg.span
        first += count
    return out


def parse_header(buf: bytes) -> Header:
    """Validate a private copy of the header section (at least 256 + 32 * segments bytes)."""
    if len(buf) < SEGMENT_TABLE_OFFSET:
        raise LayoutError(f"header of {len(buf)} bytes is truncated")
    f = GEOMETRY.unpack_from(buf, 0)
    (
        magic,
        version,
        header_size,
        _flags,
        channels,
        region_size,
        group_count,
        segment_count,
        align,
        _reserved,
        client_section,
        server_section,
        req_ring,
        resp_ring,
        max_msg,
        max_value,
        hb_ms,
        lease_ms,
    ) = f
    if magic == b"\0" * 8:
        raise LayoutError("the region is not formatted (all zeros): is its server up?")
    if magic != MAGIC or version != VERSION:
        raise LayoutError(f"not a layout 5 region (magic {magic!r}, version {version})")
    if (
        header_size != HEADER_SIZE
        or not 1 <= group_count <= 32
        or segment_count != 1 + 2 * group_count
    ):
        raise LayoutError(
            f"bad geometry: header_size {header_size}, groups {group_count}, "
            f"segments {segment_count}"
        )
    end = SEGMENT_TABLE_OFFSET + SEGMENT_ENTRY.size * segment_count
    if len(buf) < end:
        raise LayoutError("segment table truncated")
    groups = []
    table = []
    for k in range(segment_count):
        off, size, span, kind, _r, group, first, count = SEGMENT_ENTRY.unpack_from(
            buf, SEGMENT_TABLE_OFFSET + k * SEGMENT_ENTRY.size
        )
        if k == 0:
            name, g = "header", None
        else:
            g = (k - 1) // 2
            name = f"{KIND_NAMES.get(kind, '?')}-{g}"
            if kind == KIND_CLIENT:
                groups.append(count)
        table.append(Segment(k, name, kind, g, first, count, off, size, span))
    expected = plan(groups, req_ring, resp_ring, align)
    if tuple(expected) != tuple(table) or sum(groups) != channels:
        raise LayoutError("the segment table disagrees with the layout rules (layout mismatch)")
    if region_size != expected[-1].offset + expected[-1].span:
        raise LayoutError(f"region_size {region_size} is not the end of the last segment")
    if client_section != CONTROL_SIZE + req_ring or server_section != CONTROL_SIZE + resp_ring:
        raise LayoutError("section sizes disagree with the ring sizes")
    return Header(
        channels,
        region_size,
        group_count,
        align,
        client_section,
        server_section,
        req_ring,
        resp_ring,
        max_msg,
        max_value,
        hb_ms,
        lease_ms,
        tuple(table),
    )


def align8(n: int) -> int:
    return (n + 7) & ~7


def encode_request(op: int, args: list[bytes], req_id: int, argc: int | None = None) -> bytes:
    """A framed request padded to 8 bytes; argc may lie (hostile traffic)."""
    body = b"".join(struct.pack("<I", len(a)) + a for a in args)
    n = MSG_HEADER.size + len(body)
    msg = MSG_HEADER.pack(n, op, 0, len(args) if argc is None else argc, req_id) + body
    return msg + b"\0" * (align8(n) - n)


def encode_response(status: int, req_id: int, payload: bytes = b"") -> bytes:
    n = MSG_HEADER.size + len(payload)
    msg = MSG_HEADER.pack(n, status, 0, 0, req_id) + payload
    return msg + b"\0" * (align8(n) - n)
