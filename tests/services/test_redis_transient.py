"""cxl_redis_server tasks_from transient: a second Redis with the driver, beside cxl-redis.service.

The tasks run for real against localhost: the real redis-server from PATH loads the real
build/cxl_ring.so on a region file of security off in a temporary directory, with the
arguments the role computes from a lab entry of that region. Only systemd is stood in for
(this machine runs none): `systemd-run` starts the command in the background and records
its arguments, `systemctl` answers show/stop/reset-failed for it, `journalctl` prints its log.
Every server a test starts is stopped; every file lives in a temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE = REPO_ROOT / "build" / "cxl_ring.so"
REGION_SIZE = 64 << 20

FAKE_SYSTEMD_RUN = r"""#!/bin/sh
# Stands in for systemd-run: records its arguments, runs what follows "--" in the background.
state="$FAKE_SYSTEMD_STATE"
printf '%s\n' "$@" > "$state/systemd-run.argv"
unit=""
while [ $# -gt 0 ]; do
  case "$1" in
    --unit) unit="$2"; shift 2 ;;
    --description|-p) shift 2 ;;
    --) shift; break ;;
    *) shift ;;
  esac
done
cd "$state" || exit 1
setsid "$@" > "$state/$unit.service.log" 2>&1 < /dev/null &
echo $! > "$state/$unit.service.pid"
"""

FAKE_SYSTEMCTL = r"""#!/bin/sh
# Stands in for systemctl: show (ActiveState), stop and reset-failed of what systemd-run started.
state="$FAKE_SYSTEMD_STATE"
echo "$*" >> "$state/systemctl.log"
for unit in "$@"; do :; done
pidfile="$state/$unit.pid"
alive() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
case "$1" in
  show) if alive; then echo active; else echo inactive; fi ;;
  stop)
    if alive; then
      pid=$(cat "$pidfile"); kill "$pid"; i=0
      while kill -0 "$pid" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
    fi
    rm -f "$pidfile" ;;
  reset-failed) ;;
  *) echo "fake systemctl: $1 is not faked" >&2; exit 1 ;;
