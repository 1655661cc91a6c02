"""Client side of layout v2, the proof of concept's layout (docs/ring-protocol.md section 10).

Fixed 4096-byte slots, GET and SET only, no sessions, no liveness. Like the PoC's own
client, thread ``t`` of a process uses ring ``t mod ring_count`` under a process-local lock;
two *processes* on the same ring would corrupt each other, which layout v2 cannot prevent (it
has no claims). Waits (backoff.Backoff) are bounded by the timeout only, since the layout has
no server heartbeat.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Sequence

from . import protocol as P
from .backoff import Backoff
from .exceptions import (
    CxlRingError,
    ProtocolError,
    RequestTooLargeError,
    RingTimeoutError,
)
from .region import Region

U64_MASK = P.U64_MASK


class V2Ring:
    """One v2 ring pair; its slot-count indexes are accessed as aligned 8-byte fields."""

    def __init__(self, region: Region, desc: P.V2Ring, client_id: int) -> None:
        self.u64 = region.u64
        self.slots = desc.slots
        self.req_head_i = desc.req_off // 8
        self.req_tail_i = desc.req_off // 8 + 1
        self.resp_head_i = desc.resp_off // 8
        self.resp_tail_i = desc.resp_off // 8 + 1
        self.req_base = desc.req_off + P.V2_RING_HEADER_SIZE
        self.resp_base = desc.resp_off + P.V2_RING_HEADER_SIZE
        self.buf = region.buf
        self.client_id = client_id
        self.lock = threading.Lock()
        # The PoC keeps no session: continue from wherever the shared indexes are.
        self.req_head = self.u64[self.req_head_i]
        self.resp_tail = self.u64[self.resp_tail_i]

    def transact(self, slots: Sequence[bytes], timeout: float) -> list[tuple[int, bytes | None]]:
        u64 = self.u64
        n = len(slots)
        out: list[tuple[int, bytes | None]] = []
        sent = 0
        backoff = Backoff()
        while len(out) < n:
            progress = False
            tail = u64[self.req_tail_i]
            inflight = (self.req_head - tail) & U64_MASK
            if inflight > self.slots:
                raise ProtocolError(f"v2 request ring indexes corrupt (head {self.req_head}, "
                                    f"tail {tail}, {self.slots} slots)")
            while sent < n and inflight < self.slots:
                k = self.req_head % self.slots
                off = self.req_base + k * P.V2_SLOT_SIZE
                self.buf[off : off + P.V2_SLOT_SIZE] = slots[sent]
                self.req_head = (self.req_head + 1) & U64_MASK
                inflight += 1
                sent += 1
                progress = True
            if progress:
                u64[self.req_head_i] = self.req_head            # publish after the slots
            head = u64[self.resp_head_i]
            ready = (head - self.resp_tail) & U64_MASK
            if ready > self.slots or ready > sent - len(out):
                raise ProtocolError(f"v2 response ring: {ready} responses published, "
                                    f"{sent - len(out)} requests in flight")
            for _ in range(ready):
                k = self.resp_tail % self.slots
                off = self.resp_base + k * P.V2_SLOT_SIZE
                slot = bytes(self.buf[off : off + P.V2_SLOT_SIZE])
                out.append(P.decode_v2_response(slot))
                self.resp_tail = (self.resp_tail + 1) & U64_MASK
                u64[self.resp_tail_i] = self.resp_tail          # after the copy
                progress = True
            if progress:
                backoff.reset()
                continue
            if backoff.wait(time.monotonic()) > timeout:
                raise RingTimeoutError(
                    f"layout v2: no response for {timeout:g} s ({sent - len(out)} in flight)"
                )
        return out


class V2Transport:
    """Executes (op, args, ttl) requests over layout v2 rings; same results as V5Transport."""

    layout = "v2"

    def __init__(self, region: Region, timeout: float) -> None:
        descs = P.parse_v2_header(bytes(region.buf[: 24 + 32 * P.V2_MAX_RINGS]), region.size)
        client_id = os.getpid() & 0xFFFFFFFF
        self.rings = [V2Ring(region, d, client_id) for d in descs]
        self.timeout = timeout
        self.max_value_size = P.V2_MAX_PAYLOAD - P.V2_REQUEST_PREFIX.size
        self._counter = itertools.count()
        self._local = threading.local()

    def _ring(self) -> V2Ring:
        ring = getattr(self._local, "ring", None)
        if ring is None:
            ring = self.rings[next(self._counter) % len(self.rings)]
            self._local.ring = ring
        return ring

    def execute(self, requests: Sequence[tuple[int, tuple, int]]) -> list[P.Response]:
        slots = []
        ring = self._ring()
        for op, args, ttl in requests:
            if op == P.OP_GET:
                key, value, v2op = args[0], b"", P.V2_OP_GET
            elif op == P.OP_SET and not ttl:
                key, value, v2op = args[0], args[1], P.V2_OP_SET
            else:
                raise CxlRingError(
                    f"layout v2 supports only GET and SET without TTL, not {P.OP_NAMES.get(op)}"
                )
            if len(key) > 255 or 4 + len(key) + len(value) > P.V2_MAX_PAYLOAD:
                raise RequestTooLargeError(
                    f"layout v2: key of {len(key)} bytes (max 255) with value of {len(value)} "
                    f"bytes does not fit a {P.V2_SLOT_SIZE}-byte slot"
                )
            slots.append(P.encode_v2_request(ring.client_id, v2op, key, value))
        with ring.lock:
            replies = ring.transact(slots, self.timeout)
        out = []
        for (status, value), (op, _args, _ttl) in zip(replies, requests):
            if status == P.V2_ST_OK:
                out.append(P.Response(P.ST_OK, 0, value if op == P.OP_GET else b""))
            elif status == P.V2_ST_MISS:
                out.append(P.Response(P.ST_NOT_FOUND, 0, b""))
            else:
                out.append(P.Response(P.ST_ERR, 0, b"ERR layout v2 server error"))
        return out

    def call(self, op: int, args: tuple, ttl: int, timeout: float | None = None) -> P.Response:
        return self.execute([(op, args, ttl)])[0]      # v2 has no CMD: no blocking command

    def get(self, key: bytes) -> tuple[int, bytes]:
        status, _id, payload = self.execute([(P.OP_GET, (key,), 0)])[0]
        return status, payload

    def set(self, key: bytes, value: bytes, ttl_ms: int = 0) -> tuple[int, bytes]:
        status, _id, payload = self.execute([(P.OP_SET, (key, value), ttl_ms)])[0]
        return status, payload

    def discard_session(self) -> None:
        """Layout v2 has no sessions to renew."""

    def close(self) -> None:
        self.rings = []
