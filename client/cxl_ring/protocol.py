"""The cxl_ring wire format, layout version 5 (docs/ring-protocol.md), without any I/O.

Constants, ``struct.Struct`` objects named after what they encode, the layout rule
(``plan_layout``, the twin of ``cxl_layout_plan()`` in ring/include/cxl_ring/layout.h), the
region header and segment table parser/validator and the message encoders/decoders. The client,
the proxy, the CLI, the tests and the shared test vectors (tests/vectors/messages.json,
tests/vectors/layout5.json) all use these. Where this module and docs/ring-protocol.md
disagree, the document wins.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .exceptions import LayoutMismatchError, NotFormattedError, ProtocolError

# ---- Region ----------------------------------------------------------------------------------
#
# Layout 5 groups the bytes by writer into segments (section 2), each its own file or device:
#
# segment 0     header     4096 bytes                               written by the server
# segment 1+2g  client-g   channel_count(g) x client section        written by group g's client
# segment 2+2g  server-g   channel_count(g) x server section        written by the server
#
# span(k) = max(segment_align, next power of two >= size(k)); offset(0) = 0,
# offset(k+1) = offset(k) + span(k); region_size = the end of the last span.
#
# Header section (all little-endian):
#    0  8  magic "CXLDSMR\0"          48  8  client_section_size     128  8  server_epoch
#    8  4  version (5)                56  8  server_section_size     136  8  server_heartbeat
#   12  4  header_size (4096)         64  4  req_ring_size           144  4  server_state
#   16  4  feature_flags              68  4  resp_ring_size          148  4  server_pid
#                                                                    152  4  server_sleeping
#                                                                    156  4  notify_kind
#                                                                    160  4  doorbell_peer
#                                                                    164  4  doorbell_vector
#   20  4  channel_count              72  4  max_msg_size            256  segment table,
#   24  8  region_size                76  4  max_value_size               32 bytes an entry:
#   32  4  group_count                80  4  heartbeat_interval_ms
#   36  4  segment_count (1 + 2G)     84  4  client_lease_ms
#   40  4  segment_align              88  4  access_delay_ns (2.4)
#                                     92..127 reserved
#   44  4  reserved
#
# Segment table entry:  0 8 offset | 8 8 size | 16 8 span | 24 1 kind (1 header, 2 client,
#                       3 server) | 25 1 reserved | 26 2 group (0xffff: header) |
#                       28 2 first_channel | 30 2 channel_count
#
# Client section (the channel's owner writes):   Server section (the server writes):
#    0  8  claim_token                             0  8  ack_token
#    8  8  client_heartbeat                        8  8  dead_token
#   16  4  client_pid                             16  4  chan_state
#   20  4  resp_sleeping                          20  4  last_error
#   24  4  req_wake (in a group's first channel)  24  4  session_gen (ids' high half)
#   64  8  req_head   (request producer)          28  4  resp_wake
#  128  8  resp_tail  (response consumer)         64  8  req_tail   (request consumer)
# 4096     request ring data                     128  8  resp_head  (response producer)
#                                               4096     response ring data

MAGIC = b"CXLDSMR\0"
LAYOUT_VERSION = 5
PAGE_SIZE = 4096
HEADER_SIZE = 4096
CONTROL_SIZE = 4096
MAX_CHANNELS = 256
MAX_GROUPS = 32
MAX_SEGMENTS = 1 + 2 * MAX_GROUPS
MIN_RING_SIZE = 4096
MAX_RING_SIZE = 1 << 30
SERVER_DEAD_BEATS = 10
SERVER_DEAD_MIN_MS = 1000
U64_MASK = (1 << 64) - 1

# Header geometry, offsets 0..87: written once while formatting, before magic.
REGION_GEOMETRY = struct.Struct("<8sIIIIQIIIIQQIIIIII")
# Header liveness line, offsets 128..151.
SERVER_LIVENESS = struct.Struct("<QQII")
SERVER_LIVENESS_OFFSET = 128
# The segment table: one entry per segment from offset 256, in segment order.
SEGMENT_TABLE_OFFSET = 256
SEGMENT_ENTRY = struct.Struct("<QQQBBHHH")
GROUP_NONE = 0xFFFF            # the group field of the header segment
SEG_HEADER, SEG_CLIENT, SEG_SERVER = 1, 2, 3
SEGMENT_KIND_NAMES = {SEG_HEADER: "header", SEG_CLIENT: "client", SEG_SERVER: "server"}
DEFAULT_SEGMENT_ALIGN = 4096

# Header field offsets (for single aligned loads).
OFF_MAGIC = 0
OFF_ACCESS_DELAY = 88  # section 2.4: written by the server at each start, before its epoch
OFF_SERVER_EPOCH = 128
OFF_SERVER_HEARTBEAT = 136
OFF_SERVER_STATE = 144
OFF_SERVER_PID = 148
OFF_SERVER_SLEEPING = 152  # section 8: the server may be blocked (N1)
OFF_NOTIFY_KIND = 156  # NOTIFY_*: how a client wakes it
OFF_DOORBELL_PEER = 160
OFF_DOORBELL_VECTOR = 164
NOTIFY_NONE, NOTIFY_FUTEX, NOTIFY_DOORBELL = 0, 1, 2

# Client section control page.
OFF_CLAIM_TOKEN = 0
OFF_CLIENT_HEARTBEAT = 8
OFF_CLIENT_PID = 16
OFF_RESP_SLEEPING = 20  # section 8: the client may be blocked on resp_wake (N3)
OFF_REQ_WAKE = 24  # section 8: the group's wake word (in its first channel's section only)
OFF_RESP_DOORBELL = 32  # section 8: RESP_DOORBELL_SET | peer << 16 | vector, the server's N4 ring
RESP_DOORBELL_SET = 1 << 32
OFF_REQ_HEAD = 64
OFF_RESP_TAIL = 128
# Server section control page.
OFF_ACK_TOKEN = 0
OFF_DEAD_TOKEN = 8
OFF_CHAN_STATE = 16
OFF_LAST_ERROR = 20
OFF_SESSION_GEN = 24
OFF_RESP_WAKE = 28  # section 8: bumped before the server wakes the channel's client (N4)
OFF_REQ_TAIL = 64
OFF_RESP_HEAD = 128
# Server control page fields 0..23 in one copy (ack_token, dead_token, chan_state, last_error).
SERVER_CHANNEL_STATE = struct.Struct("<QQII")
# Client control page fields 0..19 (claim_token, client_heartbeat, client_pid).
CLIENT_CHANNEL_STATE = struct.Struct("<QQI")

SERVER_STOPPED, SERVER_STARTING, SERVER_RUNNING, SERVER_STOPPING = 0, 1, 2, 3
SERVER_STATE_NAMES = {0: "STOPPED", 1: "STARTING", 2: "RUNNING", 3: "STOPPING"}
CHAN_FREE, CHAN_ACTIVE, CHAN_QUARANTINED = 0, 1, 2
CHAN_STATE_NAMES = {0: "FREE", 1: "ACTIVE", 2: "QUARANTINED"}

DEFAULT_CHANNELS = 8
DEFAULT_RING_SIZE = 2 << 20
DEFAULT_MAX_VALUE = 1 << 20
MSG_SLACK = 64 << 10
DEFAULT_HEARTBEAT_MS = 100
DEFAULT_CLIENT_LEASE_MS = 2000


# Section 2.4: the lab's far-memory model, at most 1 ms per ring read.
MAX_ACCESS_DELAY_NS = 1_000_000


def header_access_delay(u32: Sequence[int]) -> int:
    """The delay this run's server published (``u32``: the region's 32-bit words), clamped:
    in a region of security off any peer may write the header."""
    return min(u32[OFF_ACCESS_DELAY // 4], MAX_ACCESS_DELAY_NS)


def access_delay(ns: int) -> None:
    """Spin ``ns`` nanoseconds before reading a new batch from a ring (section 2.4), as a
    load from far memory stalls the CPU that issues it."""
    until = time.perf_counter_ns() + ns
    while time.perf_counter_ns() < until:
        pass


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def align8(n: int) -> int:
    return (n + 7) & ~7


def pow2_ceil(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(n - 1, 0).bit_length()


class Segment(NamedTuple):
    """One segment as the layout places it (a plan entry, or a validated table entry)."""

    offset: int
    size: int
    span: int
    kind: int           # SEG_HEADER, SEG_CLIENT or SEG_SERVER
    group: int          # GROUP_NONE for the header
    first_channel: int
    channel_count: int

    @property
    def name(self) -> str:
        """The segment's file name in a region directory: header, client-<g>, server-<g>."""
        if self.kind == SEG_HEADER:
            return "header"
        return f"{SEGMENT_KIND_NAMES.get(self.kind, self.kind)}-{self.group}"

    @property
    def end(self) -> int:
        """The end of the bytes the layout uses (offset + size)."""
        return self.offset + self.size


