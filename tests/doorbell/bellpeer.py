"""Helpers for the doorbell tests: a fake QEMU peer and the server as a process.

`FakeQemu` speaks the client side of QEMU's ivshmem protocol: it connects to a VM's socket
and reads 8-byte messages with their file descriptors (recvmsg, SCM_RIGHTS), as QEMU does.
`DoorbellServer` runs roles/lab_hypervisor/files/cxl_ivshmem_server.py on a configuration
written here, with its log and its state file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

SERVER_PATH = (
    Path(__file__).resolve().parents[2] / "roles/lab_hypervisor/files/cxl_ivshmem_server.py"
)
MESSAGE = struct.Struct("<q")

# The lab's shape: vm1 serves vm2 and vm3; a client rings its server only.
LAB_VMS = [
    {"name": "vm1", "id": 1, "peers": ["vm2", "vm3"]},
    {"name": "vm2", "id": 2, "peers": ["vm1"]},
    {"name": "vm3", "id": 3, "peers": ["vm1"]},
]


def load_server_module():
    spec = importlib.util.spec_from_file_location("cxl_ivshmem_server", SERVER_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("cxl_ivshmem_server", module)
    spec.loader.exec_module(module)
    return module


class FakeQemu:
    """The client side of the protocol. `messages()` returns (value, fd or None) pairs."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.fds: list[int] = []

    def message(self, timeout: float = 2.0) -> tuple[int, int | None] | None:
        """One message, or None when nothing comes within `timeout` or the server closed."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return None
        data, fds, _, _ = socket.recv_fds(self.sock, MESSAGE.size, 4)
        self.fds.extend(fds)
        if not data:
            return None
        assert len(data) == MESSAGE.size, f"a short message: {data!r}"
        assert len(fds) <= 1, f"{len(fds)} fds beside one message"
        return MESSAGE.unpack(data)[0], (fds[0] if fds else None)

    def messages(self, quiet: float = 0.3) -> list[tuple[int, int | None]]:
        """Every message until none arrives for `quiet` seconds."""
        out = []
        while (msg := self.message(quiet)) is not None:
            out.append(msg)
        return out

    def closed_by_server(self, timeout: float = 2.0) -> bool:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        return bool(ready) and self.sock.recv(8) == b""

    def close(self) -> None:
        self.sock.close()
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


def shape(messages: list[tuple[int, int | None]]) -> list[tuple[int, bool]]:
    """The sequence without the fd numbers: (value, has an fd)."""
    return [(value, fd is not None) for value, fd in messages]


def rung(fd: int) -> int:
    """The eventfd's counter (0 when nobody rang it); reading resets it."""
    ready, _, _ = select.select([fd], [], [], 0.2)
    if not ready:
        return 0
    return struct.unpack("<Q", os.read(fd, 8))[0]


def ring(fd: int) -> None:
    os.write(fd, struct.pack("<Q", 1))


class DoorbellServer:
    """A running server process, its config, its log and its state file."""

    def __init__(self, config: dict, workdir: Path):
        self.config = config
        self.workdir = workdir
        self.socket_dir = Path(config["socket_dir"])
        self.config_path = workdir / "doorbell.json"
        self.config_path.write_text(json.dumps(config))
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> DoorbellServer:
        self.log = open(self.log_path, "ab")  # noqa: SIM115 (kept for the process's life)
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER_PATH), "--config", str(self.config_path)],
            stderr=self.log,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.state_path.exists():
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"the server did not start:\n{self.log_text()}")

    @property
    def state_path(self) -> Path:
        return Path(self.config["state_file"])

    def socket(self, vm: str) -> Path:
        return self.socket_dir / f"{vm}.sock"

    def state(self) -> dict:
        return json.loads(self.state_path.read_text())

    def wait_state(self, predicate, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                state = self.state()
            except (OSError, ValueError):
                state = None
            if state is not None and predicate(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"state never matched: {state}\n{self.log_text()}")
            time.sleep(0.02)

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def connect(self, vm: str) -> FakeQemu:
        return FakeQemu(self.socket(vm))

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode
