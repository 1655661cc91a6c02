"""Fixtures for the doorbell server (roles/lab_hypervisor/files/cxl_ivshmem_server.py).

`doorbell` starts the real server as a process on the lab's three VMs, with its sockets in a
short directory of its own (a unix socket path has at most 107 bytes); the helpers are in
bellpeer.py.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from bellpeer import LAB_VMS, DoorbellServer, FakeQemu, load_server_module


@pytest.fixture(scope="session")
def server_module():
    return load_server_module()


@pytest.fixture
def short_dir():
    """A directory with a short path for sockets; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="bell-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def doorbell(short_dir):
    """doorbell(**overrides) -> a started server on the lab's three VMs, 2 vectors."""
    servers: list[DoorbellServer] = []
    peers: list[FakeQemu] = []

    def start(**overrides) -> DoorbellServer:
        config = {
            "socket_dir": str(short_dir / "sock"),
            "state_file": str(short_dir / "state.json"),
            "vectors": 2,
            "memory_size": 4096,
            "vms": LAB_VMS,
        }
        config.update(overrides)
        server = DoorbellServer(config, short_dir).start()
        servers.append(server)
        original = server.connect

        def connect(vm: str) -> FakeQemu:
            peer = original(vm)
            peers.append(peer)
            return peer

        server.connect = connect
        return server

    yield start
    for peer in peers:
        peer.close()
    for server in servers:
        server.stop()
