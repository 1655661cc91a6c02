"""A 64-bit compare-and-swap on shared memory, for claiming a channel (S1) from pure Python.

The standard library has no atomic read-modify-write on an mmap. ctypes (standard library)
can call one, and two backends are tried in order:

1. ``libatomic``'s ``__atomic_compare_exchange_8`` (the GCC runtime, present wherever gcc or
   most distro toolchains are), used only if ``__atomic_is_lock_free(8)`` says it is a real
   lock-free instruction (``lock cmpxchg`` on x86-64) and not a process-local lock.
2. Nine bytes of x86-64 machine code in an executable anonymous mapping::

       mov  rax, rsi            ; expected
       lock cmpxchg [rdi], rdx  ; *p == rax ? *p = rdx : rax = *p
       ret                      ; returns the value seen (== expected on success)

   Hardened systems that forbid writable+executable mappings make this fail; it is skipped.

``cas64`` is None when neither works; channel.py then falls back to a documented
write-and-verify claim (see its module docstring).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import platform
from typing import Callable

CasFunction = Callable[[int, int, int], int]  # (address, expected, desired) -> value seen

_X86_64_CAS = bytes.fromhex("4889f0" "f0480fb117" "c3")


def _libatomic() -> CasFunction | None:
    name = ctypes.util.find_library("atomic") or "libatomic.so.1"
    try:
        lib = ctypes.CDLL(name)
        cas = lib.__atomic_compare_exchange_8
        lock_free = lib.__atomic_is_lock_free
    except (OSError, AttributeError):
        return None
    lock_free.restype = ctypes.c_bool
    lock_free.argtypes = [ctypes.c_size_t, ctypes.c_void_p]
    if not lock_free(8, None):
        return None
    cas.restype = ctypes.c_bool
    cas.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_int]
    seq_cst = 5

    def cas64(address: int, expected: int, desired: int) -> int:
        seen = ctypes.c_uint64(expected)
        cas(address, ctypes.addressof(seen), desired, seq_cst, seq_cst)
        return seen.value

    return cas64


_stub_keepalive: list = []


def _machine_code() -> CasFunction | None:
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        code = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, AttributeError, ValueError):
        return None
    code.write(_X86_64_CAS)
    buf = ctypes.c_char.from_buffer(code)
    proto = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64)
    fn = proto(ctypes.addressof(buf))
    _stub_keepalive.extend((code, buf, fn))
    return fn


def _self_test(fn: CasFunction) -> bool:
    cell = ctypes.c_uint64(7)
    addr = ctypes.addressof(cell)
    return fn(addr, 7, 9) == 7 and cell.value == 9 and fn(addr, 7, 11) == 9 and cell.value == 9


def _pick() -> tuple[CasFunction | None, str]:
    for name, make in (("libatomic", _libatomic), ("x86-64 stub", _machine_code)):
        try:
            fn = make()
            if fn is not None and _self_test(fn):
                return fn, name
        except Exception:  # noqa: BLE001 - any failure just means "this backend is unusable"
            continue
    return None, "none (write-and-verify claim)"


cas64, CAS_BACKEND = _pick()
