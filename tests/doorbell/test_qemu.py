"""The doorbell server with real QEMU (qemu-system-x86_64, no disk, no guest): QEMU's
ivshmem-doorbell device connects to its VM's socket, realizes, and rings only whom the policy
lets it ring.

- Two VMs under TCG, paused (-S): both devices (1af4:1110) are on the PCI bus (QMP query-pci),
  the server saw each QEMU process on its own VM's socket (SO_PEERCRED pid) with the lab's
  visibility, and a QEMU that goes and comes back leaves its peer's QEMU without an error.
- A real client VM beside fake server and client peers: the fake server is given the two
  eventfds the client's QEMU watches (a ring written into them is consumed by that QEMU), the
  fake client hears nothing. (Writing the Doorbell register itself needs a guest or the qtest
  accelerator, which Debian's QEMU does not build: the guest side is left to the lab.)

Every QEMU process is killed at the end of its test; the server's sockets go with it.
"""

from __future__ import annotations

import json
import select
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from bellpeer import ring, rung, shape

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")

IVSHMEM = (0x1AF4, 0x1110)
VECTORS = 2


class Qemu:
    """One QEMU process with an ivshmem-doorbell device on a VM's doorbell socket."""

    def __init__(self, workdir: Path, name: str, bell: Path, accel: str, extra: list[str]):
        self.name = name
        self._qmp = None
        self.qmp_path = workdir / f"{name}-qmp.sock"
        self.stderr_path = workdir / f"{name}-qemu.log"
        self.stderr = open(self.stderr_path, "wb")  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen(
            [
                QEMU,
                "-S",
                "-nodefaults",
                "-display",
                "none",
                "-machine",
                f"q35,accel={accel}",
                "-m",
                "128",
                "-chardev",
                f"socket,path={bell},id=bell",
                "-device",
                f"ivshmem-doorbell,chardev=bell,vectors={VECTORS},id=doorbell",
                "-qmp",
                f"unix:{self.qmp_path},server=on,wait=off",
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
        )

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def qmp(self, command: str, timeout: float = 30.0) -> object:
        """One QMP command on the process's QMP connection (opened once: the monitor
        serves one client at a time)."""
        if self._qmp is None:
            deadline = time.monotonic() + timeout
            while not self.qmp_path.exists():
                assert self.proc.poll() is None, f"{self.name}: QEMU exited: {self.log()}"
                assert time.monotonic() < deadline, f"{self.name}: no QMP socket: {self.log()}"
                time.sleep(0.05)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(str(self.qmp_path))
            self._qmp = sock.makefile("rw")
            self._sock = sock
            json.loads(self._qmp.readline())  # the greeting
            self._execute("qmp_capabilities")
        return self._execute(command)

    def _execute(self, command: str) -> object:
        self._qmp.write(json.dumps({"execute": command}) + "\n")
        self._qmp.flush()
        while True:
            reply = json.loads(self._qmp.readline())
            if "event" not in reply:
                break
        assert "return" in reply, f"{self.name}: {command}: {reply}"
        return reply["return"]

    def stop(self) -> None:
        if self._qmp is not None:
            self._qmp.close()
            self._sock.close()
            self._qmp = None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self.stderr.close()


@pytest.fixture
def qemus(short_dir):
    started: list[Qemu] = []

    def start(name: str, bell: Path, accel: str = "tcg", extra: list[str] | None = None) -> Qemu:
        vm = Qemu(short_dir, name, bell, accel, extra or [])
        started.append(vm)
        return vm

    yield start
    for vm in started:
        vm.stop()


def pci_ids(vm: Qemu) -> list[tuple[int, int]]:
    return [
        (device["id"]["vendor"], device["id"]["device"])
        for bus in vm.qmp("query-pci")
        for device in bus["devices"]
    ]


def test_two_qemus_realize_the_device_under_the_lab_policy(doorbell, qemus):
    server = doorbell()
    vm1 = qemus("vm1", server.socket("vm1"))
    vm2 = qemus("vm2", server.socket("vm2"))
    assert IVSHMEM in pci_ids(vm1), vm1.log()
    assert IVSHMEM in pci_ids(vm2), vm2.log()
    state = server.wait_state(
        lambda s: s["vms"]["vm1"]["connected"] and s["vms"]["vm2"]["connected"], timeout=30
    )
    assert state["vms"]["vm1"]["pid"] == vm1.proc.pid
    assert state["vms"]["vm2"]["pid"] == vm2.proc.pid
    assert state["vms"]["vm1"]["rings"] == ["vm2"]
    assert state["vms"]["vm2"]["rings"] == ["vm1"]
    assert not state["vms"]["vm3"]["connected"]

    # vm2's QEMU goes and comes back; vm1's QEMU takes the disconnect and the new eventfds
    vm2.stop()
    server.wait_state(lambda s: not s["vms"]["vm2"]["connected"], timeout=30)
    vm2 = qemus("vm2-again", server.socket("vm2"))
    assert IVSHMEM in pci_ids(vm2), vm2.log()
    state = server.wait_state(lambda s: s["vms"]["vm2"]["pid"] == vm2.proc.pid, timeout=30)
    assert state["vms"]["vm2"]["connections"] == 2
    assert IVSHMEM in pci_ids(vm1)  # vm1's QEMU is still there and answers
    assert vm1.proc.poll() is None
    assert vm1.log() == "", vm1.log()  # e.g. no "invalid peer", no "Too many eventfd"
    assert vm2.log() == "", vm2.log()


def test_a_second_qemu_on_a_vm_socket_fails_to_start_and_the_first_stays(doorbell, qemus):
    server = doorbell()
    vm2 = qemus("vm2", server.socket("vm2"))
    assert IVSHMEM in pci_ids(vm2)
    twin = qemus("twin", server.socket("vm2"))
    assert twin.proc.wait(30) != 0  # refused: a version QEMU rejects, no device
    assert "server sent version -2, expecting 0" in twin.log(), twin.log()
    state = server.wait_state(lambda s: s["vms"]["vm2"]["refused"] == 1)
    assert state["vms"]["vm2"]["pid"] == vm2.proc.pid


def test_the_server_vm_holds_the_eventfds_a_client_qemu_watches(doorbell, qemus):
    """Fake vm1 and vm3 beside a real vm2: vm1 is given vm2's two eventfds, vm3 nothing, and
    what vm1 writes into them is consumed by vm2's QEMU (the same kernel objects: QEMU reads
    its own vectors' eventfds to raise the interrupt; with no guest it goes nowhere)."""
    server = doorbell()
    fake_vm1 = server.connect("vm1")
    fake_vm1.messages()
    fake_vm3 = server.connect("vm3")
    fake_vm3.messages()
    fake_vm1.messages()
    vm2 = qemus("vm2", server.socket("vm2"))
    assert IVSHMEM in pci_ids(vm2), vm2.log()
    notices = fake_vm1.messages()
    assert shape(notices) == [(2, True), (2, True)]
    assert fake_vm3.messages() == []  # a client never hears of another client
    for _, fd in notices:
        ring(fd)
        deadline = time.monotonic() + 10
        while pending(fd) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pending(fd), "vm2's QEMU does not watch the eventfd vm1 was given"
    assert rung(notices[0][1]) == 0
    assert vm2.proc.poll() is None
    assert vm2.log() == "", vm2.log()


def pending(fd: int) -> bool:
    """Rung and not yet consumed (without consuming it)."""
    return bool(select.select([fd], [], [], 0)[0])
