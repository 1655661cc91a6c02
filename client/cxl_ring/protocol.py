"""The cxl_ring wire format, layout version 4 (docs/ring-protocol.md), without any I/O.

Constants, ``struct.Struct`` objects named after what they encode, the region header
parser/validator and the message encoders/decoders. The client, the proxy, the CLI, the
tests and the shared test vectors (tests/vectors/messages.json) all use these.
Where this module and docs/ring-protocol.md disagree, the document wins.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .exceptions import LayoutMismatchError, NotFormattedError, ProtocolError

# ---- Region ----------------------------------------------------------------------------------
#
# offset 0                      header section            4096 bytes, written by the server
# channel_table_off (= 4096)    channel 0: client section 4096 + req_ring_size (its client)
#                               channel 0: server section 4096 + resp_ring_size (the server)
#                               channel 1: ...
#
# Header section (all little-endian):
#    0  8  magic "CXLDSMR\0"          64  4  req_ring_size           128  8  server_epoch
#    8  4  version (4)                68  4  resp_ring_size          136  8  server_heartbeat
#   12  4  header_size (4096)         72  4  max_msg_size            144  4  server_state
#   16  4  feature_flags              76  4  max_value_size          148  4  server_pid
#   20  4  channel_count              80  4  heartbeat_interval_ms
#   24  8  region_size                84  4  client_lease_ms
#   32  8  channel_table_off          88..127 reserved
#   40  8  channel_stride
#   48  8  client_section_size
#   56  8  server_section_size
#
# Client section (the channel's owner writes):   Server section (the server writes):
#    0  8  claim_token                             0  8  ack_token
#    8  8  client_heartbeat                        8  8  dead_token
#   16  4  client_pid                             16  4  chan_state
#   64  8  req_head   (request producer)          20  4  last_error
#  128  8  resp_tail  (response consumer)         24  4  session_gen (ids' high half)
# 4096     request ring data                      64  8  req_tail   (request consumer)
#                                                128  8  resp_head  (response producer)
#                                               4096     response ring data

MAGIC = b"CXLDSMR\0"
LAYOUT_VERSION = 4
PAGE_SIZE = 4096
HEADER_SIZE = 4096
CONTROL_SIZE = 4096
MAX_CHANNELS = 256
MIN_RING_SIZE = 4096
MAX_RING_SIZE = 1 << 30
SERVER_DEAD_BEATS = 10
SERVER_DEAD_MIN_MS = 1000
U64_MASK = (1 << 64) - 1

# Header geometry, offsets 0..87: written once while formatting, before magic.
REGION_GEOMETRY = struct.Struct("<8sIIIIQQQQQIIIIII")
# Header liveness line, offsets 128..151.
SERVER_LIVENESS = struct.Struct("<QQII")
SERVER_LIVENESS_OFFSET = 128

# Header field offsets (for single aligned loads).
OFF_MAGIC = 0
OFF_SERVER_EPOCH = 128
OFF_SERVER_HEARTBEAT = 136
OFF_SERVER_STATE = 144
OFF_SERVER_PID = 148

# Client section control page.
OFF_CLAIM_TOKEN = 0
OFF_CLIENT_HEARTBEAT = 8
OFF_CLIENT_PID = 16
OFF_REQ_HEAD = 64
OFF_RESP_TAIL = 128
# Server section control page.
OFF_ACK_TOKEN = 0
OFF_DEAD_TOKEN = 8
OFF_CHAN_STATE = 16
OFF_LAST_ERROR = 20
OFF_SESSION_GEN = 24
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


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def align8(n: int) -> int:
    return (n + 7) & ~7


@dataclass(frozen=True)
class RegionHeader:
    """A validated private copy of the header geometry (offsets 0..87)."""

    version: int
    header_size: int
    feature_flags: int
    channel_count: int
    region_size: int
    channel_table_off: int
    channel_stride: int
    client_section_size: int
    server_section_size: int
    req_ring_size: int
    resp_ring_size: int
    max_msg_size: int
    max_value_size: int
    heartbeat_interval_ms: int
    client_lease_ms: int

    def client_section(self, channel: int) -> int:
        """Byte offset of channel ``channel``'s client section."""
        return self.channel_table_off + channel * self.channel_stride

    def server_section(self, channel: int) -> int:
        """Byte offset of channel ``channel``'s server section."""
        return self.client_section(channel) + self.client_section_size

    @property
    def server_dead_after(self) -> float:
        """Seconds of a motionless server heartbeat after which the server counts as gone."""
        return max(SERVER_DEAD_BEATS * self.heartbeat_interval_ms, SERVER_DEAD_MIN_MS) / 1000.0