def segment_name(index: int) -> str:
    """The name of segment ``index``: 0 header, 1 + 2g client-g, 2 + 2g server-g."""
    if index == 0:
        return "header"
    return f"{'client' if index % 2 else 'server'}-{(index - 1) // 2}"


class LayoutPlan(NamedTuple):
    """Where every segment of a region lies: ``plan_layout``'s answer."""

    region_size: int
    segments: tuple[Segment, ...]


def plan_layout(groups: Sequence[int], req_ring_size: int = DEFAULT_RING_SIZE,
                resp_ring_size: int = DEFAULT_RING_SIZE,
                segment_align: int = DEFAULT_SEGMENT_ALIGN) -> LayoutPlan:
    """Place the segments of a region: ``groups[g]`` channels in group g (section 2).

    The twin of ``cxl_layout_plan()`` in ring/include/cxl_ring/layout.h: the same rule, the
    same answers (tests/vectors/layout5.json). Raises ValueError, naming the input, where the
    C function returns 0: 1..32 groups, every group >= 1 channel, at most 256 channels in all,
    ring sizes powers of two in 4096..2^30, ``segment_align`` a power of two >= 4096.
    """
    groups = list(groups)
    if not 1 <= len(groups) <= MAX_GROUPS:
        raise ValueError(f"{len(groups)} channel groups: a region has 1..{MAX_GROUPS}")
    if not is_power_of_two(segment_align) or segment_align < PAGE_SIZE:
        raise ValueError(f"segment_align {segment_align} is not a power of two >= {PAGE_SIZE}")
    for name, size in (("req_ring_size", req_ring_size), ("resp_ring_size", resp_ring_size)):
        if not is_power_of_two(size) or not MIN_RING_SIZE <= size <= MAX_RING_SIZE:
            raise ValueError(f"{name} {size} is not a power of two in {MIN_RING_SIZE}..2^30")
    for g, n in enumerate(groups):
        if n < 1:
            raise ValueError(f"channel group {g} has {n} channels: every group has at least 1")
    if sum(groups) > MAX_CHANNELS:
        raise ValueError(f"{sum(groups)} channels in all: a region has at most {MAX_CHANNELS}")
    segments = []
    offset = 0
    first = 0

    def place(size: int, kind: int, group: int, first_channel: int, count: int) -> None:
        nonlocal offset
        span = max(pow2_ceil(size), segment_align)
        segments.append(Segment(offset, size, span, kind, group, first_channel, count))
        offset += span

    place(HEADER_SIZE, SEG_HEADER, GROUP_NONE, 0, 0)
    for g, n in enumerate(groups):
        place(n * (CONTROL_SIZE + req_ring_size), SEG_CLIENT, g, first, n)
        place(n * (CONTROL_SIZE + resp_ring_size), SEG_SERVER, g, first, n)
        first += n
    return LayoutPlan(offset, tuple(segments))


