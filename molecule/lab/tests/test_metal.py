"""playbooks/metal.yml with the lab's own VMs as the bare-metal CXL hosts (docs/lab.md, "On
real CXL hosts"): the devdax region every VM maps is the CXL memory both hosts reach
(/dev/daxN.M in each), the attacker VM is the bare-metal server and the lab's server VM the
bare-metal client - neither runs the lab's own unit of that role, so the lab's services are
left as they are. An inventory of their own (no cxl_lab, no hypervisor group) and a cxl_metal
description: the same service roles deploy on them, a key set through the region by the client
is read on the server, then state absent removes the units, the links and the description, and
run again changes nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import labssh
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
LAB_JSON = Path(os.environ.get("CXL_LAB_JSON", REPO_ROOT / ".lab/lab.json"))
LAB = json.loads(LAB_JSON.read_text()) if LAB_JSON.exists() else {}
VMS = {vm["name"]: vm for vm in LAB.get("vms", [])}
BY_ROLE = {vm["role"]: vm for vm in reversed(LAB.get("vms", []))}
DEVDAX = next((r["name"] for r in LAB.get("regions", [])
               if r.get("medium") == "devdax" and r.get("security") == "off"), None)
METAL_SERVER = BY_ROLE.get("attacker")      # runs no Redis in the lab
METAL_CLIENT = BY_ROLE.get("server")        # runs no client unit in the lab
LINK_DIR = "/var/lib/cxl-metal/regions"
PLAYBOOK_BOUND = 1500                        # seconds: catches a hang, measures nothing

pytestmark = [
    pytest.mark.skipif(
        not (DEVDAX and METAL_SERVER and METAL_CLIENT
             and all(DEVDAX in [m["name"] for m in vm["regions"]]
                     for vm in (METAL_SERVER, METAL_CLIENT))),
        reason="needs a devdax region of security off mapped by the attacker and server VMs"),
    pytest.mark.timeout(2 * PLAYBOOK_BOUND),
]


def device(vm: dict) -> str:
    """The device-DAX device behind /dev/cxl/<region> in the VM: its bare-metal path."""
    out = labssh.guest_host(vm["name"]).run(f"readlink -f /dev/cxl/{DEVDAX}")
    assert out.rc == 0 and out.stdout.strip().startswith("/dev/dax"), out.stdout + out.stderr
    return out.stdout.strip()


def inventory(workdir: Path) -> Path:
    controller = Path(LAB["controller_dir"])
    hosts = {"localhost": {"ansible_connection": "local",
                           "ansible_python_interpreter": sys.executable}}
    for vm in (METAL_SERVER, METAL_CLIENT):
        hosts[vm["name"]] = {
            "ansible_host": "127.0.0.1", "ansible_port": vm["ssh_port"], "ansible_user": "root",
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_private_key_file": str(controller / "id_ed25519"),
            "ansible_ssh_common_args": "-o IdentitiesOnly=yes -o StrictHostKeyChecking=yes "
                                       f"-o UserKnownHostsFile={controller}/known_hosts",
            "ansible_timeout": 120,
        }
    size_mib = next(r["size_mib"] for r in LAB["regions"] if r["name"] == DEVDAX)
    metal = {
        "name": "cxltest-metal",
        "regions": [{"name": DEVDAX, "medium": "devdax", "size_mib": size_mib,
                     "security": "off"}],
        "hosts": [{"name": METAL_SERVER["name"], "role": "server",
                   "paths": {DEVDAX: device(METAL_SERVER)}},
                  {"name": METAL_CLIENT["name"], "role": "client",
                   "paths": {DEVDAX: device(METAL_CLIENT)}}],
        # The region held the lab's rings (format always: once, docs/lab.md); the proxy and
        # the gateway run in the lab already and would only cost TCG minutes here.
        "services": {"ring": {"format": "always"},
                     "client": {"proxy": False, "gateway": False}},
    }
    path = workdir / "metal.yml"
    path.write_text(yaml.safe_dump({"all": {"hosts": hosts, "vars": {"cxl_metal": metal}}}))
    return path


def playbook(inv: Path, *extra: str) -> subprocess.CompletedProcess:
    ansible = Path(sys.executable).with_name("ansible-playbook")
    return subprocess.run([str(ansible), "-i", str(inv), "playbooks/metal.yml", *extra],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=PLAYBOOK_BOUND)


def recap(out: str) -> dict[str, int]:
    """The sums of the PLAY RECAP's counters over the hosts."""
    total: dict[str, int] = {}
    for key, value in re.findall(r"(\w+)=(\d+)", out[out.rfind("PLAY RECAP"):]):
        total[key] = total.get(key, 0) + int(value)
    return total


