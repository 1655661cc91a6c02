"""The suite in the lab, driven from the hypervisor over plain ssh.

    python -m attack lab --lab .lab/lab.json --ssh-config .lab/ssh_config \\
        --modes secdsm,off --out bench/lab/attack-<time> [--seconds 4] [--attacks read,header]

Per mode (the region of that security the attacker and the honest client both map), the
control and then each attack, one phase each:

1. the host's watcher (a subprocess, `python -m attack watch`) is told the phase;
2. one ssh into the honest client VM starts its bounded canary load, one ssh into the
   attacker VM runs the attack beside it (both at once, each under `timeout` in the guest);
3. one ssh into the server VM asks redis-cli whether the server answers and holds the
   injected key, while the client lease retires what the attack left claimed (`settle`).

The guests keep their results under <work dir>/<nonce>-<vm>/<mode>/<attack>/; one tar per
guest at the end of the run brings them to <run dir>/<mode>/<attack>/ (report.py's layout).
A mode whose region the lab's Redis does not serve (the `off` region in the default lab) is
served for the run by a transient redis-server in the server VM (systemd-run unit
cxl-attack-redis-<mode>, port 6390 for `off`), stopped at the end whatever happens (failure,
Ctrl-C, SIGTERM). Every ssh call has a timeout; ssh connections are shared per VM
(ControlMaster) so that a phase costs a session each, not a handshake each.

`--install` first copies the suite into the honest client and the attacker VM where it differs
(one ssh each, the tar on stdin; roles/cxl_attacker does the same with Ansible, and both leave
attack/SUITE_HASH). `--ssh` replaces the ssh command (the tests run the guests' commands on
one host with it).
Exit code: 0 when every phase ran and the report is written, 1 when the report is written but
some phase left no results (report.md says which), 2 when the run could not start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import io
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import report, watch
from .attacks import ATTACKS
from .markers import Markers

MODES = ("secdsm", "off")
# Loopback ports of the transient servers (the lab's Redis keeps its own port).
TRANSIENT_PORTS = {"off": 6390, "secdsm": 6391}
UNIT = "cxl-attack-redis-{mode}"
REPO = Path(__file__).resolve().parents[1]


class LabError(SystemExit):
    """The run cannot start: the message says what to fix."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.code = 2


@dataclass
class Guest:
    """Where the suite lives in a guest (roles/cxl_attacker's defaults)."""

    python: str = "/opt/cxl-ring/bin/python"  # the ring client's venv (the honest client)
    system_python: str = "/usr/bin/python3"  # when the venv is absent (enough for the attacker)
    pythonpath: str = "/opt/cxl-attack"
    work_dir: str = "/var/tmp/cxl-attack"
    views_dir: str = "/dev/cxl"  # "{vm}" is replaced by the VM's name
    redis_cli: str = "redis-cli"
    redis_server: str = "/usr/bin/redis-server"
    lib_dir: str = "/usr/local/lib/cxl-dsm-lab"  # cxl_ring.so (cxl_redis_server_lib_dir)

    def at(self, vm: str) -> Guest:
        """The paths of one VM: "{vm}" in pythonpath, work_dir and views_dir is its name (the
        tests play every VM on one host)."""
        paths = ("pythonpath", "work_dir", "views_dir")
        return dataclasses.replace(self, **{k: getattr(self, k).replace("{vm}", vm) for k in paths})

    def views(self, vm: str) -> str:
        return self.at(vm).views_dir


@dataclass
class Options:
    lab: dict
    out: str
    modes: list[str] = field(default_factory=lambda: list(MODES))
    attacks: list[str] = field(default_factory=lambda: list(ATTACKS))
    ssh: list[str] = field(default_factory=list)  # prefix argv; the VM and the command follow
    seconds: float = 4.0
    delay: float = 1.0
    settle: float = 3.0
    count: int = 1000000
    value_size: int = 64
    rounds: int = 1  # every phase this many times (report.py: counts add up, shares median)
    slack: float = 120.0  # on top of a phase's own length: ssh, guest Python start-up (TCG)
    regions: dict = field(default_factory=dict)  # mode -> region name
    hosts: dict = field(default_factory=dict)  # server, honest, attacker -> VM name
    transient_ports: dict = field(default_factory=lambda: dict(TRANSIENT_PORTS))
    guest: Guest = field(default_factory=Guest)
    watch_prefix: list[str] = field(default_factory=list)  # e.g. ["sudo", "-n"]
    python: str = sys.executable
    install: bool = False  # push the suite into the honest client and the attacker first