@dataclass(frozen=True)
class RegionHeader:
    """A validated private copy of the header geometry (offsets 0..87) and segment table."""

    version: int
    header_size: int
    feature_flags: int
    channel_count: int
    region_size: int
    group_count: int
    segment_count: int
    segment_align: int
    client_section_size: int
    server_section_size: int
    req_ring_size: int
    resp_ring_size: int
    max_msg_size: int
    max_value_size: int
    heartbeat_interval_ms: int
    client_lease_ms: int
    segments: tuple[Segment, ...] = ()

    def __post_init__(self) -> None:
        group_of = []
        for g in range(self.group_count):
            group_of += [g] * self.segments[1 + 2 * g].channel_count
        object.__setattr__(self, "_group_of", tuple(group_of))

    @property
    def groups(self) -> tuple[int, ...]:
        """Channels per group, in group order."""
        return tuple(self.segments[1 + 2 * g].channel_count for g in range(self.group_count))

    def group_of(self, channel: int) -> int:
        """The channel group that owns channel ``channel``."""
        return self._group_of[channel]  # type: ignore[attr-defined]

    def client_segment(self, group: int) -> Segment:
        return self.segments[1 + 2 * group]

    def server_segment(self, group: int) -> Segment:
        return self.segments[2 + 2 * group]

    def segment(self, name: str) -> Segment:
        """The segment called ``name`` (header, client-<g>, server-<g>); KeyError if none."""
        for seg in self.segments:
            if seg.name == name:
                return seg
        raise KeyError(name)

    def client_section(self, channel: int) -> int:
        """Byte offset of channel ``channel``'s client section in the region."""
        seg = self.segments[1 + 2 * self._group_of[channel]]  # type: ignore[attr-defined]
        return seg.offset + (channel - seg.first_channel) * self.client_section_size

    def server_section(self, channel: int) -> int:
        """Byte offset of channel ``channel``'s server section in the region."""
        seg = self.segments[2 + 2 * self._group_of[channel]]  # type: ignore[attr-defined]
        return seg.offset + (channel - seg.first_channel) * self.server_section_size

    def geometry(self) -> tuple:
        """Everything the formatting server wrote, to compare two copies of one header."""
        return tuple(getattr(self, f) for f in self.__dataclass_fields__)

    @property
    def server_dead_after(self) -> float:
        """Seconds of a motionless server heartbeat after which the server counts as gone."""
        return max(SERVER_DEAD_BEATS * self.heartbeat_interval_ms, SERVER_DEAD_MIN_MS) / 1000.0


def header_bytes_needed(buf: bytes | memoryview) -> int:
    """How many bytes of the header ``parse_header`` reads: the geometry and the whole table
    (at least the geometry when segment_count is out of range, so that it can say so)."""
    if len(buf) < REGION_GEOMETRY.size:
        return REGION_GEOMETRY.size
    (count,) = struct.unpack_from("<I", buf, 36)
    return SEGMENT_TABLE_OFFSET + SEGMENT_ENTRY.size * min(count, MAX_SEGMENTS)