def parse_header(buf: bytes | memoryview, mapped_size: int | None = None) -> RegionHeader:
    """Parse and validate the header geometry from a private copy of the first 88 bytes.

    Raises LayoutMismatchError for a foreign magic or version and ProtocolError for geometry
    that is inconsistent (a bad value from the server must make a client raise, never crash).
    """
    if len(buf) < REGION_GEOMETRY.size:
        raise ProtocolError(f"region header truncated: {len(buf)} bytes")
    f = REGION_GEOMETRY.unpack_from(buf, 0)
    magic, version = f[0], f[1]
    if magic == b"\0" * 8:
        raise NotFormattedError("region is not formatted (all zeros): no server has started on it")
    if magic == V2_MAGIC:
        raise LayoutMismatchError("region has layout v2 (PoC, magic CXLSHM1); use layout='v2'")
    if magic != MAGIC:
        raise LayoutMismatchError(f"not a cxl_ring region: magic {magic!r}, expected {MAGIC!r}")
    if version != LAYOUT_VERSION:
        raise LayoutMismatchError(f"layout version {version}, this client speaks {LAYOUT_VERSION}")
    h = RegionHeader(*f[1:])
    problems = []
    if h.header_size != HEADER_SIZE:
        problems.append(f"header_size {h.header_size} != {HEADER_SIZE}")
    if not 1 <= h.channel_count <= MAX_CHANNELS:
        problems.append(f"channel_count {h.channel_count} not in 1..{MAX_CHANNELS}")
    if h.channel_table_off != HEADER_SIZE:
        problems.append(f"channel_table_off {h.channel_table_off} != {HEADER_SIZE}")
    for name in ("req_ring_size", "resp_ring_size"):
        size = getattr(h, name)
        if not is_power_of_two(size) or not MIN_RING_SIZE <= size <= MAX_RING_SIZE:
            problems.append(f"{name} {size} is not a power of two in 4096..2^30")
        elif size < h.max_msg_size:
            problems.append(f"{name} {size} < max_msg_size {h.max_msg_size}")
    if h.client_section_size != CONTROL_SIZE + h.req_ring_size:
        problems.append(f"client_section_size {h.client_section_size} != 4096 + req_ring_size")
    if h.server_section_size != CONTROL_SIZE + h.resp_ring_size:
        problems.append(f"server_section_size {h.server_section_size} != 4096 + resp_ring_size")
    if h.channel_stride != h.client_section_size + h.server_section_size:
        problems.append(f"channel_stride {h.channel_stride} != client + server section sizes")
    if h.region_size != h.channel_table_off + h.channel_count * h.channel_stride:
        problems.append(f"region_size {h.region_size} != table offset + channels * stride")
    if h.max_msg_size < MSG_HEADER.size:
        problems.append(f"max_msg_size {h.max_msg_size} < 16")
    if h.heartbeat_interval_ms == 0 or h.client_lease_ms == 0:
        problems.append("heartbeat_interval_ms and client_lease_ms must be > 0")
    if problems:
        raise ProtocolError("corrupt region header: " + "; ".join(problems))
    if mapped_size is not None and h.region_size > mapped_size:
        raise LayoutMismatchError(
            f"region_size {h.region_size} is larger than the mapped size {mapped_size}"
        )
    return h


def format_header(
    channel_count: int = DEFAULT_CHANNELS,
    req_ring_size: int = DEFAULT_RING_SIZE,
    resp_ring_size: int = DEFAULT_RING_SIZE,
    max_value_size: int = DEFAULT_MAX_VALUE,
    max_msg_size: int | None = None,
    heartbeat_interval_ms: int = 100,
    client_lease_ms: int = 2000,
) -> bytes:
    """The geometry bytes (offsets 0..87) a server writes when formatting; for tests and fakes."""
    if max_msg_size is None:
        max_msg_size = max_value_size + MSG_SLACK
    client_size = CONTROL_SIZE + req_ring_size
    server_size = CONTROL_SIZE + resp_ring_size
    stride = client_size + server_size
    return REGION_GEOMETRY.pack(
        MAGIC, LAYOUT_VERSION, HEADER_SIZE, 0, channel_count,
        HEADER_SIZE + channel_count * stride, HEADER_SIZE, stride, client_size, server_size,
        req_ring_size, resp_ring_size, max_msg_size, max_value_size,
        heartbeat_interval_ms, client_lease_ms,
    )


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
STATUS_NAMES = {
    0: "OK", 1: "NOT_FOUND", 2: "ERR", 3: "OOM", 4: "TOO_LARGE", 5: "BAD_REQUEST",
    6: "UNKNOWN_OP", 7: "PROTOCOL_ERROR", 8: "UNKNOWN_OUTCOME",
}
STATUS_BY_NAME = {v: k for k, v in STATUS_NAMES.items()}
MAX_WIRE_STATUS = ST_PROTOCOL_ERROR

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
        if status > MAX_WIRE_STATUS:
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
