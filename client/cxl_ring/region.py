"""Open and map a shared region by path, and read its header.

A region is reached through one of:

- a file (``/dev/shm/NAME``, hugetlbfs): the map size is the file size;
- ``/dev/uioN`` (an ivshmem device bound to a uio driver): map ``K`` of the device is mmapped at
  offset ``K * PAGESIZE``; its size is ``/sys/class/uio/uioN/maps/mapK/size``. ivshmem exposes
  BAR0 (256 bytes of registers) as map0 and BAR2 (the shared memory) as map1, so by default the
  largest map is used; ``/dev/uioN@K`` picks map K explicitly;
- a PCI BAR file ``/sys/bus/pci/devices/*/resourceN``: the size is the BAR size (the file's
  ``st_size``, else the ``resource`` table of the device).

Pure Python writes the shared fields through ``memoryview`` casts: an element store of a
``'Q'`` view is one aligned 8-byte store, never byte by byte (``struct.pack_into`` is not
guaranteed to be). See channel.py for the memory-ordering argument.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import stat

from . import protocol as P
from .exceptions import LayoutMismatchError, NotFormattedError, RegionError

_UIO = re.compile(r"^/dev/(uio\d+)(?:@(\d+))?$")
_RESOURCE = re.compile(r"^(.*)/resource(\d+)(?:_wc)?$")


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read().strip(), 0)


def discover(path: str) -> tuple[str, int, int]:
    """Return (device path, mmap offset, size) for a region path; raise RegionError if unknown."""
    m = _UIO.match(path)
    if m:
        dev, explicit = m.group(1), m.group(2)
        maps_dir = f"/sys/class/uio/{dev}/maps"
        try:
            maps = sorted(int(d[3:]) for d in os.listdir(maps_dir) if d.startswith("map"))
        except OSError as e:
            raise RegionError(f"{path}: no uio maps in {maps_dir} ({e.strerror})") from e
        sizes = {k: _read_int(f"{maps_dir}/map{k}/size") for k in maps}
        if not sizes:
            raise RegionError(f"{path}: the uio device exposes no memory maps")
        k = int(explicit) if explicit is not None else max(sizes, key=lambda i: sizes[i])
        if k not in sizes:
            raise RegionError(f"{path}: uio map {k} does not exist (maps: {sorted(sizes)})")
        return f"/dev/{dev}", k * mmap.PAGESIZE, sizes[k]
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise RegionError(f"{path}: no such region (is the path right, is the server up?)") from e
    except OSError as e:
        raise RegionError(f"{path}: {e.strerror}") from e
    size = st.st_size
    r = _RESOURCE.match(path)
    if r and path.startswith("/sys/") and size == 0:
        # The BAR size from the device's resource table: "start end flags" per BAR.
        with open(f"{r.group(1)}/resource") as f:
            start, end, _ = (int(x, 16) for x in f.read().splitlines()[int(r.group(2))].split())
        size = end - start + 1 if end else 0
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode) or r):
        raise RegionError(f"{path}: not a file or device")
    return path, 0, size


class Region:
    """A mapped region: raw access to its bytes and aligned 32/64-bit fields.

    ``u64[off // 8]`` and ``u32[off // 4]`` are single aligned loads and stores (on x86-64
    TSO a load is an acquire and a store a release, see channel.py).
    """

    def __init__(self, path: str, map_size: int | None = None, writable: bool = True) -> None:
        self.path = path
        dev, offset, size = discover(path)
        if map_size is not None:
            if size and map_size > size:
                raise RegionError(f"{path}: map_size {map_size} > region size {size}")
            size = map_size
        if size < mmap.PAGESIZE:
            raise RegionError(f"{path}: region of {size} bytes is too small (empty file?)")
        size -= size % 8
        flags = os.O_RDWR if writable else os.O_RDONLY
        try:
            fd = os.open(dev, flags | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise RegionError(f"{dev}: cannot open ({e.strerror})") from e
        try:
            access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
            self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, access=access, offset=offset)
        except (OSError, ValueError) as e:
            raise RegionError(f"{dev}: cannot map {size} bytes at offset {offset} ({e})") from e
        finally:
            os.close(fd)
        self.size = size
        self.buf = memoryview(self.mm)
        if not writable:
            self.buf = self.buf.toreadonly()
        self.u64 = self.buf.cast("Q")
        self.u32 = self.buf.cast("I")
        self._address_holder = None
        self._hb_last = -1
        self._hb_changed = 0.0

    def heartbeat_age(self, now: float) -> float:
        """Seconds since server_heartbeat was last seen to change (0 on the first look).

        Shared by every session on this mapping, so a server found dead by one thread is
        known dead to the next claim at once."""
        hb = self.u64[P.OFF_SERVER_HEARTBEAT // 8]
        if hb != self._hb_last:
            self._hb_last, self._hb_changed = hb, now
            return 0.0
        return now - self._hb_changed

    def magic(self) -> bytes:
        """The magic, read first (F2: one 8-byte load; everything else is read after it)."""
        return self.u64[0].to_bytes(8, "little")

    def layout(self) -> str:
        """'v4', 'v2', or raise LayoutMismatchError (the version field is checked by header())."""
        magic = self.magic()
        if magic == P.MAGIC:
            return "v4"
        if magic == P.V2_MAGIC:
            return "v2"
        if magic == b"\0" * 8:
            raise NotFormattedError(
                f"{self.path}: region not formatted (all zeros): no server has started on it"
            )
        raise LayoutMismatchError(f"{self.path}: not a cxl_ring region (magic {magic!r})")

    def header(self) -> P.RegionHeader:
        """Validated private copy of the v4 header geometry."""
        self.magic()  # F2 before the geometry
        return P.parse_header(bytes(self.buf[: P.REGION_GEOMETRY.size]), self.size)

    def liveness(self) -> tuple[int, int, int, int]:
        """(server_epoch, server_heartbeat, server_state, server_pid), each one aligned load."""
        u64, u32 = self.u64, self.u32
        return u64[16], u64[17], u32[36], u32[37]

    def address(self) -> int:
        """Virtual address of the mapping (for the CAS helper)."""
        if self._address_holder is None:
            import ctypes

            self._address_holder = ctypes.c_char.from_buffer(self.mm)
        import ctypes

        return ctypes.addressof(self._address_holder)

    def close(self) -> None:
        if self.mm is None:
            return
        self._address_holder = None
        for view in (self.u64, self.u32, self.buf):
            view.release()
        # A view still exported somewhere keeps the mapping until its last reference goes.
        with contextlib.suppress(BufferError):
            self.mm.close()
        self.mm = None

    def __enter__(self) -> Region:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