def parse_header(buf: bytes | memoryview, mapped_size: int | None = None) -> RegionHeader:
    """Parse and validate the header geometry and segment table from a private copy.

    ``buf`` holds the header section from offset 0 (4096 bytes, or at least
    ``header_bytes_needed``). Every check of docs/ring-protocol.md 2.1 is made before any value
    is trusted; a foreign magic, another version or any inconsistent value raises
    LayoutMismatchError naming the field, an all-zero magic NotFormattedError.
    ``mapped_size``: the bytes mapped from one file (security off), which must hold the region.
    """
    if len(buf) < REGION_GEOMETRY.size:
        raise LayoutMismatchError(f"region header truncated: {len(buf)} bytes")
    f = REGION_GEOMETRY.unpack_from(buf, 0)
    magic, version = f[0], f[1]
    if magic == b"\0" * 8:
        raise NotFormattedError("region is not formatted (all zeros): no server has started on it")
    if magic == V2_MAGIC:
        raise LayoutMismatchError("region has layout v2 (PoC, magic CXLSHM1); use layout='v2'")
    if magic != MAGIC:
        raise LayoutMismatchError(f"not a cxl_ring region: magic {magic!r}, expected {MAGIC!r}")
    if version != LAYOUT_VERSION:
        raise LayoutMismatchError(
            f"version: the region has layout version {version}, this client speaks "
            f"{LAYOUT_VERSION}: run a driver and a client of the same layout")
    (_m, _v, header_size, feature_flags, channel_count, region_size, group_count,
     segment_count, segment_align, _reserved, client_section_size, server_section_size,
     req_ring_size, resp_ring_size, max_msg_size, max_value_size, heartbeat_interval_ms,
     client_lease_ms) = f
    problems = []
    if header_size != HEADER_SIZE:
        problems.append(f"header_size {header_size} != {HEADER_SIZE}")
    if not 1 <= channel_count <= MAX_CHANNELS:
        problems.append(f"channel_count {channel_count} not in 1..{MAX_CHANNELS}")
    if not 1 <= group_count <= MAX_GROUPS:
        problems.append(f"group_count {group_count} not in 1..{MAX_GROUPS}")
    elif segment_count != 1 + 2 * group_count:
        problems.append(f"segment_count {segment_count} != 1 + 2 x group_count {group_count}")
    if not is_power_of_two(segment_align) or segment_align < PAGE_SIZE:
        problems.append(f"segment_align {segment_align} is not a power of two >= {PAGE_SIZE}")
    for name, size in (("req_ring_size", req_ring_size), ("resp_ring_size", resp_ring_size)):
        if not is_power_of_two(size) or not MIN_RING_SIZE <= size <= MAX_RING_SIZE:
            problems.append(f"{name} {size} is not a power of two in 4096..2^30")
        elif size < max_msg_size:
            problems.append(f"{name} {size} < max_msg_size {max_msg_size}")
    if client_section_size != CONTROL_SIZE + req_ring_size:
        problems.append(f"client_section_size {client_section_size} != 4096 + req_ring_size")
    if server_section_size != CONTROL_SIZE + resp_ring_size:
        problems.append(f"server_section_size {server_section_size} != 4096 + resp_ring_size")
    if max_msg_size < MSG_HEADER.size:
        problems.append(f"max_msg_size {max_msg_size} < 16")
    if heartbeat_interval_ms == 0 or client_lease_ms == 0:
        problems.append("heartbeat_interval_ms and client_lease_ms must be > 0")
    if problems:
        raise LayoutMismatchError("corrupt region header: " + "; ".join(problems))
    table_end = SEGMENT_TABLE_OFFSET + SEGMENT_ENTRY.size * segment_count
    if len(buf) < table_end:
        raise LayoutMismatchError(f"region header truncated: {len(buf)} bytes, the segment "
                                  f"table ends at {table_end}")
    entries = [Segment(*_entry(buf, k)) for k in range(segment_count)]
    _check_table(entries, channel_count, region_size)
    # The table is consistent in itself; now it must be exactly what the layout rule gives.
    plan = plan_layout([entries[1 + 2 * g].channel_count for g in range(group_count)],
                       req_ring_size, resp_ring_size, segment_align)
    for k, (got, want) in enumerate(zip(entries, plan.segments)):
        for field in ("size", "span", "offset"):
            if getattr(got, field) != getattr(want, field):
                raise LayoutMismatchError(
                    f"segment {k} ({segment_name(k)}): {field} {getattr(got, field)}, the "
                    f"layout gives {getattr(want, field)}")
    if region_size != plan.region_size:
        raise LayoutMismatchError(f"region_size {region_size} != the end of the last span "
                                  f"{plan.region_size}")
    if mapped_size is not None and region_size > mapped_size:
        raise LayoutMismatchError(
            f"region_size {region_size} is larger than the mapped size {mapped_size}")
    return RegionHeader(version, header_size, feature_flags, channel_count, region_size,
                        group_count, segment_count, segment_align, client_section_size,
                        server_section_size, req_ring_size, resp_ring_size, max_msg_size,
                        max_value_size, heartbeat_interval_ms, client_lease_ms, tuple(entries))


def _entry(buf: bytes | memoryview, k: int) -> tuple[int, ...]:
    offset, size, span, kind, _reserved, group, first, count = SEGMENT_ENTRY.unpack_from(
        buf, SEGMENT_TABLE_OFFSET + SEGMENT_ENTRY.size * k)
    return offset, size, span, kind, group, first, count