# ---- the plan: hosts, regions, ports, from the resolved lab ---------------------------------


def plan(
    lab: dict, modes: list[str], regions: dict, hosts: dict, ports: dict | None = None
) -> dict:
    """Which VMs play server, honest client and attacker; per mode its region, the attacker's
    group, the Redis port and whether a transient server is needed. Errors name the fix."""
    vms = [v for v in lab.get("vms", []) if v.get("state", "present") != "absent"]
    by_name = {v["name"]: v for v in vms}

    def pick(role: str, want: str) -> dict:
        name = hosts.get(role)
        if name:
            if name not in by_name:
                raise LabError(f"--{role} {name}: no such VM in the lab ({', '.join(by_name)})")
            return by_name[name]
        found = [v for v in vms if v.get("role", "client") == want]
        if not found:
            raise LabError(
                f"the attack suite needs a {want} VM: give a VM `role: {want}` in the lab "
                f"description and bring the lab up with `ansible-playbook site.yml` first"
            )
        return found[0]

    server, honest, attacker = (
        pick("server", "server"),
        pick("honest", "client"),
        pick("attacker", "attacker"),
    )
    lab_regions = {r["name"]: r for r in lab.get("regions", [])}
    mapped = {r["name"]: r for r in attacker.get("regions", [])}
    both = [n for n in (r["name"] for r in honest.get("regions", [])) if n in mapped]
    services = lab.get("services") or {}
    redis = services.get("redis") or {}
    served = redis.get("region") or next((r["name"] for r in server.get("regions", [])), "")
    out = {
        "server": server["name"],
        "honest": honest["name"],
        "attacker": attacker["name"],
        "modes": {},
    }
    for mode in modes:
        if mode not in MODES:
            raise LabError(f"--modes: unknown mode {mode!r}; the modes are {', '.join(MODES)}")
        name = regions.get(mode) or next(
            (n for n in both if lab_regions.get(n, {}).get("security", "secdsm") == mode), ""
        )
        if not name or name not in lab_regions or name not in both:
            raise LabError(
                f"no region of security {mode} is mapped by both {attacker['name']} and "
                f"{honest['name']} (chosen: {name or 'none'}; both map: {', '.join(both)}): "
                f"describe one (the embedded default lab has cxl0 secdsm and cxl1 off), name it "
                f"with --region {mode}=<name>, or leave the mode out (--modes)"
            )
        region = lab_regions[name]
        if region.get("security", "secdsm") != mode:
            raise LabError(f"--region {mode}={name}: {name} is a {region.get('security')} region")
        transient = name != served
        out["modes"][mode] = {
            "region": name,
            "group": mapped[name].get("group"),
            "redis_port": int((ports or TRANSIENT_PORTS)[mode])
            if transient
            else int(redis.get("port") or 6379),
            "transient": transient,
            "groups": [g["channels"] for g in region.get("groups", [])],
            "medium": region.get("medium", "ivshmem"),
            "req_ring": region.get("req_ring"),
            "resp_ring": region.get("resp_ring"),
            "segment_align": region.get("segment_align"),
        }
    return out


def targets(lab: dict, p: dict) -> dict:
    """The watcher's files: the chosen region of each mode only."""
    chosen = {m["region"] for m in p["modes"].values()}
    return {"regions": [r for r in watch.targets_from_lab(lab)["regions"] if r["name"] in chosen]}


# ---- the guests' commands (one shell line each) -----------------------------------------------


def q(*words) -> str:
    return " ".join(shlex.quote(str(w)) for w in words)


def guest_dir(g: Guest, nonce: str, vm: str) -> str:
    return f"{g.at(vm).work_dir}/{nonce}-{vm}"


def suite_cmd(g: Guest, bound: float, args: list) -> str:
    """`python -m attack <args>` under `timeout`, with the venv's Python when present."""
    return (
        f'P={shlex.quote(g.python)}; [ -x "$P" ] || P={shlex.quote(g.system_python)}; '
        f"cd / && PYTHONPATH={shlex.quote(g.pythonpath)} exec timeout -k 5 {int(bound)} "
        f'"$P" -m attack {q(*args)}'
    )


