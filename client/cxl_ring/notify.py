"""Waking a sleeping server (docs/ring-protocol.md section 8) from pure Python.

After a client publishes requests (P1) it makes a full fence and looks at the header's
``server_sleeping``; when it is set it wakes the server the way ``notify_kind`` says. Futex
(every peer on this host): it bumps its group's wake word (``req_wake``, in the client section
of the group's first channel) and calls ``FUTEX_WAKE`` on it. Doorbell (between VMs): it writes
the 4 bytes ``(doorbell_peer << 16) | doorbell_vector`` (little-endian) to its VM's doorbell
device (``Doorbell`` below: ``/dev/cxl/doorbell``, the uio_cxl_doorbell driver), opened on the
first such notification. The fence and the server's are a Dekker pair (N2 here, N1 in the
driver): either the server's last look at the rings sees the request, or this client sees it
asleep. While the server is awake a client pays one fence and one load, no system call.

The standard library has neither a fence nor an atomic add on an mmap; ``_atomic.cas64`` (a
locked compare-and-swap, seq-cst) gives both: a locked instruction is a full fence on x86-64,
and the bump is a CAS on the 8 bytes at offset 24 of the control page, whose upper half is
reserved zero. ``FUTEX_WAKE`` is the ``futex`` system call through libc's ``syscall``. Where any
of this is missing, ``AVAILABLE`` is False and the client does not notify: a sleeping server
then sees the request at its next timeout (the driver's ``sleep_max_ms``), never later.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import select
import struct
import threading

from . import _atomic
from . import protocol as P

# futex(2)'s number per architecture (the generic table's 98 for arm64 and riscv).
_SYS_FUTEX = {"x86_64": 202, "AMD64": 202, "aarch64": 98, "arm64": 98, "riscv64": 98}
_FUTEX_WAKE = 1

_fence_cell = ctypes.c_uint64(0)
_fence_addr = ctypes.addressof(_fence_cell)


def _syscall():
    nr = _SYS_FUTEX.get(platform.machine())
    if nr is None:
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    fn.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]

    def wake(address: int) -> int:
        return fn(nr, address, _FUTEX_WAKE, 1)

    return wake


futex_wake = _syscall()
AVAILABLE = futex_wake is not None and _atomic.cas64 is not None


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _wait_syscall():
    nr = _SYS_FUTEX.get(platform.machine())
    if nr is None:
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syscall  # its own object: its own argtypes
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    fn.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint,
                   ctypes.POINTER(_Timespec), ctypes.c_void_p, ctypes.c_int]

    def wait(address: int, expected: int, seconds: float) -> None:
        ts = _Timespec(int(seconds), int((seconds % 1) * 1e9))
        fn(nr, address, _FUTEX_WAIT, expected, ctypes.byref(ts), None, 0)

    return wait


_FUTEX_WAIT = 0
futex_wait = _wait_syscall()
CAN_BLOCK = AVAILABLE and futex_wait is not None


def fence() -> None:
    """A full fence: a locked CAS on a private cell (seq-cst)."""
    cas = _atomic.cas64
    if cas is not None:
        cas(_fence_addr, 0, 0)


def wake_word_offset(header: P.RegionHeader, channel: int) -> int:
    """Offset in the region of the 8 bytes whose low half is the group's ``req_wake``."""
    first = header.client_segment(header.group_of(channel)).first_channel
    return header.client_section(first) + P.OFF_REQ_WAKE


DOORBELL_ENV = "CXL_RING_DOORBELL"
DOORBELL_DEFAULT = "/dev/cxl/doorbell"
# Our peer id when the doorbell has no directory (a FIFO or terminal standing in, in tests).
DOORBELL_PEER_ENV = "CXL_RING_DOORBELL_PEER"
_DIRECTORY_MAGIC = b"CXLBELL\0"        # docs/doorbell.md section 2: the directory in BAR2
_DIRECTORY_SIZE = 4096


