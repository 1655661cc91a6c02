"""The lab driver (attack/lab.py) without VMs.

Unit tests: what it picks from a resolved lab, the tar it unpacks, that the transient server
is stopped when a run is interrupted. The one-host run: `python -m attack lab` with a fake
"ssh" that runs each guest's command here (the attacker VM's as another user whose file
permissions are its grants), a real redis-server with the driver for each region (the secdsm
one as the lab's Redis, the off one started by the driver itself through a fake systemd-run),
the real watcher and report. No assertion depends on speed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from attackutil import ATTACKER_PYTHON, grant_like_hypervisor, make_view, nobody

from attack import lab as D
from attack import layout as L

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "ring"))
from ringharness import MODULE, REDIS_SERVER, Cluster, free_port  # noqa: E402

GROUPS = [2, 2]  # group 0: the honest client (vm2), group 1: the attacker (vm3)
RING = 2 << 20  # the lab's default: the driver's default max_value fits


def lab_description(sec: str, off: str, redis_port: int = 6379) -> dict:
    """A resolved lab (.lab/lab.json's shape, the keys the driver and the watcher read)."""
    segs = L.plan(GROUPS, RING, RING)

    def region(name: str, security: str, where: str) -> dict:
        return {
            "name": name,
            "security": security,
            "req_ring": RING,
            "resp_ring": RING,
            "segment_align": 4096,
            "groups": [
                {"group": g, "vm": vm, "channels": 2, "first_channel": 2 * g}
                for g, vm in enumerate(["vm2", "vm3"])
            ],
            "segments": [
                {
                    "name": s.name,
                    "kind": L.KIND_NAMES[s.kind],
                    "offset": s.offset,
                    "span": s.span,
                    "path": where if security == "off" else os.path.join(where, s.name),
                }
                for s in segs
            ],
        }

    def vm(name: str, role: str, group: int | None) -> dict:
        return {
            "name": name,
            "role": role,
            "regions": [{"name": "sec", "group": group}, {"name": "off", "group": group}],
        }

    return {
        "regions": [region("sec", "secdsm", sec), region("off", "off", off)],
        "vms": [vm("vm1", "server", None), vm("vm2", "client", 0), vm("vm3", "attacker", 1)],
        "services": {"redis": {"port": redis_port}},
    }


# ---- unit tests ------------------------------------------------------------------------------


def test_plan_picks_vms_regions_ports():
    p = D.plan(lab_description("/s", "/o", 7000), ["secdsm", "off"], {}, {})
    assert (p["server"], p["honest"], p["attacker"]) == ("vm1", "vm2", "vm3")
    sec, off = p["modes"]["secdsm"], p["modes"]["off"]
    # The lab's Redis serves the server's first region; the other gets a transient server.
    assert (sec["region"], sec["redis_port"], sec["transient"], sec["group"]) == (
        "sec",
        7000,
        False,
        1,
    )
    assert (off["region"], off["redis_port"], off["transient"], off["groups"]) == (
        "off",
        6390,
        True,
        [2, 2],
    )
    only = D.plan(lab_description("/s", "/o"), ["secdsm"], {}, {})
    assert list(only["modes"]) == ["secdsm"]


def test_plan_errors_name_the_fix():
    lab = lab_description("/s", "/o")
    lab["vms"] = lab["vms"][:2]
    with pytest.raises(D.LabError, match="role: attacker"):
        D.plan(lab, ["secdsm"], {}, {})
    lab = lab_description("/s", "/o")
    with pytest.raises(D.LabError, match="unknown mode"):
        D.plan(lab, ["both"], {}, {})
    with pytest.raises(D.LabError, match="is a off region"):
        D.plan(lab, ["secdsm"], {"secdsm": "off"}, {})
    lab["regions"][0]["security"] = "off"
    with pytest.raises(D.LabError, match="--region secdsm=<name>"):
        D.plan(lab, ["secdsm"], {}, {})


def test_extract_takes_only_result_files(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:

        def add(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.type = len(data), kind
            if kind == tarfile.SYMTYPE:
                info.size, info.linkname = 0, "/etc/passwd"
            tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("n-vm3/secdsm/read/attacker.json", b"{}")
        add("n-vm3/off/read/loot.bin", b"loot")
        add("n-vm3/secdsm/../../escape", b"no")
        add("n-vm3/secdsm/read/link", kind=tarfile.SYMTYPE)
        add("other/secdsm/read/attacker.json", b"no")
        add("n-vm3/weird/read/attacker.json", b"no")
    assert D.extract(buf.getvalue(), "n-vm3", str(tmp_path)) == 2
    assert (tmp_path / "secdsm/read/attacker.json").read_bytes() == b"{}"
    assert (tmp_path / "off/read/loot.bin").read_bytes() == b"loot"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "attacker.json",
        "loot.bin",
    ]


def test_server_check_parsing():
    ok = D.parse_server_check(0, "PONG\n1\n", "", "k")
    assert ok["server_alive"] and ok["inject_key_exists"]
    gone = D.parse_server_check(1, "", "Could not connect", "k")
    assert not gone["server_alive"] and not gone["inject_key_exists"]


def test_install_unpacks_once(tmp_path):
    g = D.Guest(pythonpath=str(tmp_path / "suite-{vm}") + ":/elsewhere")
    cmd = D.install_cmd(g.at("vm2"))
    tar = D.suite_tar()
    for _ in range(2):  # the second time the same suite is there: nothing unpacked
        subprocess.run(["sh", "-c", cmd], input=tar, check=True, timeout=30)
    got = tmp_path / "suite-vm2" / "attack"
    assert sorted(p.name for p in got.glob("*.py")) == [p.name for p in D.suite_files()]
    assert (got / "SUITE_HASH").read_text().strip() == D.suite_hash()


class RecordingRemote(D.Remote):
    """Records every command; succeeds at everything, and is interrupted at the first phase."""

    def __init__(self) -> None:
        super().__init__([])
        self.calls: list[tuple[str, str]] = []

    def popen(self, vm, command, log, stdin=None):
        self.calls.append((vm, command))
        if "honest" in command:
            raise KeyboardInterrupt("Ctrl-C")
        return subprocess.Popen(["true"])

    def run(self, vm, command, timeout):
        self.calls.append((vm, command))
        return 0, b"", ""


def test_transient_server_stopped_when_interrupted(tmp_path):
    remote = RecordingRemote()
    o = D.Options(lab=lab_description("/s", "/o"), out=str(tmp_path / "run"), attacks=["read"])
    run = D.Run(o, remote)
    run.log = open(os.devnull, "w")  # noqa: SIM115
    with pytest.raises(KeyboardInterrupt):
        run.run()
    run.log.close()
    server = [c for vm, c in remote.calls if vm == "vm1"]
    assert any("systemd-run --unit cxl-attack-redis-off" in c for c in server), server
    assert "systemctl stop cxl-attack-redis-off.service" in server[-1], server
    # The results are fetched all the same, and the watcher told to stop.
    assert [vm for vm, c in remote.calls if "tar -cf" in c] == ["vm2", "vm3"]
    assert (tmp_path / "run" / "stop").exists()


# ---- the one-host run ------------------------------------------------------------------------

FAKE_SSH = """#!/bin/sh
# ssh <vm> <command>, on this host: the attacker VM's command as {user}
vm=$1; shift
export PATH="{bin}:$PATH" FAKE_UNITS="{units}"
if [ "$vm" = vm3 ]; then
    exec setpriv --reuid {uid} --regid {gid} --clear-groups sh -c "$1"
fi
exec sh -c "$1"
"""
FAKE_SYSTEMD_RUN = """#!/bin/sh
# systemd-run --unit U [--options] command...: the command in the background, its pid in U.pid
unit=
while [ $# -gt 0 ]; do
    case "$1" in --unit) unit=$2; shift 2 ;; --*) shift ;; *) break ;; esac
done
"$@" >"$FAKE_UNITS/$unit.log" 2>&1 &
echo $! >"$FAKE_UNITS/$unit.pid"
"""
FAKE_SYSTEMCTL = """#!/bin/sh
# systemctl stop U.service: kill what the fake systemd-run started (others: nothing to do)
[ "$1" = stop ] || exit 0
f="$FAKE_UNITS/${2%.service}.pid"
[ -f "$f" ] || exit 5
pid=$(cat "$f")
kill "$pid" 2>/dev/null
for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
rm -f "$f"
"""


def _script(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)


def _kill_units(units: str) -> None:
    for name in os.listdir(units):
        if name.endswith(".pid"):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(Path(units, name).read_text()), signal.SIGKILL)


@pytest.mark.skipif(not MODULE.exists(), reason=f"{MODULE} is not built (make build)")
@pytest.mark.skipif(
    nobody() is None,
    reason="needs root, the user nobody and /usr/bin/python3 to run the attacker as another user",
)
def test_lab_driver_on_one_host(tmp_path, shm):
    attacker = nobody()
    sec, off = shm("secdsm"), shm("off")
    os.makedirs(sec)
    segs = L.plan(GROUPS, RING, RING)
    for s in segs:
        with open(os.path.join(sec, s.name), "wb") as f:
            f.truncate(s.span)
    with open(off, "wb") as f:  # security off: everyone maps it read-write
        f.truncate(segs[-1].offset + segs[-1].span)
    os.chmod(off, 0o666)
    tools, units, work, views = shm("bin"), shm("units"), shm("work"), shm("views")
    suite = shm("suite")  # where --install puts the package, per VM
    for d, mode in ((tools, 0o755), (units, 0o755), (work, 0o1777), (views, 0o755)):
        os.makedirs(d)
        os.chmod(d, mode)
    for vm in ("vm2", "vm3"):
        os.makedirs(os.path.join(suite, vm))
        os.chmod(suite, 0o755)
    os.chown(os.path.join(suite, "vm3"), attacker.pw_uid, attacker.pw_gid)
    ssh = os.path.join(tools, "ssh")
    _script(
        ssh,
        FAKE_SSH.format(
            user=attacker.pw_name, uid=attacker.pw_uid, gid=attacker.pw_gid, bin=tools, units=units
        ),
    )
    _script(os.path.join(tools, "systemd-run"), FAKE_SYSTEMD_RUN)
    _script(os.path.join(tools, "systemctl"), FAKE_SYSTEMCTL)
    os.symlink(MODULE, os.path.join(tools, "cxl_ring.so"))
    # Each VM's /dev/cxl: the server's (vm1) serves the off region, the peers' hold views.
    for vm in ("vm1", "vm2", "vm3"):
        os.makedirs(os.path.join(views, vm))
        os.chmod(os.path.join(views, vm), 0o755)
        os.symlink(off, os.path.join(views, vm, "off"))
    run_dir = shm("run")
    off_port = free_port()
    cluster = Cluster(tmp_path)
    try:
        srv_sec = cluster.server(
            # notify off: it polls, as the lab's Redis between VMs (test_one_host.py's ARGS)
            {"groups": "2,2", "req_ring": RING, "resp_ring": RING, "client_lease_ms": 1000,
             "notify": "off"},
            region=sec,
            name="sec",
        )
        cluster.regions.remove(sec)  # a directory: the shm fixture removes it
        grant_like_hypervisor(sec, attacker)
        make_view(os.path.join(views, "vm2", "sec"), sec, ["header", "client-0", "server-0"])
        make_view(os.path.join(views, "vm3", "sec"), sec, ["header", "client-1", "server-1"])
        lab_json = tmp_path / "lab.json"
        lab_json.write_text(json.dumps(lab_description(sec, off, srv_sec.port)))
        env = dict(os.environ, PYTHONPATH=str(REPO))  # the driver's; the guests' is --install's
        argv = [
            sys.executable, "-m", "attack", "lab", "--lab", str(lab_json), "--ssh", ssh,
            "--modes", "secdsm,off", "--attacks", "read,inject,header", "--out", run_dir,
            "--seconds", "1.5", "--delay", "0.4", "--settle", "2.5", "--count", "20000",
            "--rounds", "2",
            "--slack", "60", "--transient-port", f"off={off_port}",
            "--guest-python", sys.executable, "--guest-system-python", ATTACKER_PYTHON,
            "--install", "--guest-pythonpath", f"{suite}/{{vm}}:{REPO / 'client'}",
            "--guest-work-dir", work,
            "--views-dir", os.path.join(views, "{vm}"), "--redis-server", REDIS_SERVER,
            "--lib-dir", tools,
        ]  # fmt: skip
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=280)
        assert srv_sec.alive()
    finally:
        _kill_units(units)
        cluster.close()
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    # The driver stopped its transient server, and took the guests' results away.
    assert not [n for n in os.listdir(units) if n.endswith(".pid")], out
    assert os.listdir(work) == [], out
    for vm in ("vm2", "vm3"):
        assert (Path(suite, vm, "attack", "SUITE_HASH")).read_text().strip() == D.suite_hash()
    rep = json.loads((Path(run_dir) / "report.json").read_text())
    s, o = rep["summary"]["secdsm"], rep["summary"]["off"]
    rows = {r["attack"]: r for r in rep["rows"]}
    detail = (Path(run_dir) / "report.md").read_text()
    if os.environ.get("CXL_ATTACK_KEEP_REPORT"):  # a copy of the report and the driver's output
        Path(os.environ["CXL_ATTACK_KEEP_REPORT"]).write_text(detail + "\n" + out)
    assert s["phases_run"] == o["phases_run"] == 3, detail
    assert rows["control"]["secdsm"]["honest_ops_per_s"] > 0, detail
    assert rows["control"]["off"]["server_alive"] is True, detail
    assert (s["other_bytes"], s["forged_landed"], s["honest_errors"]) == (0, 0, 0), detail
    assert s["holds"] is True, detail
    # The read attack read the other group's memory; a canary in it is a race with the
    # owner's scrubbing (test_one_host.py says why): reported, not asserted.
    assert rows["read"]["off"]["loot_bytes"] > 0, detail
    for attack in ("inject", "header"):
        assert rows[attack]["off"]["forged_landed"] > 0, (attack, detail)
    # Two rounds, the second in reverse order; the server's check removes the injected key,
    # so each round's inject phase shows only its own (attack/lab.py server_check_cmd).
    assert rep["rounds"] == 2 and len(rows["read"]["secdsm"]["honest_shares"]) == 2, detail
    # Whether the server executes an injected SET before the honest client overwrites its
    # slot is a race (neither of two rounds saw the key in one CI run): the forged request
    # seen in the ring, from outside the attacker, is the assertion above; each round's
    # server check ran and answered.
    for rnd in ("inject", "inject@2"):
        check = json.loads((Path(run_dir) / "off" / rnd / "server.json").read_text())
        assert check["server_alive"] is True and "inject_key_exists" in check, (rnd, detail)
    order = [ln.split(":")[0] for ln in out.splitlines() if ln.startswith("secdsm ")]
    assert order == ["secdsm control", "secdsm read", "secdsm inject", "secdsm header",
                     "secdsm header@2", "secdsm inject@2", "secdsm read@2", "secdsm control@2"], out