def honest_cmd(o: Options, nonce: str, seed: str, vm: str, p: dict, mode: str, attack: str) -> str:
    d = f"{guest_dir(o.guest, nonce, vm)}/{mode}/{attack}"
    m = p["modes"][mode]
    return f"mkdir -p {q(d)} && " + suite_cmd(
        o.guest.at(vm),
        o.seconds + o.delay + o.slack,
        [
            "honest",
            "--path",
            f"{o.guest.views(vm)}/{m['region']}",
            "--seed",
            seed,
            "--label",
            f"{mode}/{attack}",
            "--count",
            o.count,
            "--seconds",
            o.seconds + o.delay,
            "--value-size",
            o.value_size,
            "--out",
            f"{d}/honest.json",
        ],
    )


def attacker_cmd(
    o: Options, nonce: str, vm: str, p: dict, mode: str, attack: str, name: str = ""
) -> str:
    """`name`: the phase's directory (report.phase_name), the attack's own name by default."""
    d = f"{guest_dir(o.guest, nonce, vm)}/{mode}/{name or attack}"
    m = p["modes"][mode]
    views = o.guest.views(vm)
    args = [
        "run",
        "--view",
        f"{views}/{m['region']}",
        "--mode",
        mode,
        "--nonce",
        nonce,
        "--attack",
        attack,
        "--seconds",
        o.seconds,
        "--delay",
        o.delay,
        "--out",
        f"{d}/attacker.json",
        "--loot",
        f"{d}/loot.bin",
        "--views-dir",
        views,
    ]
    if m["group"] is not None:
        args += ["--group", m["group"]]
    return f"mkdir -p {q(d)} && " + suite_cmd(o.guest.at(vm), o.seconds + o.delay + o.slack, args)


def suite_files() -> list[Path]:
    return sorted(Path(__file__).resolve().parent.glob("*.py"))


def suite_hash() -> str:
    """What roles/cxl_attacker and --install write to <pythonpath>/attack/SUITE_HASH: the
    sha256 of the package's *.py files, concatenated in name order."""
    return hashlib.sha256(b"".join(f.read_bytes() for f in suite_files())).hexdigest()


def suite_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for f in suite_files():
            info = tf.gettarinfo(str(f), f"attack/{f.name}")
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o644
            with open(f, "rb") as src:
                tf.addfile(info, src)
    return buf.getvalue()


def install_cmd(g: Guest) -> str:
    """Unpack the suite's tar (stdin) where the guest's PYTHONPATH starts, unless the same
    suite is there already."""
    d = g.pythonpath.split(":")[0]
    h = suite_hash()
    mark = f"{d}/attack/SUITE_HASH"
    return (
        f'if [ "$(cat {q(mark)} 2>/dev/null)" = {h} ]; then cat >/dev/null; else '
        f"mkdir -p {q(d)} && tar -xf - --no-same-owner -C {q(d)} && echo {h} > {q(mark)}; fi"
    )


def check_cmd(g: Guest, vm: str, install: bool = False) -> str:
    """The suite runs in a guest (and its work directory exists); with install, the suite is
    unpacked from stdin first."""
    g = g.at(vm)
    return (
        (f"{install_cmd(g)} && " if install else "")
        + f"mkdir -p {q(g.work_dir)} && "
        + suite_cmd(g, 120, ["markers", "--nonce", "check", "--mode", "off"])
        + " >/dev/null"
    )


def server_check_cmd(g: Guest, port: int, key: str) -> str:
    """PING, and whether the injected key is there; it is removed, so that every round's
    inject phase counts only what landed in it."""
    lua = "return {redis.call('PING')['ok'] or '', redis.call('DEL', KEYS[1])}"
    return q("timeout", 30, g.redis_cli, "-p", port, "EVAL", lua, 1, key)


def parse_server_check(rc: int | None, out: str, err: str, key: str) -> dict:
    lines = out.strip().splitlines()
    return {
        "inject_key": key,
        "server_alive": rc == 0 and "PONG" in out,
        "inject_key_exists": rc == 0 and bool(lines) and lines[-1].strip() == "1",
        "redis_cli": out + err,
    }


def stop_cmd(mode: str) -> str:
    unit = UNIT.format(mode=mode)
    return (
        f"systemctl stop {unit}.service 2>/dev/null; "
        f"systemctl reset-failed {unit}.service 2>/dev/null; true"
    )


