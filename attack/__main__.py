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

    la = sub.add_parser(
        "lab",
        help="the whole suite in the lab, from the hypervisor over ssh (attack/lab.py)",
        description="Every attack in each mode against the lab's VMs over plain ssh; writes "
        "<out>/report.json and report.md. Exit 0: every phase ran; 1: some phase left no "
        "results; 2: the run could not start.",
    )
    la.add_argument("--lab", required=True, help=".lab/lab.json (the resolved lab)")
    la.add_argument("--ssh-config", help=".lab/ssh_config (ssh -F <file> <vm> <command>)")
    la.add_argument(
        "--ssh",
        help="the ssh command instead, as one string (the VM and the command follow it); "
        "the tests run the guests' commands on one host with it",
    )
    la.add_argument("--modes", default="secdsm,off", help="secdsm,off (default), or one of them")
    la.add_argument("--attacks", help="a,b,... (default: every attack; the control always runs)")
    la.add_argument("--out", help="the run directory (default: bench/lab/attack-<time>)")
    la.add_argument("--seconds", type=float, default=4.0, help="seconds each attack runs")
    la.add_argument(
        "--delay", type=float, default=1.0, help="the honest client's head start (seconds)"
    )
    la.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="seconds from a phase's end to the next (the client lease retires stale claims)",
    )
    la.add_argument("--count", type=int, default=1000000, help="honest canaries per phase, at most")
    la.add_argument("--value-size", type=int, default=64)
    la.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every phase this many times, odd rounds control first, even rounds "
        "reversed; counts add up, the throughput share is the median of the rounds'",
    )
    la.add_argument(
        "--slack",
        type=float,
        default=120.0,
        help="hang bound of a phase on top of its length (ssh, Python start-up under TCG)",
    )
    la.add_argument(
        "--region", action="append", help="<mode>=<region>: the region of a mode (repeatable)"
    )
    la.add_argument(
        "--transient-port",
        action="append",
        help="<mode>=<port>: loopback port of a mode's transient redis-server (off=6390)",
    )
    la.add_argument("--server", help="the server VM (default: the first with role server)")
    la.add_argument("--honest", help="the honest client VM (default: the first client)")
    la.add_argument("--attacker", help="the attacker VM (default: the first attacker)")
    la.add_argument(
        "--watch-prefix",
        help="run the host's watcher under this command, e.g. 'sudo -n' (the region files "
        "belong to QEMU's user)",
    )
    la.add_argument(
        "--install",
        action="store_true",
        help="copy the suite into the honest client and the attacker VM when it differs "
        "(one ssh each; roles/cxl_attacker does the same with Ansible)",
    )
    la.add_argument("--guest-python", default="/opt/cxl-ring/bin/python")
    la.add_argument("--guest-system-python", default="/usr/bin/python3")
    la.add_argument(
        "--guest-pythonpath", default="/opt/cxl-attack", help="where the suite is in a guest"
    )
    la.add_argument("--guest-work-dir", default="/var/tmp/cxl-attack")
    la.add_argument(
        "--views-dir", default="/dev/cxl", help="the region views in a guest ({vm}: its name)"
    )
    la.add_argument("--redis-cli", default="redis-cli")
    la.add_argument("--redis-server", default="/usr/bin/redis-server")
    la.add_argument(
        "--lib-dir", default="/usr/local/lib/cxl-dsm-lab", help="cxl_ring.so in the server VM"
    )

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
    if a.cmd == "lab":
        from .lab import main as lab_main

        return lab_main(a)
    if a.cmd == "local":
        from .local import main as local_main

        return local_main(a.config)
    return 2


if __name__ == "__main__":
    sys.exit(main())
