"""The doorbell server against fake QEMU peers: the exact messages, the policy (who receives
whose eventfds), real eventfds that wake across processes, a memory per VM, reconnects,
hostile connections, permissions and shutdown.

The server runs as its own process; the fake peers read what QEMU would read. The lab's
shape: vm1 (peer 1) serves vm2 (peer 2) and vm3 (peer 3); 2 vectors.
"""

from __future__ import annotations

import json
import mmap
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
from bellpeer import LAB_VMS, SERVER_PATH, FakeQemu, load_server_module, ring, rung, shape


def own_eventfds(messages, peer_id):
    """The fds that came with the peer's own id after the memory (its interrupt setup)."""
    return [fd for value, fd in messages if value == peer_id and fd is not None]


# ---- the message sequence ------------------------------------------------------------------


def test_first_vm_gets_version_id_memory_and_its_own_vectors(doorbell):
    server = doorbell()
    vm2 = server.connect("vm2")
    assert shape(vm2.messages()) == [(0, False), (2, False), (-1, True), (2, True), (2, True)]


def test_server_vm_gets_the_connected_clients_then_its_own_vectors(doorbell):
    server = doorbell()
    vm2 = server.connect("vm2")
    vm2.messages()
    vm3 = server.connect("vm3")
    vm3.messages()
    vm1 = server.connect("vm1")
    assert shape(vm1.messages()) == [
        (0, False),
        (1, False),
        (-1, True),
        (2, True),
        (2, True),
        (3, True),
        (3, True),
        (1, True),
        (1, True),
    ]


def test_client_receives_only_its_servers_eventfds(doorbell):
    server = doorbell()
    vm1 = server.connect("vm1")
    vm1.messages()
    vm2 = server.connect("vm2")
    vm2.messages()
    vm3 = server.connect("vm3")
    # vm2 is connected, yet vm3 is given vm1's eventfds only, then its own
    assert shape(vm3.messages()) == [
        (0, False),
        (3, False),
        (-1, True),
        (1, True),
        (1, True),
        (3, True),
        (3, True),
    ]
    # and vm2 is never told that vm3 arrived; vm1 is told of both
    assert vm2.messages() == []
    assert shape(vm1.messages()) == [(2, True), (2, True), (3, True), (3, True)]
    state = server.wait_state(lambda s: s["vms"]["vm3"]["connected"])
    assert state["vms"]["vm1"]["rings"] == ["vm2", "vm3"]
    assert state["vms"]["vm2"]["rings"] == ["vm1"]
    assert state["vms"]["vm3"]["rings"] == ["vm1"]
    assert state["vms"]["vm2"]["rung_by"] == ["vm1"]


# ---- eventfds: the kernel objects are shared ------------------------------------------------


def test_server_vm_rings_a_client_and_only_that_client(doorbell):
    server = doorbell()
    vm2, vm3 = server.connect("vm2"), server.connect("vm3")
    vm2_setup, vm3_setup = vm2.messages(), vm3.messages()
    vm1 = server.connect("vm1")
    vm1_setup = vm1.messages()
    to_vm2 = [fd for value, fd in vm1_setup if value == 2]
    vm2_own, vm3_own = own_eventfds(vm2_setup, 2), own_eventfds(vm3_setup, 3)

    ring(to_vm2[1])  # vm1 rings vm2 on vector 1
    assert [rung(fd) for fd in vm2_own] == [0, 1]
    assert [rung(fd) for fd in vm3_own] == [0, 0]


def test_client_rings_its_server(doorbell):
    server = doorbell()
    vm1 = server.connect("vm1")
    vm1_own = own_eventfds(vm1.messages(), 1)
    vm2 = server.connect("vm2")
    to_vm1 = [fd for value, fd in vm2.messages() if value == 1]
    assert len(to_vm1) == 2
    ring(to_vm1[0])
    assert [rung(fd) for fd in vm1_own] == [1, 0]


# ---- the memory is each VM's own ----------------------------------------------------------