def start_cmd(g: Guest, server: str, mode: str, m: dict) -> str:
    """The transient server of a mode's region: stop a leftover, start, wait for PONG."""
    argv = [
        "systemd-run",
        "--unit",
        UNIT.format(mode=mode),
        "--collect",
        "--quiet",
        g.redis_server,
        "--port",
        m["redis_port"],
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        "/tmp",
        # a device-DAX region (the devdax medium) faults in 2 MiB pages only: keep THP on
        *(["--disable-thp", "no"] if m.get("medium") == "devdax" else []),
        "--loadmodule",
        f"{g.lib_dir}/cxl_ring.so",
        "path",
        f"{g.views(server)}/{m['region']}",
        "groups",
        ",".join(str(c) for c in m["groups"]),
        # It polls, as the lab's Redis between VMs does (a device region: no futex there); on
        # one host (the tests) notify auto would let it sleep until a client wakes it, and the
        # attacks, which do not notify, would meet another server than the lab's.
        "notify",
        "off",
    ]
    for k in ("req_ring", "resp_ring", "segment_align"):
        if m.get(k):
            argv += [k, m[k]]
    ping = q(g.redis_cli, "-p", m["redis_port"], "PING")
    return (
        f"{stop_cmd(mode)}; {q(*argv)} && "
        f'for i in $(seq 60); do [ "$({ping} 2>/dev/null)" = PONG ] && exit 0; sleep 0.5; done; '
        f"echo 'the transient redis-server did not answer PING within 30 s' >&2; exit 1"
    )


def collect_cmd(g: Guest, nonce: str, vm: str) -> str:
    d = f"{nonce}-{vm}"
    return f"cd {q(g.at(vm).work_dir)} && [ -d {q(d)} ] && tar -cf - {q(d)} && rm -rf {q(d)}"


def extract(data: bytes, top: str, run_dir: str) -> int:
    """Unpack a guest's tar of <top>/<mode>/<attack>/<file> into run_dir/<mode>/<attack>/;
    anything else (links, other paths) is skipped. Returns the files written."""
    n = 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for member in tf:
            parts = member.name.split("/")
            if parts and parts[0] == ".":
                parts = parts[1:]
            if not member.isfile() or len(parts) != 4 or parts[0] != top:
                continue
            mode, attack, name = parts[1:]
            if mode not in MODES or any(p in ("", ".", "..") for p in parts[1:]):
                continue
            d = os.path.join(run_dir, mode, attack)
            os.makedirs(d, exist_ok=True)
            src = tf.extractfile(member)
            if src is None:
                continue
            with open(os.path.join(d, name), "wb") as f:
                shutil.copyfileobj(src, f)
            n += 1
    return n


# ---- ssh -----------------------------------------------------------------------------------


