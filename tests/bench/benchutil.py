"""Helpers shared by the cxl-ring-bench tests (imported by conftest.py and the tests)."""

from __future__ import annotations

import importlib.util
import itertools
import os
import struct
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "build" / "cxl-ring-bench"
MODULE = REPO / "build" / "cxl_ring.so"
RUNNER = REPO / "bench" / "run.py"

_names = itertools.count()


def load_runner():
    """bench/run.py as a module (for RedisWithRing, the server the runner uses too)."""
    spec = importlib.util.spec_from_file_location("bench_run", RUNNER)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


runner = load_runner()


def shm_name() -> str:
    return f"/dev/shm/cxltest-bench-{os.getpid()}-{next(_names)}"


def run_bench(*args: str, timeout: float = 30, cwd: Path | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BENCH), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)


# ---- Layout 5 by hand (docs/ring-protocol.md 2, 2.1): an encoder of its own, so that these
# tests check the C library against the page, not against another implementation.

GEOMETRY = struct.Struct("<8sIIIIQIIIIQQIIIIII")   # magic .. client_lease_ms (offsets 0..87)
SEGMENT = struct.Struct("<QQQBBHHH")               # one segment table entry, from offset 256
SEG_HEADER, SEG_CLIENT, SEG_SERVER = 1, 2, 3


def plan(groups: tuple[int, ...], ring: int, align: int = 4096) -> tuple[int, list[tuple]]:
    """region_size and the segment table: (offset, size, span, kind, group, first, count)."""
    segs, offset, first = [], 0, 0

    def place(size: int, kind: int, group: int, first: int, count: int) -> None:
        nonlocal offset
        span = max(align, 1 << (size - 1).bit_length())
        segs.append((offset, size, span, kind, group, first, count))
        offset += span

    place(4096, SEG_HEADER, 0xFFFF, 0, 0)
    for g, n in enumerate(groups):
        place(n * (4096 + ring), SEG_CLIENT, g, first, n)
        place(n * (4096 + ring), SEG_SERVER, g, first, n)
        first += n
    return offset, segs


def header(groups: tuple[int, ...], ring: int = 262144, max_value: int = 131072,
           running: bool = True) -> bytearray:
    """A formatted layout 5 header (4096 bytes); running: server_state RUNNING, an epoch."""
    region_size, segs = plan(groups, ring)
    h = bytearray(4096)
    GEOMETRY.pack_into(h, 0, b"CXLDSMR\0", 5, 4096, 0, sum(groups), region_size, len(groups),
                       len(segs), 4096, 0, 4096 + ring, 4096 + ring, ring, ring,
                       max_value + 65536, max_value, 100, 2000)
    for k, seg in enumerate(segs):
        SEGMENT.pack_into(h, 256 + 32 * k, seg[0], seg[1], seg[2], seg[3], 0, *seg[4:])
    if running:
        struct.pack_into("<QQII", h, 128, 0x1234, 1, 2, os.getpid())
    return h


def segment_names(groups: tuple[int, ...]) -> list[str]:
    return ["header"] + [f"{side}-{g}" for g in range(len(groups)) for side in ("client",
                                                                                 "server")]


def write_region_dir(path: str, groups: tuple[int, ...], head: bytes | None = None,
                     only: list[str] | None = None, ring: int = 262144) -> None:
    """A directory of segment files (each span bytes), the header formatted; `only` names
    the segment files to create (default: all)."""
    _, segs = plan(groups, ring)
    os.makedirs(path, mode=0o700, exist_ok=True)
    for name, seg in zip(segment_names(groups), segs):
        if only is not None and name not in only:
            continue
        with open(os.path.join(path, name), "wb") as f:
            if name == "header":
                f.write(head if head is not None else header(groups, ring))
            f.truncate(seg[2])


def channel_sections(region: str) -> list[tuple[str, int, str, int]]:
    """For each channel of a layout 5 region (a file or a directory of segment files):
    (file, offset) of its client section and of its server section."""
    is_dir = os.path.isdir(region)
    with open(os.path.join(region, "header") if is_dir else region, "rb") as f:
        h = f.read(4096)
    fields = GEOMETRY.unpack_from(h)
    client_size, server_size, ngroups = fields[10], fields[11], fields[6]
    out = []
    for g in range(ngroups):
        c_off, *_, first, count = SEGMENT.unpack_from(h, 256 + 32 * (1 + 2 * g))
        s_off = SEGMENT.unpack_from(h, 256 + 32 * (2 + 2 * g))[0]
        c_file = os.path.join(region, f"client-{g}") if is_dir else region
        s_file = os.path.join(region, f"server-{g}") if is_dir else region
        c_base, s_base = (0, 0) if is_dir else (c_off, s_off)
        for i in range(count):
            out.append((c_file, c_base + i * client_size, s_file, s_base + i * server_size))
    return out


def read_u64(path: str, offset: int) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        return struct.unpack("<Q", f.read(8))[0]


def built(path: Path) -> Path:
    """PATH (a file under build/), made with the Makefile's own rule if it is missing."""
    if not path.exists():
        out = subprocess.run(["make", "-C", str(REPO), str(path.relative_to(REPO))],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"cannot build {path.name}:\n{out.stdout}{out.stderr}"
    return path

