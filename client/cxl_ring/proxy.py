"""A RESP2 server that forwards every command over the ring: unmodified Redis clients
(redis-cli, redis-benchmark, redis-py, applications) talk to the cxl_ring driver.

    cxl-ring proxy --listen 127.0.0.1:6380 --path /dev/cxl/cxl0   # or a region file

Design: one asyncio event loop and one ring channel. Commands from all connections are
framed into the request ring as they are parsed (GET, SET [EX|PX], DEL and PING natively,
everything else as CMD), so the pipelining of every client and the concurrency of many
clients become one stream of batches; a poller moves responses back. Responses on a channel
come in request order, so a FIFO of (connection, reply slot) routes them; each connection
keeps its own slots in command order, so a client sees its replies in order even when some
are answered by the proxy itself (QUIT, SELECT 0, CLIENT SETINFO) or are errors.

Malformed RESP gets ``-ERR Protocol error: ...`` after the replies already owed, then that
connection is closed; the proxy stays up. If the server dies or restarts, every reply in
flight becomes ``-ERR cxl_ring: ...`` (unknown outcome) and the proxy claims a channel again
for the next command.

RESP3: ``HELLO 3`` is accepted (redis-py 8 asks for it by default) but replies keep their RESP2
shape, a subset of RESP3 that RESP3 parsers read; commands whose RESP3 reply is a map or a set
come back as flat arrays. Clients that need exact RESP3 types should use ``protocol=2``.

Access control: every connection runs as the ACL user of the proxy's ring channel (its group's
user, or "default" where Redis needs no password); AUTH and HELLO AUTH are refused, since one
session carries every connection.

Limits: no MULTI/EXEC/WATCH, no BLPOP and kin or WAIT, no SUBSCRIBE and kin (the driver keeps,
blocks or pushes them per ring session, and one session carries every connection here: they are
refused; cxl-gateway gives such a connection a session of its own), no MONITOR (the driver runs
CMD like a script does, and Redis refuses it there); a slow CMD holds up
the replies queued behind it on the channel (head-of-line), as on one Redis connection.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
import time
from typing import Callable

from . import protocol as P
from .backoff import Backoff
from .channel import LIVENESS_PERIOD, Session, claim
from .exceptions import CxlRingError, ProtocolError, UnknownOutcomeError
from .region import Region
from .resp import CommandReader, RespError, decode_one_reply, encode_bulk, encode_error

log = logging.getLogger("cxl_ring.proxy")

OUTBOX_HIGH = 100_000    # queued requests before clients stop being read
OUTBOX_LOW = 20_000
WRITE_HIGH = 64 << 20    # bytes buffered for a slow client before it stops being read

_OK = b"+OK\r\n"
_ID_GEN = struct.Struct("<I")     # the high half of a message id, at offset 12
_PONG = b"+PONG\r\n"
_NIL = b"$-1\r\n"
_HELLO2 = (b"*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n"
           b"$5\r\nproto\r\n:2\r\n$2\r\nid\r\n:1\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n"
           b"$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n")
# HELLO 3 (redis-py >= 8 sends it by default): accepted so that such clients connect; replies
# stay RESP2-shaped, which RESP3 parsers read (a map-returning command arrives as a flat array).
_HELLO3 = (b"%7\r\n+server\r\n+redis\r\n+version\r\n+7.0.0\r\n+proto\r\n:3\r\n+id\r\n:1\r\n"
           b"+mode\r\n+standalone\r\n+role\r\n+master\r\n+modules\r\n*0\r\n")
_LOCAL_OK = {b"CLIENT": (b"SETINFO", b"SETNAME")}
# What the driver keeps or does per session: not for a session every connection shares (a
# BLPOP would hold every connection's replies behind it).
_SESSION_STATE = frozenset((b"MULTI", b"EXEC", b"DISCARD", b"WATCH", b"UNWATCH", b"BLPOP",
                            b"BRPOP", b"BRPOPLPUSH", b"BLMOVE", b"BLMPOP", b"BZPOPMIN",
                            b"BZPOPMAX", b"BZMPOP", b"WAIT", b"SUBSCRIBE", b"PSUBSCRIBE",
                            b"SSUBSCRIBE", b"UNSUBSCRIBE", b"PUNSUBSCRIBE", b"SUNSUBSCRIBE"))
_FWD_ERROR = {P.ST_TOO_LARGE: "ERR cxl_ring: too large: ", P.ST_BAD_REQUEST: "ERR cxl_ring: ",
              P.ST_UNKNOWN_OP: "ERR cxl_ring: ", P.ST_PROTOCOL_ERROR: "ERR cxl_ring: "}


class _Slot:
    """One reply a connection is owed, in its command order."""

    __slots__ = ("data", "close")

    def __init__(self, data: bytes | None = None, close: bool = False) -> None:
        self.data = data
        self.close = close


class _Conn(asyncio.Protocol):
    def __init__(self, proxy: RingProxy) -> None:
        self.proxy = proxy
        self.reader = CommandReader()
        self.slots: collections.deque[_Slot] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.proxy.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.proxy.conns.discard(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.reader.feed(data)
        error: RespError | None = None
        try:
            commands = self.reader.commands()
        except RespError as e:
            commands, error = [], e
        error = error or self.reader.error
        proxy = self.proxy
        for argv in commands:
            proxy.submit(self, argv)
            if self.closing:
                break
        if error is not None and not self.closing:
            self.slots.append(_Slot(encode_error(f"ERR Protocol error: {error}"), close=True))
            self.closing = True
        self.flush()
        proxy.pump()
        if self.transport is not None and (
            len(proxy.outbox) > OUTBOX_HIGH
            or self.transport.get_write_buffer_size() > WRITE_HIGH
        ):
            self.transport.pause_reading()
            proxy.paused.add(self)

    def flush(self) -> None:
        slots = self.slots
        if not slots or slots[0].data is None or self.transport is None:
            return
        out = []
        close = False
        while slots and slots[0].data is not None:
            s = slots.popleft()
            out.append(s.data)
            if s.close:
                close = True
                break
        if not self.transport.is_closing():
            self.transport.write(b"".join(out))
            if close:
                self.transport.close()


class RingProxy:
    """The proxy's state: listening sockets, connections, one ring session, the FIFOs."""

    def __init__(self, path: str, map_size: int | None = None, timeout: float = 5.0,
                 doorbell: str | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.region = Region(path, map_size, doorbell=doorbell)  # doorbell: as RingClient's
        self.region.layout()
        self.header = self.region.header()
        self.session: Session | None = None
        self.outbox: collections.deque[bytes] = collections.deque()
        # (connection, slot, op) for every request framed (outbox or ring), in ring order
        self.pending: collections.deque[tuple[_Conn, _Slot, int]] = collections.deque()
        self.sent = 0           # pending entries whose message is in the ring
        self.next_id = 1
        self.conns: set[_Conn] = set()
        self.paused: set[_Conn] = set()
        self._poller: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self.stats = collections.Counter()
        self._server: asyncio.AbstractServer | None = None

    # ---- session

    def _ensure_session(self) -> Session:
        s = self.session
        if s is not None and not s.broken:
            return s
        if s is not None:
            s.release()
        self.session = s = claim(self.region, self.header, self.timeout)
        s.next_id = self.next_id - len(self.outbox)  # go on with the proxy's numbering
        return s

    def _renew_session(self, s: Session) -> Session:
        """The server retired our session or restarted (sections 5 and 7).

        With requests in flight their outcome is unknown (check_alive raises
        UnknownOutcomeError, the caller fails them). With nothing in flight the proxy quietly
        claims a channel again; the new Session adopts the ring indexes from shared memory,
        so nothing cached by the old one (req_head, the last req_tail seen) is reused."""
        if self.sent:
            s.check_alive(time.monotonic(), self.sent)
            raise UnknownOutcomeError(
                f"session on channel {s.index} lost with {self.sent} request(s) in flight: "
                "outcome unknown", pending=self.sent)
        s.release()
        self.session = None
        log.info("ring session on channel %d lost while idle; claiming again", s.index)
        return self._ensure_session()

    def _fail_all(self, err: Exception) -> None:
        """The session died: every reply owed becomes an error; start afresh."""
        data = encode_error(f"ERR cxl_ring: {err}")
        touched = set()
        for conn, slot, _op in self.pending:
            slot.data = data
            touched.add(conn)
        self.pending.clear()
        self.outbox.clear()
        self.sent = 0
        self.stats["session_failures"] += 1
        if self.session is not None:
            self.session.broken = True
        for conn in touched:
            conn.flush()
        log.warning("ring session failed: %s", err)

    # ---- commands

    def submit(self, conn: _Conn, argv: list[bytes]) -> None:
        """Queue one client command: a local reply, or a request framed for the ring."""
        self.stats["commands"] += 1
        name = argv[0].upper()
        n = len(argv)
        slot = _Slot()
        conn.slots.append(slot)
        rid = self.next_id
        if name == b"GET" and n == 2:
            op, msg = P.OP_GET, P.encode_get(argv[1], rid)
        elif name == b"SET" and (n == 3 or (n == 5 and argv[3].upper() in (b"EX", b"PX"))):
            ttl = 0
            if n == 5:
                try:
                    ttl = int(argv[4]) * (1000 if argv[3].upper() == b"EX" else 1)
                except ValueError:
                    ttl = -1
                if ttl <= 0:
                    slot.data = encode_error("ERR invalid expire time in 'set' command")
                    return
            op, msg = P.OP_SET, P.encode_set(argv[1], argv[2], rid, ttl)
        elif name == b"DEL" and 2 <= n <= P.MAX_ARGS + 1:
            op, msg = P.OP_DEL, P.encode_request(P.OP_DEL, argv[1:], rid)
        elif name == b"PING" and n == 1:
            op, msg = P.OP_PING, P.encode_request(P.OP_PING, (), rid)
        elif name == b"QUIT":
            slot.data, slot.close = _OK, True
            conn.closing = True
            return
        elif name == b"SELECT" and n == 2:
            slot.data = _OK if argv[1] == b"0" else encode_error(
                "ERR the cxl_ring proxy serves database 0 only")
            return
        elif name == b"AUTH" or (name == b"HELLO" and any(a.upper() == b"AUTH"
                                                            for a in argv[2:])):
            # One ring session carries every connection: an AUTH forwarded would switch the
            # user of all of them. They run as the channel's ACL user (docs/ring-protocol.md
            # section 12); per-connection users need a session per connection.
            slot.data = encode_error(
                "ERR the cxl_ring proxy does not forward AUTH: every connection runs as the "
                "ACL user of the proxy's ring channel")
            return
        elif name in _SESSION_STATE:
            # Kept per ring session (docs/ring-protocol.md section 13): on the one session
            # every connection shares, one client's MULTI would queue everyone's commands.
            slot.data = encode_error(
                f"ERR the cxl_ring proxy does not forward {name.decode()}: its connections "
                "share one ring session (use the ring client, or a session of your own)")
            return
        elif name == b"HELLO":
            if n >= 2 and argv[1] not in (b"2", b"3"):
                slot.data = encode_error("NOPROTO unsupported protocol version")
            else:
                slot.data = _HELLO3 if n >= 2 and argv[1] == b"3" else _HELLO2
            return
        elif name in _LOCAL_OK and n >= 2 and argv[1].upper() in _LOCAL_OK[name]:
            slot.data = _OK
            return
        else:
            if n > P.MAX_ARGS:
                slot.data = encode_error(f"ERR cxl_ring: more than {P.MAX_ARGS} arguments")
                return
            op, msg = P.OP_CMD, P.encode_request(P.OP_CMD, argv, rid)
        if len(msg) > self.header.max_msg_size or any(
            len(a) > self.header.max_value_size for a in argv[1:]
        ):
            slot.data = encode_error(
                f"ERR cxl_ring: request too large (max value {self.header.max_value_size} bytes)"
            )
            return
        self.next_id = rid + 1
        self.outbox.append(msg)
        self.pending.append((conn, slot, op))

    # ---- ring I/O

    def pump(self) -> bool:
        """Move requests into the ring and responses out; True if anything moved."""
        if not self.pending:
            return False
        try:
            s = self._ensure_session()
            if s.lost():
                s = self._renew_session(s)
            moved = self._write_outbox(s) | self._read_responses(s)
        except CxlRingError as e:
            self._fail_all(e)
            return True
        if self.pending and self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        if self.paused and len(self.outbox) < OUTBOX_LOW:
            for conn in list(self.paused):
                if conn.transport is not None and (
                        conn.transport.get_write_buffer_size() < WRITE_HIGH // 2):
                    conn.transport.resume_reading()
                    self.paused.discard(conn)
        return moved

    def _write_outbox(self, s: Session) -> bool:
        outbox = self.outbox
        if not outbox:
            return False
        s.check_ready()   # before reading req_tail: a retired session's indexes mean nothing
        if not self.sent:
            s.check_idle()    # nothing in flight: a response in the ring is unsolicited
        free = s._free_request_bytes()
        chunk = []
        total = 0
        while outbox and total + len(outbox[0]) <= free:
            m = outbox.popleft()
            chunk.append(m)
            total += len(m)
        if not chunk:
            return False
        # Framed before a session existed: each id's high half becomes this session's
        # generation (section 4.3); the low half keeps the proxy's numbering.
        data = bytearray(b"".join(chunk))
        off = 0
        for m in chunk:
            _ID_GEN.pack_into(data, off + 12, s.gen)
            off += len(m)
        s._write(bytes(data))
        self.sent += len(chunk)
        s.next_id += len(chunk)
        self.stats["ring_batches"] += 1
        return True

    def _read_responses(self, s: Session) -> bool:
        if not self.sent:
            return False
        got = s._read(self.sent)
        if not got:
            return False
        expect = s.next_id - self.sent
        touched = set()
        pending = self.pending
        for r in got:
            if r.id != P.make_id(s.gen, expect):
                s.broken = True
                raise ProtocolError(f"response id {r.id:#x}, expected "
                                    f"{P.make_id(s.gen, expect):#x}")
            expect += 1
            conn, slot, op = pending.popleft()
            slot.data = self._to_resp(op, r)
            touched.add(conn)
        self.sent -= len(got)
        if not self.sent:
            s._scrub_idle()     # every request answered: zero their bytes (section 3.1)
        for conn in touched:
            conn.flush()
        return True

    @staticmethod
    def _to_resp(op: int, r: P.Response) -> bytes:
        st = r.status
        if st == P.ST_OK:
            if op == P.OP_GET:
                return encode_bulk(r.payload)
            if op == P.OP_SET:
                return _OK
            if op == P.OP_CMD:
                try:
                    decode_one_reply(r.payload)
                except ProtocolError as e:
                    return encode_error(f"ERR cxl_ring: bad reply from the server: {e}")
                return r.payload
            if op == P.OP_DEL and len(r.payload) == 8:
                return b":%d\r\n" % P.DEL_COUNT.unpack(r.payload)[0]
            if op == P.OP_PING:
                return _PONG
            return encode_error("ERR cxl_ring: malformed reply")
        if st == P.ST_NOT_FOUND and op == P.OP_GET:
            return _NIL
        text = r.payload.decode("utf-8", "replace")
        if st in (P.ST_ERR, P.ST_OOM):
            word = text.split(" ", 1)[0]
            return encode_error(text if word.isupper() and word else f"ERR {text}")
        return encode_error(_FWD_ERROR.get(st, "ERR cxl_ring: ") + text)

    async def _poll(self) -> None:
        """Runs while replies are owed: spin on the ring between event loop turns, then back
        off (backoff.Backoff, awaited here so the loop never blocks); checks liveness and
        bounds the wait."""
        try:
            backoff = Backoff()
            next_check = 0.0
            while self.pending:
                if self.pump():
                    backoff.reset()
                    await asyncio.sleep(0)
                    continue
                now = time.monotonic()
                pause = backoff.next_pause(now)
                if not backoff.spinning and now >= next_check and self.session is not None \
                        and self.sent:
                    try:
                        self.session.check_alive(now, self.sent)
                    except CxlRingError as e:
                        self._fail_all(e)
                        continue
                    next_check = now + LIVENESS_PERIOD
                if backoff.waited > self.timeout and self.sent:
                    self._fail_all(CxlRingError(
                        f"no response for {self.timeout:g} s (outcome unknown)"))
                    continue
                await asyncio.sleep(pause or 0)   # spin and yield: one event loop turn
        finally:
            self._poller = None

    # ---- serving

    async def start(self, host: str, port: int) -> asyncio.AbstractServer:
        self._ensure_session()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), host, port,
                                                reuse_address=True, backlog=1024)
        return self._server

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.close()
        if self.session is not None:
            self.session.release()
            self.session = None
        self.region.close()


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT, not {listen!r}")
    return host.strip("[]"), int(port)


async def serve(path: str, listen: str, map_size: int | None = None, timeout: float = 5.0,
                ready: Callable[[tuple], None] | None = None,
                doorbell: str | None = None) -> None:
    """Run the proxy until cancelled."""
    host, port = parse_listen(listen)
    proxy = RingProxy(path, map_size, timeout, doorbell)
    try:
        server = await proxy.start(host, port)
        addr = server.sockets[0].getsockname()
        log.info("cxl-ring proxy on %s:%s -> %s", addr[0], addr[1], path)
        if ready is not None:
            ready(addr)
        async with server:
            await server.serve_forever()
    finally:
        proxy.close()
