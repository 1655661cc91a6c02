"""A small client for the proof of concept's layout v2, written from
docs/ring-protocol.md section 10 only (the driver's `layout v2` mode serves it).

Region header (little-endian):

    0   8   magic  b"CXLSHM1\\0"
    8   4   version = 2
    12  4   ring_count (1..8)
    16  8   reserved
    24 + 32*i   req_off, req_sz, resp_off, resp_sz   (u64 each) of ring i

Ring (at req_off / resp_off): u64 head @0, u64 tail @8, slots of 4096 bytes from @16;
slots = (req_sz - 16) // 4096; full when head - tail >= slots.
Slot: u32 client_id, u16 type (1 DATA, 2 CLOSE), u16 flags, u32 len (<= 4080), u32 reserved,
then the payload; the rest of the slot is zero.
Request payload: u8 op (1 GET, 2 SET), u8 key_len, u16 val_len, key, value (SET).
Response payload: u8 status (0 OK, 1 MISS, 2 ERR), u16 val_len, value (GET hit).
"""

from __future__ import annotations

import mmap
import os
import struct
import time

MAGIC = b"CXLSHM1\0"
SLOT = 4096
SLOT_HDR = struct.Struct("<IHHII")
RING_DESC = struct.Struct("<QQQQ")
TYPE_DATA, TYPE_CLOSE = 1, 2
OP_GET, OP_SET = 1, 2
OK, MISS, ERR = 0, 1, 2


class PocV2Error(Exception):
    pass


class PocV2Client:
    def __init__(self, path: str, map_size: int = 0, client_id: int = 1):
        fd = os.open(path, os.O_RDWR)
        try:
            size = map_size or os.fstat(fd).st_size
            self.mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.q = memoryview(self.mm).cast("Q")
        magic, version, self.ring_count = struct.unpack_from("<8sII", self.mm, 0)
        if magic != MAGIC or version != 2 or not 1 <= self.ring_count <= 8:
            self.close()
            raise PocV2Error(f"not a layout v2 region: {magic!r} v{version}")
        self.rings = [RING_DESC.unpack_from(self.mm, 24 + 32 * i)
                      for i in range(self.ring_count)]
        self.slots = (self.rings[0][1] - 16) // SLOT       # the request size, as the PoC
        self.client_id = client_id

    def close(self) -> None:
        self.q.release()
        self.mm.close()

    def _u64(self, off: int) -> int:
        return self.q[off // 8]

    def _put_u64(self, off: int, v: int) -> None:
        self.q[off // 8] = v

    def push(self, ring: int, op: int, key: bytes, value: bytes = b"",
             slot_type: int = TYPE_DATA, raw_payload: bytes | None = None) -> bool:
        """Write one request slot; False when the ring is full."""
        req_off = self.rings[ring][0]
        head, tail = self._u64(req_off), self._u64(req_off + 8)
        if head - tail >= self.slots:
            return False
        payload = raw_payload if raw_payload is not None else (
            struct.pack("<BBH", op, len(key), len(value)) + key + value)
        slot = SLOT_HDR.pack(self.client_id, slot_type, 0, len(payload), 0) + payload
        at = req_off + 16 + (head % self.slots) * SLOT
        self.mm[at: at + SLOT] = slot + bytes(SLOT - len(slot))
        self._put_u64(req_off, head + 1)                    # after the slot (x86 order)
        return True

    def pop(self, ring: int, timeout: float = 5.0) -> tuple[int, bytes]:
        """(status, value) of the next response on this ring."""
        resp_off = self.rings[ring][2]
        deadline = time.monotonic() + timeout
        while self._u64(resp_off) == self._u64(resp_off + 8):
            if time.monotonic() > deadline:
                raise PocV2Error(f"ring {ring}: no response within {timeout}s")
            time.sleep(0.0001)
        tail = self._u64(resp_off + 8)
        at = resp_off + 16 + (tail % self.slots) * SLOT
        _cid, _type, _flags, length, _ = SLOT_HDR.unpack_from(self.mm, at)
        if not 3 <= length <= SLOT - 16:
            raise PocV2Error(f"bad response length {length}")
        status, vlen = struct.unpack_from("<BH", self.mm, at + 16)
        if 3 + vlen > length:
            raise PocV2Error("response value past its length")
        value = bytes(self.mm[at + 19: at + 19 + vlen])
        self._put_u64(resp_off + 8, tail + 1)
        return status, value

    def request(self, ring: int, op: int, key: bytes, value: bytes = b"") -> tuple[int, bytes]:
        deadline = time.monotonic() + 5
        while not self.push(ring, op, key, value):
            if time.monotonic() > deadline:
                raise PocV2Error("request ring stays full")
            time.sleep(0.0001)
        return self.pop(ring)

    def get(self, key: bytes, ring: int = 0) -> tuple[int, bytes]:
        return self.request(ring, OP_GET, key)

    def set(self, key: bytes, value: bytes, ring: int = 0) -> tuple[int, bytes]:
        return self.request(ring, OP_SET, key, value)