def _check_table(entries: list[Segment], channel_count: int, region_size: int) -> None:
    """Kinds and groups match the indexes; the groups cover 0..N-1 in order, without gaps."""
    head = entries[0]
    if head.kind != SEG_HEADER:
        raise LayoutMismatchError(f"segment 0 (header): kind {head.kind}, expected "
                                  f"{SEG_HEADER} (header)")
    if (head.group, head.first_channel, head.channel_count) != (GROUP_NONE, 0, 0):
        raise LayoutMismatchError(
            f"segment 0 (header): group {head.group}, first_channel {head.first_channel}, "
            f"channel_count {head.channel_count}; expected {GROUP_NONE:#x}, 0, 0")
    first = 0
    for k in range(1, len(entries)):
        e, g = entries[k], (k - 1) // 2
        kind = SEG_CLIENT if k % 2 else SEG_SERVER
        name = segment_name(k)
        if e.kind != kind:
            raise LayoutMismatchError(f"segment {k} ({name}): kind {e.kind}, expected {kind} "
                                      f"({SEGMENT_KIND_NAMES[kind]})")
        if e.group != g:
            raise LayoutMismatchError(f"segment {k} ({name}): group {e.group}, expected {g}")
        if e.channel_count < 1:
            raise LayoutMismatchError(f"segment {k} ({name}): channel_count 0: every group "
                                      f"has at least one channel")
        if kind == SEG_SERVER:
            client = entries[k - 1]
            if (e.first_channel, e.channel_count) != (client.first_channel,
                                                      client.channel_count):
                raise LayoutMismatchError(
                    f"segment {k} ({name}): first_channel {e.first_channel}, channel_count "
                    f"{e.channel_count} disagree with client-{g}'s {client.first_channel}, "
                    f"{client.channel_count}")
            continue
        if e.first_channel != first:
            raise LayoutMismatchError(
                f"segment {k} ({name}): first_channel {e.first_channel}, expected {first} "
                f"(the groups cover channels 0..N-1 in order, without gaps)")
        first += e.channel_count
    if first != channel_count:
        raise LayoutMismatchError(f"channel_count {channel_count} != the groups' channels "
                                  f"{first}")


def format_header(
    channel_count: int = DEFAULT_CHANNELS,
    req_ring_size: int = DEFAULT_RING_SIZE,
    resp_ring_size: int = DEFAULT_RING_SIZE,
    max_value_size: int = DEFAULT_MAX_VALUE,
    max_msg_size: int | None = None,
    heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_MS,
    client_lease_ms: int = DEFAULT_CLIENT_LEASE_MS,
    groups: Sequence[int] | None = None,
    segment_align: int = DEFAULT_SEGMENT_ALIGN,
) -> bytes:
    """The header bytes a server writes when formatting (offsets 0 to the end of the segment
    table; the liveness fields zero), for tests, fakes and the vectors. ``groups`` defaults to
    one group of ``channel_count`` channels; given, it decides the channel count."""
    if groups is None:
        groups = [channel_count]
    if max_msg_size is None:
        max_msg_size = max_value_size + MSG_SLACK
    plan = plan_layout(groups, req_ring_size, resp_ring_size, segment_align)
    out = bytearray(SEGMENT_TABLE_OFFSET + SEGMENT_ENTRY.size * len(plan.segments))
    REGION_GEOMETRY.pack_into(
        out, 0, MAGIC, LAYOUT_VERSION, HEADER_SIZE, 0, sum(groups), plan.region_size,
        len(groups), len(plan.segments), segment_align, 0, CONTROL_SIZE + req_ring_size,
        CONTROL_SIZE + resp_ring_size, req_ring_size, resp_ring_size, max_msg_size,
        max_value_size, heartbeat_interval_ms, client_lease_ms)
    for k, s in enumerate(plan.segments):
        SEGMENT_ENTRY.pack_into(out, SEGMENT_TABLE_OFFSET + SEGMENT_ENTRY.size * k, s.offset,
                                s.size, s.span, s.kind, 0, s.group, s.first_channel,
                                s.channel_count)
    return bytes(out)


# ---- Messages --------------------------------------------------------------------------------
#
# Every message: a 16-byte header, then the payload, zero-padded to a multiple of 8.
#    0  4  len    header + payload bytes, without padding; 16 <= len <= max_msg_size
#    4  1  op     (request) or status (response)
#    5  1  flags  request: bit 0 FLAG_TTL; responses: ignored by clients
#    6  2  argc   request: number of arguments; responses: 0 (ignored by clients)
#    8  8  id     chosen by the client, echoed by the response
# Request payload: [u64 ttl_ms if FLAG_TTL] then argc x (u32 length, bytes), nothing else.

MSG_HEADER = struct.Struct("<IBBHQ")

# A request id binds the request to its session (section 4.3): the high 32 bits are the
# session_gen the server published at the ack, the low 32 bits the client's sequence number.
# The server never executes a request whose generation is not the current session's.
ID_GEN_SHIFT = 32
ID_SEQ_MASK = 0xFFFFFFFF


def make_id(gen: int, seq: int) -> int:
    """The id of request number ``seq`` (mod 2**32) of the session with generation ``gen``."""
    return ((gen & 0xFFFFFFFF) << ID_GEN_SHIFT) | (seq & ID_SEQ_MASK)


def id_gen(req_id: int) -> int:
    """The session generation an id carries."""
    return (req_id >> ID_GEN_SHIFT) & 0xFFFFFFFF
# A request header directly followed by its first argument's length (GET's whole prefix).
MSG_HEADER_ARG_LEN = struct.Struct("<IBBHQI")
ARG_LEN = struct.Struct("<I")
TTL_MS = struct.Struct("<Q")
DEL_COUNT = struct.Struct("<Q")

