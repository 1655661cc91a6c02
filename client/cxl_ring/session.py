"""Sessions on a channel: claim, heartbeat, liveness, release (docs/ring-protocol.md 5 and 7).

This module holds a channel; channel.py moves bytes through its rings. A ``SessionBase`` knows
the channel's control fields (claim_token, client_heartbeat, ack_token, dead_token, chan_state,
last_error) and the server's liveness fields, and never touches ring data: at the ack it only
adopts ``req_head`` / ``resp_tail`` from shared memory, as section 5 says.

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

Which channels a peer may claim (Sec-DSM, docs/ring-protocol.md section 2): only those whose
client section lies in a client segment this peer mapped writable and whose server section it
can read, i.e. its own channel group's when it was given a view of its segments. A session
checks both sections when it is built (Region.check), before any access; with no such channel
the claim raises SegmentAccessError naming each group's segments and how they are mapped.

The session then bumps ``client_heartbeat`` from one process-wide background thread (every
``client_lease_ms / 8``), and releases with ``claim_token := 0`` on close. A process that dies
stops the heartbeat and the server reclaims the channel after ``client_lease_ms``.

Every other load and store here is a plain aligned access; why that is enough on x86-64, and
only there (``check_platform``), is in channel.py's docstring.
"""

from __future__ import annotations

import os
import platform
import secrets
import sys
import threading
import time
import weakref
from typing import Callable

from . import _atomic, notify
from . import protocol as P
from .backoff import Backoff
from .exceptions import (
    CxlRingError,
    NoChannelError,
    ProtocolError,
    RingTimeoutError,
    SegmentAccessError,
    ServerGoneError,
    UnknownOutcomeError,
)
from .region import Region

U64_MASK = P.U64_MASK
# Past this sequence number a session claims again rather than let its ids' low half wrap into
# the generation (section 4.3); the headroom covers the largest batch a caller can send.
SEQ_RENEW = 0xF0000000
_SERVER_STATE_I32 = P.OFF_SERVER_STATE // 4
_SERVER_EPOCH_I = P.OFF_SERVER_EPOCH // 8


def check_platform() -> None:
    """Refuse to run where plain Python stores are not ordered (channel.py's docstring)."""
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
        self._sessions: weakref.WeakSet[SessionBase] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def add(self, session: SessionBase) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="cxl-ring-lease",
                                                daemon=True)
                self._thread.start()
            self._sessions.add(session)
        self._wake.set()

    def discard(self, session: SessionBase) -> None:
        # At interpreter exit this daemon thread is frozen wherever it stood, perhaps inside
        # the lock (a client's __del__ closing it then hung for good): never wait for it
        # then; the set dies with the process.
        if sys.is_finalizing() or not self._lock.acquire(timeout=5.0):
            return
        try:
            self._sessions.discard(session)
        finally:
            self._lock.release()

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


