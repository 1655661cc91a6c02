"""Channel sessions (claim, heartbeat, release) and the two SPSC byte rings of a channel.

Memory ordering in pure Python (docs/ring-protocol.md sections 3 and 5)
------------------------------------------------------------------------
The protocol's acquire loads and release stores are plain loads and stores on x86-64, whose
memory model (TSO) keeps stores in program order, keeps loads in program order, and never
moves a store before an earlier load. CPython performs each shared access below as a separate
C operation (a ``memoryview`` element load/store of a ``'Q'`` view is one aligned 8-byte
``mov``; a slice assignment is a ``memcpy``), and the interpreter's calls between bytecodes
are opaque to the C compiler, so program order in this file is the order the CPU sees:

- P0 (producer loads the consumer's tail, then writes data): load before later stores;
- P1 (data, then ``req_head``): stores in order, so ``req_head`` is a release;
- C1 (``resp_head``, then the data): loads in order, so ``resp_head`` is an acquire;
- C2 (copy the data, then store ``resp_tail``): loads before a later store.

The one thing TSO reorders is a store followed by a load of another location, which only
matters for the claim (S1): it needs a real compare-and-swap, see below. Other CPUs (arm64,
POWER) reorder freely, so this module refuses to run there (``check_platform``); a safe path
would route every index access through libatomic's ``__atomic_load_8``/``__atomic_store_8``
with acquire/release order, which is not implemented yet.

Claiming without a CAS in the standard library (S1)
---------------------------------------------------
``claim_token: seen -> token`` must be a sequentially consistent compare-and-swap, because
two clients (in different processes, even different guests) may race for the same free
channel; if both wrote their token with plain stores, the server could accept the first, and
then see the second as a new claim and silently restart the session under the first client.
_atomic.py provides a real ``lock cmpxchg`` through ctypes (libatomic, else a 9-byte machine
code stub), which is what runs on every x86-64 Linux we know of.

If neither is available (a hardened kernel without libatomic), claims fall back to
*write and verify*: within the process a lock serialises claims; across processes the client
re-reads ``claim_token`` (must still be ``seen``), stores its token, waits 1 ms, re-reads it
(must still be its token) and then waits for ``ack_token == token`` (the server acks exactly
one token, so two racing writers cannot both be acked at the same time). A writer that loses
after the verification window can still disturb the winner's session once: the winner then
sees ``ack_token != token`` before its next batch and claims again. That window is the
documented cost of the fallback; the backend in use is ``_atomic.CAS_BACKEND`` (cxl-ring info
prints it).

The session then bumps ``client_heartbeat`` from one process-wide background thread (every
``client_lease_ms / 8``), and releases with ``claim_token := 0`` on close. A process that dies
stops the heartbeat and the server reclaims the channel after ``client_lease_ms``.

The unpipelined round trip (Session.get / Session.set)
------------------------------------------------------
One GET or SET costs: two aligned loads (``ack_token``, ``server_state``), one ``pack_into``
of a per-length ``struct.Struct`` that lays out header, arguments and zero padding straight
into the request ring (protocol.get_frame / set_frame), one ``req_head`` store, a spin on
``resp_head``, one ``unpack_from`` of the response header into locals, validated, one copy of
the payload, one ``resp_tail`` store. The request ring's free space is computed from the last
``req_tail`` seen and re-read only when that is not enough; the server's epoch and heartbeat
are read only once a wait outlasts the spin. A wrap, a full ring, or any response that is not
the single whole expected message goes the general way (transact, _read, _wait_one), which
validates everything again. Measured on a shared 2-vCPU VM, server and client pinned: GET p50
2.5 us before, 1.35 us after, redis-py over TCP ~19 us (docs/benchmarks-python.md).

The optional C core (_speedups.c, FastSession) does the same steps in C, ~0.55 us p50. It is
never required: without a compiler, or with CXL_RING_PURE=1 in the environment, sessions are
pure-Python ``Session`` objects (``SPEEDUPS`` tells which). Both paths share one copy of the
ring indexes and hand every unusual case to the same Python code, and
tests/client/test_roundtrip_paths.py runs its tests with both.
"""

from __future__ import annotations

import os
import platform
import secrets
import threading
import time
import weakref

from . import _atomic
from . import protocol as P
from .exceptions import (
    CxlRingError,
    NoChannelError,
    ProtocolError,
    RequestTooLargeError,
    RingTimeoutError,
    ServerGoneError,
    UnknownOutcomeError,
)
from .region import Region

