"""An in-process fake of the cxl_ring server side (layout v5 and v2), for unit tests.

It follows docs/ring-protocol.md closely enough to exercise the client (claims, acks, rings,
statuses, quarantine, heartbeat, epoch changes), and lets tests misbehave on purpose: pause,
stop the heartbeat as if killed, restart with a new epoch, or write arbitrary bytes into a
response section. It is not the driver; the real-server tests use build/cxl_ring.so.

A layout 5 region comes in both forms: one file (``security="off"``) or a directory of segment
files (``security="secdsm"``: ``header``, ``client-<g>``, ``server-<g>``, each ``span`` bytes,
mode 0600). Like the driver, the fake maps ``header`` and every ``server-<g>`` read-write and
every ``client-<g>`` read-only, at their offsets in one reserved address range, so a write of
the fake into a client segment would fault instead of passing unnoticed.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import random
import threading
import time
import weakref

from cxl_ring import protocol as P
from cxl_ring import region as R
from cxl_ring.resp import encode_bulk, encode_error, encode_integer, encode_simple

M = P.U64_MASK


def _map_directory(path: str, plan: P.LayoutPlan, align: int) -> ctypes.Array:
    """Create the segment files of ``plan`` in ``path`` and map them as the server does."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    reserved = plan.region_size + align
    start = R._mmap(None, reserved, R.PROT_NONE, R.MAP_PRIVATE | R.MAP_ANONYMOUS, -1, 0)
    base = (start + align - 1) & ~(align - 1)
    try:
        for seg in plan.segments:
            name = os.path.join(path, seg.name)
            fd = os.open(name, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                os.ftruncate(fd, seg.span)
            finally:
                os.close(fd)
            server_writes = seg.kind != P.SEG_CLIENT
            fd = os.open(name, os.O_RDWR if server_writes else os.O_RDONLY)
            try:
                prot = R.PROT_READ | (R.PROT_WRITE if server_writes else 0)
                R._mmap(base + seg.offset, seg.span, prot, R.MAP_SHARED | R.MAP_FIXED, fd, 0)
            finally:
                os.close(fd)
    except BaseException:
        R._munmap(start, reserved)
        raise
    arr = (ctypes.c_char * plan.region_size).from_address(base)
    weakref.finalize(arr, R._munmap, start, reserved)
    return arr


class FakeServer:
    def __init__(self, path: str, channels: int = 4, ring_size: int = 1 << 16,
                 max_value: int = 16 << 10, max_msg: int | None = None, heartbeat_ms: int = 20,
                 lease_ms: int = 400, layout: str = "v5", groups: list[int] | None = None,
                 security: str = "off", segment_align: int = 4096) -> None:
        self.path = path
        self.groups = list(groups) if groups is not None else [channels]
        self.channels = sum(self.groups)
        self.ring_size = ring_size
        self.max_value = max_value
        self.max_msg = max_msg if max_msg is not None else max_value + 1024
        self.heartbeat_ms = heartbeat_ms
        self.lease_ms = lease_ms
        self.layout = layout
        self.security = security
        self.store: dict[bytes, bytes] = {}
        self.paused = threading.Event()
        self.executed = 0
        self.forged: dict[int, bytes] = {}   # channel -> raw bytes that answer its next request
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.header_bytes = P.format_header(self.channels, ring_size, ring_size, max_value,
                                            self.max_msg, heartbeat_ms, lease_ms,
                                            groups=self.groups, segment_align=segment_align)
        self.header = P.parse_header(self.header_bytes)
        if security == "secdsm":
            assert layout == "v5", "layout v2 is one file"
            plan = P.plan_layout(self.groups, ring_size, ring_size, segment_align)
            self.mm = _map_directory(path, plan, segment_align)
            size = plan.region_size
        else:
            size = self.header.region_size if layout == "v5" else 4096 + channels * 2 * (
                16 + 8 * 4096)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                os.ftruncate(fd, size)
                self.mm = mmap.mmap(fd, size)
            finally:
                os.close(fd)
        self.buf = memoryview(self.mm).cast("B")
        self.u64 = self.buf.cast("Q")
        self.u32 = self.buf.cast("I")
        self.size = size
        # channel -> (client section, server section)
        self.sections = [(self.header.client_section(c), self.header.server_section(c))
                         for c in range(self.channels)]

    # ---- lifecycle

    def start(self) -> FakeServer:
        if self.layout == "v5":
            self.buf[8 : len(self.header_bytes)] = self.header_bytes[8:]
            self.buf[0:8] = P.MAGIC                              # F1: magic last
            self._new_epoch()
        else:
            self._format_v2()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fake-cxl-server")
        self._thread.start()
        return self

    def _new_epoch(self) -> None:
        h = self.header
        for c in range(self.channels):           # retire every session (section 7)
            cs, ss = h.client_section(c), h.server_section(c)
            self.u64[(ss + 8) // 8] = self.u64[cs // 8]
            self.u64[ss // 8] = 0
            self.u32[(ss + 16) // 4] = P.CHAN_FREE
        self.epoch = random.getrandbits(64) or 1
        self.u64[16] = self.epoch
        self.u32[37] = os.getpid()
        self.u32[36] = P.SERVER_RUNNING
        self._seen_hb = {}

    def kill(self) -> None:
        """Stop serving and heartbeating, leave the state RUNNING (like kill -9)."""
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        """Clean shutdown: STOPPING, then STOPPED."""
        if self.layout == "v5":
            self.u32[36] = P.SERVER_STOPPING
        self.kill()
        if self.layout == "v5":
            self.u32[36] = P.SERVER_STOPPED

    def close(self) -> None:
        self.stop()
        for v in (self.u64, self.u32, self.buf):
            v.release()
        if isinstance(self.mm, mmap.mmap):
            self.mm.close()
        self.mm = None
        if self.security == "secdsm":
            for seg in self.header.segments:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.path, seg.name))
            with contextlib.suppress(FileNotFoundError, OSError):
                os.rmdir(self.path)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    # ---- hostile helpers

    def channel_of(self, token: int) -> int:
        h = self.header
        for c in range(self.channels):
            if self.u64[h.server_section(c) // 8] == token:
                return c
        raise KeyError(token)

    def inject_response(self, channel: int, raw: bytes, publish: int | None = None) -> None:
        """Write raw bytes at the response producer position and publish ``publish`` bytes."""
        with self._lock:
            ss = self.header.server_section(channel)
            head = self.u64[(ss + 128) // 8]
            base = ss + 4096
            size = self.ring_size
            for i, b in enumerate(raw):
                self.buf[base + ((head + i) & (size - 1))] = b
            self.u64[(ss + 128) // 8] = (head + (len(raw) if publish is None else publish)) & M

    def forge_reply(self, channel: int, raw: bytes) -> None:
        """Answer the next request on ``channel`` with ``raw`` (published as is, whatever it
        frames) instead of its real response: a malformed reply to a request in flight."""
        with self._lock:
            self.forged[channel] = raw

    def set_resp_head(self, channel: int, value: int) -> None:
        with self._lock:
            self.u64[(self.header.server_section(channel) + 128) // 8] = value & M

    # ---- v3 server loop

    def _run(self) -> None:
        last_beat = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last_beat >= self.heartbeat_ms / 1000:
                if self.layout == "v5":
                    self.u64[17] = (self.u64[17] + 1) & M
                last_beat = now
            if self.paused.is_set():
                time.sleep(0.001)
                continue
            with self._lock:
                work = self._poll_v3(now) if self.layout == "v5" else self._poll_v2()
            if not work:
                time.sleep(0.0002)

    def _poll_v3(self, now: float) -> bool:
        h, u64, u32 = self.header, self.u64, self.u32
        work = False
        for c in range(self.channels):
            cs, ss = h.client_section(c), h.server_section(c)
            claim, ack, dead = u64[cs // 8], u64[ss // 8], u64[(ss + 8) // 8]
            if claim != 0 and claim != ack and claim != dead:       # accept
                u64[(ss + 64) // 8] = u64[(cs + 64) // 8]
                u64[(ss + 128) // 8] = u64[(cs + 128) // 8]
                u32[(ss + 16) // 4] = P.CHAN_ACTIVE
                u32[(ss + 20) // 4] = 0
                # a new generation per session (section 4.3): the client's ids carry it
                u32[(ss + P.OFF_SESSION_GEN) // 4] = (u32[(ss + P.OFF_SESSION_GEN) // 4] + 1
                                                      ) & 0xFFFFFFFF or 1
                u64[ss // 8] = claim                                 # S2
                self._seen_hb[c] = (u64[(cs + 8) // 8], now)
                work = True
                continue
            if claim == 0 and ack != 0:                              # release
                u64[ss // 8] = 0
                u32[(ss + 16) // 4] = P.CHAN_FREE
                continue
            if ack == 0 or ack != claim:
                continue
            hb = u64[(cs + 8) // 8]
            seen, when = self._seen_hb.get(c, (hb, now))
            if hb != seen:
                self._seen_hb[c] = (hb, now)
            elif now - when > self.lease_ms / 1000:                  # reclaim
                u64[(ss + 8) // 8] = claim
                u64[ss // 8] = 0
                u32[(ss + 16) // 4] = P.CHAN_FREE
                continue
            if u32[(ss + 16) // 4] == P.CHAN_ACTIVE:
                work |= self._serve(c, cs, ss)
        return work

    def _quarantine(self, c: int, ss: int, why: str) -> None:
        self.u32[(ss + 20) // 4] = P.ST_PROTOCOL_ERROR
        self._respond(c, P.ST_PROTOCOL_ERROR, 0, why.encode())
        self.u32[(ss + 16) // 4] = P.CHAN_QUARANTINED

    def _respond(self, c: int, status: int, rid: int, payload: bytes) -> bool:
        msg = P.encode_response(status, rid, payload)
        cs, ss = self.sections[c]
        head = self.u64[(ss + 128) // 8]
        tail = self.u64[(cs + 128) // 8]
        if self.ring_size - ((head - tail) & M) < len(msg):
            return False
        base, size = ss + 4096, self.ring_size
        off = head & (size - 1)
        first = min(len(msg), size - off)
        self.buf[base + off : base + off + first] = msg[:first]
        if first < len(msg):
            self.buf[base : base + len(msg) - first] = msg[first:]
        self.u64[(ss + 128) // 8] = (head + len(msg)) & M
        return True

    def _publish_raw(self, ss: int, raw: bytes) -> None:
        head = self.u64[(ss + 128) // 8]
        base, size = ss + 4096, self.ring_size
        for i, b in enumerate(raw):
            self.buf[base + ((head + i) & (size - 1))] = b
        self.u64[(ss + 128) // 8] = (head + len(raw)) & M

    def _serve(self, c: int, cs: int, ss: int) -> bool:
        u64 = self.u64
        size = self.ring_size
        head = u64[(cs + 64) // 8]
        tail = u64[(ss + 64) // 8]
        used = (head - tail) & M
        if used == 0:
            return False
        if used > size:
            self._quarantine(c, ss, "request ring: head - tail > ring size")
            return True
        base = cs + 4096
        work = False
        while used >= 16:
            off = tail & (size - 1)
            raw = bytes(self.buf[base + off : base + min(off + 16, size)])
            if len(raw) < 16:
                raw += bytes(self.buf[base : base + 16 - len(raw)])
            n, _op, _f, _argc, rid = P.MSG_HEADER.unpack(raw)
            if n < 16 or P.align8(n) > used:
                self._quarantine(c, ss, f"bad request len {n}")
                return True
            step = P.align8(n)
            # reply capacity check: the largest reply is bounded by max_msg
            resp_head = u64[(ss + 128) // 8]
            resp_tail = u64[(cs + 128) // 8]
            if size - ((resp_head - resp_tail) & M) < self.max_msg + 64:
                break
            forged = self.forged.pop(c, None)
            if forged is not None:
                self._publish_raw(ss, forged)
            elif n > self.max_msg:
                self._respond(c, P.ST_TOO_LARGE, rid, b"request larger than max_msg_size")
            else:
                msg = bytes(self.buf[base + off : base + min(off + n, size)])
                if len(msg) < n:
                    msg += bytes(self.buf[base : base + n - len(msg)])
                try:
                    req = P.decode_request(msg, self.max_msg, self.max_value)
                except P.RequestRejected as e:
                    self._respond(c, e.status, rid, e.text.encode())
                else:
                    status, payload = self._execute(req)
                    self._respond(c, status, rid, payload)
            tail = (tail + step) & M
            used -= step
            u64[(ss + 64) // 8] = tail                              # C2
            work = True
        return work

    def _execute(self, req: P.Request) -> tuple[int, bytes]:
        self.executed += 1
        op, a = req.op, req.args
        if op == P.OP_GET:
            v = self.store.get(a[0])
            if v is None:
                return P.ST_NOT_FOUND, b""
            if len(v) > self.max_value:
                return P.ST_TOO_LARGE, b"value larger than max_value"
            return P.ST_OK, v
        if op == P.OP_SET:
            self.store[a[0]] = a[1]
            return P.ST_OK, b""
        if op == P.OP_DEL:
            return P.ST_OK, P.DEL_COUNT.pack(sum(self.store.pop(k, None) is not None for k in a))
        if op == P.OP_PING:
            return P.ST_OK, b""
        reply = self._cmd([x for x in a])
        if len(reply) + 16 > self.max_msg:
            return P.ST_TOO_LARGE, b"reply too large"
        return P.ST_OK, reply

    def _cmd(self, argv: list[bytes]) -> bytes:
        name = argv[0].upper()
        if name == b"PING":
            return encode_simple(b"PONG")
        if name == b"ECHO" and len(argv) == 2:
            return encode_bulk(argv[1])
        if name == b"EXISTS":
            return encode_integer(sum(k in self.store for k in argv[1:]))
        if name == b"GET" and len(argv) == 2:
            return encode_bulk(self.store.get(argv[1]))
        if name == b"SET" and len(argv) >= 3:
            opts = [o.upper() for o in argv[3:]]
            exists = argv[1] in self.store
            if (b"NX" in opts and exists) or (b"XX" in opts and not exists):
                return encode_bulk(None)
            old = self.store.get(argv[1])
            self.store[argv[1]] = argv[2]
            return encode_bulk(old) if b"GET" in opts else encode_simple(b"OK")
        if (name == b"INCR" and len(argv) == 2) or (name == b"INCRBY" and len(argv) == 3):
            try:
                v = int(self.store.get(argv[1], b"0")) + (int(argv[2]) if len(argv) == 3 else 1)
            except ValueError:
                return encode_error("ERR value is not an integer or out of range")
            self.store[argv[1]] = str(v).encode()
            return encode_integer(v)
        if name == b"LRANGE":
            return b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"
        if name == b"DBSIZE":
            return encode_integer(len(self.store))
        return encode_error(f"ERR unknown command '{argv[0].decode(errors='replace')}'")

    # ---- v2

    def _format_v2(self) -> None:
        slots = 8
        ring_bytes = 16 + slots * 4096
        self.v2_rings = []
        for i in range(self.channels):
            req_off = 4096 + i * 2 * ring_bytes
            resp_off = req_off + ring_bytes
            P.V2_RING_DESC.pack_into(self.buf, 24 + 32 * i, req_off, ring_bytes, resp_off,
                                     ring_bytes)
            self.v2_rings.append((req_off, resp_off, slots))
        P.V2_REGION_HEADER.pack_into(self.buf, 0, P.V2_MAGIC, 2, self.channels, 0)

    def _poll_v2(self) -> bool:
        work = False
        u64 = self.u64
        for req_off, resp_off, slots in self.v2_rings:
            while u64[req_off // 8] != u64[req_off // 8 + 1]:
                if (u64[resp_off // 8] - u64[resp_off // 8 + 1]) & M >= slots:
                    break
                tail = u64[req_off // 8 + 1]
                so = req_off + 16 + (tail % slots) * 4096
                slot = bytes(self.buf[so : so + 4096])
                _cid, _t, _f, n, _ = P.V2_SLOT_HEADER.unpack_from(slot)
                op, klen, vlen = P.V2_REQUEST_PREFIX.unpack_from(slot, 16)
                key = slot[20 : 20 + klen]
                if op == P.V2_OP_SET:
                    self.store[key] = slot[20 + klen : 20 + klen + vlen]
                    payload = P.V2_RESPONSE_PREFIX.pack(P.V2_ST_OK, 0)
                elif op == P.V2_OP_GET and key in self.store:
                    v = self.store[key]
                    payload = P.V2_RESPONSE_PREFIX.pack(P.V2_ST_OK, len(v)) + v
                elif op == P.V2_OP_GET:
                    payload = P.V2_RESPONSE_PREFIX.pack(P.V2_ST_MISS, 0)
                else:
                    payload = P.V2_RESPONSE_PREFIX.pack(P.V2_ST_ERR, 0)
                head = u64[resp_off // 8]
                ro = resp_off + 16 + (head % slots) * 4096
                out = P.V2_SLOT_HEADER.pack(_cid, 1, 0, len(payload), 0) + payload
                self.buf[ro : ro + 4096] = out + b"\0" * (4096 - len(out))
                u64[resp_off // 8] = head + 1
                u64[req_off // 8 + 1] = tail + 1
                work = True
        return work
