"""The whole suite on one host: both modes, every attack, the honest client beside each.

What plays the hypervisor here: the host's files. A secdsm region is a directory of segment
files; each peer is given a *view* directory holding links to its granted files only, and
the attacker runs as another user (`attacker_user`, e.g. nobody) whose file permissions
match its grants (a read-only segment is readable, not writable; an ungranted one not even
readable). The caller builds the regions, views and permissions (tests/attack does); this
module runs the phases, the host's watcher and the server check, and writes the report.

Config (JSON, or a dict for `run_local`):

    run_dir, nonce, seed, seconds, count, value_size, settle, attacks, attacker_user,
    python (the honest client's interpreter), attacker_python (default: python),
    pythonpath (list),
    modes: {<mode>: {region, attacker_view, attacker_group, honest_path,
                     redis: {host, port}, segments: [{name, kind, path, base, span}]}}
"""

from __future__ import annotations

import datetime
import json
import os
import pwd
import socket
import subprocess
import sys
import threading

from . import report, watch
from .attacks import ATTACKS, CONTROL
from .markers import Markers


def resp_call(host: str, port: int, *args: bytes, timeout: float = 5.0) -> bytes:
    """One RESP command over TCP; the first line of the reply (enough for PING and EXISTS)."""
    cmd = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(cmd)
        buf = b""
        while b"\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    return buf.split(b"\r\n", 1)[0]


def server_check(redis: dict, nonce: str, mode: str) -> dict:
    key = Markers(nonce, mode).inject_key()
    out: dict = {"inject_key": key.decode()}
    try:
        out["server_alive"] = resp_call(redis["host"], redis["port"], b"PING") == b"+PONG"
        out["inject_key_exists"] = resp_call(redis["host"], redis["port"], b"DEL", key) == b":1"
    except OSError as e:
        out["server_alive"] = False
        out["error"] = str(e)
    return out


def _demote(user: str | None):
    if not user:
        return None
    pw = pwd.getpwnam(user)

    def go() -> None:
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)

    return go


def _phase(d: str, env: dict, honest: list, attacker: list, demote, bound: float) -> None:
    """The honest client and the attacker side by side, each bounded in time."""
    with open(os.path.join(d, "honest.log"), "w") as herr, \
            open(os.path.join(d, "attacker.log"), "w") as aerr:
        procs = [subprocess.Popen(honest, env=env, stdout=subprocess.DEVNULL, stderr=herr),
                 subprocess.Popen(attacker, env=env, preexec_fn=demote, cwd="/",
                                  stdout=subprocess.DEVNULL, stderr=aerr)]
        for proc in procs:
            try:
                proc.wait(bound)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def run_local(cfg: dict) -> dict:
    run_dir = cfg["run_dir"]
    os.makedirs(run_dir, exist_ok=True)
    attacks = cfg.get("attacks") or list(ATTACKS)
    seconds, settle = float(cfg.get("seconds", 3)), float(cfg.get("settle", 3))
    # The attacker starts a little after the honest client (which runs delay + seconds).
    delay = float(cfg.get("delay", min(0.5, seconds / 4)))
    python = cfg.get("python", sys.executable)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(cfg.get("pythonpath", []) + [env.get("PYTHONPATH", "")])
    user = cfg.get("attacker_user")
    uid = pwd.getpwnam(user).pw_uid if user else os.getuid()
    with open(os.path.join(run_dir, "run.json"), "w") as f:
        json.dump(
            {
                "nonce": cfg["nonce"],
                "seed": cfg["seed"],
                "seconds": seconds,
                "count": cfg.get("count", 100000),
                "value_size": cfg.get("value_size", 64),
                "attacks": attacks,
                "created": datetime.datetime.now(datetime.timezone.utc).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                ),
                "environment": {"where": "one host", "attacker user": user or "same"},
                "modes": {m: {"region": c["region"]} for m, c in cfg["modes"].items()},
            },
            f,
            indent=1,
        )
    targets = {
        "regions": [
            {"name": c["region"], "security": m, "segments": c["segments"]}
            for m, c in cfg["modes"].items()
        ]
    }
    phase_file = os.path.join(run_dir, "phase")
    stop_file = os.path.join(run_dir, "stop")
    watched: dict = {}
    hang = (len(attacks) + 1) * len(cfg["modes"]) * (seconds + settle + 60)
    t = threading.Thread(
        target=lambda: watched.update(
            watch.watch(
                targets, cfg["nonce"], phase_file, stop_file, hang, cfg.get("interval", 0.02)
            )
        )
    )
    t.start()
    try:
        for mode, mc in cfg["modes"].items():
            for attack in [CONTROL] + attacks:
                d = os.path.join(run_dir, mode, attack)
                os.makedirs(d, exist_ok=True)
                os.chown(d, uid, -1)
                with open(phase_file, "w") as f:
                    f.write(f"{mode} {attack}\n")
                honest = [python, "-m", "attack", "honest", "--path", mc["honest_path"],
                          "--seed", cfg["seed"], "--label", f"{mode}/{attack}",
                          "--count", str(cfg.get("count", 100000)),
                          "--seconds", str(seconds + delay),
                          "--value-size", str(cfg.get("value_size", 64)),
                          "--out", os.path.join(d, "honest.json")]
                attacker = [cfg.get("attacker_python", python), "-m", "attack", "run",
                            "--view", mc["attacker_view"], "--mode", mode,
                            "--nonce", cfg["nonce"], "--attack", attack,
                            "--seconds", str(seconds), "--delay", str(delay),
                            "--out", os.path.join(d, "attacker.json"),
                            "--loot", os.path.join(d, "loot.bin"),
                            "--views-dir", mc.get("views_dir", "/nonexistent")]
                if mc.get("attacker_group") is not None:
                    attacker += ["--group", str(mc["attacker_group"])]
                _phase(d, env, honest, attacker, _demote(user), seconds + delay + 60)
                with open(phase_file, "w") as f:
                    f.write(f"{mode} settle\n")
                with open(os.path.join(d, "server.json"), "w") as f:
                    json.dump(server_check(mc["redis"], cfg["nonce"], mode), f, indent=1)
                # Claims the attacker left behind expire with the client lease.
                threading.Event().wait(settle)
    finally:
        with open(stop_file, "w"):
            pass
        t.join(60)
        with open(os.path.join(run_dir, "watch.json"), "w") as f:
            json.dump(watched, f, indent=1)
    return report.write(run_dir)


def main(config: str) -> int:
    with open(config) as f:
        cfg = json.load(f)
    rep = run_local(cfg)
    sys.stdout.write(report.markdown(rep))
    return 0