try:  # the optional C core of the round trip (_speedups.c); never required
    if os.environ.get("CXL_RING_PURE"):
        raise ImportError("CXL_RING_PURE is set")
    from ._speedups import SessionCore as _SessionCore
except ImportError:
    _SessionCore = None
SPEEDUPS = _SessionCore is not None

U64_MASK = P.U64_MASK
SPIN_ROUNDS = 200          # pure spinning before the first time check (~10-20 us)
YIELD_SECONDS = 0.002      # then sched_yield() (gives the GIL and the CPU away) this long
# sched_yield, not sleep(0): the latter is a timed sleep that costs the timer slack (~50 us);
# yielding lets a server thread that shares our CPU run at once.
_yield = getattr(os, "sched_yield", None) or (lambda: time.sleep(0))
SLEEP_MIN, SLEEP_MAX = 50e-6, 1e-3
LIVENESS_PERIOD = 0.005    # how often a waiting client looks at the server's liveness fields
_SPIN = range(SPIN_ROUNDS)
# Module constants as globals: one dict lookup each on the hot path instead of two.
_GET_FRAMES = P.GET_FRAMES
_MSG_HEADER = P.MSG_HEADER
_OP_GET, _OP_SET = P.OP_GET, P.OP_SET
_SERVER_STATE_I32 = P.OFF_SERVER_STATE // 4
_SERVER_EPOCH_I = P.OFF_SERVER_EPOCH // 8
_RUNNING = P.SERVER_RUNNING
_ST_PROTOCOL_ERROR = P.ST_PROTOCOL_ERROR


def check_platform() -> None:
    """Refuse to run where plain Python stores are not ordered (see the module docstring)."""
    machine = platform.machine()
    if machine not in ("x86_64", "AMD64") and not os.environ.get("CXL_RING_ASSUME_TSO"):
        raise CxlRingError(
            f"pure-Python ring access relies on x86-64 store ordering (TSO); this CPU is "
            f"{machine!r}. Set CXL_RING_ASSUME_TSO=1 only if you know the stores are ordered."
        )


def new_token() -> int:
    return secrets.randbits(64) or 1


class SessionLost(CxlRingError):
    """Internal: the session is no longer acknowledged (ack_token != token) or the server
    restarted (server_epoch changed) while nothing was in flight: claim again (section 5
    reclaim, section 7 restart) and send the request on the new session. A new Session object
    adopts req_head / resp_tail from shared memory; nothing cached by the old one is reused."""


# ---- Heartbeat ---------------------------------------------------------------------------------


class _LeaseKeeper:
    """One daemon thread per process that bumps client_heartbeat of every live session."""

    def __init__(self) -> None:
        self._sessions: weakref.WeakSet[Session] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def add(self, session: Session) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="cxl-ring-lease",
                                                daemon=True)
                self._thread.start()
            self._sessions.add(session)
        self._wake.set()

    def discard(self, session: Session) -> None:
        with self._lock:
            self._sessions.discard(session)

    def _run(self) -> None:
        while True:
            with self._lock:
                sessions = list(self._sessions)
            period = 0.25
            for s in sessions:
                s.beat()
                period = min(period, s.lease_seconds / 8)
            del sessions
            self._wake.wait(max(period, 0.005))
            self._wake.clear()


LEASE_KEEPER = _LeaseKeeper()
_claim_lock = threading.Lock()


# ---- Sessions ----------------------------------------------------------------------------------