OP_GET, OP_SET, OP_DEL, OP_CMD, OP_PING = 1, 2, 3, 4, 5
OP_NAMES = {1: "GET", 2: "SET", 3: "DEL", 4: "CMD", 5: "PING"}
FLAG_TTL = 0x01
REQUEST_FLAGS_KNOWN = FLAG_TTL
# Arguments per request the C side accepts (ring/include/cxl_ring/ring.h CXL_MAX_ARGS; more is
# TOO_LARGE). Not in docs/ring-protocol.md yet.
MAX_ARGS = 1024
ARGC_RANGE = {OP_GET: (1, 1), OP_SET: (2, 2), OP_DEL: (1, 65535), OP_CMD: (1, 65535),
              OP_PING: (0, 0)}

ST_OK = 0
ST_NOT_FOUND = 1
ST_ERR = 2
ST_OOM = 3
ST_TOO_LARGE = 4
ST_BAD_REQUEST = 5
ST_UNKNOWN_OP = 6
ST_PROTOCOL_ERROR = 7
ST_UNKNOWN_OUTCOME = 8  # a client's verdict, never on the wire
ST_PUSH = 9  # id 0: a pub/sub message on a subscribed session (section 15)
STATUS_NAMES = {
    0: "OK", 1: "NOT_FOUND", 2: "ERR", 3: "OOM", 4: "TOO_LARGE", 5: "BAD_REQUEST",
    6: "UNKNOWN_OP", 7: "PROTOCOL_ERROR", 8: "UNKNOWN_OUTCOME", 9: "PUSH",
}
STATUS_BY_NAME = {v: k for k, v in STATUS_NAMES.items()}
MAX_WIRE_STATUS = ST_PUSH

_PAD = (b"", b"\0" * 7, b"\0" * 6, b"\0" * 5, b"\0" * 4, b"\0" * 3, b"\0" * 2, b"\0")


def encode_request(op: int, args: Sequence[bytes], req_id: int, ttl_ms: int = 0) -> bytes:
    """One framed, padded request message. Arguments must already be bytes."""
    parts = [b""]
    if ttl_ms:
        parts.append(TTL_MS.pack(ttl_ms))
    for a in args:
        parts.append(ARG_LEN.pack(len(a)))
        parts.append(a)
    n = MSG_HEADER.size + sum(map(len, parts))
    parts[0] = MSG_HEADER.pack(n, op, FLAG_TTL if ttl_ms else 0, len(args), req_id)
    parts.append(_PAD[n & 7])
    return b"".join(parts)


def encode_get(key: bytes, req_id: int) -> bytes:
    n = 20 + len(key)
    return MSG_HEADER_ARG_LEN.pack(n, OP_GET, 0, 1, req_id, len(key)) + key + _PAD[n & 7]


def encode_set(key: bytes, value: bytes, req_id: int, ttl_ms: int = 0) -> bytes:
    if ttl_ms:
        n = 32 + len(key) + len(value)
        return b"".join((
            MSG_HEADER.pack(n, OP_SET, FLAG_TTL, 2, req_id), TTL_MS.pack(ttl_ms),
            ARG_LEN.pack(len(key)), key, ARG_LEN.pack(len(value)), value, _PAD[n & 7],
        ))
    n = 24 + len(key) + len(value)
    return b"".join((
        MSG_HEADER_ARG_LEN.pack(n, OP_SET, 0, 2, req_id, len(key)), key,
        ARG_LEN.pack(len(value)), value, _PAD[n & 7],
    ))


# Frames for the unpipelined fast path: one ``struct.Struct`` per argument length lays out a
# whole GET or SET message (header, argument lengths, arguments, zero padding), so a client
# writes it straight into the ring with a single ``pack_into`` (channel.py ``Session.get``).
#   GET:          len op flags argc id | klen key | pad              len = 20 + klen
#   SET:          len op flags argc id | klen key | vlen value | pad len = 24 + klen + vlen
#   SET with TTL: len op flags argc id | ttl_ms | klen key | vlen value | pad   (32 + ...)
# The caches are bounded (a Struct costs ~0.3 us to build when a length is not cached).
FRAME_CACHE_MAX = 4096
GET_FRAMES: dict[int, struct.Struct] = {}
SET_FRAMES: dict[int, struct.Struct] = {}


def get_frame(klen: int) -> struct.Struct:
    """The Struct that packs (len, OP_GET, 0, 1, id, klen, key) plus padding; size = align8."""
    frame = GET_FRAMES.get(klen)
    if frame is None:
        frame = struct.Struct(f"<IBBHQI{klen}s{-(20 + klen) & 7}x")
        if len(GET_FRAMES) < FRAME_CACHE_MAX:
            GET_FRAMES[klen] = frame
    return frame


def set_frame(klen: int, vlen: int, ttl: bool = False) -> struct.Struct:
    """The Struct that packs (len, OP_SET, flags, 2, id, [ttl_ms,] klen, key, vlen, value)."""
    cache_key = (klen << 33) | (vlen << 1) | ttl
    frame = SET_FRAMES.get(cache_key)
    if frame is None:
        if ttl:
            frame = struct.Struct(f"<IBBHQQI{klen}sI{vlen}s{-(32 + klen + vlen) & 7}x")
        else:
            frame = struct.Struct(f"<IBBHQI{klen}sI{vlen}s{-(24 + klen + vlen) & 7}x")
        if len(SET_FRAMES) < FRAME_CACHE_MAX:
            SET_FRAMES[cache_key] = frame
    return frame


