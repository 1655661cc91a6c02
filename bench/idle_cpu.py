#!/usr/bin/env python3
"""CPU a process used while idle, seen from outside it (/proc/<pid>/stat), for the lab's
benchmark: the server VM's QEMU process while its Redis sleeps on the doorbell, and again
with a polling ring server beside it (playbooks/bench.yml, docs/benchmarks.md).

    idle_cpu.py --pid PID --seconds 15 --label doorbell --out RUN/idle.json
    idle_cpu.py --pidfile /run/libvirt/qemu/vm1.pid --label polling --out -

Appends {label, pid, seconds, cpu_seconds, percent} to the JSON list in --out (created when
missing) and prints the percentage; --out - prints the result as one JSON line instead. A
figure of one run on a shared machine: a benchmark, never a test's assertion.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process and its threads, in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sample(pid: int, seconds: float) -> dict:
    start, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    used, wall = cpu_seconds(pid) - start, time.monotonic() - t0
    return {"pid": pid, "seconds": round(wall, 3), "cpu_seconds": round(used, 3),
            "percent": round(100.0 * used / wall, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pid", type=int, help="the process (e.g. a VM's QEMU)")
    ap.add_argument("--pidfile", type=Path, help="or a file naming it (libvirt's <vm>.pid)")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--label", required=True, help="what was idle, e.g. doorbell or polling")
    ap.add_argument("--out", required=True,
                    help="JSON list to append to; -: print the result as one JSON line")
    args = ap.parse_args(argv)
    if (args.pid is None) == (args.pidfile is None):
        ap.error("give --pid or --pidfile")
    try:
        pid = args.pid if args.pid is not None else int(args.pidfile.read_text().split()[0])
        result = {"label": args.label, **sample(pid, args.seconds)}
    except (OSError, ValueError, IndexError) as exc:
        print(f"idle_cpu: cannot read the process: {exc}", file=sys.stderr)
        return 1
    if args.out == "-":
        print(json.dumps(result))
        return 0
    out = Path(args.out)
    found = json.loads(out.read_text()) if out.exists() else []
    found.append(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(found, indent=1) + "\n")
    print(f"idle_cpu: {args.label}: {result['percent']:.2f} % of a core over "
          f"{result['seconds']:.1f} s (pid {pid})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