class Session:
    """A claimed channel: this thread's request ring (producer) and response ring (consumer).

    Private copies: ``req_head`` and ``resp_tail`` are this side's own indexes, written to
    shared memory but never read back during the session.
    """

    def __init__(self, region: Region, header: P.RegionHeader, index: int, token: int) -> None:
        self.region = region
        self.header = header
        self.index = index
        self.token = token
        self.u64 = region.u64
        self.u32 = region.u32
        cs, ss = header.client_section(index), header.server_section(index)
        self.claim_i = cs // 8
        self.client_heartbeat_i = (cs + P.OFF_CLIENT_HEARTBEAT) // 8
        self.client_pid_i32 = (cs + P.OFF_CLIENT_PID) // 4
        self.req_head_i = (cs + P.OFF_REQ_HEAD) // 8
        self.resp_tail_i = (cs + P.OFF_RESP_TAIL) // 8
        self.ack_i = ss // 8
        self.dead_i = (ss + P.OFF_DEAD_TOKEN) // 8
        self.chan_state_i32 = (ss + P.OFF_CHAN_STATE) // 4
        self.last_error_i32 = (ss + P.OFF_LAST_ERROR) // 4
        self.req_tail_i = (ss + P.OFF_REQ_TAIL) // 8
        self.resp_head_i = (ss + P.OFF_RESP_HEAD) // 8
        self.req_size = header.req_ring_size
        self.resp_size = header.resp_ring_size
        self.req_mask = self.req_size - 1
        self.resp_mask = self.resp_size - 1
        self.mm = region.mm
        base = cs + P.CONTROL_SIZE
        self.req_data = region.buf[base : base + self.req_size]
        base = ss + P.CONTROL_SIZE
        self.resp_base = base
        self.resp_data = region.buf[base : base + self.resp_size]
        self.max_msg = header.max_msg_size
        self.max_value = header.max_value_size
        self.lease_seconds = header.client_lease_ms / 1000.0
        self.dead_after = header.server_dead_after
        self.req_head = 0
        self.req_tail_seen = 0     # the server's req_tail at our last look (it only grows)
        self.resp_tail = 0
        self.next_id = 1
        self.epoch = 0
        self.broken = False
        self._beat_count = 0

    # -- claim / release

    def beat(self) -> None:
        """Bump client_heartbeat (called by the lease keeper thread only, after the claim)."""
        if self.u64 is None:
            return
        self._beat_count = (self._beat_count + 1) & U64_MASK
        self.u64[self.client_heartbeat_i] = self._beat_count

    def _take(self, seen: int) -> bool:
        """S1: claim_token: seen -> token."""
        cas = _atomic.cas64
        if cas is not None:
            return cas(self.region.address() + self.claim_i * 8, seen, self.token) == seen
        with _claim_lock:  # write and verify (see the module docstring)
            if self.u64[self.claim_i] != seen:
                return False
            self.u64[self.claim_i] = self.token
            time.sleep(0.001)
            return self.u64[self.claim_i] == self.token

    def _await_ack(self, deadline: float) -> None:
        """S3: wait until ack_token == token, then adopt the ring indexes."""
        u64 = self.u64
        self._beat_count = u64[self.client_heartbeat_i] + 1
        u64[self.client_heartbeat_i] = self._beat_count & U64_MASK
        self.u32[self.client_pid_i32] = os.getpid() & 0xFFFFFFFF
        delay = 20e-6
        while u64[self.ack_i] != self.token:
            if u64[self.claim_i] != self.token:
                raise SessionLost("lost the claim race")
            if self.region.u32[P.OFF_SERVER_STATE // 4] != P.SERVER_RUNNING:
                self._drop_claim()
                raise ServerGoneError("server stopped while claiming a channel")
            now = time.monotonic()
            if self.region.heartbeat_age(now) > self.dead_after:
                self._drop_claim()
                raise ServerGoneError(
                    f"server heartbeat stood still for {self.region.heartbeat_age(now):.1f} s"
                )
            if now > deadline:
                self._drop_claim()
                raise RingTimeoutError(
                    f"server did not acknowledge the claim of channel {self.index}: "
                    "is the server alive (cxl-ring info)?"
                )
            time.sleep(delay)
            delay = min(delay * 2, 2e-3)
        self.epoch = u64[P.OFF_SERVER_EPOCH // 8]
        self.req_head = self.req_tail_seen = u64[self.req_head_i]
        self.resp_tail = u64[self.resp_tail_i]
        if u64[self.req_tail_i] != self.req_head or u64[self.resp_head_i] != self.resp_tail:
            self._drop_claim()
            raise ProtocolError(
                f"channel {self.index}: server acknowledged the session without emptying the "
                f"rings (req {u64[self.req_tail_i]}/{self.req_head}, "
                f"resp {u64[self.resp_head_i]}/{self.resp_tail})"
            )
        LEASE_KEEPER.add(self)

    def _drop_claim(self) -> None:
        if self.u64 is not None and self.u64[self.claim_i] == self.token:
            self.u64[self.claim_i] = 0

    def release_views(self) -> None:
        """Forget the shared memory without touching it (the claim was never ours)."""
        for view in (self.req_data, self.resp_data):
            view.release()
        self.u64 = self.u32 = self.mm = None

    def release(self) -> None:
        """Release the channel (claim_token := 0) and forget the shared memory."""
        LEASE_KEEPER.discard(self)
        if self.u64 is None:
            return
        try:
            self._drop_claim()
        finally:
            self.release_views()

    # -- liveness

    def check_ready(self) -> None:
        """Before a batch: our session is acknowledged and the server is alive."""
        if self.broken or self.lost():
            raise SessionLost(f"channel {self.index}: session no longer acknowledged")
        if self.u32[P.OFF_SERVER_STATE // 4] != P.SERVER_RUNNING:
            raise ServerGoneError("server is not running (server_state != RUNNING)")
        age = self.region.heartbeat_age(time.monotonic())
        if age > self.dead_after:
            raise ServerGoneError(f"server heartbeat has not moved for {age:.1f} s")

    def lost(self) -> bool:
        """The server no longer serves this session: it retired it (ack_token != token) or
        a new server started (server_epoch changed). Sections 5 (reclaim) and 7 (restart)."""
        u64 = self.u64
        return u64[self.ack_i] != self.token or u64[_SERVER_EPOCH_I] != self.epoch

    def check_alive(self, now: float, outstanding: int) -> None:
        """While waiting: raise if the server died, restarted or dropped our session."""
        u64 = self.u64
        reason = None
        if u64[P.OFF_SERVER_EPOCH // 8] != self.epoch:
            reason = "server restarted (epoch changed)"
        elif self.u32[P.OFF_SERVER_STATE // 4] != P.SERVER_RUNNING:
            state = self.u32[P.OFF_SERVER_STATE // 4]
            reason = f"server is {P.SERVER_STATE_NAMES.get(state, state)}"
        else:
            age = self.region.heartbeat_age(now)
            if age > self.dead_after:
                reason = f"server heartbeat stood still for {age:.1f} s"
        if reason is None and u64[self.ack_i] != self.token:
            reason = f"server retired our session on channel {self.index}"
        if reason is None and self.u32[self.chan_state_i32] == P.CHAN_QUARANTINED:
            self.broken = True
            raise ProtocolError(
                f"channel {self.index} quarantined by the server "
                f"(last_error {self.u32[self.last_error_i32]})"
            )
        if reason is None:
            return
        self.broken = True
        if outstanding:
            raise UnknownOutcomeError(
                f"{reason} with {outstanding} request(s) in flight: outcome unknown",
                pending=outstanding,
            )
        raise ServerGoneError(reason)

    # -- rings

    def _free_request_bytes(self) -> int:
        tail = self.u64[self.req_tail_i]                       # P0, pairs with the server's C2
        used = (self.req_head - tail) & U64_MASK
        if used > self.req_size:
            self.broken = True
            raise ProtocolError(
                f"channel {self.index}: corrupt request ring indexes "
                f"(head {self.req_head}, server tail {tail})"
            )
        self.req_tail_seen = tail
        return self.req_size - used

    def _write(self, data: bytes) -> None:
        """Copy whole messages (already padded) into the request ring and publish them."""
        n = len(data)
        size = self.req_size
        off = self.req_head & (size - 1)
        if off + n <= size:
            self.req_data[off : off + n] = data
        else:
            first = size - off
            self.req_data[off:] = data[:first]
            self.req_data[: n - first] = data[first:]
        self.req_head = (self.req_head + n) & U64_MASK
        self.u64[self.req_head_i] = self.req_head              # P1, pairs with server's C1

    def _read(self, limit: int) -> list[P.Response]:
        """Take every published response (at most ``limit``); copy once, then free the bytes."""
        head = self.u64[self.resp_head_i]                      # C1, pairs with server's P1
        used = (head - self.resp_tail) & U64_MASK
        if used == 0:
            return []
        if used > self.resp_size:
            self.broken = True
            raise ProtocolError(
                f"channel {self.index}: corrupt response ring indexes "
                f"(server head {head}, tail {self.resp_tail})"
            )
        size = self.resp_size
        off = self.resp_tail & (size - 1)
        if off + used <= size:
            snap = bytes(self.resp_data[off : off + used])
        else:
            snap = bytes(self.resp_data[off:]) + bytes(self.resp_data[: used - (size - off)])
        try:
            responses, consumed = P.decode_responses(snap, self.max_msg)
        except ProtocolError as e:
            self.broken = True
            raise ProtocolError(f"channel {self.index}: {e}") from None
        for r in responses:
            if r.status == P.ST_PROTOCOL_ERROR:
                self.broken = True
                raise ProtocolError(
                    f"channel {self.index} quarantined by the server: "
                    f"{r.payload.decode('utf-8', 'replace')}"
                )
        if len(responses) > limit:
            self.broken = True
            raise ProtocolError(
                f"channel {self.index}: {len(responses)} responses for {limit} requests in flight"
            )
        self.resp_tail = (self.resp_tail + consumed) & U64_MASK
        self.u64[self.resp_tail_i] = self.resp_tail            # C2, pairs with server's P0
        return responses

    def send_raw(self, data: bytes) -> None:
        """Publish arbitrary bytes in the request ring (tests: torn and malformed messages).

        ``len(data)`` need not be a multiple of 8 or frame anything; the server judges it."""
        if self._free_request_bytes() < len(data):
            raise RequestTooLargeError(f"{len(data)} bytes do not fit the free request ring")
        self._write(data)

    def receive(self, count: int, timeout: float) -> list[P.Response]:
        """Collect ``count`` responses without checking their ids (tests)."""
        out: list[P.Response] = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            got = self._read(count - len(out))
            out.extend(got)
            if not got:
                now = time.monotonic()
                self.check_alive(now, count - len(out))
                if now > deadline:
                    raise RingTimeoutError(f"{len(out)} of {count} responses in {timeout:g} s")
                time.sleep(SLEEP_MIN)
        return out

    def transact(self, msgs: list[bytes], first_id: int, timeout: float) -> list[P.Response]:
        """Send framed messages (ids first_id, first_id+1, ...) and collect their responses.

        Streams: writes what fits, reads what arrived, repeats, so any number of requests
        flows through rings of any size. Every wait is bounded by ``timeout`` of no progress.
        """
        self.check_ready()
        n = len(msgs)
        out: list[P.Response] = []
        sent = 0
        expect = first_id
        spins = 0
        sleep = SLEEP_MIN
        next_check = yield_until = 0.0
        deadline = None
        while len(out) < n:
            progress = False
            if sent < n:
                free = self._free_request_bytes()
                j, total = sent, 0
                while j < n and total + len(msgs[j]) <= free:
                    total += len(msgs[j])
                    j += 1
                if j > sent:
                    self._write(msgs[sent] if j == sent + 1 else b"".join(msgs[sent:j]))
                    sent = j
                    progress = True
                elif len(msgs[sent]) > self.req_size:
                    raise RequestTooLargeError(
                        f"message of {len(msgs[sent])} bytes > request ring of {self.req_size}"
                    )
            if sent > len(out):
                got = self._read(sent - len(out))
                if got:
                    for r in got:
                        if r.id != expect:
                            self.broken = True
                            raise ProtocolError(
                                f"channel {self.index}: response id {r.id}, expected {expect}"
                            )
                        expect += 1
                    out.extend(got)
                    progress = True
            if progress:
                spins = 0
                deadline = None
                continue
            # -- no progress: spin, then yield, then sleep; check liveness and the deadline
            spins += 1
            if spins < SPIN_ROUNDS:
                continue
            now = time.monotonic()
            if deadline is None:
                deadline = now + timeout
                yield_until = now + YIELD_SECONDS
                next_check = now
                sleep = SLEEP_MIN
            if now >= next_check:
                try:
                    self.check_alive(now, sent - len(out))
                except UnknownOutcomeError as e:
                    e.results, e.unsent = out, n - sent
                    raise
                next_check = now + LIVENESS_PERIOD
            if now > deadline:
                self.broken = True
                raise RingTimeoutError(
                    f"no response for {timeout:g} s on channel {self.index} "
                    f"({sent - len(out)} request(s) in flight, outcome unknown)"
                )
            if now < yield_until:
                _yield()
            else:
                time.sleep(sleep)
                sleep = min(sleep * 2, SLEEP_MAX)
        return out

    # -- one request, one response: the unpipelined fast path
    #
    # A GET or SET is packed straight into the request ring by one pack_into (protocol.py
    # get_frame/set_frame) when it does not wrap and fits the free space last seen; the reply
    # is taken with one header unpack and one payload copy when it is the single whole message
    # published. Everything else (a wrap, a full ring, any odd reply) goes the general way,
    # which validates everything again from its own copies. The server's liveness fields are
    # read only when a wait outlasts the spin (_wait_one); before each request, ack_token
    # (section 5) and server_state are two aligned loads.

    def get(self, key: bytes, timeout: float) -> tuple[int, bytes] | None:
        """GET ``key``: (status, payload), or None when the fast path does not apply."""
        u64 = self.u64
        if (self.broken or u64[self.ack_i] != self.token
                or u64[_SERVER_EPOCH_I] != self.epoch):
            raise SessionLost(f"channel {self.index}: session no longer acknowledged")
        if self.u32[_SERVER_STATE_I32] != _RUNNING:
            raise ServerGoneError("server is not running (server_state != RUNNING)")
        klen = len(key)
        frame = _GET_FRAMES.get(klen) or P.get_frame(klen)
        step = frame.size
        head = self.req_head
        off = head & self.req_mask
        if (off + step > self.req_size or klen > self.max_value
                or (step > self.req_size - ((head - self.req_tail_seen) & U64_MASK)
                    and step > self._free_request_bytes())):
            return None
        rid = self.next_id
        self.next_id = rid + 1
        frame.pack_into(self.req_data, off, 20 + klen, _OP_GET, 0, 1, rid, klen, key)
        return self._complete((head + step) & U64_MASK, rid, timeout)

    def set(self, key: bytes, value: bytes, ttl_ms: int,
            timeout: float) -> tuple[int, bytes] | None:
        """SET ``key`` ``value`` [ttl_ms]: (status, payload), or None (fast path not applicable)."""
        u64 = self.u64
        if (self.broken or u64[self.ack_i] != self.token
                or u64[_SERVER_EPOCH_I] != self.epoch):
            raise SessionLost(f"channel {self.index}: session no longer acknowledged")
        if self.u32[_SERVER_STATE_I32] != _RUNNING:
            raise ServerGoneError("server is not running (server_state != RUNNING)")
        klen, vlen = len(key), len(value)
        if klen > self.max_value or vlen > self.max_value:
            return None
        frame = P.set_frame(klen, vlen, ttl_ms != 0)
        step = frame.size
        n = (32 if ttl_ms else 24) + klen + vlen
        head = self.req_head
        off = head & self.req_mask
        if (off + step > self.req_size or n > self.max_msg
                or (step > self.req_size - ((head - self.req_tail_seen) & U64_MASK)
                    and step > self._free_request_bytes())):
            return None
        rid = self.next_id
        self.next_id = rid + 1
        if ttl_ms:
            frame.pack_into(self.req_data, off, n, _OP_SET, P.FLAG_TTL, 2, rid, ttl_ms,
                            klen, key, vlen, value)
        else:
            frame.pack_into(self.req_data, off, n, _OP_SET, 0, 2, rid, klen, key, vlen, value)
        return self._complete((head + step) & U64_MASK, rid, timeout)

    def call(self, msg: bytes, req_id: int, timeout: float) -> P.Response:
        """One framed, padded message, one response (the caller chose ``req_id``)."""
        if self.broken or self.lost():
            raise SessionLost(f"channel {self.index}: session no longer acknowledged")
        n = len(msg)
        off = self.req_head & self.req_mask
        if off + n > self.req_size or self._free_request_bytes() < n:
            return self.transact([msg], req_id, timeout)[0]
        if self.u32[_SERVER_STATE_I32] != _RUNNING:
            raise ServerGoneError("server is not running (server_state != RUNNING)")
        self.req_data[off : off + n] = msg
        status, payload = self._complete((self.req_head + n) & U64_MASK, req_id, timeout)
        return P.Response(status, req_id, payload)

    def _complete(self, head: int, rid: int, timeout: float) -> tuple[int, bytes]:
        """Publish the request ring up to ``head``; wait for the one response, id ``rid``."""
        u64 = self.u64
        self.req_head = head
        u64[self.req_head_i] = head                            # P1, pairs with server's C1
        tail = self.resp_tail
        i = self.resp_head_i
        for _ in _SPIN:
            head = u64[i]                                      # C1, pairs with server's P1
            if head != tail:
                break
        else:
            r = self._wait_one(rid, timeout)
            return r.status, r.payload
        off = tail & self.resp_mask
        if off + 16 <= self.resp_size:
            # One private copy of the header, validated: the single whole message published,
            # not wrapped, a status a reply may carry. Anything else: the general reader.
            n, status, _flags, _argc, resp_id = _MSG_HEADER.unpack_from(self.resp_data, off)
            if (16 <= n <= self.max_msg and (n + 7) & ~7 == (head - tail) & U64_MASK
                    and off + n <= self.resp_size and status < _ST_PROTOCOL_ERROR):
                start = self.resp_base + off
                payload = self.mm[start + 16 : start + n]      # the payload's private copy
                self.resp_tail = head
                u64[self.resp_tail_i] = head                   # C2, pairs with server's P0
                if resp_id != rid:
                    self.broken = True
                    raise ProtocolError(
                        f"channel {self.index}: response id {resp_id}, expected {rid}"
                    )
                return status, payload
        r = self._wait_one(rid, timeout)
        return r.status, r.payload

    def _wait_one(self, req_id: int, timeout: float) -> P.Response:
        now = time.monotonic()
        deadline = now + timeout
        yield_until = now + YIELD_SECONDS
        next_check = now
        sleep = SLEEP_MIN
        while True:
            got = self._read(1)
            if got:
                r = got[0]
                if r.id != req_id:
                    self.broken = True
                    raise ProtocolError(
                        f"channel {self.index}: response id {r.id}, expected {req_id}"
                    )
                return r
            now = time.monotonic()
            if now >= next_check:
                self.check_alive(now, 1)
                next_check = now + LIVENESS_PERIOD
            if now > deadline:
                self.broken = True
                raise RingTimeoutError(
                    f"no response for {timeout:g} s on channel {self.index} (outcome unknown)"
                )
            if now < yield_until:
                _yield()
            else:
                time.sleep(sleep)
                sleep = min(sleep * 2, SLEEP_MAX)


if _SessionCore is not None:

    class FastSession(_SessionCore, Session):
        """A Session whose get() and set() run in C (_speedups.c), the rest in Python.

        The C base holds req_head, resp_tail, next_id, req_tail_seen, epoch and broken, so both
        share one copy of them. Whatever the C fast path does not handle it passes to the
        Python methods below (_pure_get, _pure_set, _wait_one), which behave as in Session.
        """

        _pure_get = Session.get
        _pure_set = Session.set

        def __init__(self, region: Region, header: P.RegionHeader, index: int,
                     token: int) -> None:
            Session.__init__(self, region, header, index, token)
            self._bind(region.mm, header.client_section(index), header.server_section(index),
                       header.req_ring_size, header.resp_ring_size, header.max_msg_size,
                       header.max_value_size, token)

        def release_views(self) -> None:
            self._unbind()
            Session.release_views(self)

    SessionType: type[Session] = FastSession
else:
    SessionType = Session


def server_alive_quick(region: Region, dead_after: float = 1.0) -> None:
    """Raise ServerGoneError unless the header says RUNNING with a non-zero epoch."""
    epoch, _hb, state, _pid = region.liveness()
    if state != P.SERVER_RUNNING or epoch == 0:
        raise ServerGoneError(
            f"no server on {region.path}: server_state "
            f"{P.SERVER_STATE_NAMES.get(state, state)}, epoch {epoch:#x}"
        )
    age = region.heartbeat_age(time.monotonic())
    if age > dead_after:
        raise ServerGoneError(f"no server on {region.path}: heartbeat stood still {age:.1f} s")


def claim(region: Region, header: P.RegionHeader, timeout: float, prefer: int = 0) -> Session:
    """Claim a free channel (section 5) and wait for the server to acknowledge it."""
    deadline = time.monotonic() + timeout
    server_alive_quick(region, header.server_dead_after)
    u64 = region.u64
    n = header.channel_count
    while True:
        for k in range(n):
            c = (prefer + k) % n
            cs, ss = header.client_section(c), header.server_section(c)
            seen = u64[cs // 8]
            dead = u64[(ss + P.OFF_DEAD_TOKEN) // 8]
            if seen != 0 and seen != dead:
                continue
            s = SessionType(region, header, c, new_token())
            if not s._take(seen):
                s.release_views()
                continue
            try:
                s._await_ack(deadline)
            except SessionLost:
                s.release_views()
                continue
            except BaseException:
                s.release_views()
                raise
            return s
        if time.monotonic() > deadline:
            raise NoChannelError(
                f"all {n} channels of {region.path} are taken (waited {timeout:g} s)"
            )
        server_alive_quick(region, header.server_dead_after)
        time.sleep(0.01)