@pytest.fixture(scope="module")
def present(tmp_path_factory):
    inv = inventory(tmp_path_factory.mktemp("metal"))
    run = playbook(inv)
    removed: list[bool] = []
    yield inv, run, removed
    if not removed:                                  # the absent tests did not run
        playbook(inv, "-e", "cxl_metal_state=absent")


@pytest.fixture(scope="module")
def absent(present):
    inv, _, removed = present
    removed.append(True)
    first = playbook(inv, "-e", "cxl_metal_state=absent")
    second = playbook(inv, "-e", "cxl_metal_state=absent")
    return first, second


def test_the_service_roles_deploy_on_the_hosts_and_the_ring_crosses_them(present):
    _, run, _ = present
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    # The cross-host check ran (not skipped): the client's key, read on the server.
    server, client = METAL_SERVER["name"], METAL_CLIENT["name"]
    read = rf"ok: \[{client} -> {server}(\([^)]*\))?\] => \(item={DEVDAX} on {server}\)"
    assert re.search(read, run.stdout), run.stdout[-6000:]
    assert recap(run.stdout)["failed"] == 0


def test_no_hypervisor_role_ran(present):
    _, run, _ = present
    assert not re.search(r"TASK \[lab_(hypervisor|regions|vms|image|guest)\b", run.stdout)


def test_the_server_host_serves_the_device_through_its_stable_path(present):
    host = labssh.guest_host(METAL_SERVER["name"])
    assert host.service("cxl-redis").is_running
    link = host.file(f"{LINK_DIR}/{DEVDAX}")
    assert link.is_symlink and link.linked_to == device(METAL_SERVER)
    info = host.run("redis-cli CXLRING.INFO").stdout
    assert f"{LINK_DIR}/{DEVDAX}" in info
    described = json.loads(host.file("/etc/cxl-metal/regions.json").content_string)
    assert described[DEVDAX]["medium"] == "devdax"


def test_the_client_host_reaches_the_server_through_the_device(present):
    host = labssh.guest_host(METAL_CLIENT["name"])
    out = host.run(f"cxl-ring --path {LINK_DIR}/{DEVDAX} set metal-test-key from-the-client")
    assert out.rc == 0, out.stderr
    server = labssh.guest_host(METAL_SERVER["name"])
    assert server.run("redis-cli GET metal-test-key").stdout.strip() == "from-the-client"


def test_absent_removes_the_units_and_the_links_then_changes_nothing(absent):
    first, second = absent
    assert first.returncode == 0, first.stdout[-6000:]
    server = labssh.guest_host(METAL_SERVER["name"])
    assert not server.file("/etc/systemd/system/cxl-redis.service").exists
    assert not server.service("cxl-redis").is_running
    for vm in (METAL_SERVER, METAL_CLIENT):
        host = labssh.guest_host(vm["name"])
        assert not host.file(LINK_DIR).exists
        assert not host.file("/etc/cxl-metal/regions.json").exists
        assert host.file(device(vm)).exists, "the device stays"
    assert second.returncode == 0, second.stdout[-6000:]
    assert recap(second.stdout)["changed"] == 0, second.stdout[-6000:]


def test_the_labs_own_services_were_left_alone(absent):
    lab_server = labssh.guest_host(METAL_CLIENT["name"])
    assert lab_server.service("cxl-redis").is_running