class Request(NamedTuple):
    """A decoded request (the server's view; used by fakes and the test vectors)."""

    op: int
    flags: int
    id: int
    ttl_ms: int
    args: list


class Response(NamedTuple):
    """A decoded response: status, id and a private copy of the payload."""

    status: int
    id: int
    payload: bytes


def decode_request(msg: bytes, max_msg_size: int, max_value_size: int) -> Request:
    """Decode one request the way a server must (section 6).

    ``msg`` is exactly ``len`` bytes (header + payload, no padding). Raises RequestRejected
    with the status the server answers (TOO_LARGE, UNKNOWN_OP, BAD_REQUEST).
    """
    n, op, flags, argc, req_id = MSG_HEADER.unpack_from(msg, 0)
    if n != len(msg) or n < MSG_HEADER.size:
        raise RequestRejected(ST_PROTOCOL_ERROR, req_id, f"len {n} does not frame the message")
    if n > max_msg_size:
        raise RequestRejected(ST_TOO_LARGE, req_id, f"message of {n} bytes > max_msg_size")
    if op not in OP_NAMES:
        raise RequestRejected(ST_UNKNOWN_OP, req_id, f"unknown op {op}")
    if flags & ~REQUEST_FLAGS_KNOWN or (flags & FLAG_TTL and op != OP_SET):
        raise RequestRejected(ST_BAD_REQUEST, req_id, f"bad flags {flags:#x} for {OP_NAMES[op]}")
    lo, hi = ARGC_RANGE[op]
    if not lo <= argc <= hi:
        raise RequestRejected(ST_BAD_REQUEST, req_id, f"{OP_NAMES[op]} with argc {argc}")
    if argc > MAX_ARGS:
        raise RequestRejected(ST_TOO_LARGE, req_id, f"{argc} arguments > {MAX_ARGS}")
    p = MSG_HEADER.size
    ttl = 0
    if flags & FLAG_TTL:
        if n - p < TTL_MS.size:
            raise RequestRejected(ST_BAD_REQUEST, req_id, "payload too short for ttl_ms")
        (ttl,) = TTL_MS.unpack_from(msg, p)
        p += TTL_MS.size
        if ttl == 0:
            raise RequestRejected(ST_BAD_REQUEST, req_id, "ttl_ms must be > 0")
    args = []
    for _ in range(argc):
        if n - p < ARG_LEN.size:
            raise RequestRejected(ST_BAD_REQUEST, req_id, "arguments overrun the payload")
        (alen,) = ARG_LEN.unpack_from(msg, p)
        p += ARG_LEN.size
        if alen > max_value_size:
            raise RequestRejected(ST_TOO_LARGE, req_id, f"argument of {alen} bytes > max_value")
        if alen > n - p:
            raise RequestRejected(ST_BAD_REQUEST, req_id, "argument overruns the payload")
        args.append(bytes(msg[p : p + alen]))
        p += alen
    if p != n:
        raise RequestRejected(ST_BAD_REQUEST, req_id, "arguments do not fill the payload")
    return Request(op, flags, req_id, ttl, args)


