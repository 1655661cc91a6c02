"""The host's check: did a forged write land in the region's files?

Runs on the hypervisor (or the one host), beside the attack, and reads the segment files
the VMs map (`.lab/lab.json`, `regions[].segments[].path`). The driver names the current
phase in a small file (`<mode> <attack>`); each poll looks for that attack's markers
(markers.py) in the files of the region of that mode: field markers at their offset, the
others anywhere in the segments of the kind they would be written to. A marker seen in one
poll is a forged write that landed. A dropped write never shows; a landed one that another
peer overwrote at once may be missed, so every write attack keeps rewriting its markers
for the whole phase.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import time

from .markers import Markers

# Where each attack's free-floating markers would be written.
KINDS = {"inject": "client", "claim": "client", "forge": "server", "own-server": "server"}


def targets_from_lab(lab: dict) -> dict:
    """The region files to watch, from a resolved lab description (.lab/lab.json)."""
    regions = []
    for r in lab.get("regions", []):
        off = r.get("security", "secdsm") == "off"
        # a devdax region's file starts with the guests' 2 MiB device-DAX info block
        skip = r.get("data_offset", 0)
        segs = []
        for s in r.get("segments", []):
            segs.append(
                {
                    "name": s["name"],
                    "kind": s["kind"],
                    "path": s["path"],
                    "base": s["offset"] + skip if off else 0,
                    "span": s["span"],
                }
            )
        regions.append(
            {"name": r["name"], "security": r.get("security", "secdsm"), "segments": segs}
        )
    return {"regions": regions}


class _Files:
    def __init__(self) -> None:
        self.maps: dict[str, mmap.mmap] = {}
        self.unreadable: dict[str, str] = {}

    def get(self, path: str) -> mmap.mmap | None:
        mm = self.maps.get(path)
        if mm is None:
            try:
                with open(path, "rb") as f:
                    mm = mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as e:
                self.unreadable[path] = str(e)
                return None
            self.maps[path] = mm
        return mm

    def close(self) -> None:
        for mm in self.maps.values():
            with contextlib.suppress(BufferError, ValueError):
                mm.close()


def poll_once(files: _Files, region: dict, markers: list) -> set[str]:
    seen = set()
    segs = {s["name"]: s for s in region["segments"]}
    for m in markers:
        if m.segment is not None:
            s = segs.get(m.segment)
            mm = files.get(s["path"]) if s else None
            start = (s["base"] + m.offset) if s else 0
            if mm is not None and mm[start : start + len(m.value)] == m.value:
                seen.add(m.name)
            continue
        kind = KINDS.get(m.attack)
        for s in region["segments"]:
            if kind and s["kind"] != kind:
                continue
            mm = files.get(s["path"])
            if mm is not None and mm.find(m.value, s["base"], s["base"] + s["span"]) >= 0:
                seen.add(m.name)
                break
    return seen


def watch(
    targets: dict,
    nonce: str,
    phase_file: str,
    stop_file: str,
    seconds: float,
    interval: float = 0.05,
) -> dict:
    """Poll until stop_file exists or `seconds` passed; per phase, how often each marker
    was seen."""
    by_mode = {r["security"]: r for r in targets["regions"]}
    files = _Files()
    phases: dict[str, dict] = {}
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end and not os.path.exists(stop_file):
            try:
                with open(phase_file) as f:
                    mode, attack = f.read().split()[:2]
            except (OSError, ValueError):
                time.sleep(interval)
                continue
            region = by_mode.get(mode)
            entry = phases.setdefault(f"{mode}/{attack}", {"polls": 0, "markers": {}})
            base = attack.split("@", 1)[0]  # a phase of a later round: read@2
            markers = [m for m in Markers(nonce, mode).all() if m.attack == base]
            for m in markers:
                entry["markers"].setdefault(m.name, 0)
            if region is not None:
                for name in poll_once(files, region, markers):
                    entry["markers"][name] += 1
            entry["polls"] += 1
            time.sleep(interval)
    finally:
        files.close()
    # A file the host could not read hides every write that landed in it: the report says so.
    return {"interval": interval, "phases": phases, "unreadable": files.unreadable}


def main(args) -> int:
    if args.targets:
        with open(args.targets) as f:
            targets = json.load(f)
    else:
        with open(args.lab) as f:
            targets = targets_from_lab(json.load(f))
    out = watch(targets, args.nonce, args.phase_file, args.stop_file, args.seconds, args.interval)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    return 0