class Remote:
    """Commands in the guests: <prefix> <vm> <command>, each with a timeout."""

    def __init__(self, prefix: list[str]) -> None:
        self.prefix = list(prefix)
        self.mux_dir: str | None = None

    @classmethod
    def ssh(cls, config: str) -> Remote:
        """ssh -F <config>, one shared connection per VM (ControlMaster) for the run."""
        r = cls([])
        r.mux_dir = tempfile.mkdtemp(prefix="cxl-attack-ssh-")
        r.prefix = [
            "ssh",
            "-F",
            config,
            "-o",
            "BatchMode=yes",
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={r.mux_dir}/%C",
            "-o",
            "ControlPersist=300",
        ]
        return r

    def argv(self, vm: str, command: str) -> list[str]:
        return [*self.prefix, vm, command]

    def popen(self, vm: str, command: str, log: str, stdin: str | None = None) -> subprocess.Popen:
        """Started in the background, output to log; stdin from a file or nothing."""
        with open(log, "ab") as f, open(stdin or os.devnull, "rb") as i:
            return subprocess.Popen(
                self.argv(vm, command),
                stdin=i,
                stdout=f,
                stderr=f,
                start_new_session=True,
            )

    def run(self, vm: str, command: str, timeout: float) -> tuple[int | None, bytes, str]:
        """(exit code or None on timeout, stdout, stderr)."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                self.argv(vm, command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            rc = wait(proc, timeout)
            out.seek(0)
            err.seek(0)
            return rc, out.read(), err.read().decode(errors="replace")

    def close(self, vms: list[str]) -> None:
        if self.mux_dir is None:
            return
        for vm in vms:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    [*self.prefix, "-O", "exit", vm],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=15,
                )
        shutil.rmtree(self.mux_dir, ignore_errors=True)


def wait(proc: subprocess.Popen, timeout: float) -> int | None:
    """The exit code, or None after killing the process group when it outlived timeout."""
    try:
        return proc.wait(max(timeout, 0))
    except subprocess.TimeoutExpired:
        kill(proc)
        return None


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


# ---- the run -------------------------------------------------------------------------------


class Run:
    def __init__(self, o: Options, remote: Remote) -> None:
        self.o, self.remote = o, remote
        self.p = plan(o.lab, o.modes, o.regions, o.hosts, o.transient_ports)
        unknown = [a for a in o.attacks if a not in ATTACKS]
        if unknown:
            raise LabError(
                f"--attacks: unknown {', '.join(unknown)}; the attacks are: " + ", ".join(ATTACKS)
            )
        self.dir = o.out
        self.nonce = secrets.token_hex(8)
        self.seed = secrets.token_hex(16)
        self.guests = [self.p["honest"], self.p["attacker"]]
        self.started: list[str] = []  # modes whose transient server was started
        self.log = sys.stdout

    def say(self, msg: str) -> None:
        print(msg, file=self.log, flush=True)

    def write_run(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        if os.path.exists(os.path.join(self.dir, "run.json")):
            raise LabError(f"{self.dir} holds a run already: give --out a new directory")
        p = self.p
        with open(os.path.join(self.dir, "run.json"), "w") as f:
            json.dump(
                {
                    "nonce": self.nonce,
                    "seed": self.seed,
                    "seconds": self.o.seconds,
                    "delay": self.o.delay,
                    "settle": self.o.settle,
                    "count": self.o.count,
                    "value_size": self.o.value_size,
                    "attacks": self.o.attacks,
                    "rounds": self.o.rounds,
                    "created": datetime.datetime.now(datetime.timezone.utc).strftime(
                        "%Y-%m-%dT%H:%M:%SZ"
                    ),
                    "environment": {
                        "where": "lab",
                        "attacker": p["attacker"],
                        "honest client": p["honest"],
                        "server": p["server"],
                    },
                    "modes": {
                        m: {
                            "region": p["modes"][m]["region"],
                            "redis_port": p["modes"][m]["redis_port"],
                            "transient_server": p["modes"][m]["transient"],
                        }
                        for m in self.o.modes
                    },
                },
                f,
                indent=1,
            )
        with open(os.path.join(self.dir, "targets.json"), "w") as f:
            json.dump(targets(self.o.lab, p), f, indent=1)

    def check_guests(self) -> None:
        """One ssh per VM: the suite runs in the attacker and the honest client, redis-cli in
        the server (this also opens the shared connections)."""
        g = self.o.guest
        cmds = {vm: check_cmd(g, vm, self.o.install) for vm in self.guests}
        cmds[self.p["server"]] = f"command -v {q(g.redis_cli)} >/dev/null"
        logs = os.path.join(self.dir, "ssh")
        os.makedirs(logs, exist_ok=True)
        tar = None
        if self.o.install:
            tar = os.path.join(logs, "suite.tar")
            Path(tar).write_bytes(suite_tar())
        procs = {
            vm: self.remote.popen(
                vm, c, os.path.join(logs, f"check-{vm}.log"), tar if vm in self.guests else None
            )
            for vm, c in cmds.items()
        }
        failed = [vm for vm, pr in procs.items() if wait(pr, 120) != 0]
        if failed:
            detail = "; ".join(
                f"{vm}: " + Path(logs, f"check-{vm}.log").read_text(errors="replace").strip()[-300:]
                for vm in failed
            )
            raise LabError(
                f"cannot run the suite in {', '.join(failed)} ({detail}): is the lab up "
                f"(ssh -F .lab/ssh_config <vm>) and the suite installed (--install, or "
                f"ansible-playbook playbooks/attack.yml with roles/cxl_attacker)?"
            )

    def start_servers(self) -> None:
        for mode in self.o.modes:
            m = self.p["modes"][mode]
            if not m["transient"]:
                continue
            self.started.append(mode)
            cmd = start_cmd(self.o.guest, self.p["server"], mode, m)
            rc, out, err = self.remote.run(self.p["server"], cmd, 90)
            if rc != 0:
                raise LabError(
                    f"the transient redis-server of the {mode} region {m['region']} did not start "
                    f"in {self.p['server']} ({err.strip()[-500:] or 'timed out'}): see "
                    f"`journalctl -u {UNIT.format(mode=mode)}` there"
                )
            self.say(
                f"{mode}: region {m['region']} served by a transient redis-server on port "
                f"{m['redis_port']}"
            )

    def stop_servers(self) -> None:
        if self.started:
            cmd = "; ".join(stop_cmd(m) for m in self.started)
            self.remote.run(self.p["server"], cmd, 60)
            self.started = []

    def set_phase(self, text: str) -> None:
        tmp = os.path.join(self.dir, "phase.tmp")
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, os.path.join(self.dir, "phase"))

    def phase(self, mode: str, attack: str, rnd: int = 1) -> None:
        o, p = self.o, self.p
        name = report.phase_name(attack, rnd)
        d = os.path.join(self.dir, mode, name)
        os.makedirs(d, exist_ok=True)
        start = time.monotonic()
        self.set_phase(f"{mode} {name}")
        procs = [
            self.remote.popen(
                p["honest"],
                honest_cmd(o, self.nonce, self.seed, p["honest"], p, mode, name),
                os.path.join(d, "honest.log"),
            ),
            self.remote.popen(
                p["attacker"],
                attacker_cmd(o, self.nonce, p["attacker"], p, mode, attack, name),
                os.path.join(d, "attacker.log"),
            ),
        ]
        try:
            deadline = time.monotonic() + o.seconds + o.delay + o.slack + 10
            rcs = [wait(pr, deadline - time.monotonic()) for pr in procs]
        finally:
            for pr in procs:
                kill(pr)
        ran = time.monotonic() - start
        self.set_phase(f"{mode} settle")
        key = Markers(self.nonce, mode).inject_key().decode()
        rc, out, err = self.remote.run(
            p["server"], server_check_cmd(o.guest, p["modes"][mode]["redis_port"], key), 60
        )
        with open(os.path.join(d, "server.json"), "w") as f:
            json.dump(parse_server_check(rc, out.decode(errors="replace"), err, key), f, indent=1)
        # Claims the attack left behind expire with the client lease.
        time.sleep(max(0.0, o.settle - (time.monotonic() - start - ran)))
        with open(os.path.join(d, "phase.json"), "w") as f:
            json.dump(
                {
                    "honest_rc": rcs[0],
                    "attacker_rc": rcs[1],
                    "seconds": round(time.monotonic() - start, 2),
                },
                f,
            )
        self.say(
            f"{mode} {name}: {time.monotonic() - start:.1f} s"
            + ("" if rcs == [0, 0] else f" (honest exit {rcs[0]}, attacker exit {rcs[1]})")
        )

    def collect(self) -> None:
        for vm in self.guests:
            rc, data, err = self.remote.run(vm, collect_cmd(self.o.guest, self.nonce, vm), 600)
            if rc != 0:
                self.say(f"{vm}: could not fetch the results (exit {rc}): {err.strip()[-300:]}")
                continue
            try:
                extract(data, f"{self.nonce}-{vm}", self.dir)
            except tarfile.TarError as e:
                self.say(f"{vm}: the results' tar is damaged: {e}")

    def watcher(self) -> subprocess.Popen:
        o = self.o
        hang = (len(o.attacks) + 1) * len(o.modes) * o.rounds * (
            o.seconds + o.delay + o.settle + o.slack + 180
        ) + 600
        argv = [
            *o.watch_prefix,
            o.python,
            "-m",
            "attack",
            "watch",
            "--targets",
            os.path.join(self.dir, "targets.json"),
            "--nonce",
            self.nonce,
            "--phase-file",
            os.path.join(self.dir, "phase"),
            "--stop-file",
            os.path.join(self.dir, "stop"),
            "--seconds",
            str(int(hang)),
            "--out",
            os.path.join(self.dir, "watch.json"),
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        with open(os.path.join(self.dir, "watch.log"), "ab") as f:
            return subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=f, start_new_session=True
            )

    def run(self) -> dict:
        self.write_run()
        self.say(
            f"run {self.dir}: attacker {self.p['attacker']}, honest client "
            f"{self.p['honest']}, server {self.p['server']}; "
            + ", ".join(f"{m}: {self.p['modes'][m]['region']}" for m in self.o.modes)
        )
        watcher = None
        try:
            self.check_guests()
            watcher = self.watcher()
            self.start_servers()
            for mode in self.o.modes:
                for rnd in range(1, self.o.rounds + 1):
                    for attack in report.round_order(self.o.attacks, rnd):
                        self.phase(mode, attack, rnd)
        finally:
            self.set_phase("stopped")
            self.stop_servers()
            if watcher is not None:
                Path(self.dir, "stop").touch()
                if wait(watcher, 60) is None:
                    self.say("the host's watcher did not stop: killed")
            self.collect()
        return report.write(self.dir)


def expected_phases(o: Options) -> int:
    return len(o.attacks) * len(o.modes)  # one report cell per attack and mode, all rounds


def _sigterm(signum, frame):  # noqa: ARG001 - the finally blocks stop what the run started
    raise KeyboardInterrupt(f"signal {signum}")


def main(a) -> int:
    try:
        with open(a.lab) as f:
            lab = json.load(f)
    except (OSError, ValueError) as e:
        print(f"--lab {a.lab}: {e} (site.yml writes .lab/lab.json)", file=sys.stderr)
        return 2

    def listed(s: str | None) -> list[str]:
        return [x for x in (s or "").split(",") if x]

    def pairs(items: list[str], what: str) -> dict:
        out = {}
        for it in items:
            k, sep, v = it.partition("=")
            if not sep:
                raise LabError(f"{what} {it}: write <key>=<value>")
            out[k] = v
        return out

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    remote = None
    try:
        guest = Guest(
            python=a.guest_python,
            system_python=a.guest_system_python,
            pythonpath=a.guest_pythonpath,
            work_dir=a.guest_work_dir,
            views_dir=a.views_dir,
            redis_cli=a.redis_cli,
            redis_server=a.redis_server,
            lib_dir=a.lib_dir,
        )
        if a.rounds < 1:
            raise LabError(f"--rounds {a.rounds}: give 1 or more")
        o = Options(
            lab=lab,
            out=a.out or str(REPO / "bench" / "lab" / f"attack-{stamp}"),
            modes=listed(a.modes) or list(MODES),
            attacks=listed(a.attacks) or list(ATTACKS),
            seconds=a.seconds,
            delay=a.delay,
            settle=a.settle,
            count=a.count,
            value_size=a.value_size,
            rounds=a.rounds,
            slack=a.slack,
            regions=pairs(a.region or [], "--region"),
            transient_ports={
                **TRANSIENT_PORTS,
                **pairs(a.transient_port or [], "--transient-port"),
            },
            hosts={
                k: v
                for k, v in (("server", a.server), ("honest", a.honest), ("attacker", a.attacker))
                if v
            },
            guest=guest,
            watch_prefix=shlex.split(a.watch_prefix or ""),
            install=a.install,
        )
        if a.ssh:
            remote = Remote(shlex.split(a.ssh))
        else:
            if not a.ssh_config or not os.path.exists(a.ssh_config):
                raise LabError(
                    f"--ssh-config {a.ssh_config}: missing (site.yml writes "
                    f".lab/ssh_config), or give --ssh"
                )
            remote = Remote.ssh(os.path.abspath(a.ssh_config))
        run = Run(o, remote)
    except LabError as e:
        print(e, file=sys.stderr)
        if remote is not None:
            remote.close([])
        return 2
    old = signal.signal(signal.SIGTERM, _sigterm)
    try:
        rep = run.run()
    except (LabError, KeyboardInterrupt) as e:
        print(f"stopped: {e}", file=sys.stderr)
        with contextlib.suppress(SystemExit):
            report.write(o.out)  # whatever ran
        return 2 if isinstance(e, LabError) else 130
    finally:
        signal.signal(signal.SIGTERM, old)
        remote.close([run.p["server"], *run.guests])
    sys.stdout.write(report.markdown(rep))
    ran = sum(rep["summary"][m]["phases_run"] for m in rep["summary"])
    print(f"\nreport: {os.path.join(o.out, 'report.json')}")
    if ran < expected_phases(o):
        print(
            f"only {ran} of {expected_phases(o)} attack phases left results "
            f"(see <mode>/<attack>/*.log in {o.out})",
            file=sys.stderr,
        )
        return 1
    return 0
