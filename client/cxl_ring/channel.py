"""The data path of a claimed channel: framing, publishing and consuming on its two SPSC rings.

A channel is one request ring (this client produces, the server consumes) and one response
ring (the other way round), docs/ring-protocol.md sections 3, 4 and 6. session.py claims the
channel, keeps its lease and watches the server; ``Session`` here adds the rings on top of
``SessionBase``, and ``claim()`` returns one.

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
matters for the claim (S1): it needs a real compare-and-swap, see session.py. Other CPUs
(arm64, POWER) reorder freely, so the client refuses to run there
(``session.check_platform``); a safe path would route every index access through
libatomic's ``__atomic_load_8``/``__atomic_store_8`` with acquire/release order, which is not
implemented yet.

Responses come in request order (section 4.2), so with nothing in flight the response ring
must be empty: a response found there before a request is sent was never asked for, and is
refused (``check_idle``: ProtocolError, nothing sent) rather than taken as the next answer.

The unpipelined round trip (Session.get / Session.set)
------------------------------------------------------
One GET or SET costs: three aligned loads (``ack_token``, ``server_epoch``,
``server_state``) and one of ``resp_head`` (the ring must be idle), one ``pack_into`` of a
per-length ``struct.Struct`` that lays out header, arguments and zero padding straight into the
request ring (protocol.get_frame / set_frame), one ``req_head`` store, a spin on
``resp_head``, one ``unpack_from`` of the response header into locals, validated, one copy of
the payload, one ``resp_tail`` store. The request ring's free space is computed from the last
``req_tail`` seen and re-read only when that is not enough; the server's heartbeat is read
only once a wait outlasts the spin. A wrap, a full ring, or any response that is not the
single whole expected message goes the general way (transact, _read, _wait_one), which
validates everything again. Measured on a shared 2-vCPU VM, server and client pinned: GET p50
2.5 us before, 1.35 us after, redis-py over TCP ~19 us (docs/benchmarks-python.md).

The optional C core (_speedups.c, FastSession) does the same steps in C, ~0.55 us p50. It is
never required: without a compiler, with CXL_RING_PURE=1 in the environment, or when the built
extension is stale (its CORE_VERSION is not this module's), sessions are pure-Python
``Session`` objects (``SPEEDUPS`` tells which). Both paths share one copy of the
ring indexes and hand every unusual case to the same Python code, and
tests/client/test_roundtrip_paths.py runs its tests with both.

Every wait (a full request ring, a reply not there yet) uses backoff.Backoff.
"""

from __future__ import annotations

import os
import time

from . import notify
from . import protocol as P
from .backoff import Backoff, sched_yield
from .exceptions import (
    ProtocolError,
    RequestTooLargeError,
    RingTimeoutError,
    ServerGoneError,
    UnknownOutcomeError,
)
from .region import Region
from .session import SEQ_RENEW, SessionBase, SessionLost, claim_channel

CORE_VERSION = 6          # the _speedups.c behaviour this module expects (its CORE_VERSION)
try:  # the optional C core of the round trip (_speedups.c); never required
    if os.environ.get("CXL_RING_PURE"):
        raise ImportError("CXL_RING_PURE is set")
    from . import _speedups

    if getattr(_speedups, "CORE_VERSION", 0) != CORE_VERSION:
        raise ImportError("stale _speedups build: rebuild with pip install -e .")
    _SessionCore = _speedups.SessionCore
except ImportError:
    _SessionCore = None
SPEEDUPS = _SessionCore is not None

U64_MASK = P.U64_MASK
SPIN_ROUNDS = 200          # the round trip's inline spin on resp_head (~10-20 us), then a wait
LIVENESS_PERIOD = 0.005    # how often a waiting client looks at the server's liveness fields
BLOCK_SECONDS = 0.05       # longest block for a response before the liveness checks run again
_SPIN = range(SPIN_ROUNDS)
# Module constants as globals: one dict lookup each on the hot path instead of two.
_GET_FRAMES = P.GET_FRAMES
_MSG_HEADER = P.MSG_HEADER
_OP_GET, _OP_SET = P.OP_GET, P.OP_SET
_SERVER_STATE_I32 = P.OFF_SERVER_STATE // 4
_SERVER_EPOCH_I = P.OFF_SERVER_EPOCH // 8
_RUNNING = P.SERVER_RUNNING
_ST_PROTOCOL_ERROR = P.ST_PROTOCOL_ERROR
_SEQ_MASK = P.ID_SEQ_MASK