def test_each_vm_gets_a_memory_of_its_own(doorbell):
    server = doorbell(memory_size=8192)
    maps = {}
    for vm in ("vm1", "vm2", "vm3"):
        messages = server.connect(vm).messages()
        (memfd,) = [fd for value, fd in messages if value == -1]
        assert os.fstat(memfd).st_size == 8192
        maps[vm] = (os.fstat(memfd).st_ino, mmap.mmap(memfd, 8192))
    assert len({ino for ino, _ in maps.values()}) == 3
    maps["vm1"][1][4096:4101] = b"hello"  # past the directory page
    assert maps["vm2"][1][4096:4101] == b"\0" * 5
    assert maps["vm3"][1][4096:4101] == b"\0" * 5
    for _, m in maps.values():
        m.close()


def test_the_memory_is_sealed_at_its_size(doorbell):
    server = doorbell()
    (memfd,) = [fd for value, fd in server.connect("vm2").messages() if value == -1]
    with pytest.raises(PermissionError):
        os.ftruncate(memfd, 1 << 20)


# ---- disconnects, reconnects, hostile peers -------------------------------------------------


def test_a_client_leaves_and_comes_back_with_new_eventfds(doorbell):
    server = doorbell()
    vm1 = server.connect("vm1")
    vm1_own = own_eventfds(vm1.messages(), 1)
    vm3 = server.connect("vm3")
    vm3.messages()
    vm2 = server.connect("vm2")
    old_own = own_eventfds(vm2.messages(), 2)
    old_to_vm2 = [fd for value, fd in vm1.messages() if value == 2]

    vm2.sock.close()
    assert vm1.messages() == [(2, None)]  # vm1 is told, without an fd
    assert vm3.messages() == []  # vm3 never knew vm2
    server.wait_state(lambda s: not s["vms"]["vm2"]["connected"])

    # a new id: QEMU cannot take an id back (it frees the peer's eventfd array on the
    # disconnect and would write the new eventfds into it)
    vm2 = server.connect("vm2")
    new_setup = vm2.messages()
    assert shape(new_setup) == [
        (0, False),
        (4, False),
        (-1, True),
        (1, True),
        (1, True),
        (4, True),
        (4, True),
    ]
    new_own = own_eventfds(new_setup, 4)
    new_to_vm2 = [fd for value, fd in vm1.messages() if value == 4]
    assert len(new_to_vm2) == 2
    ring(new_to_vm2[0])
    assert [rung(fd) for fd in new_own] == [1, 0]
    ring(old_to_vm2[0])  # the old eventfds reach nobody who is connected now
    assert [rung(fd) for fd in new_own] == [0, 0]
    assert rung(old_own[0]) == 1  # (only the closed client's own copy, still open here)
    # the client can still ring vm1 with the eventfds it got this time
    ring([fd for value, fd in new_setup if value == 1][1])
    assert [rung(fd) for fd in vm1_own] == [0, 1]
    state = server.state()
    assert state["vms"]["vm2"]["connections"] == 2


def test_a_second_connection_on_a_live_vm_socket_is_refused(doorbell):
    server = doorbell()
    vm1 = server.connect("vm1")
    vm1.messages()
    vm2 = server.connect("vm2")
    vm2_own = own_eventfds(vm2.messages(), 2)
    to_vm2 = [fd for value, fd in vm1.messages() if value == 2]

    intruder = server.connect("vm2")
    # a version QEMU rejects (it then fails with a message), no id, no fd, closed at once
    assert intruder.message(1.0) == (-2, None)
    assert intruder.message(1.0) is None
    assert intruder.fds == []
    assert vm1.messages() == []  # vm1 hears of no change
    state = server.wait_state(lambda s: s["vms"]["vm2"]["refused"] == 1)
    assert state["vms"]["vm2"]["connections"] == 1
    assert "vm2: refused a second connection" in server.log_text()
    assert "keeping the first" in server.log_text()
    ring(to_vm2[0])  # the first connection still works
    assert [rung(fd) for fd in vm2_own] == [1, 0]


