"""roles/lab_hypervisor/tasks/doorbell.yml without systemd: the server is installed, its
configuration validated and written, the supervised daemon started; a second run changes
nothing; every path is under a temporary directory. Skipped where systemd is PID 1 (the
test would then start a real unit)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from bellpeer import LAB_VMS, SERVER_PATH

REPO_ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")

pytestmark = [
    pytest.mark.skipif(Path("/run/systemd/system").exists(), reason="systemd is PID 1 here"),
    pytest.mark.skipif(not PLAYBOOK.exists(), reason="no ansible-playbook beside this Python"),
]


def run(playbook: Path) -> tuple[dict, str]:
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO_ROOT / "roles"), ANSIBLE_STRATEGY="linear")
    result = subprocess.run(
        [str(PLAYBOOK), "-i", "localhost,", "-c", "local", str(playbook)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=playbook.parent,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    recap = re.search(r"localhost\s*:\s*(.*)", output.split("PLAY RECAP")[-1]).group(1)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", recap)}, output


def test_doorbell_tasks_start_a_daemon_once(short_dir):
    paths = {
        "server": short_dir / "sbin/cxl-ivshmem-server",
        "config": short_dir / "etc/doorbell.json",
        "pidfile": short_dir / "bell.pid",
        "log": short_dir / "bell.log",
    }
    (short_dir / "sbin").mkdir()
    config = {
        "socket_dir": str(short_dir / "run/doorbell"),
        "socket_mode": "0660",
        "group": os.getgid(),
        "vectors": 2,
        "state_file": str(short_dir / "run/doorbell/state.json"),
        "vms": LAB_VMS,
    }
    playbook = short_dir / "play.yml"
    playbook.write_text(
        textwrap.dedent(f"""\
        - hosts: localhost
          gather_facts: false
          vars:
            ansible_python_interpreter: {sys.executable}
            cxl_lab_system_python: {sys.executable}
            cxl_doorbell_server: {paths["server"]}
            cxl_doorbell_config_path: {paths["config"]}
            cxl_doorbell_pidfile: {paths["pidfile"]}
            cxl_doorbell_log: {paths["log"]}
            cxl_doorbell_config: {json.dumps(config)}
          tasks:
            - ansible.builtin.include_role:
                name: lab_hypervisor
                tasks_from: doorbell
        """)
    )
    stop = [sys.executable, str(SERVER_PATH), "--pidfile", str(paths["pidfile"]), "--stop"]
    try:
        first, output = run(playbook)
        assert first["changed"] >= 3, output  # program, configuration, daemon
        assert all((short_dir / f"run/doorbell/{vm['name']}.sock").exists() for vm in LAB_VMS)
        assert json.loads(paths["config"].read_text())["vms"] == LAB_VMS
        second, output = run(playbook)
        assert second["changed"] == 0, output
    finally:
        subprocess.run(stop, timeout=30)
    assert not (short_dir / "run/doorbell/vm1.sock").exists()
