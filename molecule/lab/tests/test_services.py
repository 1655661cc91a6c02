"""End-to-end checks of the lab's services (playbooks/services.yml), for the lab scenario's verify.

The server guest runs Redis with the cxl_ring driver (cxl-redis.service); the client guest runs
the ring clients and the RESP proxy (cxl-ring-proxy.service). Data goes through the shared region:
what a ring client SETs in the client VM, redis-cli GETs over loopback TCP in the server VM, and the
other way round. One fact per test; a failing service check prints the service's journal.

The guests are reached with the lab's own SSH config, and the lab is the resolved description
site.yml wrote (.lab/lab.json): which VM serves, which region it maps. Environment:
  CXL_LAB_INVENTORY   inventory directory of the services.yml re-runs (default: inventory/)
  CXL_LAB_SSH_CONFIG  ssh_config naming the guests (default: .lab/ssh_config)
  CXL_LAB_JSON        the resolved lab description (default: .lab/lab.json)
No assertion depends on the machine's speed: waits are bounded only to stop a hang.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from labssh import guest_host

REPO_ROOT = Path(__file__).resolve().parents[3]
INVENTORY = Path(os.environ.get("CXL_LAB_INVENTORY", REPO_ROOT / "inventory"))
SSH_CONFIG = Path(os.environ.get("CXL_LAB_SSH_CONFIG", REPO_ROOT / ".lab/ssh_config"))
LAB_JSON = Path(os.environ.get("CXL_LAB_JSON", REPO_ROOT / ".lab/lab.json"))
VENV_PYTHON = "/opt/cxl-ring/bin/python"
BENCH_KEY = "key:000000000000"     # the C bench's key 0 (bench/c: "key:" + 12 digits)

LAB = json.loads(LAB_JSON.read_text()) if LAB_JSON.exists() else {}
VMS = LAB.get("vms", [])
SERVER_VM = next((vm for vm in VMS if vm["role"] == "server"), None)
CLIENT_VM = next((vm for vm in VMS if vm["role"] == "client"), None)
ATTACKER_VM = next((vm for vm in VMS if vm["role"] == "attacker"), None)

pytestmark = [
    pytest.mark.skipif(
        not (SERVER_VM and CLIENT_VM and SSH_CONFIG.exists()),
        reason=f"no lab: needs a server and a client VM in {LAB_JSON} and {SSH_CONFIG}",
    ),
    # pyproject.toml's 300 s per test is a speed bound here: the rebuild fixture runs
    # services.yml, minutes under TCG on a loaded machine. Every wait below has
    # its own hang bound; this one too only stops a hang.
    pytest.mark.timeout(3600),
]


def first_region(vm: dict) -> str:
    return vm["regions"][0]["name"]


REGION = f"/dev/cxl/{first_region(CLIENT_VM)}" if CLIENT_VM else ""


def guest(vm: dict):
    return guest_host(vm["name"])


@pytest.fixture(scope="module")
def server():
    return guest(SERVER_VM)


@pytest.fixture(scope="module")
def client():
    return guest(CLIENT_VM)


# The `timeout N` around each guest command only stops a hang: N is many times what the
# slowest run (TCG on a loaded machine) needs, and no assertion reads a duration.


def journal(host, unit: str) -> str:
    return host.run(f"journalctl -u {unit} -n 40 --no-pager").stdout


def redis_cli(server, *args: str) -> str:
    quoted = " ".join(shlex.quote(a) for a in args)
    result = server.run(f"timeout 120 redis-cli -h 127.0.0.1 {quoted}")
    assert result.rc == 0, result.stderr
    return result.stdout.rstrip("\n")


def ring(client, *args: str, timeout: int = 120):
    return client.run(f"timeout {timeout} cxl-ring --path {REGION} "
                      + " ".join(shlex.quote(a) for a in args))


def unique(name: str) -> str:
    return f"svc-test:{name}:{uuid.uuid4().hex[:8]}"


# ---- the server guest ---------------------------------------------------------------------------


def test_redis_service_is_running(server):
    assert server.service("cxl-redis").is_running, journal(server, "cxl-redis")


def test_redis_service_is_enabled(server):
    assert server.service("cxl-redis").is_enabled


def test_stock_redis_service_is_masked(server):
    assert server.run("systemctl is-enabled redis-server").stdout.strip() == "masked"


def service_user(host, unit: str) -> str:
    pid = host.check_output("systemctl show -p MainPID --value %s", unit)
    return host.check_output("ps -o user= -p %s", pid)


def test_redis_does_not_run_as_root(server):
    assert service_user(server, "cxl-redis") == "redis"


def test_redis_listens_on_loopback(server):
    assert server.socket("tcp://127.0.0.1:6379").is_listening


def test_redis_does_not_listen_on_every_address(server):
    assert not server.socket("tcp://0.0.0.0:6379").is_listening


def test_driver_is_loaded(server):
    assert "cxl_ring" in redis_cli(server, "MODULE", "LIST"), journal(server, "cxl-redis")


def test_driver_serves_the_stable_region_path(server):
    assert f"/dev/cxl/{first_region(SERVER_VM)}" in redis_cli(server, "CXLRING.INFO")


def driver_info(server) -> dict:
    lines = redis_cli(server, "CXLRING.INFO").splitlines()
    return dict(zip(lines[0::2], lines[1::2]))


DOORBELL = bool(SERVER_VM and SERVER_VM.get("doorbell"))


def test_driver_waits_on_the_doorbell_between_vms(server):
    """The region is a device in the VM (its peers are other kernels): no futex there. With
    the lab's doorbell the idle driver sleeps on /dev/cxl/doorbell and publishes its peer id
    for the clients; without, it polls and CXLRING.INFO says why (docs/ring-protocol.md
    section 8)."""
    info = driver_info(server)
    if not DOORBELL:
        assert info["notify"] == "poll"
        assert "not a file of this host" in info["notify_fallback"] or \
            "PCI resource file" in info["notify_fallback"], info["notify_fallback"]
        return
    assert info["notify"] == "doorbell", info
    uio = server.check_output("readlink -f /dev/cxl/doorbell").rsplit("/", 1)[1]
    version = server.file(f"/sys/class/uio/{uio}/version").content_string.split()
    assert int(info["doorbell_peer"]) == int(version[-1]), (info, version)


def doorbell_events(host) -> int:
    """Interrupts the guest's doorbell driver received (uio's event counter)."""
    uio = host.check_output("readlink -f /dev/cxl/doorbell").rsplit("/", 1)[1]
    return int(host.file(f"/sys/class/uio/{uio}/event").content_string)


def test_idle_server_is_woken_through_the_doorbell(server, client):
    """An idle server sleeps (CXLRING.INFO sleeps grows with no request); a client's request
    to it is answered, and the server VM's doorbell interrupt count, read from its kernel
    (not from the driver), grows with it: the client rang. A client rings only when it sees
    the server asleep, so each try waits for the server to sleep again first."""
    if not DOORBELL:
        pytest.skip("the lab gives the server no doorbell")
    rang, wakes_before = False, int(driver_info(server)["sleep_wakes"])
    for attempt in range(5):
        sleeps = int(driver_info(server)["sleeps"])
        deadline = time.monotonic() + 60  # catches a hang only
        while int(driver_info(server)["sleeps"]) <= sleeps + 2:
            assert time.monotonic() < deadline, "the idle server never slept"
            time.sleep(0.5)
        events = doorbell_events(server)
        key = unique(f"bell{attempt}")
        result = ring(client, "set", key, "rung")
        assert result.rc == 0, result.stderr
        assert redis_cli(server, "GET", key) == "rung"
        if doorbell_events(server) > events:
            rang = True
            break
    assert rang, "no request to an idle server made its doorbell ring"
    assert int(driver_info(server)["sleep_wakes"]) > wakes_before


def test_blocked_client_is_woken_through_its_doorbell(server, client):
    """The other way (N3/N4): the ring CLI in the client VM blocks in BLPOP, sleeping on its
    own /dev/cxl/doorbell; an RPUSH in the server VM lets the server answer, and it rings the
    client's doorbell: the driver counts the ring, and the client VM's kernel counts the
    interrupt (uio's event counter, read from outside the client)."""
    if not DOORBELL:
        pytest.skip("the lab gives the VMs no doorbell")
    key = unique("bellwait")
    out = f"/tmp/{key.replace(':', '_')}.out"
    rings_before, events = int(driver_info(server)["client_rings"]), doorbell_events(client)
    client.run(f"(timeout 600 cxl-ring --path {REGION} --timeout 30 cmd BLPOP {key} 500 "
               f"> {out} 2>&1 &)")
    deadline = time.monotonic() + 300                    # a hang catcher, not a speed bound
    while int(driver_info(server)["blocked_sessions"]) < 1:
        assert time.monotonic() < deadline, client.run(f"cat {out}").stdout
        time.sleep(1)
    time.sleep(2)                                        # the client gets past its spin
    redis_cli(server, "RPUSH", key, "rung")
    while "rung" not in client.run(f"cat {out}").stdout:
        assert time.monotonic() < deadline, client.run(f"cat {out}").stdout
        time.sleep(1)
    client.run(f"rm -f {out}")
    assert int(driver_info(server)["client_rings"]) > rings_before
    assert int(driver_info(server)["client_ring_errors"]) == 0
    assert doorbell_events(client) > events


def test_server_vm_idle_cpu_is_reported(server, record_property):
    """The server VM's QEMU process, seen from the host, over 10 s of an idle lab
    (bench/idle_cpu.py): reported, a benchmark figure, never asserted (the machine is shared)."""
    pidfile = Path(f"/run/libvirt/qemu/{SERVER_VM['name']}.pid")
    if not pidfile.exists():
        pytest.skip("the server VM's QEMU pid is not readable here")
    mode = driver_info(server)["notify"]
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench/idle_cpu.py"), "--pidfile", str(pidfile),
         "--seconds", "10", "--label", f"server VM idle, notify {mode}", "--out", "-"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    figure = json.loads(done.stdout)
    record_property("server_vm_idle_cpu_percent", figure["percent"])
    print(f"{figure['label']}: QEMU used {figure['percent']} % of a core")


def test_redis_config_starts_with_ansible_managed(server):
    assert server.file("/etc/cxl-dsm-lab/redis.conf").content_string.startswith("#")


# ---- the client guest ---------------------------------------------------------------------------


def test_ring_cli_is_on_the_path(client):
    assert client.run("cxl-ring --version").rc == 0


def test_bench_client_is_installed(client):
    assert client.file("/usr/local/bin/cxl-ring-bench").mode == 0o755


def test_proxy_service_is_running(client):
    assert client.service("cxl-ring-proxy").is_running, journal(client, "cxl-ring-proxy")


def test_proxy_does_not_run_as_root(client):
    assert service_user(client, "cxl-ring-proxy") == "cxl-ring"


def test_proxy_listens_on_loopback(client):
    assert client.socket("tcp://127.0.0.1:6380").is_listening


def test_region_answers_from_the_client(client):
    assert ring(client, "ping").rc == 0


# ---- through the region, both ways ---------------------------------------------------------


def test_python_client_set_is_seen_over_tcp(client, server):
    key = unique("py")
    assert ring(client, "set", key, "from-the-client-vm").rc == 0
    assert redis_cli(server, "GET", key) == "from-the-client-vm"


def test_c_bench_set_is_seen_over_tcp(client, server):
    redis_cli(server, "DEL", BENCH_KEY)
    run = client.run(f"timeout 300 cxl-ring-bench --path {REGION} --op set --bench 20 --keyspace 1 "
                     "--value-size 24 --quiet")
    assert run.rc == 0, run.stderr
    assert redis_cli(server, "GET", BENCH_KEY) == "x" * 24


def test_tcp_set_is_seen_through_the_ring(client, server):
    key = unique("tcp")
    redis_cli(server, "SET", key, "from-the-server-vm")
    assert ring(client, "get", key).stdout.strip().strip('"') == "from-the-server-vm"


def test_proxy_set_is_seen_over_tcp(client, server):
    key = unique("proxy")
    assert client.run(f"timeout 120 redis-cli -p 6380 SET {key} via-proxy").rc == 0
    assert redis_cli(server, "GET", key) == "via-proxy"


@pytest.mark.skipif(not (ATTACKER_VM and ATTACKER_VM.get("acl_user")),
                    reason="the lab gives no attacker VM an acl_user")
def test_the_attackers_acl_user_holds_on_its_own_channel(server):
    """The attacker VM's ring sessions run as its acl_user (the embedded lab: attacker,
    -@dangerous): a SET runs, its FLUSHALL is refused with NOPERM; the server's keys and
    Redis's ACL LOG, read over TCP in the server VM, show that nothing was flushed."""
    attacker = guest(ATTACKER_VM)
    region = f"/dev/cxl/{first_region(ATTACKER_VM)}"
    kept = unique("acl-kept")
    redis_cli(server, "SET", kept, "kept")
    redis_cli(server, "ACL", "LOG", "RESET")
    own = attacker.run(f"timeout 120 cxl-ring --path {region} set {unique('acl-own')} allowed")
    assert own.rc == 0, own.stdout + own.stderr
    flush = attacker.run(f"timeout 120 cxl-ring --path {region} cmd FLUSHALL")
    assert flush.rc != 0 and "NOPERM" in flush.stderr, flush.stdout + flush.stderr
    assert redis_cli(server, "GET", kept) == "kept"
    assert "flushall" in redis_cli(server, "ACL", "LOG")
    assert ATTACKER_VM["acl_user"] in redis_cli(server, "ACL", "USERS").split()


GATEWAY_PORT = int(str((LAB.get("services") or {}).get("client", {}).get("gateway_listen",
                                                                          "127.0.0.1:6381")
                       ).rsplit(":", 1)[1])


def test_gateway_service_runs_as_its_user(client):
    svc = client.service("cxl-gateway")
    assert svc.is_running and svc.is_enabled
    users = client.check_output("ps -o user= -C cxl-gateway").split()
    assert users and "root" not in users


def test_gateway_set_is_seen_over_tcp_and_transactions_are_its_own(client, server):
    """redis-cli in the client VM through cxl-gateway: a SET lands in the server VM's Redis; a
    MULTI/EXEC on one connection gets a session of its own and runs."""
    key = unique("gw")
    assert client.run(f"timeout 120 redis-cli -p {GATEWAY_PORT} SET {key} via-gateway").rc == 0
    assert redis_cli(server, "GET", key) == "via-gateway"
    tx = client.run(f"printf 'MULTI\\nINCR {key}:n\\nINCR {key}:n\\nEXEC\\n' | "
                    f"timeout 120 redis-cli -p {GATEWAY_PORT}")
    assert tx.rc == 0 and tx.stdout.split()[-2:] == ["1", "2"], tx.stdout + tx.stderr
    assert redis_cli(server, "GET", f"{key}:n") == "2"


def test_redis_benchmark_through_the_gateway(client):
    run = client.run(f"timeout 600 redis-benchmark -p {GATEWAY_PORT} -t set,get -n 2000 -P 16 "
                     "-q --csv")
    assert run.rc == 0, run.stderr
    assert '"SET"' in run.stdout and '"GET"' in run.stdout


def test_application_workload_through_the_gateway(client, server):
    """cxl-ycsb (installed with the bench client; playbooks/bench.yml's application workload):
    zipfian 1 KiB GETs and SETs from 8 connections through the gateway, none refused, every
    record in the server VM's Redis."""
    prefix = unique("ycsb") + ":"
    run = client.run(f"timeout 600 cxl-ycsb --port {GATEWAY_PORT} --records 200 --ops 1000 "
                     f"--connections 8 --key-prefix {prefix} --timeout-s 120")
    assert run.rc == 0, run.stderr
    rep = json.loads(run.stdout)
    assert rep["run"]["ops"] == 1000 and rep["run"]["errors"] == 0 and rep["run"]["misses"] == 0
    assert redis_cli(server, "STRLEN", f"{prefix}199") == "1024"


def test_blpop_through_the_gateway_waits_for_a_push_from_the_server_vm(client, server):
    """redis-cli BLPOP in the client VM, through the gateway: its ring session blocks (the
    server says so) until a client of the server VM pushes over TCP, then it gets the value
    (docs/ring-protocol.md section 14)."""
    key = unique("blpop")
    out = f"/tmp/{key}.out"
    client.run(f"(timeout 600 redis-cli -p {GATEWAY_PORT} BLPOP {key} 500 > {out} 2>&1 &)")

    def blocked() -> int:
        lines = redis_cli(server, "CXLRING.INFO").splitlines()
        return int(lines[lines.index("blocked_sessions") + 1])

    deadline = time.monotonic() + 300                    # a hang catcher, not a speed bound
    while blocked() < 1:
        assert time.monotonic() < deadline, "the BLPOP never blocked"
        time.sleep(1)
    redis_cli(server, "RPUSH", key, "pushed")
    while "pushed" not in client.run(f"cat {out}").stdout:
        assert time.monotonic() < deadline, client.run(f"cat {out}").stdout
        time.sleep(1)
    assert client.run(f"cat {out}").stdout.split() == [key, "pushed"]
    client.run(f"rm -f {out}")


def test_subscribe_through_the_gateway_gets_a_publish_from_the_server_vm(client, server):
    """redis-cli SUBSCRIBE in the client VM, through the gateway: the driver in the server VM
    subscribes for its ring session (CXLRING.INFO pubsub_names), a PUBLISH over TCP in the
    server VM reaches it, and the gateway writes the message to redis-cli
    (docs/ring-protocol.md section 15)."""
    channel = unique("news")
    out = f"/tmp/{channel.replace(':', '_')}.out"
    client.run(f"(timeout 600 redis-cli -p {GATEWAY_PORT} SUBSCRIBE {channel} > {out} 2>&1 &)")
    deadline = time.monotonic() + 300                    # a hang catcher, not a speed bound
    while redis_cli(server, "PUBLISH", channel, "from-the-server-vm") != "1":
        assert time.monotonic() < deadline, client.run(f"cat {out}").stdout
        time.sleep(1)
    while "from-the-server-vm" not in client.run(f"cat {out}").stdout:
        assert time.monotonic() < deadline, client.run(f"cat {out}").stdout
        time.sleep(1)
    lines = client.run(f"cat {out}").stdout.split()
    assert lines[-3:] == ["message", channel, "from-the-server-vm"], lines
    client.run(f"pkill -f '[S]UBSCRIBE {channel}'; rm -f {out}")   # [S]: not this shell


def test_redis_benchmark_through_the_proxy(client):
    run = client.run("timeout 900 redis-benchmark -h 127.0.0.1 -p 6380 -t set,get -n 2000 -c 4 -q")
    assert run.rc == 0 and "error" not in (run.stdout + run.stderr).lower(), run.stdout + run.stderr


# ---- a server restart: in-flight requests fail as unknown outcome, then the client recovers ------

# The probe says "ready" (a file) once its client works, so that the restart surely
# happens while it runs, on a fast or a slow machine alike; it then sets until it
# has seen the server go (UnknownOutcomeError or ServerGoneError) and 20 successes
# after that. Its 300 s only stop a hang.
RESTART_PROBE = textwrap.dedent("""
    import json, sys, time
    import cxl_ring
    path, ready_file = sys.argv[1], sys.argv[2]
    gone = {"UnknownOutcomeError", "ServerGoneError"}
    seen, ok_after, deadline = [], 0, time.monotonic() + 300
    client = cxl_ring.RingClient(path, timeout=5.0)
    i = 0
    while time.monotonic() < deadline:
        i += 1
        try:
            client.set(f"svc-test:restart:{i % 64}", b"v" * 64)
            if i == 1:
                open(ready_file, "w").write("ready")
            if gone & set(seen):
                ok_after += 1
                if ok_after >= 20:
                    break
        except cxl_ring.CxlRingError as e:
            seen.append(type(e).__name__)
            time.sleep(0.05)
    print(json.dumps({"errors": seen, "ok_after": ok_after}))
""")


def wait_for_output(host, path: str, bound: float) -> str:
    """The content of PATH in HOST once it is not empty; "" when BOUND seconds (a hang) pass."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        out = host.run(f"cat {path} 2>/dev/null").stdout.strip()
        if out:
            return out
        time.sleep(2)
    return ""


@pytest.fixture(scope="module")
def restart_outcome(client, server):
    """A Python client SETs in a loop in the client VM while cxl-redis restarts in the server VM."""
    client.run(f"cat > /tmp/restart_probe.py <<'EOF'\n{RESTART_PROBE}\nEOF")
    client.run("rm -f /tmp/restart_probe.json /tmp/restart_probe.ready; "
               f"nohup timeout 400 {VENV_PYTHON} /tmp/restart_probe.py {REGION} "
               "/tmp/restart_probe.ready > /tmp/restart_probe.json 2>/tmp/restart_probe.err &")
    ready = wait_for_output(client, "/tmp/restart_probe.ready", 300)
    if ready:
        server.run("systemctl restart cxl-redis")
    out = wait_for_output(client, "/tmp/restart_probe.json", 420) if ready else ""
    return {"result": json.loads(out) if out else None, "ready": bool(ready),
            "stderr": client.run("cat /tmp/restart_probe.err").stdout}


def test_restart_does_not_hang_the_client(restart_outcome):
    assert restart_outcome["result"] is not None, restart_outcome["stderr"]


def test_restart_fails_in_flight_requests_as_server_gone(restart_outcome):
    errors = set((restart_outcome["result"] or {}).get("errors", []))
    assert errors & {"UnknownOutcomeError", "ServerGoneError"}, restart_outcome


def test_restart_reports_no_other_error(restart_outcome):
    errors = set((restart_outcome["result"] or {}).get("errors", []))
    assert errors <= {"UnknownOutcomeError", "ServerGoneError", "RingTimeoutError"}, restart_outcome


def test_client_works_again_after_the_restart(restart_outcome):
    assert (restart_outcome["result"] or {}).get("ok_after", 0) >= 20, restart_outcome


# ---- rebuilding one guest's service -------------------------------------------------------------

def services_run() -> tuple[int, dict, str]:
    """playbooks/services.yml for the server guest alone (the hypervisor names the lab)."""
    playbook = Path(sys.executable).with_name("ansible-playbook")
    proc = subprocess.run(
        [str(playbook), "-i", str(INVENTORY), "playbooks/services.yml",
         "--limit", f"cxl_hypervisors,{SERVER_VM['name']}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800,  # stops a hang only
        # Molecule exports ANSIBLE_FORCE_COLOR: turn colour off, and strip what remains.
        env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
                 ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg")))
    recap = {}
    for line in re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout).splitlines():
        if line.startswith(SERVER_VM["name"] + " ") and "ok=" in line:
            recap = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
    return proc.returncode, recap, proc.stdout[-3000:] + proc.stderr[-2000:]


@pytest.fixture(scope="module")
def rebuilt(server):
    """The server's service broken, then rebuilt by services.yml --limit <server>.

    Once: that a second run changes nothing is Molecule's idempotence step, for every guest.
    """
    server.run("systemctl stop cxl-redis; rm -f /etc/cxl-dsm-lab/redis.conf")
    return {"first": services_run()}


def test_rebuild_succeeds(rebuilt):
    assert rebuilt["first"][0] == 0, rebuilt["first"][2]


def test_rebuild_changes_the_broken_guest(rebuilt):
    assert rebuilt["first"][1].get("changed", 0) > 0, rebuilt["first"][2]


def test_rebuild_restores_the_service(rebuilt, server):
    assert server.service("cxl-redis").is_running, journal(server, "cxl-redis")



# ---- the devdax medium ---------------------------------------------------------------------------


def test_a_redis_without_thp_refuses_a_devdax_region_with_the_fix(server):
    """A device-DAX device faults in 2 MiB pages only; Redis disables transparent huge pages
    for its own process by default, so the driver refuses the region with the fix instead of
    dying of SIGBUS at the first access (the role's configs say disable-thp no)."""
    name = next((e["name"] for e in SERVER_VM["regions"] if e.get("medium") == "devdax"), None)
    if name is None:
        pytest.skip("the server VM maps no devdax region")
    out = server.run(
        "timeout 60 redis-server --port 6397 --bind 127.0.0.1 --save '' "
        "--loadmodule /usr/local/lib/cxl-dsm-lab/cxl_ring.so path /dev/cxl/%s notify off", name)
    assert out.rc != 0
    assert "transparent huge pages disabled" in out.stdout + out.stderr
    assert "set disable-thp no" in out.stdout + out.stderr
    assert "crashed by signal" not in out.stdout + out.stderr