def test_a_peer_that_writes_is_dropped_and_its_peers_told(doorbell):
    server = doorbell()
    vm1 = server.connect("vm1")
    vm1.messages()
    vm2 = server.connect("vm2")
    vm2.messages()
    vm1.messages()
    vm2.sock.sendall(b"\x01" * 8)
    assert vm2.closed_by_server()
    assert vm1.messages() == [(2, None)]
    assert "sent 8 bytes on a one-way protocol" in server.log_text()
    # the server goes on: vm3 connects and gets its setup
    assert shape(server.connect("vm3").messages())[:3] == [(0, False), (3, False), (-1, True)]


def test_a_restarted_qemu_arriving_before_the_old_eof_is_accepted(server_module, short_dir):
    """White box: the new connection is accepted before the loop saw the old one close."""
    config = server_module.parse_config(
        {"socket_dir": str(short_dir / "s"), "vectors": 1, "vms": [{"name": "a", "id": 0}]}
    )
    server = server_module.DoorbellServer(config)
    server.start()
    try:
        first = FakeQemu(config.vms["a"].socket_path)
        server.step(0.5)
        assert "a" in server.peers
        first.close()
        second = FakeQemu(config.vms["a"].socket_path)
        server._accept("a")  # as if the listener's event came first
        assert server.peers["a"].sock.fileno() != -1
        assert server.counts["a"] == {"connections": 2, "refused": 0}
        assert [v for v, _ in second.messages()] == [0, 1, -1, 1]  # a new id
        second.close()
    finally:
        server.close()


# ---- sockets, configuration, lifecycle ------------------------------------------------------


def test_sockets_and_directory_are_closed_to_others(doorbell):
    server = doorbell()
    assert stat.S_IMODE(os.stat(server.socket_dir).st_mode) == 0o750
    for vm in ("vm1", "vm2", "vm3"):
        st = os.stat(server.socket(vm))
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600


def test_group_mode_is_honoured(doorbell):
    server = doorbell(socket_mode="0660", dir_mode="0710", group=os.getgid())
    assert stat.S_IMODE(os.stat(server.socket("vm1")).st_mode) == 0o660
    assert stat.S_IMODE(os.stat(server.socket_dir).st_mode) == 0o710