class SessionBase:
    """A claimed channel, without its data path (channel.Session adds the rings).

    ``req_head`` and ``resp_tail`` are this side's own ring indexes, adopted from shared memory
    when the server acknowledges the claim and never read back from it during the session.
    """

    def __init__(self, region: Region, header: P.RegionHeader, index: int, token: int) -> None:
        self.region = region
        self.header = header
        self.index = index
        self.token = token
        cs, ss = header.client_section(index), header.server_section(index)
        # Check before touching (section 2): this peer writes only its own client section and
        # reads the server section; the raw views below are used on these two sections only
        # (and on the header, which every mapping has).
        region.check(cs, header.client_section_size, write=True,
                     what=f"client section of channel {index}")
        region.check(ss, header.server_section_size, what=f"server section of channel {index}")
        self.u64 = region.u64
        self.u32 = region.u32
        self.base = region.address()
        # Section 8: the group's wake word, which a sleeping server waits on.
        self.wake_offset = notify.wake_word_offset(header, index)
        self.doorbell = region.doorbell             # notify_kind doorbell: the VM's device
        self.claim_i = cs // 8
        self.client_heartbeat_i = (cs + P.OFF_CLIENT_HEARTBEAT) // 8
        self.client_pid_i32 = (cs + P.OFF_CLIENT_PID) // 4
        self.resp_doorbell_i = (cs + P.OFF_RESP_DOORBELL) // 8
        self.req_head_i = (cs + P.OFF_REQ_HEAD) // 8
        self.resp_tail_i = (cs + P.OFF_RESP_TAIL) // 8
        self.ack_i = ss // 8
        self.dead_i = (ss + P.OFF_DEAD_TOKEN) // 8
        self.chan_state_i32 = (ss + P.OFF_CHAN_STATE) // 4
        self.last_error_i32 = (ss + P.OFF_LAST_ERROR) // 4
        self.session_gen_i32 = (ss + P.OFF_SESSION_GEN) // 4
        self.req_tail_i = (ss + P.OFF_REQ_TAIL) // 8
        self.resp_head_i = (ss + P.OFF_RESP_HEAD) // 8
        self.lease_seconds = header.client_lease_ms / 1000.0
        self.dead_after = header.server_dead_after
        self.req_head = 0
        self.req_tail_seen = 0     # the server's req_tail at our last look (it only grows)
        self.resp_tail = 0
        self.req_scrubbed = 0      # request bytes below this are zero (section 3.1)
        self.gen = 0               # session_gen: the high half of every request id (4.3)
        self.delay_ns = 0          # the injected far-memory delay of this server run (2.4)
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
        u64[self.resp_doorbell_i] = 0          # not the last owner's doorbell (section 8)
        notify.notify_server(self.u32, self.base, self.wake_offset,  # a sleeping server looks
                             self.doorbell)
        backoff = Backoff(max_sleep=2e-3)
        while u64[self.ack_i] != self.token:
            if u64[self.claim_i] != self.token:
                raise SessionLost("lost the claim race")
            if self.u32[_SERVER_STATE_I32] != P.SERVER_RUNNING:
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
            backoff.wait(now)
        self.epoch = u64[_SERVER_EPOCH_I]
        self.req_head = self.req_tail_seen = self.req_scrubbed = u64[self.req_head_i]
        self.resp_tail = u64[self.resp_tail_i]
        # Stored by the server before its ack (S2): every id of this session carries it.
        self.gen = self.u32[self.session_gen_i32]
        # Written by the server before the epoch we saw: this run's delay (section 2.4).
        self.delay_ns = P.header_access_delay(self.u32)
        self.next_id = P.make_id(self.gen, 1)
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
        self.u64 = self.u32 = None

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
        """Before a batch: our session is acknowledged and the server is alive, and its ids
        have room (a session sends fewer than 2**32 requests; then it claims again)."""
        if self.broken or self.lost() or (self.next_id & P.ID_SEQ_MASK) >= SEQ_RENEW:
            raise SessionLost(f"channel {self.index}: session no longer acknowledged")
        if self.u32[_SERVER_STATE_I32] != P.SERVER_RUNNING:
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
        if u64[_SERVER_EPOCH_I] != self.epoch:
            reason = "server restarted (epoch changed)"
        elif self.u32[_SERVER_STATE_I32] != P.SERVER_RUNNING:
            state = self.u32[_SERVER_STATE_I32]
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


# ---- Claiming ----------------------------------------------------------------------------------


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


def claim_channel(region: Region, header: P.RegionHeader, timeout: float, prefer: int,
                  make: Callable[[Region, P.RegionHeader, int, int], SessionBase]
                  ) -> SessionBase:
    """Claim a free channel (section 5) and wait for the server to acknowledge it.

    Only a channel whose client section this peer mapped writable is a candidate; with none,
    SegmentAccessError says which segments are missing (``prefer`` indexes the candidates).

    ``make(region, header, channel, token)`` builds the session object (channel.claim passes
    the session class with the data path)."""
    deadline = time.monotonic() + timeout
    server_alive_quick(region, header.server_dead_after)
    u64 = region.u64
    # Only channels whose client section this peer mapped writable (and whose server section
    # it can read): its own channel group's, under Sec-DSM grants.
    channels = region.claimable_channels(header)
    if not channels:
        raise SegmentAccessError(region.why_no_channel(header))
    n = len(channels)
    backoff = Backoff(spin=0.0, yield_for=0.0, max_sleep=0.01)   # channels free up slowly
    while True:
        for k in range(n):
            c = channels[(prefer + k) % n]
            cs, ss = header.client_section(c), header.server_section(c)
            seen = u64[cs // 8]
            dead = u64[(ss + P.OFF_DEAD_TOKEN) // 8]
            if seen != 0 and seen != dead:
                continue
            s = make(region, header, c, new_token())
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
        now = time.monotonic()
        if now > deadline:
            raise NoChannelError(
                f"all {n} channels of {region.path} this peer may claim are taken "
                f"(waited {timeout:g} s)"
            )
        server_alive_quick(region, header.server_dead_after)
        backoff.wait(now)
