"""Real ansible-playbook runs on a lab of its own, which never touches the default one.

A test lab is the default description (inventory/group_vars/all/lab.yml) renamed: its
region files are /dev/shm/<name>-<region>, its state and controller directories are
temporary, its VMs have names and SSH ports no other lab uses.
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
# Seconds one run may take: only a hang reaches it, however slow the machine.
RUN_BOUND = 1200


def ansible_playbook() -> str:
    beside = Path(sys.executable).with_name("ansible-playbook")
    found = str(beside) if beside.exists() else shutil.which("ansible-playbook")
    if found is None:
        pytest.skip("ansible-playbook is not installed (make venv installs it)")
    return found


def recap(output: str) -> dict[str, int]:
    for line in output.splitlines():
        if line.startswith("localhost") and "ok=" in line:
            return {k: int(v) for k, v in (item.split("=") for item in line.split()[2:])}
    raise AssertionError("no PLAY RECAP in the output:\n" + output[-4000:])


def make_lab(workdir: Path, name: str, first_port: int) -> dict:
    """Write workdir/inventory with the default lab renamed; return its description."""
    if os.geteuid() != 0:
        pytest.skip("the lab's playbooks manage libvirt and /dev/shm as root")
    inventory = workdir / "inventory"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "inventory" / "hosts.yml", inventory / "hosts.yml")
    default = yaml.safe_load((REPO_ROOT / "inventory/group_vars/all/lab.yml").read_text())
    lab = default["cxl_lab"]
    lab["name"] = name
    lab["state_dir"] = str(workdir / "state")
    for number, vm in enumerate(lab["vms"]):
        vm["name"] = f"{name}-vm{number + 1}"
        vm["ssh_port"] = first_port + number
    default["cxl_lab_controller_dir"] = str(workdir / "controller")
    write_lab(workdir, default)
    return default


def write_lab(workdir: Path, variables: dict) -> None:
    path = workdir / "inventory" / "group_vars" / "all" / "lab.yml"
    path.write_text(yaml.safe_dump(variables))


def run(workdir: Path, playbook: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_CALLBACKS_ENABLED": "",
        "ANSIBLE_LOCAL_TEMP": str(workdir / ".ansible-tmp"),
    })
    return subprocess.run(
        [ansible_playbook(), "-i", str(workdir / "inventory" / "hosts.yml"),
         str(REPO_ROOT / playbook), *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=RUN_BOUND,
    )
