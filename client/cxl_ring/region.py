"""Open and map a shared region by path, read its header, and check every access.

A region is reached in one of two forms (docs/ring-protocol.md section 2):

- **One file** (``security: off``): the whole layout in one file or device, mapped read-write
  (read-only where the file cannot be opened for writing). The file may be
  ``/dev/shm/NAME`` or a hugetlbfs file (the map size is the file size); ``/dev/uioN`` (an
  ivshmem device bound to a uio driver: map ``K`` is mmapped at offset ``K * PAGESIZE``, its
  size is ``/sys/class/uio/uioN/maps/mapK/size``; ivshmem exposes BAR0, 256 bytes of registers,
  as map0 and BAR2, the shared memory, as map1, so by default the largest map is used;
  ``/dev/uioN@K`` picks map K); a PCI BAR file ``/sys/bus/pci/devices/*/resourceN`` (the
  size is the BAR size: the file's ``st_size``, else the device's ``resource`` table); or a
  device-DAX device ``/dev/daxN.M`` (the devdax medium: its size is sysfs' ``size``, and it is
  mapped whole; a ``map_size`` must be a multiple of its ``align``).
- **A directory of segment files** (``security: secdsm``): ``header``, ``client-<g>``,
  ``server-<g>``, each one of the above (on one host a file in ``/dev/shm/<lab>-<region>/``; in
  a guest ``/dev/cxl/<region>/`` holds symlinks to the granted segments' BAR files). Only the
  segments this peer is granted are there. The header is read from ``header``; then
  ``region_size`` bytes of address space are reserved with no access (``PROT_NONE``) and every
  segment file present is mapped at ``base + offset(k)`` with ``MAP_FIXED``: ``header`` and
  ``server-*`` read-only always, ``client-*`` read-write when the file opens for writing, else
  read-only. An absent segment stays inaccessible address space.

Python's ``mmap`` module cannot map at a fixed address, so mappings are made with libc's
``mmap``/``munmap`` through ctypes (the standard library); the region's bytes are one ctypes
array over the whole range (``mm``), whose slices are ``bytes``, and ``buf``/``u64``/``u32``
are memoryviews of it. The range is unmapped when the last view of it is gone (or by the
process's exit: never by an interpreter-exit hook, while views may still be in use).

Touching an absent segment would fault, and writing a read-only one too, so nothing here
touches a segment before checking it: ``read``/``write``/``load_u64``/``store_u64`` check the
segment (mapped, and writable for a write) and raise SegmentAccessError otherwise; a session
checks its channel's two sections once, when it is built (session.py), and then uses the raw
views ``u64``/``u32``/``buf`` on those sections only. Pure Python writes the shared fields
through ``memoryview`` casts: an element store of a ``'Q'`` view is one aligned 8-byte store,
never byte by byte (``struct.pack_into`` is not guaranteed to be). See channel.py for the
memory-ordering argument.
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import mmap
import os
import re
import stat
import weakref
from collections.abc import Iterable
from typing import NamedTuple

from . import protocol as P
from .exceptions import LayoutMismatchError, NotFormattedError, RegionError, SegmentAccessError
from .notify import Doorbell

_UIO = re.compile(r"^/dev/(uio\d+)(?:@(\d+))?$")
_RESOURCE = re.compile(r"^(.*)/resource(\d+)(?:_wc)?$")
_NO_WRITE = (errno.EACCES, errno.EPERM, errno.EROFS)

# ---- libc mmap/munmap (Python's mmap module has no MAP_FIXED) ---------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value
PROT_NONE = 0
PROT_READ = mmap.PROT_READ
PROT_WRITE = mmap.PROT_WRITE
MAP_SHARED = mmap.MAP_SHARED
MAP_PRIVATE = mmap.MAP_PRIVATE
MAP_ANONYMOUS = mmap.MAP_ANONYMOUS
MAP_FIXED = 0x10                      # the same on every Linux architecture


def _mmap(addr: int | None, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
    got = _libc.mmap(addr, length, prot, flags, fd, offset)
    if got is None or got == _MAP_FAILED:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return got


def _munmap(addr: int, length: int) -> None:
    _libc.munmap(addr, length)


# ---- Finding a file's or device's mappable size ------------------------------------------------


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read().strip(), 0)


DAX_ALIGN = 2 << 20  # a device-DAX device's mapping unit when sysfs does not say


def dax_geometry(rdev: int, sysfs: str = "/sys") -> tuple[int, int] | None:
    """(size, alignment) of the character device RDEV when it is a device-DAX device
    (its sysfs node's subsystem is ``dax``), else None. Every mapping of it must be a
    whole number of alignment units."""
    node = f"{sysfs}/dev/char/{os.major(rdev)}:{os.minor(rdev)}"
    try:
        if os.path.basename(os.readlink(f"{node}/subsystem")) != "dax":
            return None
    except OSError:
        return None
    try:
        size = _read_int(f"{node}/size")
    except (OSError, ValueError):
        size = 0
    try:
        align = _read_int(f"{node}/align") or DAX_ALIGN
    except (OSError, ValueError):
        align = DAX_ALIGN  # kernels before 5.10 have no align attribute
    return size, align


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
    if stat.S_ISCHR(st.st_mode):
        dax = dax_geometry(st.st_rdev)
        if dax is not None:
            size, align = dax
            if not size:
                raise RegionError(f"{path}: a device-DAX device of unknown size (no sysfs size)")
            if size % align:
                raise RegionError(f"{path}: device-DAX size {size} is not a multiple of {align}")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode) or r):
        raise RegionError(f"{path}: not a file or device")
    return path, 0, size


def _open(dev: str, want_write: bool) -> tuple[int, bool]:
    """Open ``dev`` for writing when asked and allowed, else read-only: (fd, writable)."""
    cloexec = getattr(os, "O_CLOEXEC", 0)
    if want_write:
        try:
            return os.open(dev, os.O_RDWR | cloexec), True
        except OSError as e:
            if e.errno not in _NO_WRITE:
                raise RegionError(f"{dev}: cannot open ({e.strerror})") from e
    try:
        return os.open(dev, os.O_RDONLY | cloexec), False
    except OSError as e:
        raise RegionError(f"{dev}: cannot open ({e.strerror})") from e


class SegmentMapping(NamedTuple):
    """How one segment is mapped in this peer."""

    segment: P.Segment
    path: str          # the file it was mapped from
    length: int        # bytes mapped at base + segment.offset (>= segment.size)
    writable: bool

    @property
    def access(self) -> str:
        return "rw" if self.writable else "ro"


def _array_over(base: int, size: int, unmap: tuple[int, int]) -> ctypes.Array:
    """A ctypes byte array over [base, base + size) that munmaps ``unmap`` when it goes."""
    arr = (ctypes.c_char * size).from_address(base)
    # Not at interpreter exit (finalize's default): objects still holding views of the range
    # (a client whose __del__ releases its channels, the lease keeper thread, the C core) run
    # after the atexit hooks and would fault on an unmapped range. The process's exit unmaps it.
    weakref.finalize(arr, _munmap, *unmap).atexit = False
    return arr


class Region:
    """A mapped region: checked access to its segments, and raw aligned 32/64-bit views.

    ``form`` is "off" (one file) or "secdsm" (a directory of segment files). ``size`` is the
    address range: the mapped file (off) or ``region_size`` (secdsm). ``u64[off // 8]`` and
    ``u32[off // 4]`` are single aligned loads and stores (on x86-64 TSO a load is an acquire
    and a store a release, see channel.py); they touch memory unchecked, so use them only on
    bytes ``check`` has accepted.

    ``doorbell``: the doorbell device its sessions ring a server that sleeps behind one
    (``notify_kind`` doorbell, docs/ring-protocol.md section 8): None for the default
    (CXL_RING_DOORBELL, else /dev/cxl/doorbell when it exists), "" for none; opened only when a
    notification needs it (``self.doorbell``, a notify.Doorbell, counts rings and misses).
    """

    def __init__(self, path: str, map_size: int | None = None, writable: bool = True,
                 doorbell: str | None = None) -> None:
        self.path = path
        self.doorbell = Doorbell(doorbell)
        self.mm: ctypes.Array | None = None
        self._address_holder = None
        self._hb_last = -1
        self._hb_changed = 0.0
        self._header: P.RegionHeader | None = None   # the geometry the mapping was made for
        self._mapped: list[SegmentMapping | None] = []
        self._starts: list[int] = []
        if os.path.isdir(path):
            if map_size is not None:
                raise RegionError(f"{path}: map_size applies to a region file, not to a "
                                  f"directory of segment files (each is mapped whole)")
            self.form = "secdsm"
            self._map_directory(path, writable)
        else:
            self.form = "off"
            self._map_file(path, map_size, writable)
        self.buf = memoryview(self.mm).cast("B")
        if self.form == "off" and not self._file_writable:
            self.buf = self.buf.toreadonly()
        self.u64 = self.buf.cast("Q")
        self.u32 = self.buf.cast("I")

    # ---- opening

    def _map_file(self, path: str, map_size: int | None, writable: bool) -> None:
        dev, offset, size = discover(path)
        if map_size is not None:
            if size and map_size > size:
                raise RegionError(f"{path}: map_size {map_size} > region size {size}")
            size = map_size
        if size < mmap.PAGESIZE:
            raise RegionError(f"{path}: region of {size} bytes is too small (empty file?)")
        size -= size % 8
        fd, self._file_writable = _open(dev, writable)
        try:
            prot = PROT_READ | (PROT_WRITE if self._file_writable else 0)
            base = _mmap(None, size, prot, MAP_SHARED, fd, offset)
        except OSError as e:
            raise RegionError(f"{dev}: cannot map {size} bytes at offset {offset} ({e})") from e
        finally:
            os.close(fd)
        self.base, self.size = base, size
        self.mm = _array_over(base, size, (base, size))

    def _map_directory(self, path: str, writable: bool) -> None:
        self._file_writable = False
        header = self._read_header_file(path)
        align = header.segment_align
        # Reserve the range with no access, aligned to segment_align (hugetlbfs needs it).
        reserved = header.region_size + align
        try:
            start = _mmap(None, reserved, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        except OSError as e:
            raise RegionError(f"{path}: cannot reserve {header.region_size} bytes of address "
                              f"space ({e})") from e
        try:
            base = (start + align - 1) & ~(align - 1)
            self.base, self.size = base, header.region_size
            for seg in header.segments:
                self._mapped.append(self._map_segment(path, seg, writable))
            if self._mapped[0] is None:
                raise RegionError(f"{path}: the header segment file went away while the "
                                  f"region was being opened")
            self._starts = [s.offset for s in header.segments]
            self._header = header
            # Read the header again from its mapping: a server that formatted the region
            # again in between (another geometry) would leave these mappings wrong.
            again = self._parse_mapped_header()
            if again.geometry() != header.geometry():
                raise RegionError(f"{path}: the region was formatted again while it was being "
                                  f"opened: open it again")
        except BaseException:
            _munmap(start, reserved)
            raise
        self.mm = _array_over(base, header.region_size, (start, reserved))

    def _read_header_file(self, path: str) -> P.RegionHeader:
        """The header, from a private copy of the ``header`` segment file (magic read first)."""
        name = os.path.join(path, "header")
        if not os.path.lexists(name):
            raise RegionError(
                f"{path}: no 'header' segment file: a region directory holds header, "
                f"client-<g> and server-<g>, and every peer needs the header (grant it)")
        dev, offset, size = discover(os.path.realpath(name))
        if size < P.HEADER_SIZE:
            raise RegionError(f"{name}: {size} bytes, the header segment needs "
                              f"{P.HEADER_SIZE}")
        fd, _ = _open(dev, False)
        try:
            m = mmap.mmap(fd, P.HEADER_SIZE, MAP_SHARED, PROT_READ, offset=offset)
        except (OSError, ValueError) as e:
            raise RegionError(f"{dev}: cannot map the header ({e})") from e
        finally:
            os.close(fd)
        try:
            view = memoryview(m)
            words = view.cast("Q")
            magic = words[0].to_bytes(8, "little")            # F2: magic first, one load
            copy = magic + bytes(view[8:])
            words.release()
            view.release()
        finally:
            m.close()
        try:
            return P.parse_header(copy)
        except NotFormattedError as e:
            raise NotFormattedError(f"{path}: {e}") from None
        except LayoutMismatchError as e:
            raise LayoutMismatchError(f"{path}: layout mismatch: {e}") from None

    def _map_segment(self, path: str, seg: P.Segment, writable: bool) -> SegmentMapping | None:
        name = os.path.join(path, seg.name)
        if not os.path.lexists(name):
            return None                                       # not granted: stays unmapped
        if not os.path.exists(name):
            raise RegionError(f"{name}: a dangling symlink (its device is gone?)")
        dev, offset, size = discover(os.path.realpath(name))
        if size < seg.size:
            raise RegionError(f"{name}: {size} bytes, segment {seg.name} needs at least "
                              f"{seg.size} (was the region made for another layout?)")
        length = min(size, seg.span)
        want_write = writable and seg.kind == P.SEG_CLIENT
        fd, can_write = _open(dev, want_write)
        try:
            prot = PROT_READ | (PROT_WRITE if can_write else 0)
            try:
                _mmap(self.base + seg.offset, length, prot, MAP_SHARED | MAP_FIXED, fd, offset)
            except OSError as e:
                if not can_write or e.errno not in _NO_WRITE:
                    raise
                can_write = False
                _mmap(self.base + seg.offset, length, PROT_READ, MAP_SHARED | MAP_FIXED, fd,
                      offset)
        except OSError as e:
            raise RegionError(f"{name}: cannot map {length} bytes ({e})") from e
        finally:
            os.close(fd)
        return SegmentMapping(seg, name, length, can_write)

    def _parse_mapped_header(self) -> P.RegionHeader:
        """The header from the mapping (the header segment is always mapped)."""
        magic = ctypes.c_uint64.from_address(self.base).value.to_bytes(8, "little")   # F2
        buf = (ctypes.c_char * P.HEADER_SIZE).from_address(self.base)
        return P.parse_header(magic + buf[8:])

    # ---- what is mapped

    def segments(self) -> list[tuple[P.Segment, SegmentMapping | None]]:
        """Every segment of the layout and how it is mapped here (None: not mapped).

        For one file (off) every segment inside the mapping is mapped with the file's access;
        the layout is read from the header."""
        header = self.header()
        if self.form == "secdsm":
            return list(zip(header.segments, self._mapped))
        return [(s, SegmentMapping(s, self.path, s.span, self._file_writable)
                 if s.offset + s.size <= self.size else None) for s in header.segments]

    def access(self, offset: int, length: int) -> str | None:
        """"rw", "ro" or None (not mapped) for the bytes [offset, offset + length)."""
        try:
            self.check(offset, length)
        except SegmentAccessError:
            return None
        try:
            self.check(offset, length, write=True)
        except SegmentAccessError:
            return "ro"
        return "rw"

    def check(self, offset: int, length: int, write: bool = False, what: str = "") -> None:
        """Raise SegmentAccessError unless [offset, offset + length) lies in one mapped
        segment (writable, for ``write``). ``what`` names the bytes in the message."""
        what = f" ({what})" if what else ""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise SegmentAccessError(f"{self.path}: bytes {offset}..{offset + length}{what} lie "
                                     f"outside the region's {self.size} bytes")
        if self.form == "off":
            if write and not self._file_writable:
                raise SegmentAccessError(f"{self.path}: opened read-only, cannot write bytes "
                                         f"{offset}..{offset + length}{what}")
            return
        k = bisect.bisect_right(self._starts, offset) - 1
        seg = self._header.segments[k]                        # type: ignore[union-attr]
        m = self._mapped[k]
        if m is None:
            raise SegmentAccessError(
                f"{self.path}: segment {seg.name} is not mapped in this peer (its file is "
                f"not in the region directory: not granted), cannot "
                f"{'write' if write else 'read'} bytes {offset}..{offset + length}{what}")
        if offset + length > seg.offset + min(m.length, seg.span):
            raise SegmentAccessError(f"{self.path}: bytes {offset}..{offset + length}{what} run "
                                     f"past segment {seg.name}")
        if write and not m.writable:
            raise SegmentAccessError(
                f"{self.path}: segment {seg.name} is mapped read-only here ({m.path} does not "
                f"open for writing), cannot write bytes {offset}..{offset + length}{what}")

    # ---- checked access

    def read(self, offset: int, length: int) -> bytes:
        """A private copy of [offset, offset + length), checked first."""
        self.check(offset, length)
        return self.mm[offset : offset + length]              # type: ignore[index]

    def write(self, offset: int, data: bytes) -> None:
        """Copy ``data`` to ``offset``, checked first (mapped and writable)."""
        self.check(offset, len(data), write=True)
        self.buf[offset : offset + len(data)] = data

    def load_u64(self, offset: int) -> int:
        self.check(offset, 8)
        return self.u64[offset // 8]

    def load_u32(self, offset: int) -> int:
        self.check(offset, 4)
        return self.u32[offset // 4]

    def store_u64(self, offset: int, value: int) -> None:
        self.check(offset, 8, write=True)
        self.u64[offset // 8] = value

    def channel_access(self, header: P.RegionHeader, channel: int) -> tuple[str | None, str | None]:
        """How channel ``channel``'s client and server sections are mapped: "rw", "ro", None."""
        return (self.access(header.client_section(channel), header.client_section_size),
                self.access(header.server_section(channel), header.server_section_size))

    def claimable_channels(self, header: P.RegionHeader) -> list[int]:
        """The channels this peer may claim: client section writable, server section mapped."""
        out = []
        for c in range(header.channel_count):
            mine, server = self.channel_access(header, c)
            if mine == "rw" and server is not None:
                out.append(c)
        return out

    def why_no_channel(self, header: P.RegionHeader) -> str:
        """Why no channel of this region is claimable here (for the error message)."""
        parts = []
        for g in range(header.group_count):
            c = header.client_segment(g).first_channel
            mine, server = self.channel_access(header, c)
            parts.append(f"client-{g} {mine or 'not mapped'}, server-{g} "
                         f"{server or 'not mapped'}")
        return (f"{self.path}: no channel this peer may claim: a client needs its group's "
                f"client-<g> read-write and server-<g> readable ({'; '.join(parts)}); grant "
                f"the segments (or, for one file, open it read-write)")

    # ---- header and liveness

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
        """'v5', 'v2', or raise LayoutMismatchError (the version field is checked by header())."""
        magic = self.magic()
        if magic == P.MAGIC:
            return "v5"
        if magic == P.V2_MAGIC:
            return "v2"
        if magic == b"\0" * 8:
            raise NotFormattedError(
                f"{self.path}: region not formatted (all zeros): no server has started on it"
            )
        raise LayoutMismatchError(f"{self.path}: not a cxl_ring region (magic {magic!r})")

    def header(self) -> P.RegionHeader:
        """Validated private copy of the layout 5 header geometry and segment table.

        The first copy fixes the geometry this mapping serves; a later copy with another
        geometry (a server formatted the region again) raises LayoutMismatchError."""
        magic = self.magic()                                  # F2 before the geometry
        copy = magic + self.mm[8 : P.HEADER_SIZE]             # type: ignore[index]
        try:
            h = P.parse_header(copy, self.size if self.form == "off" else None)
        except NotFormattedError as e:
            raise NotFormattedError(f"{self.path}: {e}") from None
        except LayoutMismatchError as e:
            raise LayoutMismatchError(f"{self.path}: layout mismatch: {e}") from None
        if self._header is None:
            self._header = h
        elif h.geometry() != self._header.geometry():
            raise LayoutMismatchError(
                f"{self.path}: the server formatted the region again with another layout "
                f"(groups {h.groups}, was {self._header.groups}): open the region again")
        return h

    def liveness(self) -> tuple[int, int, int, int]:
        """(server_epoch, server_heartbeat, server_state, server_pid), each one aligned load."""
        u64, u32 = self.u64, self.u32
        return u64[16], u64[17], u32[36], u32[37]

    def address(self) -> int:
        """Virtual address of the mapping (for the CAS helper)."""
        return self.base

    def close(self) -> None:
        self.doorbell.close()
        if self.mm is None:
            return
        for view in (self.u64, self.u32, self.buf):
            view.release()
        # A view still exported somewhere (a session's) keeps the range mapped until its last
        # reference goes; then the array's finalizer unmaps it.
        self.mm = None

    def __enter__(self) -> Region:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- Views: a directory with only some segments (one host standing in for Sec-DSM grants) --


def group_segments(group: int) -> list[str]:
    """The segments a client of channel group ``group`` is granted by default."""
    return ["header", f"client-{group}", f"server-{group}"]


def make_view(region_dir: str, view_dir: str, segments: Iterable[str]) -> str:
    """Make ``view_dir`` (mode 0700) holding symlinks to ``segments`` of ``region_dir`` only.

    A peer given ``view_dir`` maps just those segments, as a guest granted just those ivshmem
    devices would (the tests, the bench and the attack suite use it on one host). A segment
    name not in ``region_dir`` raises RegionError. Returns ``view_dir``."""
    names = list(segments)
    for name in names:
        if not re.fullmatch(r"header|(client|server)-\d+", name):
            raise RegionError(f"{name!r} is not a segment name (header, client-<g>, "
                              f"server-<g>)")
        if not os.path.exists(os.path.join(region_dir, name)):
            raise RegionError(f"{region_dir}: no segment file {name!r} to put in a view")
    os.makedirs(view_dir, mode=0o700, exist_ok=True)
    for name in names:
        os.symlink(os.path.abspath(os.path.join(region_dir, name)), os.path.join(view_dir, name))
    return view_dir


def remove_view(view_dir: str) -> None:
    """Remove a view made by make_view: its symlinks, then the directory (never a target)."""
    if not os.path.isdir(view_dir):
        return
    for name in os.listdir(view_dir):
        p = os.path.join(view_dir, name)
        if os.path.islink(p):
            os.unlink(p)
    os.rmdir(view_dir)
