"""Command line of the attack suite (see attack/__init__.py)."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m attack", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run one attack (or `control`) as the attacker")
    r.add_argument("--view", required=True, help="the region as this VM sees it: /dev/cxl/<region>")
    r.add_argument("--mode", required=True, choices=["off", "secdsm"])
    r.add_argument("--nonce", required=True)
    r.add_argument("--attack", required=True)
    r.add_argument("--seconds", type=float, default=5.0)
    r.add_argument(
        "--delay",
        type=float,
        default=0.0,
        help="seconds to wait before attacking (the honest client claims first)",
    )
    r.add_argument("--group", type=int, help="the attacker's channel group (needed with off)")
    r.add_argument("--out", required=True, help="attacker.json")
    r.add_argument("--loot", help="where to write the bytes read from others (loot.bin)")
    r.add_argument("--views-dir", default="/dev/cxl")
    r.add_argument("--sysfs", default="/sys/bus/pci/devices")
    r.add_argument("--devmem", default="/dev/mem")

    h = sub.add_parser("honest", help="the honest client's bounded canary load")
    h.add_argument("--path", required=True)
    h.add_argument("--seed", required=True, help="secret; never given to the attacker")
    h.add_argument("--label", required=True, help="<mode>/<attack> of the phase")
    h.add_argument("--count", type=int, default=100000)
    h.add_argument("--seconds", type=float, default=5.0)
    h.add_argument("--value-size", type=int, default=64)
    h.add_argument("--timeout", type=float, default=2.0)
    h.add_argument("--out", required=True)

    w = sub.add_parser("watch", help="the host's check of the region files for markers")
    g = w.add_mutually_exclusive_group(required=True)
    g.add_argument("--lab", help=".lab/lab.json")
    g.add_argument("--targets", help="a targets file (watch.targets_from_lab's format)")
    w.add_argument("--nonce", required=True)
    w.add_argument("--phase-file", required=True)
    w.add_argument("--stop-file", required=True)
    w.add_argument("--seconds", type=float, default=3600.0, help="hang bound")
    w.add_argument("--interval", type=float, default=0.05)
    w.add_argument("--out", required=True)

    m = sub.add_parser(
        "markers", help="the markers of a mode as JSON (inject key for the server check)"
    )
    m.add_argument("--nonce", required=True)
    m.add_argument("--mode", required=True, choices=["off", "secdsm"])

    rp = sub.add_parser("report", help="write report.md and report.json of a run directory")
    rp.add_argument("run_dir")

    lo = sub.add_parser("local", help="run the whole suite on one host from a config file")
    lo.add_argument("--config", required=True)

    a = p.parse_args(argv)
    if a.cmd == "run":
        from .runner import run

        res = run(
            a.view,
            a.mode,
            a.nonce,
            a.attack,
            a.seconds,
            a.out,
            a.loot,
            a.group,
            a.views_dir,
            a.sysfs,
            a.devmem,
            a.delay,
        )
        print(json.dumps({k: res.get(k) for k in ("attack", "mode", "attempted", "error")}))
        return 0
    if a.cmd == "honest":
        from .honest import run as honest
        from .report import phase_seed

        mode, attack = a.label.split("/", 1)
        res = honest(
            a.path, phase_seed(a.seed, mode, attack), a.count, a.seconds, a.value_size, a.timeout
        )
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
        print(json.dumps(res))
        return 0
    if a.cmd == "watch":
        from .watch import main as watch_main

        return watch_main(a)
    if a.cmd == "markers":
        from .markers import Markers

        mk = Markers(a.nonce, a.mode)
        print(
            json.dumps(
                {
                    "inject_key": mk.inject_key().decode(),
                    "markers": [
                        {"attack": x.attack, "name": x.name, "hex": x.value.hex()} for x in mk.all()
                    ],
                }
            )
        )
        return 0
    if a.cmd == "report":
        from .report import markdown, write

        sys.stdout.write(markdown(write(a.run_dir)))
        return 0
    if a.cmd == "local":
        from .local import main as local_main

        return local_main(a.config)
    return 2


if __name__ == "__main__":
    sys.exit(main())