class RequestRejected(Exception):
    """Raised by decode_request: the status and text a server answers a bad request with."""

    def __init__(self, status: int, req_id: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.id = req_id
        self.text = text


def encode_response(status: int, req_id: int, payload: bytes = b"") -> bytes:
    n = MSG_HEADER.size + len(payload)
    return MSG_HEADER.pack(n, status, 0, 0, req_id) + payload + _PAD[n & 7]


def decode_responses(
    buf: bytes, max_msg_size: int, limit: int | None = None
) -> tuple[list[Response], int]:
    """Decode complete responses from a private copy of the published ring bytes.

    ``buf`` holds exactly the bytes between the consumer's tail and the producer's head. A
    producer only ever publishes whole messages, so anything that does not frame exactly is
    corruption: ProtocolError. Returns the responses (at most ``limit``) and bytes consumed.
    """
    out = []
    p = 0
    used = len(buf)
    unpack = MSG_HEADER.unpack_from
    new = tuple.__new__  # Response(...) without the generated Python-level __new__: faster
    while p < used and (limit is None or len(out) < limit):
        if used - p < 16:
            raise ProtocolError(f"partial response header: {used - p} bytes published")
        n, status, _flags, _argc, rid = unpack(buf, p)
        if n < 16 or n > max_msg_size:
            raise ProtocolError(f"response len {n} outside 16..{max_msg_size}")
        step = (n + 7) & ~7
        if step > used - p:
            raise ProtocolError(f"response len {n} runs past the published bytes ({used - p})")
        if status > MAX_WIRE_STATUS or status == ST_UNKNOWN_OUTCOME:
            raise ProtocolError(f"unknown response status {status}")
        out.append(new(Response, (status, rid, buf[p + 16 : p + n])))
        p += step
    return out, p


# ---- Layout version 2 (the PoC's; docs/ring-protocol.md section 10) -------------------------
#
# Region header:  0 8 magic "CXLSHM1\0" | 8 4 version (2) | 12 4 ring_count (1..8) | 16 8 reserved
#                 24 + 32*i: ring i = u64 req_off, u64 req_sz, u64 resp_off, u64 resp_sz
# Ring:           +0 u64 head (producer count), +8 u64 tail (consumer count), 4096-byte slots
#                 from +16; slots = (req_sz - 16) // 4096; slot k at +16 + (k % slots) * 4096.
# Slot:           0 4 client_id | 4 2 type (1 DATA, 2 CLOSE) | 6 2 flags (0) | 8 4 payload len
#                 (<= 4080) | 12 4 reserved | 16 payload, rest of the slot zero-filled.
# Request payload:  u8 op (1 GET, 2 SET), u8 key_len, u16 val_len, key, value (SET only)
# Response payload: u8 status (0 OK, 1 MISS, 2 ERR), u16 val_len, value (GET hit only)

V2_MAGIC = b"CXLSHM1\0"
V2_VERSION = 2
V2_MAX_RINGS = 8
V2_SLOT_SIZE = 4096
V2_RING_HEADER_SIZE = 16
V2_MAX_PAYLOAD = V2_SLOT_SIZE - 16
V2_TYPE_DATA, V2_TYPE_CLOSE = 1, 2
V2_OP_GET, V2_OP_SET = 1, 2
V2_ST_OK, V2_ST_MISS, V2_ST_ERR = 0, 1, 2

V2_REGION_HEADER = struct.Struct("<8sIIQ")
V2_RING_DESC = struct.Struct("<QQQQ")
V2_SLOT_HEADER = struct.Struct("<IHHII")
V2_REQUEST_PREFIX = struct.Struct("<BBH")  # op, key_len, val_len
V2_RESPONSE_PREFIX = struct.Struct("<BH")  # status, val_len


class V2Ring(NamedTuple):
    req_off: int
    req_sz: int
    resp_off: int
    resp_sz: int

    @property
    def slots(self) -> int:
        return (self.req_sz - V2_RING_HEADER_SIZE) // V2_SLOT_SIZE


def parse_v2_header(buf: bytes | memoryview, mapped_size: int) -> list[V2Ring]:
    """Validate a layout v2 header; returns the ring descriptors."""
    magic, version, ring_count, _ = V2_REGION_HEADER.unpack_from(buf, 0)
    if magic != V2_MAGIC:
        raise LayoutMismatchError(f"not a layout v2 region: magic {magic!r}")
    if version != V2_VERSION:
        raise LayoutMismatchError(f"layout v2 region with version {version}")
    if not 1 <= ring_count <= V2_MAX_RINGS:
        raise ProtocolError(f"v2 ring_count {ring_count} not in 1..{V2_MAX_RINGS}")
    rings = []
    for i in range(ring_count):
        r = V2Ring(*V2_RING_DESC.unpack_from(buf, 24 + 32 * i))
        for off, size in ((r.req_off, r.req_sz), (r.resp_off, r.resp_sz)):
            if off % 8 or size < V2_RING_HEADER_SIZE + V2_SLOT_SIZE or off + size > mapped_size:
                raise ProtocolError(f"v2 ring {i} lies outside the mapping or is misaligned")
        if r.resp_sz < r.req_sz:
            raise ProtocolError(f"v2 ring {i}: resp_sz {r.resp_sz} < req_sz {r.req_sz}")
        rings.append(r)
    return rings


def encode_v2_request(client_id: int, op: int, key: bytes, value: bytes = b"") -> bytes:
    """A whole 4096-byte v2 slot carrying one GET or SET."""
    if len(key) > 255 or len(value) > 65535:
        raise ValueError("v2 key is at most 255 bytes and value at most 65535")
    payload = V2_REQUEST_PREFIX.pack(op, len(key), len(value)) + key + value
    if len(payload) > V2_MAX_PAYLOAD:
        raise ValueError(f"v2 payload of {len(payload)} bytes > {V2_MAX_PAYLOAD}")
    slot = V2_SLOT_HEADER.pack(client_id, V2_TYPE_DATA, 0, len(payload), 0) + payload
    return slot + b"\0" * (V2_SLOT_SIZE - len(slot))


def decode_v2_response(slot: bytes) -> tuple[int, bytes | None]:
    """Validate one v2 response slot (a private copy); returns (status, value or None)."""
    _cid, typ, _flags, n, _ = V2_SLOT_HEADER.unpack_from(slot, 0)
    if typ != V2_TYPE_DATA:
        raise ProtocolError(f"v2 response slot of type {typ}")
    if not V2_RESPONSE_PREFIX.size <= n <= V2_MAX_PAYLOAD:
        raise ProtocolError(f"v2 response payload length {n}")
    status, vlen = V2_RESPONSE_PREFIX.unpack_from(slot, 16)
    if status not in (V2_ST_OK, V2_ST_MISS, V2_ST_ERR):
        raise ProtocolError(f"v2 response status {status}")
    if V2_RESPONSE_PREFIX.size + vlen != n:
        raise ProtocolError(f"v2 response val_len {vlen} does not fill payload of {n}")
    value = slot[16 + 3 : 16 + 3 + vlen] if status == V2_ST_OK else None
    return status, value
