"""The guests of the lab's verify over ssh: one multiplexed connection per guest.

Each new ssh connection to a TCG guest costs about 2 s of key exchange in the emulated CPU,
and testinfra runs one command per fact (a file's group, its mode, its target...). The
guests are reached with the lab's own ssh_config; a master connection per guest
(ControlMaster, sockets in a private directory) carries every command of the session.
conftest.py closes the masters and removes the directory when the session ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import testinfra

REPO_ROOT = Path(__file__).resolve().parents[3]
SSH_CONFIG = Path(os.environ.get("CXL_LAB_SSH_CONFIG", REPO_ROOT / ".lab/ssh_config"))

_mux_dir: str | None = None


def guest_host(name: str):
    """The testinfra host of guest `name`, over its multiplexed connection."""
    global _mux_dir
    if _mux_dir is None:
        _mux_dir = tempfile.mkdtemp(prefix="cxl-lab-ssh-")
    return testinfra.get_host(
        f"ssh://{name}",
        ssh_config=str(SSH_CONFIG),
        controlpath=f"{_mux_dir}/{name}",  # no %C: testinfra %-formats the command
        controlpersist=600,
    )


def close() -> None:
    """Stop every master connection of the session and remove their sockets."""
    global _mux_dir
    if _mux_dir is None:
        return
    for sock in Path(_mux_dir).iterdir():
        subprocess.run(
            ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "lab-guest"],
            capture_output=True,
            timeout=30,
            check=False,
        )
    shutil.rmtree(_mux_dir, ignore_errors=True)
    _mux_dir = None
