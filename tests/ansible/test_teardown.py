"""playbooks/teardown.yml for real, on a lab of its own that never touches the default one.

The lab description is the default one renamed: its region file is
/dev/shm/cxltest-teardown-cxl0, its state and keys live in a temporary directory and
its VMs have names no other lab uses. Teardown starts libvirt's daemons when they are
down (a fresh CI run has none), removes what the lab left and, run again, changes
nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
LAB_NAME = "cxltest-teardown"
REGION_FILE = Path(f"/dev/shm/{LAB_NAME}-cxl0")


def _ansible_playbook() -> str:
    beside = Path(sys.executable).with_name("ansible-playbook")
    found = str(beside) if beside.exists() else shutil.which("ansible-playbook")
    if found is None:
        pytest.skip("ansible-playbook is not installed (make venv installs it)")
    return found


def _recap(output: str) -> dict[str, int]:
    for line in output.splitlines():
        if line.startswith("localhost") and "ok=" in line:
            return {k: int(v) for k, v in (item.split("=") for item in line.split()[2:])}
    raise AssertionError("no PLAY RECAP in the output:\n" + output[-4000:])


@pytest.fixture
def test_lab(tmp_path):
    """An inventory whose lab is the default one under other names and paths."""
    if os.geteuid() != 0:
        pytest.skip("teardown manages libvirt and /dev/shm as root")
    inventory = tmp_path / "inventory"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "inventory" / "hosts.yml", inventory / "hosts.yml")
    default = yaml.safe_load((REPO_ROOT / "inventory/group_vars/all/lab.yml").read_text())
    lab = default["cxl_lab"]
    lab["name"] = LAB_NAME
    lab["state_dir"] = str(tmp_path / "state")
    for number, vm in enumerate(lab["vms"]):
        vm["name"] = f"{LAB_NAME}-vm{number + 1}"
        vm["ssh_port"] = 2922 + number
    default["cxl_lab_controller_dir"] = str(tmp_path / "controller")
    (inventory / "group_vars" / "all" / "lab.yml").write_text(yaml.safe_dump(default))
    yield tmp_path, lab
    REGION_FILE.unlink(missing_ok=True)


def _teardown(workdir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_CALLBACKS_ENABLED": "",
        "ANSIBLE_LOCAL_TEMP": str(workdir / ".ansible-tmp"),
    })
    return subprocess.run(
        [_ansible_playbook(), "-i", str(workdir / "inventory" / "hosts.yml"),
         str(REPO_ROOT / "playbooks" / "teardown.yml")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200,  # a hang only
    )


def test_teardown_removes_the_lab_then_changes_nothing(test_lab):
    workdir, lab = test_lab
    state = Path(lab["state_dir"])
    overlay_dir = state / "vms" / lab["vms"][0]["name"]
    overlay_dir.mkdir(parents=True)
    (overlay_dir / "overlay.qcow2").write_bytes(b"\0" * 512)
    (state / "logs").mkdir()
    (state / "images").mkdir()
    (state / "images" / "cached.qcow2").write_bytes(b"\0" * 512)
    controller = workdir / "controller"
    controller.mkdir()
    (controller / "id_ed25519").write_text("not a key\n")
    REGION_FILE.write_bytes(b"\0" * 4096)

    first = _teardown(workdir)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    assert not REGION_FILE.exists()
    assert not (state / "vms").exists() and not (state / "logs").exists()
    assert not controller.exists()
    assert (state / "images" / "cached.qcow2").exists(), "the image cache must stay"

    second = _teardown(workdir)
    assert second.returncode == 0, second.stdout[-4000:]
    assert _recap(second.stdout)["changed"] == 0, second.stdout[-4000:]

