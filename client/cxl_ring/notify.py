"""Waking a sleeping server (docs/ring-protocol.md section 8) from pure Python.

After a client publishes requests (P1) it makes a full fence and looks at the header's
``server_sleeping``; when it is set and ``notify_kind`` is futex, it bumps its group's wake word
(``req_wake``, in the client section of the group's first channel) and wakes the server with
``FUTEX_WAKE`` on it. The fence and the server's are a Dekker pair (N2 here, N1 in the driver):
either the server's last look at the rings sees the request, or this client sees it asleep.

The standard library has neither a fence nor an atomic add on an mmap; ``_atomic.cas64`` (a
locked compare-and-swap, seq-cst) gives both: a locked instruction is a full fence on x86-64,
and the bump is a CAS on the 8 bytes at offset 24 of the control page, whose upper half is
reserved zero. ``FUTEX_WAKE`` is the ``futex`` system call through libc's ``syscall``. Where any
of this is missing, ``AVAILABLE`` is False and the client does not notify: a sleeping server
then sees the request at its next timeout (the driver's ``sleep_max_ms``), never later.
"""

from __future__ import annotations

import ctypes
import platform

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


def notify_server(u32, base: int, wake_offset: int) -> bool:
    """N2, after P1: wake the server if it sleeps. ``u32`` is the region's 4-byte view,
    ``base`` its address. True when it notified."""
    if not AVAILABLE:
        return False
    fence()
    if u32[P.OFF_SERVER_SLEEPING // 4] == 0 or u32[P.OFF_NOTIFY_KIND // 4] != P.NOTIFY_FUTEX:
        return False
    bump_and_wake(base + wake_offset)
    return True


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