class Session(SessionBase):
    """A claimed channel with its data path: this thread's request ring (producer) and
    response ring (consumer)."""

    def __init__(self, region: Region, header: P.RegionHeader, index: int, token: int) -> None:
        SessionBase.__init__(self, region, header, index, token)
        cs, ss = header.client_section(index), header.server_section(index)
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
        self._zeros = memoryview(bytes(self.req_size))
        # Section 8: where this client blocks for its responses (N3).
        self.resp_sleeping_i32 = (cs + P.OFF_RESP_SLEEPING) // 4
        self.resp_wake_i32 = (ss + P.OFF_RESP_WAKE) // 4
        self.resp_wake_addr = self.base + ss + P.OFF_RESP_WAKE
        # ... or, with notify_kind doorbell, on our VM's doorbell, which the server rings with
        # what we publish in resp_doorbell (opened at the first block).
        self.bell: notify.BellWait | None = None
        self.bell_tried = False
        self.bell_word = 0
        # Section 15: set before a SUBSCRIBE is sent (pubsub.py); pushes (status PUSH, id 0)
        # may then come between the responses. _read() keeps them here, in ring order.
        self.subscribed = False
        self.pushes: list[bytes] = []

    def _scrub_idle(self) -> None:
        """Zero the request bytes the server has released (section 3.1), with nothing in flight.

        Called once every response is in: the server stores req_tail (C2) before it publishes
        the response to any request below it, so req_tail == req_head now, and the next owner
        of the channel finds no request of ours in the ring."""
        start = self.req_scrubbed
        n = (self.req_head - start) & U64_MASK
        if n == 0:
            return
        size = self.req_size
        if n >= size:
            self.req_data[:] = self._zeros
        else:
            off = start & self.req_mask
            first = min(n, size - off)
            self.req_data[off : off + first] = self._zeros[:first]
            if n > first:
                self.req_data[: n - first] = self._zeros[: n - first]
        self.req_scrubbed = self.req_head

    def release_views(self) -> None:
        """Forget the shared memory without touching it (the claim was never ours)."""
        for view in (self.req_data, self.resp_data):
            view.release()
        self.mm = None
        if self.bell is not None:
            self.bell.close()
            self.bell = None
        SessionBase.release_views(self)

    def release(self) -> None:
        """Release the channel, first taking back our doorbell from resp_doorbell."""
        u64 = self.u64
        if u64 is not None and self.bell_word and u64[self.claim_i] == self.token:
            u64[self.resp_doorbell_i] = 0
            self.bell_word = 0
        SessionBase.release(self)

    def check_idle(self) -> None:
        """With no request in flight the response ring must be empty (section 4.2: responses
        come in request order). Raise ProtocolError if it is not: a response nobody asked
        for must not be taken as the answer to the next request."""
        head = self.u64[self.resp_head_i]                      # C1, pairs with server's P1
        if head == self.resp_tail:
            return
        if self.subscribed:
            self._read(0)                                      # pushes only, kept in order
            return
        self.broken = True
        used = (head - self.resp_tail) & U64_MASK
        if used > self.resp_size:
            raise ProtocolError(f"channel {self.index}: corrupt response ring indexes "
                                f"(server head {head}, tail {self.resp_tail})")
        raise ProtocolError(f"channel {self.index}: {used} bytes of unsolicited response in "
                            f"the response ring with no request in flight")

    # -- waiting

    def _block(self, seconds: float) -> bool:
        """Block until the server publishes a response and wakes us (N3, section 8), or
        ``seconds``; False (without waiting) when this server cannot wake clients."""
        u32 = self.u32
        kind = u32[P.OFF_NOTIFY_KIND // 4]
        if kind == P.NOTIFY_DOORBELL:
            return self._block_on_doorbell(seconds)
        if not notify.CAN_BLOCK or kind != P.NOTIFY_FUTEX:
            return False
        seen = u32[self.resp_wake_i32]
        u32[self.resp_sleeping_i32] = 1
        try:
            # N3 pairs with the server's N4: our flag is visible before we look at resp_head
            # once more, so either we see its response or it sees us asleep and wakes us.
            notify.fence()
            if self.u64[self.resp_head_i] == self.resp_tail:
                notify.futex_wait(self.resp_wake_addr, seen, seconds)
        finally:
            u32[self.resp_sleeping_i32] = 0
        return True

    def _block_on_doorbell(self, seconds: float) -> bool:
        """N3 with notify_kind doorbell: publish how to ring us, forget old rings, set the
        flag, fence, look once more, then wait on our doorbell. False (without waiting) when
        we have no doorbell to wait on (``self.doorbell.wait_why`` says why)."""
        bell = self.bell
        if bell is None:
            if self.bell_tried or not notify.AVAILABLE:
                return False
            self.bell_tried = True
            bell = self.bell = self.doorbell.listener()
            if bell is None:
                return False
        value = bell.value()
        if value is None:                      # our VM's doorbell is (re)connecting
            return False
        word = P.RESP_DOORBELL_SET | value
        if word != self.bell_word:             # before the flag: a server that sees the flag
            self.u64[self.resp_doorbell_i] = word   # sees how to ring us
            self.bell_word = word
        bell.drain()                           # a ring from now on is latched: no wake is lost
        u32 = self.u32
        u32[self.resp_sleeping_i32] = 1
        try:
            notify.fence()                     # N3, pairs with the server's N4
            if self.u64[self.resp_head_i] == self.resp_tail:
                bell.wait(seconds)
        finally:
            u32[self.resp_sleeping_i32] = 0
        return True

    def _pause(self, backoff: Backoff, now: float) -> float:
        """One step of a wait for responses: spin, yield, then block until the server wakes
        us where it can (notify futex), else back-off sleeps. Returns the time waited."""
        pause = backoff.next_pause(now)
        if pause:
            if not self._block(BLOCK_SECONDS):
                time.sleep(pause)
        elif pause is not None:
            sched_yield()
        return backoff.waited

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
        notify.notify_server(self.u32, self.base, self.wake_offset, self.doorbell)  # N2 / N1

    def _read(self, limit: int, inline: bool = False) -> list[P.Response]:
        """Take every published response (at most ``limit``); copy once, then free the bytes.

        On a subscribed session pushes (section 15) count toward nothing: kept in
        ``self.pushes``, or with ``inline`` returned among the responses in ring order."""
        head = self.u64[self.resp_head_i]                      # C1, pairs with server's P1
        used = (head - self.resp_tail) & U64_MASK
        if used == 0:
            return []
        if self.delay_ns:
            P.access_delay(self.delay_ns)                      # section 2.4
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
            # A session the server retired meanwhile (lease expired, reset) had its unread
            # responses scrubbed (section 3.1): that is a lost session, not a corrupt ring.
            self.check_alive(time.monotonic(), limit)
            self.broken = True
            raise ProtocolError(f"channel {self.index}: {e}") from None
        pushed = False
        for r in responses:
            if r.status == P.ST_PROTOCOL_ERROR:
                self.broken = True
                raise ProtocolError(
                    f"channel {self.index} quarantined by the server: "
                    f"{r.payload.decode('utf-8', 'replace')}"
                )
            if r.status == P.ST_PUSH:
                if not self.subscribed or r.id != 0:
                    self.broken = True
                    raise ProtocolError(
                        f"channel {self.index}: a push (id {r.id}) on a session that did not "
                        f"subscribe, or with an id"
                    )
                pushed = True
        if pushed:                                             # section 15: kept apart
            answers = [r for r in responses if r.status != P.ST_PUSH]
            if len(answers) > limit:
                self.broken = True
                raise ProtocolError(f"channel {self.index}: {len(answers)} responses for "
                                    f"{limit} requests in flight")
            if not inline:
                self.pushes.extend(r.payload for r in responses if r.status == P.ST_PUSH)
                responses = answers
        elif len(responses) > limit:
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
        backoff = Backoff()
        while len(out) < count:
            got = self._read(count - len(out))
            out.extend(got)
            if got:
                backoff.reset()
                continue
            now = time.monotonic()
            self.check_alive(now, count - len(out))
            if self._pause(backoff, now) > timeout:
                raise RingTimeoutError(f"{len(out)} of {count} responses in {timeout:g} s")
        return out

    def transact(self, msgs: list[bytes], first_id: int, timeout: float) -> list[P.Response]:
        """Send framed messages (ids first_id, first_id+1, ...) and collect their responses.

        Streams: writes what fits, reads what arrived, repeats, so any number of requests
        flows through rings of any size. Every wait is bounded by ``timeout`` of no progress.
        """
        self.check_ready()
        self.check_idle()
        n = len(msgs)
        out: list[P.Response] = []
        sent = 0
        expect = first_id
        backoff = Backoff()
        next_check = 0.0
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
                backoff.reset()
                continue
            # -- no progress: wait (spin, yield, sleep); check liveness and the deadline
            now = time.monotonic()
            waited = self._pause(backoff, now) if sent > len(out) else backoff.wait(now)
            if not backoff.spinning and now >= next_check:
                try:
                    self.check_alive(now, sent - len(out))
                except UnknownOutcomeError as e:
                    e.results, e.unsent = out, n - sent
                    raise
                next_check = now + LIVENESS_PERIOD
            if waited > timeout:
                self.broken = True
                raise RingTimeoutError(
                    f"no response for {timeout:g} s on channel {self.index} "
                    f"({sent - len(out)} request(s) in flight, outcome unknown)"
                )
        self._scrub_idle()
        return out

    # -- one request, one response: the unpipelined fast path
    #
    # A GET or SET is packed straight into the request ring by one pack_into (protocol.py
    # get_frame/set_frame) when it does not wrap and fits the free space last seen; the reply
    # is taken with one header unpack and one payload copy when it is the single whole message
    # published. Everything else (a wrap, a full ring, any odd reply) goes the general way,
    # which validates everything again from its own copies. The server's liveness fields are
    # read only when a wait outlasts the spin (_wait_one); before each request, ack_token
    # (section 5), server_epoch, server_state and resp_head (check_idle) are four aligned
    # loads.

    def get(self, key: bytes, timeout: float) -> tuple[int, bytes] | None:
        """GET ``key``: (status, payload), or None when the fast path does not apply."""
        u64 = self.u64
        if (self.broken or u64[self.ack_i] != self.token
                or u64[_SERVER_EPOCH_I] != self.epoch or (self.next_id & _SEQ_MASK) >= SEQ_RENEW):
            raise SessionLost(f"channel {self.index}: session no longer acknowledged")
        if self.u32[_SERVER_STATE_I32] != _RUNNING:
            raise ServerGoneError("server is not running (server_state != RUNNING)")
        if u64[self.resp_head_i] != self.resp_tail:
            self.check_idle()                                  # raises: unsolicited response
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
                or u64[_SERVER_EPOCH_I] != self.epoch or (self.next_id & _SEQ_MASK) >= SEQ_RENEW):
            raise SessionLost(f"channel {self.index}: session no longer acknowledged")
        if self.u32[_SERVER_STATE_I32] != _RUNNING:
            raise ServerGoneError("server is not running (server_state != RUNNING)")
        if u64[self.resp_head_i] != self.resp_tail:
            self.check_idle()                                  # raises: unsolicited response
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

    def _complete(self, head: int, rid: int, timeout: float) -> tuple[int, bytes]:
        """Publish the request ring up to ``head``; wait for the one response, id ``rid``."""
        u64 = self.u64
        self.req_head = head
        u64[self.req_head_i] = head                            # P1, pairs with server's C1
        notify.notify_server(self.u32, self.base, self.wake_offset, self.doorbell)  # N2 / N1
        tail = self.resp_tail
        i = self.resp_head_i
        for _ in _SPIN:
            head = u64[i]                                      # C1, pairs with server's P1
            if head != tail:
                if self.delay_ns:
                    P.access_delay(self.delay_ns)              # section 2.4
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
                self._scrub_idle()
                return status, payload
        r = self._wait_one(rid, timeout)
        return r.status, r.payload

    def _wait_one(self, req_id: int, timeout: float) -> P.Response:
        """Wait for the one response, id ``req_id``, after the caller's spin."""
        backoff = Backoff(spin=0.0)
        next_check = 0.0
        while True:
            got = self._read(1)
            if got:
                r = got[0]
                if r.id != req_id:
                    self.broken = True
                    raise ProtocolError(
                        f"channel {self.index}: response id {r.id}, expected {req_id}"
                    )
                self._scrub_idle()
                return r
            now = time.monotonic()
            waited = self._pause(backoff, now)
            if now >= next_check:
                self.check_alive(now, 1)
                next_check = now + LIVENESS_PERIOD
            if waited > timeout:
                self.broken = True
                raise RingTimeoutError(
                    f"no response for {timeout:g} s on channel {self.index} (outcome unknown)"
                )


if _SessionCore is not None:

    class FastSession(_SessionCore, Session):
        """A Session whose get() and set() run in C (_speedups.c), the rest in Python.

        The C base holds req_head, resp_tail, next_id, req_tail_seen, req_scrubbed, epoch and
        broken, so both
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
                       header.max_value_size, token, self.wake_offset)

        def _ring_doorbell(self) -> None:
            """Called by the C core's N2 when the server sleeps behind a doorbell."""
            notify.ring_doorbell(self.u32, self.doorbell)

        def release_views(self) -> None:
            self._unbind()
            Session.release_views(self)

    SessionType: type[Session] = FastSession
else:
    SessionType = Session


def claim(region: Region, header: P.RegionHeader, timeout: float, prefer: int = 0) -> Session:
    """Claim a free channel (section 5), wait for the server's ack: a Session (a FastSession
    when the C core is in use)."""
    return claim_channel(region, header, timeout, prefer, SessionType)  # type: ignore[return-value]
