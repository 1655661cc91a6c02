"""Run one attack (or the control) in the attacker's place and write what it tried."""

from __future__ import annotations

import json
import os
import time
import traceback

from . import attacks as A
from .markers import Markers
from .view import open_view


def own_group(view, group: int | None) -> int:
    """The attacker's group: given, else the one client segment its view maps writable."""
    if group is not None:
        return group
    mine = [
        s.group
        for s in view.header.segments
        if s.kind == 2 and view.writable(s.name) and view.form == "dir"
    ]
    if len(mine) != 1:
        raise SystemExit(
            f"{view.path}: cannot tell the attacker's channel group (writable client segments: "
            f"{mine}); pass --group <g> (the VM's group in .lab/lab.json, vms[].regions[].group)"
        )
    return mine[0]


def run(
    view_path: str,
    mode: str,
    nonce: str,
    attack: str,
    seconds: float,
    out: str,
    loot_path: str | None = None,
    group: int | None = None,
    views_dir: str = "/dev/cxl",
    sysfs: str = "/sys/bus/pci/devices",
    devmem: str = "/dev/mem",
    delay: float = 0.0,
) -> dict:
    """Run `attack` for `seconds`, after `delay` seconds (the honest client settles in its
    channels first, so that the attack meets a running session)."""
    if attack not in A.RUN:
        raise SystemExit(f"unknown attack {attack!r}; the attacks are: {', '.join(A.RUN)}")
    result: dict = {
        "attack": attack,
        "mode": mode,
        "view": view_path,
        "pid": os.getpid(),
        "uid": os.getuid(),
    }
    start = time.monotonic()
    view = None
    ctx = None
    try:
        view = open_view(view_path)
        ctx = A.Ctx(
            view,
            mode,
            own_group(view, group),
            Markers(nonce, mode),
            seconds,
            views_dir=views_dir,
            sysfs=sysfs,
            devmem=devmem,
        )
        result["group"] = ctx.group
        result["reach"] = ctx.reach()
        time.sleep(delay)
        A.RUN[attack](ctx)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - the report says what stopped the attack
        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc(limit=5)
    finally:
        if ctx is not None:
            result.update(
                attempted=ctx.attempted,
                notes=ctx.notes,
                details=ctx.details,
                loot_bytes=ctx.loot.size,
                loot_sources=ctx.loot.sources,
            )
            if loot_path:
                ctx.loot.write(loot_path)
        if view is not None:
            view.close()
    result["seconds"] = round(time.monotonic() - start, 3)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    return result
