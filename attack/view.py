"""What a peer can reach of a region: its view, mapped the attacker's way.

A view is the path a peer is given (docs/ring-protocol.md 2):

- `security: secdsm`: a directory with one file per *granted* segment (`header`,
  `client-<g>`, `server-<g>`); absent files are segments the peer was not given;
- `security: off`: one file or device holding the whole region.

The attacker opens everything it can for writing (it is root in its VM and tries), falls
back to read-only, and maps each segment on its own. A segment it cannot open stays
unmapped: reads give None and writes are not attempted (there is no address to write to).
Under Sec-DSM the hypervisor maps `ro` segments read-only whatever the guest asks: a guest
write through a writable guest mapping is dropped by QEMU, so a write here is an *attempt*;
whether it *landed* is decided outside the attacker (the host reads the segment files).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import stat
import struct
from dataclasses import dataclass, field

from . import layout as L

_UIO = re.compile(r"^/dev/(uio\d+)$")


def _discover(path: str) -> tuple[str, int, int]:
    """(device, mmap offset, size) of a file, a PCI resource file or a uio device (its
    largest map: BAR2 of an ivshmem device). Its own code, not the client library's: the
    attacker keeps working whatever that library refuses."""
    real = os.path.realpath(path)
    m = _UIO.match(real)
    if m:
        maps = f"/sys/class/uio/{m.group(1)}/maps"
        sizes = {}
        for d in os.listdir(maps):
            with open(f"{maps}/{d}/size") as f:
                sizes[int(d[3:])] = int(f.read().strip(), 0)
        k = max(sizes, key=lambda i: sizes[i])
        return real, k * mmap.PAGESIZE, sizes[k]
    st = os.stat(real)
    size = st.st_size
    if stat.S_ISCHR(st.st_mode):  # a device-DAX device (the devdax medium): sysfs has its size
        node = f"/sys/dev/char/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        with contextlib.suppress(OSError, ValueError), open(f"{node}/size") as f:
            size = int(f.read().strip(), 0)
    r = re.match(r"^(/sys/.*)/resource(\d+)$", real)
    if r and size == 0:
        with open(f"{r.group(1)}/resource") as f:
            start, end, _ = (int(x, 16) for x in f.read().splitlines()[int(r.group(2))].split())
        size = end - start + 1 if end else 0
    return real, 0, size


def _open_best(path: str) -> tuple[int, bool]:
    """An fd for path, read-write when the OS allows it, else read-only; raises OSError.

    A file mode is no barrier to root in its own VM (it owns the guest kernel): an attacker
    running as root whose write open is refused gives the file a write bit, opens it, and
    puts the mode back. What is left to stop its writes is the hypervisor's read-only backend.
    """
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC), True
    except PermissionError:
        if os.geteuid() == 0:
            mode = os.stat(path).st_mode & 0o7777
            try:
                os.chmod(path, mode | 0o200)
                return os.open(path, os.O_RDWR | os.O_CLOEXEC), True
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    os.chmod(path, mode)
    except OSError:
        pass
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC), False


@dataclass
class Mapped:
    """One segment as this peer maps it."""

    segment: L.Segment
    source: str  # the file it came from (realpath)
    writable: bool  # mapped for writing (the hypervisor may still drop the writes)
    mm: mmap.mmap
    base: int  # offset of the segment inside mm


@dataclass
class View:
    path: str
    form: str  # "dir" (secdsm) or "file" (off)
    header: L.Header
    mapped: dict[str, Mapped] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # segment -> why it is not mapped
    _mms: list[mmap.mmap] = field(default_factory=list)

    # ---- access ------------------------------------------------------------------------------

    def has(self, name: str) -> bool:
        return name in self.mapped

    def writable(self, name: str) -> bool:
        return name in self.mapped and self.mapped[name].writable

    def read(self, name: str, off: int, n: int) -> bytes | None:
        m = self.mapped.get(name)
        if m is None or off + n > m.segment.span:
            return None
        return bytes(m.mm[m.base + off : m.base + off + n])

    def u64(self, name: str, off: int) -> int | None:
        b = self.read(name, off, 8)
        return None if b is None else struct.unpack("<Q", b)[0]

    def u32(self, name: str, off: int) -> int | None:
        b = self.read(name, off, 4)
        return None if b is None else struct.unpack("<I", b)[0]

    def write(self, name: str, off: int, data: bytes) -> bool:
        """Write data at off of a segment; False when the segment is not mapped writable."""
        m = self.mapped.get(name)
        if m is None or not m.writable or off + len(data) > m.segment.span:
            return False
        start = m.base + off
        if len(data) == 8 and start % 8 == 0:
            # One aligned 8-byte store, like a real peer's index store.
            memoryview(m.mm)[start : start + 8].cast("Q")[0] = struct.unpack("<Q", data)[0]
        else:
            m.mm[start : start + len(data)] = data
        return True

    def put_u64(self, name: str, off: int, value: int) -> bool:
        return self.write(name, off, struct.pack("<Q", value & (2**64 - 1)))

    def put_u32(self, name: str, off: int, value: int) -> bool:
        return self.write(name, off, struct.pack("<I", value & 0xFFFFFFFF))

    def sources(self) -> set[str]:
        return {m.source for m in self.mapped.values()}

    def close(self) -> None:
        self.mapped.clear()
        for mm in self._mms:
            with contextlib.suppress(BufferError, ValueError):
                mm.close()
        self._mms.clear()


def _map(path: str, length: int | None = None) -> tuple[mmap.mmap, bool, int]:
    dev, offset, size = _discover(path)
    fd, rw = _open_best(dev)
    try:
        n = size if length is None else min(length, size) if size else length
        n -= n % mmap.PAGESIZE
        if n <= 0:
            raise OSError(f"{path}: nothing to map ({size} bytes)")
        mm = mmap.mmap(
            fd,
            n,
            mmap.MAP_SHARED,
            access=mmap.ACCESS_WRITE if rw else mmap.ACCESS_READ,
            offset=offset,
        )
        return mm, rw, n
    finally:
        os.close(fd)


def open_view(path: str) -> View:
    """Map everything of the region at path that this peer can open; raises OSError or
    LayoutError when not even the header can be read."""
    if os.path.isdir(path):
        mm, rw, n = _map(os.path.join(path, "header"))
        header = L.parse_header(bytes(mm[: min(n, L.HEADER_SIZE)]))
        view = View(path, "dir", header)
        view._mms.append(mm)
        for seg in header.segments:
            file = os.path.join(path, seg.name)
            if seg.name == "header":
                view.mapped[seg.name] = Mapped(seg, os.path.realpath(file), rw, mm, 0)
                continue
            if not os.path.lexists(file):
                view.missing[seg.name] = "not in the view"
                continue
            try:
                smm, srw, sn = _map(file, seg.span)
            except OSError as e:
                view.missing[seg.name] = f"cannot map ({e.strerror or e})"
                continue
            if sn < seg.size:
                smm.close()
                view.missing[seg.name] = f"file of {sn} bytes < segment size {seg.size}"
                continue
            view._mms.append(smm)
            view.mapped[seg.name] = Mapped(seg, os.path.realpath(file), srw, smm, 0)
        return view
    mm, rw, n = _map(path)
    header = L.parse_header(bytes(mm[: L.HEADER_SIZE]))
    view = View(path, "file", header)
    view._mms.append(mm)
    src = os.path.realpath(path)
    for seg in header.segments:
        if seg.offset + seg.size <= n:
            view.mapped[seg.name] = Mapped(seg, src, rw, mm, seg.offset)
        else:
            view.missing[seg.name] = "beyond the end of the mapped file"
    return view
