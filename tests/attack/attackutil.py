"""Helpers of the attack suite's tests: formatted layout 5 regions without a server (for the
attack mechanics and the watcher), and the views each peer is given.

A fake region is what a server leaves after formatting: the header and its segment table,
every other byte zero. Tests that need a server use the real driver (test_one_host.py).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import struct

from attack import layout as L

_names = itertools.count()

# The attacker runs as another user (nobody) in the tests that model read-only grants with
# file permissions; the test venv's interpreter may sit where that user cannot reach it.
ATTACKER_PYTHON = "/usr/bin/python3"


def nobody() -> pwd.struct_passwd | None:
    """The user the attacker runs as, when the tests can demote to it (root, an interpreter
    it may run); else None."""
    if os.getuid() != 0 or not os.access(ATTACKER_PYTHON, os.X_OK):
        return None
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


def shm_name(tag: str) -> str:
    return f"/dev/shm/cxlattack-{os.getpid()}-{next(_names)}-{tag}"


def header_bytes(
    groups: list[int], ring: int = 16384, align: int = 4096, epoch: int = 0x1234, state: int = 2
) -> bytes:
    segs = L.plan(groups, ring, ring, align)
    region_size = segs[-1].offset + segs[-1].span
    buf = bytearray(L.HEADER_SIZE)
    L.GEOMETRY.pack_into(
        buf,
        0,
        L.MAGIC,
        L.VERSION,
        L.HEADER_SIZE,
        0,
        sum(groups),
        region_size,
        len(groups),
        len(segs),
        align,
        0,
        L.CONTROL_SIZE + ring,
        L.CONTROL_SIZE + ring,
        ring,
        ring,
        8192,
        4096,
        100,
        2000,
    )
    for s in segs:
        L.SEGMENT_ENTRY.pack_into(
            buf,
            L.SEGMENT_TABLE_OFFSET + 32 * s.index,
            s.offset,
            s.size,
            s.span,
            s.kind,
            0,
            0xFFFF if s.group is None else s.group,
            s.first_channel,
            s.channel_count,
        )
    struct.pack_into("<QQI", buf, L.OFF_SERVER_EPOCH, epoch, 1, state)
    return bytes(buf)


def make_region_dir(path: str, groups: list[int], ring: int = 16384) -> list[L.Segment]:
    """A secdsm region: one file per segment, `span` bytes each."""
    os.makedirs(path)
    segs = L.plan(groups, ring, ring)
    for s in segs:
        with open(os.path.join(path, s.name), "wb") as f:
            f.truncate(s.span)
    with open(os.path.join(path, "header"), "r+b") as f:
        f.write(header_bytes(groups, ring))
    return segs


def make_region_file(path: str, groups: list[int], ring: int = 16384) -> list[L.Segment]:
    """An off region: one file with the whole layout."""
    segs = L.plan(groups, ring, ring)
    with open(path, "wb") as f:
        f.truncate(segs[-1].offset + segs[-1].span)
        f.write(header_bytes(groups, ring))
    return segs


def make_view(view: str, region_dir: str, names: list[str]) -> str:
    """A peer's view: links to its granted segment files only."""
    os.makedirs(view)
    for n in names:
        os.symlink(os.path.join(region_dir, n), os.path.join(view, n))
    return view


def targets(mode: str, name: str, segs: list[L.Segment], where: str) -> dict:
    """The watcher's entry of a region (watch.targets_from_lab's format)."""
    off = mode == "off"
    return {
        "name": name,
        "security": mode,
        "segments": [
            {
                "name": s.name,
                "kind": L.KIND_NAMES[s.kind],
                "path": where if off else os.path.join(where, s.name),
                "base": s.offset if off else 0,
                "span": s.span,
            }
            for s in segs
        ],
    }


def grant_like_hypervisor(region: str, attacker: pwd.struct_passwd) -> None:
    """File permissions as the hypervisor's grants for the attacker (another user) in a
    secdsm region of two groups: header and its own server segment readable, its own client
    segment writable, the honest client's segments (group 0) closed."""
    os.chmod(region, 0o755)
    for name, mode, owner, group in (
        ("header", 0o644, 0, 0),
        ("server-1", 0o640, 0, attacker.pw_gid),
        ("client-1", 0o600, attacker.pw_uid, 0),
        ("client-0", 0o600, 0, 0),
        ("server-0", 0o600, 0, 0),
    ):
        path = os.path.join(region, name)
        os.chown(path, owner, group)
        os.chmod(path, mode)


def remove(*paths: str) -> None:
    for p in paths:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