class BellWait:
    """One blocked thread's end of its VM's doorbell (section 8, N3 with notify_kind
    doorbell): the device opened once more, read-only, so that each waiter has its own count
    (uio tells every open file of each interrupt), and our peer id, which the server rings.

    ``value()`` is what the client publishes in ``resp_doorbell``; ``drain()`` forgets the
    rings already latched; ``wait(seconds)`` blocks until a ring or the timeout. A ring is a
    hint: the caller looks at its ring again. ``waits`` and ``wakes`` count blocks and those
    that a ring ended."""

    def __init__(self, path: str, peer: int | None) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.peer = peer
        self.map: mmap.mmap | None = None
        if peer is None:
            try:
                self.map = mmap.mmap(self.fd, _DIRECTORY_SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
            except (OSError, ValueError) as e:
                os.close(self.fd)
                raise OSError(f"the doorbell {path} has no directory to read our peer id "
                              f"from ({e}); set {DOORBELL_PEER_ENV}") from None
            if self.map[:8] != _DIRECTORY_MAGIC:
                self.close()
                raise OSError(f"the doorbell {path} has no directory (no CXLBELL magic)")
        self._poll = select.poll()
        self._poll.register(self.fd, select.POLLIN)
        self.waits = 0
        self.wakes = 0

    def own_peer(self) -> int | None:
        """Our current peer id (it changes when our VM's QEMU reconnects); None while the
        directory is being rewritten after 100 tries."""
        if self.map is None:
            return self.peer
        m = self.map
        for _ in range(100):
            s1, = struct.unpack_from("<I", m, 12)
            peer, = struct.unpack_from("<i", m, 16)
            s2, = struct.unpack_from("<I", m, 12)
            if s1 == s2 and not s1 & 1:
                return peer if 0 <= peer <= 0xFFFF else None
        return None

    def value(self) -> int | None:
        """``peer << 16 | vector`` the server writes to ring us: vector 0, the one the
        guest driver takes."""
        peer = self.own_peer()
        return None if peer is None else peer << 16

    def drain(self) -> None:
        for _ in range(1024):                 # uio: one read; a FIFO or terminal: to empty
            try:
                if not os.read(self.fd, 4):
                    return
            except BlockingIOError:
                return

    def wait(self, seconds: float) -> None:
        self.waits += 1
        if self._poll.poll(max(0, int(seconds * 1000))):
            self.wakes += 1

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
            self.map = None
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class Doorbell:
    """A client's doorbell (``notify_kind`` 2): the device to which a 4-byte write of
    ``(peer << 16) | vector`` rings that vector of that peer.

    ``path``: the device; None for the default, the environment variable CXL_RING_DOORBELL
    when set, else /dev/cxl/doorbell when it exists; "" for none. Nothing is opened until a
    notification needs it, and a doorbell that cannot be opened is not tried again: the client
    then does not notify (the server still sees the request when its ``sleep_max_ms`` ends).
    ``rings`` counts notifications written, ``missed`` those that had no doorbell, ``why`` says
    why there is none; ``listener()`` gives a blocked session its end of it (``wait_why``).
    The same rules as the C library's ``struct cxl_doorbell``."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.fd: int | None = None
        self.failed = False
        self.why = ""
        self.wait_why = ""         # why a blocked session cannot wait on it (listener())
        self.rings = 0
        self.missed = 0
        self._lock = threading.Lock()

    def _resolve(self) -> tuple[str, str]:
        """The device's path, or "" and why there is none."""
        path = self.path
        if path is None:
            path = os.environ.get(DOORBELL_ENV) or (
                DOORBELL_DEFAULT if os.path.exists(DOORBELL_DEFAULT) else "")
            if not path:
                return "", (f"no doorbell: {DOORBELL_ENV} is unset and {DOORBELL_DEFAULT} "
                            f"does not exist")
            self.path = path
        return path, ("" if path else "no doorbell: disabled (doorbell='')")

    def listener(self) -> BellWait | None:
        """A BellWait on this doorbell for one blocked session, or None with ``wait_why``
        (the session then backs off instead of blocking). The peer id comes from the device's
        directory, else from CXL_RING_DOORBELL_PEER."""
        path, self.wait_why = self._resolve()
        if not path:
            return None
        peer_env = os.environ.get(DOORBELL_PEER_ENV)
        try:
            peer = int(peer_env) if peer_env else None
            if peer is not None and not 0 <= peer <= 0xFFFF:
                raise ValueError(peer)
        except ValueError:
            self.wait_why = f"{DOORBELL_PEER_ENV}={peer_env!r} is not a peer id (0..65535)"
            return None
        try:
            return BellWait(path, peer)
        except OSError as e:
            self.wait_why = f"cannot wait on the doorbell {path}: {e.strerror or e}"
            return None

    def _open(self) -> None:
        path, why = self._resolve()
        if not path:
            self.failed = True
            self.why = why
            return
        try:
            # Non-blocking: a ring never waits (a FIFO standing in for the device, full of
            # rings not yet drained, says EAGAIN: the server is being woken anyway).
            self.fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            self.failed = True
            self.why = f"cannot open the doorbell {path}: {e.strerror}"

    def ring(self, value: int) -> bool:
        """Write ``value`` (``(peer << 16) | vector``); True when rung."""
        if self.fd is None and not self.failed:
            with self._lock:
                if self.fd is None and not self.failed:
                    self._open()
        fd = self.fd
        if fd is not None:
            try:
                os.write(fd, struct.pack("<I", value))   # EINTR is retried (PEP 475)
                self.rings += 1
                return True
            except BlockingIOError:                      # rings pending: it is being woken
                self.rings += 1
                return True
            except OSError as e:
                self.why = f"cannot ring the doorbell {self.path}: {e.strerror}"
        self.missed += 1
        return False

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)
        self.failed = False


def notify_server(u32, base: int, wake_offset: int, doorbell: Doorbell | None = None) -> bool:
    """N2, after P1: wake the server if it sleeps. ``u32`` is the region's 4-byte view,
    ``base`` its address, ``doorbell`` the client's (notify_kind doorbell). True when it
    notified."""
    if _atomic.cas64 is None:
        return False               # no fence: the server's sleep_max_ms picks the request up
    fence()
    if u32[P.OFF_SERVER_SLEEPING // 4] == 0:
        return False
    kind = u32[P.OFF_NOTIFY_KIND // 4]
    if kind == P.NOTIFY_DOORBELL:
        return ring_doorbell(u32, doorbell)
    if kind != P.NOTIFY_FUTEX or not AVAILABLE:
        return False
    bump_and_wake(base + wake_offset)
    return True


def ring_doorbell(u32, doorbell: Doorbell | None) -> bool:
    """Ring the server's doorbell: ``(doorbell_peer << 16) | doorbell_vector`` of the header."""
    peer, vector = u32[P.OFF_DOORBELL_PEER // 4], u32[P.OFF_DOORBELL_VECTOR // 4]
    if doorbell is None or peer > 0xFFFF or vector > 0xFFFF:
        return False
    return doorbell.ring(peer << 16 | vector)


def bump_and_wake(address: int) -> None:
    """Bump the wake word at ``address`` (its low 4 bytes; the upper 4 are reserved zero and
    kept) with a seq-cst CAS, then FUTEX_WAKE one waiter on it."""
    cas = _atomic.cas64
    while True:
        seen = ctypes.c_uint64.from_address(address).value
        new = (seen & ~0xFFFFFFFF) | ((seen + 1) & 0xFFFFFFFF)
        if cas(address, seen, new) == seen:
            break
    futex_wake(address)