esac
"""

FAKE_JOURNALCTL = r"""#!/bin/sh
cat "$FAKE_SYSTEMD_STATE"/*.log 2>/dev/null
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fake_systemd(tmp_path_factory):
    """A bin directory with the fakes first on PATH, and the state directory they share."""
    root = tmp_path_factory.mktemp("fake-systemd")
    bin_dir, state = root / "bin", root / "state"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in (("systemd-run", FAKE_SYSTEMD_RUN), ("systemctl", FAKE_SYSTEMCTL),
                       ("journalctl", FAKE_JOURNALCTL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    saved = {key: os.environ.get(key) for key in ("PATH", "FAKE_SYSTEMD_STATE")}
    os.environ["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    os.environ["FAKE_SYSTEMD_STATE"] = str(state)
    yield state
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    for pidfile in state.glob("*.pid"):  # whatever a failed test left running
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGTERM)


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    """A stand-in server guest: /dev/cxl, regions.json, the installed module, artifacts.json."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are not installed (requirements/apt-ring.txt)")
    if not MODULE.exists():
        pytest.skip("build/cxl_ring.so is not built (make build)")
    root = tmp_path_factory.mktemp("guest")
    names = ("cxl", "lib", "conf", "artifacts")
    region_dir, lib_dir, conf_dir, artifacts = (root / name for name in names)
    for path in (region_dir, lib_dir, conf_dir, artifacts):
        path.mkdir()
    with (region_dir / "cxl1").open("wb") as f:  # security off: one file, all zero
        f.truncate(REGION_SIZE)
    (region_dir / "cxl0").mkdir()                # secdsm: cxl-redis.service's region
    (root / "regions.json").write_text(f'{{"cxl1": {{"size_bytes": {REGION_SIZE}}}}}')
    shutil.copy(MODULE, lib_dir / "cxl_ring.so")
    (artifacts / "artifacts.json").write_text(
        '{"module": "cxl_ring.so", "redis": {"source": "debian", "version": "7.0.15"}}')
    bin_dir = Path(shutil.which("redis-server")).parent
    cxl_vm = {"name": "localhost", "role": "server", "links": [],
              "regions": [{"name": "cxl0", "security": "secdsm", "group": None},
                          {"name": "cxl1", "security": "off", "group": None, "access": "rw"}]}
    lab_regions = [{"name": "cxl1", "security": "off", "segment_align": 4096,
                    "req_ring": 2097152, "resp_ring": 2097152, "access_delay_ns": 200,
                    "groups": [{"group": 1, "vm": "vm3", "channels": 2, "first_channel": 2},
                               {"group": 0, "vm": "vm2", "channels": 2, "first_channel": 0}]}]
    variables = {
        "cxl_vm": cxl_vm,
        "cxl_redis_server_lab_regions": lab_regions,
        "cxl_redis_server_region_dir": str(region_dir),
        "cxl_redis_server_regions_json": str(root / "regions.json"),
        "cxl_redis_server_artifacts_dir": str(artifacts),
        "cxl_redis_server_lib_dir": str(lib_dir),
        "cxl_redis_server_conf_dir": str(conf_dir),
        "cxl_redis_server_user": "root",
        "cxl_redis_server_group": "root",
        "cxl_redis_server_supplementary_groups": [],
        "cxl_redis_server_start_timeout": 20,
        "cxl_redis_server_transient_region": "cxl1",
        "cxl_redis_server_transient_port": free_port(),
    }
    return {"vars": variables, "conf": conf_dir / "cxl-redis-cxl1.conf", "bin_dir": bin_dir}


def answers(port: int) -> str:
    try:
        out = subprocess.run(["redis-cli", "-p", str(port), "MODULE", "LIST"],
                             capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return ""
    return out.stdout if out.returncode == 0 else ""


@pytest.fixture(scope="module")
def started(tmp_path_factory, run_role, fake_systemd, guest):
    """present, present again, then absent, absent again (the server is stopped in the end)."""
    workdir = tmp_path_factory.mktemp("transient")
    port = guest["vars"]["cxl_redis_server_transient_port"]
    first = run_role(workdir / "first", "cxl_redis_server", guest["vars"], tasks_from="transient")
    result = {"first": first, "conf": guest["conf"].read_text() if guest["conf"].exists() else "",
              "argv": (fake_systemd / "systemd-run.argv").read_text().splitlines()
              if (fake_systemd / "systemd-run.argv").exists() else [],
              "modules": answers(port)}
    result["second"] = run_role(workdir / "second", "cxl_redis_server", guest["vars"],
                                tasks_from="transient")
    absent = dict(guest["vars"], cxl_redis_server_transient_state="absent")
    result["absent"] = run_role(workdir / "absent", "cxl_redis_server", absent,
                                tasks_from="transient")
    deadline = time.monotonic() + 30
    while answers(port) and time.monotonic() < deadline:
        time.sleep(0.5)
    result["after_absent"] = answers(port)
    result["conf_after_absent"] = guest["conf"].exists()
    result["absent_again"] = run_role(workdir / "absent2", "cxl_redis_server", absent,
                                      tasks_from="transient")
    return result


def test_present_starts_redis_with_the_driver(started):
    assert started["first"].returncode == 0, started["first"].output[-3000:]
    assert "cxl_ring" in started["modules"]


def test_driver_gets_the_regions_layout_from_the_lab(started, guest):
    lines = started["conf"].splitlines()
    loadmodule = next(line for line in lines if line.startswith("loadmodule"))
    region = Path(guest["vars"]["cxl_redis_server_region_dir"]) / "cxl1"
    for pair in (f"path {region}", f"map_size {REGION_SIZE}", "groups 2,2", "segment_align 4096",
                 "req_ring 2097152", "resp_ring 2097152", "layout v5"):
        assert f" {pair}" in loadmodule
    assert " channels " not in loadmodule  # their sum, from the groups


def test_driver_publishes_the_regions_injected_delay(started, guest):
    """regions[].access_delay_ns reaches the driver, which writes it in the header (2.4)."""
    loadmodule = next(line for line in started["conf"].splitlines()
                      if line.startswith("loadmodule"))
    assert " access_delay_ns 200" in loadmodule
    region = Path(guest["vars"]["cxl_redis_server_region_dir"]) / "cxl1"
    with region.open("rb") as f:
        f.seek(88)
        assert int.from_bytes(f.read(4), "little") == 200


def test_it_listens_on_loopback_only_and_persists_nothing(started, guest):
    conf = started["conf"]
    port = guest["vars"]["cxl_redis_server_transient_port"]
    assert "\nbind 127.0.0.1\n" in conf and f"\nport {port}\n" in conf
    assert '\nsave ""\n' in conf and "\nappendonly no\n" in conf


def test_unit_is_transient_with_the_service_user(started, guest):
    argv = started["argv"]
    assert argv[:2] == ["--unit", "cxl-redis-cxl1"] and "--collect" in argv
    assert "User=root" in argv and "RuntimeDirectory=cxl-redis-cxl1" in argv
    command = argv[argv.index("--") + 1:]
    assert command == [str(guest["bin_dir"] / "redis-server"), str(guest["conf"])]


def test_second_present_changes_nothing(started):
    assert started["second"].returncode == 0, started["second"].output[-3000:]
    assert started["second"].recap["changed"] == 0


def test_absent_stops_it_and_removes_its_configuration(started):
    assert started["absent"].returncode == 0, started["absent"].output[-3000:]
    assert started["absent"].recap["changed"] > 0
    assert started["after_absent"] == "" and not started["conf_after_absent"]


def test_second_absent_changes_nothing(started):
    assert started["absent_again"].returncode == 0, started["absent_again"].output[-3000:]
    assert started["absent_again"].recap["changed"] == 0


def test_port_in_use_is_refused(tmp_path, run_role, fake_systemd, guest):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        busy = listener.getsockname()[1]
        run = run_role(tmp_path, "cxl_redis_server",
                       dict(guest["vars"], cxl_redis_server_transient_port=busy,
                            cxl_redis_server_transient_unit="cxl-redis-busy"),
                       tasks_from="transient")
    assert run.returncode != 0 and f"127.0.0.1:{busy} is in use" in run.output


@pytest.mark.parametrize("region, says", [("cxl9", "must be one this VM maps (cxl0, cxl1"),
                                          ("cxl0", "not cxl0, which cxl-redis.service serves")])
def test_region_it_may_not_serve_is_refused(tmp_path, run_role, guest, region, says):
    run = run_role(tmp_path, "cxl_redis_server",
                   dict(guest["vars"], cxl_redis_server_transient_region=region),
                   tasks_from="transient")
    assert run.returncode != 0 and says in " ".join(run.output.split())


def test_the_lab_service_port_is_refused(tmp_path, run_role, guest):
    run = run_role(tmp_path, "cxl_redis_server",
                   dict(guest["vars"], cxl_redis_server_transient_port=6379),
                   tasks_from="transient")
    assert run.returncode != 0 and "not that service's (6379)" in " ".join(run.output.split())


def test_the_lab_service_unit_is_refused(tmp_path, run_role, guest):
    variables = dict(guest["vars"], cxl_redis_server_transient_unit="cxl-redis",
                     cxl_redis_server_transient_state="absent")
    run = run_role(tmp_path, "cxl_redis_server", variables, tasks_from="transient")
    assert run.returncode != 0 and "a unit name of its own" in " ".join(run.output.split())

