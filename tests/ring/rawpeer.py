"""A raw protocol peer for the driver tests: the client side of docs/ring-protocol.md.

Self-contained on purpose (no dependency on client/cxl_ring): the hostile tests need to
write arbitrary bytes and indexes, which a well-behaved client library would refuse to do.

Region map (layout version 5, all little-endian): segments grouped by writer (section 2),

    segment 0       header        4096 bytes used (server); the segment table at 256
    segment 1 + 2g  client-g      the client sections of group g's channels (its client)
    segment 2 + 2g  server-g      the server sections of group g's channels (server)

each at offset(k) and spanning span(k) = max(segment_align, pow2ceil(size(k))). Channel c of
group g: client section at offset(client-g) + (c - first_channel(g)) * client_section_size,
server section likewise in server-g. A region is one file (security off) or a directory of
segment files `header`, `client-<g>`, `server-<g>` (Sec-DSM); `Region` opens both, as a
client does: a directory's header and server-* read-only, client-* read-write where the file
allows it (else read-only), an absent file unmapped. Touching an unmapped (or, to write, a
read-only) segment raises PeerError instead of faulting.

Client control page: claim_token@0 client_heartbeat@8 client_pid@16 req_wake@24 req_head@64
                     resp_tail@128
Server control page: ack_token@0 dead_token@8 chan_state@16 last_error@20 session_gen@24
                     req_tail@64 resp_head@128

Request ids carry the session's generation in their high half (section 4.3): ``send`` does
it, ``tag``/``stamp`` do it for hand-made messages. This peer does not zero its request bytes
(section 3.1): tests that check scrubbing use the client library.

Indexes are written with one aligned 8-byte store: a memoryview cast to 'Q' stores with
a single memcpy of 8 bytes, i.e. one MOV on x86-64 (TSO: plain loads are acquire, plain
stores release). Every wait is bounded. Publishing a head notifies a sleeping server
(section 8) as the ring client does, unless a test asks it not to.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import os
import random
import struct
import threading
import time

from cxl_ring import notify

MAGIC = b"CXLDSMR\0"
VERSION = 5
PAGE = 4096
HDR = 16
MAX_GROUPS = 32
MAX_CHANNELS = 256
SEG_HEADER, SEG_CLIENT, SEG_SERVER = 1, 2, 3
GROUP_NONE = 0xFFFF
SEGMENT_TABLE = 256

OP_GET, OP_SET, OP_DEL, OP_CMD, OP_PING = 1, 2, 3, 4, 5
FLAG_TTL = 1
ST_OK, ST_NOT_FOUND, ST_ERR, ST_OOM, ST_TOO_LARGE = 0, 1, 2, 3, 4
ST_BAD_REQUEST, ST_UNKNOWN_OP, ST_PROTOCOL_ERROR, ST_UNKNOWN_OUTCOME = 5, 6, 7, 8
CHAN_FREE, CHAN_ACTIVE, CHAN_QUARANTINED = 0, 1, 2
SERVER_STOPPED, SERVER_STARTING, SERVER_RUNNING, SERVER_STOPPING = 0, 1, 2, 3

# header geometry, offsets 8..87: version header_size feature_flags channel_count
# region_size group_count segment_count segment_align reserved client_section_size
# server_section_size req_ring_size resp_ring_size max_msg_size max_value_size
# heartbeat_interval_ms client_lease_ms
GEOMETRY = struct.Struct("<IIIIQIIIIQQIIIIII")
# segment table entry: offset size span kind reserved group first_channel channel_count
SEGMENT = struct.Struct("<QQQBBHHH")
MSG_HEADER = struct.Struct("<IBBHQ")  # len, op/status, flags, argc, id


def align8(n: int) -> int:
    return (n + 7) & ~7


def encode_request(op: int, args: list[bytes] = (), req_id: int = 0, flags: int = 0,
                   ttl_ms: int = 0, argc: int | None = None) -> bytes:
    """A framed request, padded to 8 bytes. argc may lie (hostile tests)."""
    body = b""
    if flags & FLAG_TTL:
        body += struct.pack("<Q", ttl_ms)
    for a in args:
        body += struct.pack("<I", len(a)) + a
    length = HDR + len(body)
    msg = MSG_HEADER.pack(length, op, flags, len(args) if argc is None else argc, req_id) + body
    return msg + b"\0" * (align8(length) - length)


class PeerError(Exception):
    """The server did something a client must not accept (or did not answer in time)."""


class ServerGone(PeerError):
    pass


def pow2ceil(n: int) -> int:
    p = 1
    while p < n:
        p <<= 1
    return p


def segment_name(kind: int, group: int) -> str:
    if kind == SEG_HEADER:
        return "header"
    return f"{'client' if kind == SEG_CLIENT else 'server'}-{group}"


class Segment:
    """One entry of the segment table (the layout's placement)."""

    def __init__(self, offset: int, size: int, span: int, kind: int, group: int,
                 first_channel: int, channel_count: int):
        self.offset, self.size, self.span = offset, size, span
        self.kind, self.group = kind, group
        self.first_channel, self.channel_count = first_channel, channel_count

    @property
    def name(self) -> str:
        return segment_name(self.kind, self.group)

    def astuple(self) -> tuple:
        return (self.offset, self.size, self.span, self.kind, self.group,
                self.first_channel, self.channel_count)


def plan_layout(groups: list[int], req_ring: int, resp_ring: int,
                segment_align: int = PAGE) -> tuple[list[Segment], int]:
    """The segments of a region and its region_size (docs/ring-protocol.md section 2)."""
    segs, off, first = [], 0, 0

    def place(size, kind, group, first_channel, count):
        nonlocal off
        span = max(segment_align, pow2ceil(size))
        segs.append(Segment(off, size, span, kind, group, first_channel, count))
        off += span

    place(PAGE, SEG_HEADER, GROUP_NONE, 0, 0)
    for g, n in enumerate(groups):
        place(n * (PAGE + req_ring), SEG_CLIENT, g, first, n)
        place(n * (PAGE + resp_ring), SEG_SERVER, g, first, n)
        first += n
    return segs, off


class Mapping:
    """One mapped file: a whole one-file region, or one segment file of a directory."""

    def __init__(self, path: str, name: str, offset: int, length: int | None,
                 writable: bool):
        self.path, self.name, self.offset, self.writable = path, name, offset, writable
        self.shadow: bytearray | None = None
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            self.length = size if length is None else min(length, size)
            self.mm = mmap.mmap(fd, self.length,
                                access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self.q = memoryview(self.mm).cast("Q")
        self.i = memoryview(self.mm).cast("I")

    def close(self) -> None:
        self.q.release()
        self.i.release()
        self.mm.close()


class SegmentedMemory:
    """Region offsets over the mapped segments: slicing like an mmap, within one segment."""

    def __init__(self, region: Region):
        self.r = region

    def __getitem__(self, sl: slice) -> bytes:
        m, lo = self.r.mapping(sl.start, sl.stop - sl.start)
        return m.mm[lo: lo + sl.stop - sl.start]

    def __setitem__(self, sl: slice, data) -> None:
        m, lo = self.r.mapping(sl.start, sl.stop - sl.start, write=True)
        m.mm[lo: lo + sl.stop - sl.start] = data
        if m.shadow is not None:
            m.shadow[lo: lo + sl.stop - sl.start] = data


class Region:
    """A mapped layout 5 region (one file, or a directory of segment files) and its header,
    copied once and checked in full against the layout's rule before anything is trusted."""

    def __init__(self, path: str, journal: bool = False):
        """journal: keep a copy of every writable mapping as this peer wrote it (`written`),
        so that a test can tell the bytes it wrote from bytes someone else wrote."""
        self.path = path
        self.directory = os.path.isdir(path)
        self.maps: list[Mapping] = []
        try:
            if self.directory:
                header = Mapping(os.path.join(path, "header"), "header", 0, PAGE, False)
                self.maps.append(header)
                raw = bytes(header.mm[:PAGE])
            else:
                whole = Mapping(path, "region", 0, None, True)
                self.maps.append(whole)
                raw = bytes(whole.mm[:PAGE])
            self._read_header(raw)
            if self.directory:
                for seg in self.segments[1:]:
                    self._map_segment(seg)
                self.size = self.region_size
                self.mm = SegmentedMemory(self)
            else:
                self.size = self.maps[0].length
                if self.region_size > self.size:
                    raise PeerError(f"{path}: region_size {self.region_size} > {self.size} "
                                    "bytes mapped")
                self.mm = SegmentedMemory(self) if journal else self.maps[0].mm
            if journal:
                for m in self.maps:
                    if m.writable:
                        m.shadow = bytearray(m.mm[:])
        except BaseException:
            self.close()
            raise
        self._offsets = [m.offset for m in self.maps]

    def written(self, name: str) -> bytes:
        """journal: segment `name` (or the whole region) as this peer's own writes left it."""
        return bytes(self.mapped(name).shadow)

    def _read_header(self, raw: bytes) -> None:
        if raw[0:8] != MAGIC:
            raise PeerError(f"{self.path}: bad magic")
        (self.version, self.header_size, self.features, self.channel_count, self.region_size,
         self.group_count, self.segment_count, self.segment_align, _reserved,
         self.client_size, self.server_size, self.req_ring_size, self.resp_ring_size,
         self.max_msg, self.max_value, self.heartbeat_ms,
         self.lease_ms) = GEOMETRY.unpack_from(raw, 8)
        if self.version != VERSION or self.header_size != PAGE:
            raise PeerError(f"{self.path}: layout version {self.version}, not {VERSION}")
        if not 1 <= self.group_count <= MAX_GROUPS or \
                self.segment_count != 1 + 2 * self.group_count:
            raise PeerError(f"{self.path}: {self.group_count} groups, "
                            f"{self.segment_count} segments")
        table = [Segment(*SEGMENT.unpack_from(raw, SEGMENT_TABLE + 32 * k)[:4],
                         *SEGMENT.unpack_from(raw, SEGMENT_TABLE + 32 * k)[5:])
                 for k in range(self.segment_count)]
        self.groups = [table[1 + 2 * g].channel_count for g in range(self.group_count)]
        plan, size = plan_layout(self.groups, self.req_ring_size, self.resp_ring_size,
                                 self.segment_align)
        if [s.astuple() for s in table] != [s.astuple() for s in plan] or \
                size != self.region_size or sum(self.groups) != self.channel_count or \
                self.client_size != PAGE + self.req_ring_size or \
                self.server_size != PAGE + self.resp_ring_size:
            raise PeerError(f"{self.path}: layout mismatch (the segment table is not the "
                            "layout's)")
        self.segments = table

    def _map_segment(self, seg: Segment) -> None:
        """A client's view: client-* read-write where allowed, the rest read-only."""
        path = os.path.join(self.path, seg.name)
        if not os.path.exists(path):
            return                                   # not granted: stays unmapped
        writable = seg.kind == SEG_CLIENT and os.access(path, os.W_OK)
        m = Mapping(path, seg.name, seg.offset, seg.span, writable)
        if m.length < seg.size:
            m.close()
            raise PeerError(f"{path} is {m.length} bytes; {seg.name} needs {seg.size}")
        self.maps.append(m)

    def close(self) -> None:
        for m in self.maps:
            m.close()
        self.maps = []

    def mapping(self, off: int, n: int = 8, write: bool = False) -> tuple[Mapping, int]:
        """The mapping holding region bytes [off, off + n) and the offset in it."""
        i = bisect.bisect_right(self._offsets, off) - 1
        if i >= 0:
            m = self.maps[i]
            lo = off - m.offset
            if lo + n <= m.length:
                if write and not m.writable:
                    raise PeerError(f"segment {m.name} is mapped read-only (offset {off})")
                return m, lo
        raise PeerError(f"region offset {off}+{n} is in no mapped segment")

    def mapped(self, name: str) -> Mapping | None:
        return next((m for m in self.maps if m.name in (name, "region")), None)

    # one aligned access each
    def u64(self, off: int) -> int:
        m, lo = self.mapping(off)
        return m.q[lo // 8]

    def put_u64(self, off: int, value: int) -> None:
        m, lo = self.mapping(off, write=True)
        m.q[lo // 8] = value & 0xFFFFFFFFFFFFFFFF
        if m.shadow is not None:
            struct.pack_into("<Q", m.shadow, lo, value & 0xFFFFFFFFFFFFFFFF)

    def u32(self, off: int) -> int:
        m, lo = self.mapping(off, 4)
        return m.i[lo // 4]

    def put_u32(self, off: int, value: int) -> None:
        m, lo = self.mapping(off, 4, write=True)
        m.i[lo // 4] = value & 0xFFFFFFFF
        if m.shadow is not None:
            struct.pack_into("<I", m.shadow, lo, value & 0xFFFFFFFF)

    @property
    def epoch(self) -> int:
        return self.u64(128)

    @property
    def heartbeat(self) -> int:
        return self.u64(136)

    @property
    def server_state(self) -> int:
        return self.u32(144)

    @property
    def server_pid(self) -> int:
        return self.u32(148)

    def group_of(self, chan: int) -> int:
        for g in range(self.group_count):
            seg = self.segments[1 + 2 * g]
            if chan < seg.first_channel + seg.channel_count:
                return g
        raise PeerError(f"channel {chan} is not in the region ({self.channel_count} channels)")

    def client_off(self, chan: int) -> int:
        seg = self.segments[1 + 2 * self.group_of(chan)]
        return seg.offset + (chan - seg.first_channel) * self.client_size

    def server_off(self, chan: int) -> int:
        seg = self.segments[2 + 2 * self.group_of(chan)]
        return seg.offset + (chan - seg.first_channel) * self.server_size

    def channel(self, chan: int) -> Channel:
        return Channel(self, chan)

    def notify_server(self, chan: int) -> bool:
        """N2 (docs/ring-protocol.md section 8), as the ring client does it: a full fence, then,
        when the header says the server sleeps on a futex, bump the group's wake word (in the
        client section of the group's first channel) and wake it. True when it notified."""
        if not notify.AVAILABLE:
            return False
        notify.fence()
        if self.u32(152) == 0 or self.u32(156) != 1:  # server_sleeping, notify_kind futex
            return False
        first = self.segments[1 + 2 * self.group_of(chan)].first_channel
        m, lo = self.mapping(self.client_off(first) + 24, 8, write=True)
        notify.bump_and_wake(ctypes.addressof(ctypes.c_char.from_buffer(m.mm, lo)))
        if m.shadow is not None:  # our own write, for `written`
            m.shadow[lo: lo + 8] = m.mm[lo: lo + 8]
        return True


class Channel:
    """One channel seen from its client: claim, push, pop, all with bounded waits."""

    def __init__(self, region: Region, chan: int):
        self.r = region
        self.chan = chan
        self.c = region.client_off(chan)
        self.s = region.server_off(chan)
        self.req_data = self.c + PAGE
        self.resp_data = self.s + PAGE
        self.token = 0
        self.epoch = 0
        self.req_head = 0
        self.resp_tail = 0
        self.gen = 0
        self.next_id = 1
        self._hb_stop: threading.Event | None = None
        self._hb_thread: threading.Thread | None = None

    # ---- shared fields ----
    @property
    def claim_token(self) -> int:
        return self.r.u64(self.c + 0)

    @property
    def ack_token(self) -> int:
        return self.r.u64(self.s + 0)

    @property
    def dead_token(self) -> int:
        return self.r.u64(self.s + 8)

    @property
    def state(self) -> int:
        return self.r.u32(self.s + 16)

    @property
    def last_error(self) -> int:
        return self.r.u32(self.s + 20)

    @property
    def session_gen(self) -> int:
        return self.r.u32(self.s + 24)

    @property
    def req_tail(self) -> int:
        return self.r.u64(self.s + 64)

    @property
    def resp_head(self) -> int:
        return self.r.u64(self.s + 128)

    def beat(self) -> None:
        self.r.put_u64(self.c + 8, self.r.u64(self.c + 8) + 1)

    # ---- session ----
    def claim(self, timeout: float = 5.0, token: int | None = None) -> None:
        """Claim this channel (tests give each peer its own channel: no CAS needed)."""
        seen = self.claim_token
        if seen not in (0, self.dead_token) and seen != self.token:
            raise PeerError(f"channel {self.chan} is held by token {seen:#x}")
        self.token = token or random.getrandbits(64) or 1
        self.r.put_u32(self.c + 16, os.getpid())
        self.r.put_u64(self.c + 0, self.token)
        self.beat()
        self.notify()  # a sleeping server looks at the claim now
        deadline = time.monotonic() + timeout
        while self.ack_token != self.token:
            if time.monotonic() > deadline:
                raise PeerError(f"channel {self.chan}: no ack within {timeout}s "
                                f"(ack {self.ack_token:#x}, state {self.r.server_state})")
            self.beat()
            time.sleep(0.0005)
        self.epoch = self.r.epoch
        self.req_head = self.r.u64(self.c + 64)
        self.resp_tail = self.r.u64(self.c + 128)
        self.gen = self.session_gen

    def tag(self, seq: int) -> int:
        """The id of request ``seq`` in this session: session_gen in the high half (4.3)."""
        return (self.gen << 32) | (seq & 0xFFFFFFFF)

    def stamp(self, msg: bytes) -> bytes:
        """``msg`` (one message) with this session's generation in its id's high half."""
        if len(msg) < HDR:
            return msg
        return msg[:12] + struct.pack("<I", self.gen) + msg[16:]

    def release(self) -> None:
        self.stop_heartbeat()
        self.r.put_u64(self.c + 0, 0)
        self.token = 0

    def start_heartbeat(self, period: float | None = None) -> None:
        period = period or max(self.r.lease_ms / 8000.0, 0.005)
        self._hb_stop = threading.Event()

        def run(stop: threading.Event) -> None:
            while not stop.wait(period):
                self.beat()

        self._hb_thread = threading.Thread(target=run, args=(self._hb_stop,), daemon=True)
        self._hb_thread.start()

    def stop_heartbeat(self) -> None:
        if self._hb_stop:
            self._hb_stop.set()
            self._hb_thread.join(5)
            self._hb_stop = None

    # ---- raw ring access ----
    def write_req_bytes(self, pos: int, data: bytes) -> None:
        """Copy bytes into the request ring at stream position pos (wrapping)."""
        size = self.r.req_ring_size
        off = pos & (size - 1)
        first = min(len(data), size - off)
        base = self.req_data
        self.r.mm[base + off: base + off + first] = data[:first]
        if first < len(data):
            self.r.mm[base: base + len(data) - first] = data[first:]

    def publish_head(self, head: int, notify: bool = True) -> None:
        self.r.put_u64(self.c + 64, head)
        if notify:
            self.r.notify_server(self.chan)

    def notify(self) -> bool:
        """N2 alone: wake a sleeping server (what a client does after publishing)."""
        return self.r.notify_server(self.chan)

    def push_raw(self, data: bytes, advance: int | None = None, publish: bool = True) -> None:
        """Write bytes at req_head; advance the head by `advance` (default: padded length)."""
        self.write_req_bytes(self.req_head, data)
        self.req_head += align8(len(data)) if advance is None else advance
        if publish:
            self.publish_head(self.req_head)

    def wait_room(self, need: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.r.req_ring_size - (self.req_head - self.req_tail) < need:
            if time.monotonic() > deadline:
                raise PeerError(f"channel {self.chan}: request ring stays full")
            time.sleep(0.0002)

    def send(self, op: int, args: list[bytes] = (), flags: int = 0, ttl_ms: int = 0,
             req_id: int | None = None) -> int:
        if req_id is None:
            req_id = self.tag(self.next_id)
            self.next_id += 1
        msg = encode_request(op, list(args), req_id, flags, ttl_ms)
        self.wait_room(len(msg))
        self.push_raw(msg)
        return req_id

    def _read_resp(self, pos: int, n: int) -> bytes:
        size = self.r.resp_ring_size
        off = pos & (size - 1)
        first = min(n, size - off)
        base = self.resp_data
        data = bytes(self.r.mm[base + off: base + off + first])
        if first < n:
            data += bytes(self.r.mm[base: base + n - first])
        return data

    def recv(self, timeout: float = 5.0) -> tuple[int, int, bytes]:
        """(status, id, payload) of the next response; ST_UNKNOWN_OUTCOME on a restart."""
        deadline = time.monotonic() + timeout
        hb, hb_at = self.r.heartbeat, time.monotonic()
        dead_after = max(10 * self.r.heartbeat_ms / 1000.0, 1.0)
        while True:
            head = self.resp_head
            used = (head - self.resp_tail) & 0xFFFFFFFFFFFFFFFF
            if used > self.r.resp_ring_size:
                raise PeerError(f"resp_head - resp_tail = {used} exceeds the ring")
            if used >= HDR:
                break
            if self.r.epoch != self.epoch:
                return ST_UNKNOWN_OUTCOME, 0, b"server restarted"
            if self.r.server_state != SERVER_RUNNING:
                raise ServerGone(f"server_state {self.r.server_state}")
            now = time.monotonic()
            if self.r.heartbeat != hb:
                hb, hb_at = self.r.heartbeat, now
            elif now - hb_at > dead_after:
                raise ServerGone("server heartbeat stands still")
            if now > deadline:
                raise PeerError(f"channel {self.chan}: no response within {timeout}s "
                                f"(state {self.state}, last_error {self.last_error})")
            time.sleep(0.0001)
        length, status, _flags, _argc, rid = MSG_HEADER.unpack(self._read_resp(self.resp_tail,
                                                                               HDR))
        if length < HDR or align8(length) > used:
            raise PeerError(f"response length {length} does not fit {used} published bytes")
        payload = self._read_resp(self.resp_tail + HDR, length - HDR)
        self.resp_tail += align8(length)
        self.r.put_u64(self.c + 128, self.resp_tail)
        return status, rid, payload

    def request(self, op: int, args: list[bytes] = (), flags: int = 0, ttl_ms: int = 0,
                timeout: float = 5.0) -> tuple[int, bytes]:
        rid = self.send(op, args, flags, ttl_ms)
        status, got, payload = self.recv(timeout)
        if status != ST_UNKNOWN_OUTCOME and got != rid:
            raise PeerError(f"response id {got} for request {rid}")
        return status, payload

    # ---- conveniences ----
    def get(self, key: bytes) -> tuple[int, bytes]:
        return self.request(OP_GET, [key])

    def set(self, key: bytes, value: bytes, ttl_ms: int = 0) -> tuple[int, bytes]:
        return self.request(OP_SET, [key, value], FLAG_TTL if ttl_ms else 0, ttl_ms)

    def delete(self, *keys: bytes) -> tuple[int, bytes]:
        return self.request(OP_DEL, list(keys))

    def cmd(self, *argv: bytes) -> tuple[int, bytes]:
        return self.request(OP_CMD, list(argv))

    def ping(self) -> tuple[int, bytes]:
        return self.request(OP_PING)