def check(config: dict, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    return subprocess.run(
        [sys.executable, str(SERVER_PATH), "--config", str(path), "--check"],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_check_reports_every_error_with_its_fix(tmp_path):
    result = check(
        {
            "socket_dir": "/run/x",
            "socket_mode": "0666",
            "memory_size": 3000,
            "vms": [
                {"name": "vm1", "id": 1, "peers": ["vm1", "vm9"]},
                {"name": "vm2", "id": 1, "peers": []},
                {"name": "../x", "id": 3},
            ],
            "colour": "red",
        },
        tmp_path,
    )
    assert result.returncode == 2
    err = result.stderr
    for expected in (
        "colour: unknown key",
        "socket_mode: '0666' gives others access",
        "memory_size: 3000",
        "names the VM itself",
        "vm9 is not a VM",
        "1 is already vm1's",
        "vms[2].name: '../x'",
    ):
        assert expected in err, err


def test_check_accepts_the_lab_shape_and_warns_of_one_way_rings(tmp_path):
    assert check({"socket_dir": "/run/x", "vms": LAB_VMS}, tmp_path).returncode == 0
    one_way = [{"name": "a", "id": 0, "peers": ["b"]}, {"name": "b", "id": 1}]
    result = check({"socket_dir": "/run/x", "vms": one_way}, tmp_path)
    assert result.returncode == 0
    assert "a may ring b but b may not ring a" in result.stderr


def test_sigterm_removes_the_sockets(doorbell):
    server = doorbell()
    vm2 = server.connect("vm2")
    vm2.messages()
    assert server.stop(signal.SIGTERM) == 0
    assert not any(server.socket(vm).exists() for vm in ("vm1", "vm2", "vm3"))
    assert not (server.socket_dir / ".lock").exists()
    assert not server.state_path.exists()
    assert "stopping: 1 VMs connected" in server.log_text()


def test_a_second_server_on_the_same_directory_is_refused(doorbell):
    server = doorbell()
    result = subprocess.run(
        [sys.executable, str(SERVER_PATH), "--config", str(server.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "another cxl-ivshmem-server serves" in result.stderr
    assert server.socket("vm1").exists()  # the first one's sockets are left alone
    assert shape(server.connect("vm1").messages())[:2] == [(0, False), (1, False)]


def test_daemon_is_supervised_and_stops(doorbell, short_dir):
    server = doorbell()
    server.stop()
    pidfile, logfile = short_dir / "bell.pid", short_dir / "daemon.log"
    base = [sys.executable, str(SERVER_PATH), "--pidfile", str(pidfile)]

    def status() -> int:
        return subprocess.run([*base, "--status"], timeout=30).returncode

    assert status() == 3
    start = [*base, "--config", str(server.config_path), "--daemon", "--log-file", str(logfile)]
    try:
        assert subprocess.run(start, timeout=30).returncode == 0
        assert status() == 0
        assert subprocess.run(start, timeout=30).returncode == 0  # already running: no change
        first = server.wait_state(lambda s: True)["pid"]
        os.kill(first, signal.SIGKILL)  # the server dies; its supervisor starts another
        # (the killed server left its sockets: the new one replaces them under the lock)
        restarted = server.wait_state(lambda s: s["pid"] != first, timeout=15)
        assert shape(server.connect("vm2").messages())[:2] == [(0, False), (2, False)]
        assert restarted["vms"]["vm2"]["first_id"] == 2
    finally:
        assert subprocess.run([*base, "--stop"], timeout=30).returncode == 0
    assert status() == 3
    deadline = time.monotonic() + 5
    while server.socket("vm1").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.socket("vm1").exists()
    assert "restarting in 1 s" in logfile.read_text()


# ---- the directory in each VM's own memory -------------------------------------------------


def directory(messages) -> dict:
    """Decode the directory at the start of the VM's memory (the server's layout)."""
    module = load_server_module()
    (memfd,) = [fd for value, fd in messages if value == -1]
    raw = os.pread(memfd, 4096, 0)
    magic, version, seq, own, vectors, count, _ = module.DIRECTORY_HEADER.unpack_from(raw)
    entries = {}
    for index in range(count):
        name, peer_id, _ = module.DIRECTORY_ENTRY.unpack_from(
            raw, module.DIRECTORY_HEADER.size + index * module.DIRECTORY_ENTRY.size
        )
        entries[name.rstrip(b"\0").decode()] = peer_id
    assert magic == b"CXLBELL\0" and version == 1 and seq % 2 == 0
    return {"own": own, "vectors": vectors, "peers": entries}


def test_each_vm_reads_the_current_ids_of_its_peers_only(doorbell):
    server = doorbell()
    vm1_setup = server.connect("vm1").messages()
    vm2 = server.connect("vm2")
    vm2_setup = vm2.messages()
    server.wait_state(lambda s: s["vms"]["vm2"]["connected"])
    assert directory(vm1_setup) == {"own": 1, "vectors": 2, "peers": {"vm2": 2, "vm3": -1}}
    assert directory(vm2_setup) == {"own": 2, "vectors": 2, "peers": {"vm1": 1}}

    vm2.sock.close()
    server.wait_state(lambda s: not s["vms"]["vm2"]["connected"])
    assert directory(vm1_setup)["peers"] == {"vm2": -1, "vm3": -1}
    again = server.connect("vm2").messages()
    server.wait_state(lambda s: s["vms"]["vm2"]["connected"])
    assert directory(vm1_setup)["peers"] == {"vm2": 4, "vm3": -1}
    assert directory(again)["own"] == 4
