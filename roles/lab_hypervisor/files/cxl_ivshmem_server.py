#!/usr/bin/env python3
"""cxl-ivshmem-server: the lab's ivshmem server, QEMU's doorbell protocol under a per-VM policy.

Each lab VM has an ivshmem-doorbell device whose chardev connects to this server. QEMU's own
example server (contrib/ivshmem-server) hands every peer the eventfds of every other peer and
one shared memory to all; here the policy of the lab holds instead:

- one unix socket per VM (``<socket_dir>/<vm>.sock``, 0600/0660, the directory closed to
  others), so the server knows which VM connected without trusting anything it says;
- a peer id per connection: a VM's first connection gets the id the configuration gives it,
  every later one (a restarted QEMU) an id never used before by this server. QEMU cannot take
  an id back: on a peer's disconnect it frees that peer's eventfd array and, should the same
  id connect again, writes the new eventfds into the freed memory (hw/misc/ivshmem.c,
  close_peer_eventfds(); QEMU's own server never reuses an id either);
- each VM learns the current ids of the peers it may ring from a directory the server keeps
  at the start of the VM's own doorbell memory (layout below);
- a VM receives the eventfds of the peers it may ring and no others (the lab's rule: a
  client its server(s), a server its clients; a client never another client), and is told
  of those peers' arrivals and departures only;
- each connection gets a memory of its own (a sealed memfd, a power of two), never shared
  between VMs: the doorbell device's BAR2 is not a channel, only the server writes to it
  what that VM may know. The data stays in the
  regions, with their NUMA binding and Sec-DSM mapping.

Standard library only, Python 3.10 or later (os.eventfd), Linux only. Logs go to stderr.

    cxl-ivshmem-server --config doorbell.json             serve until SIGTERM or SIGINT
    cxl-ivshmem-server --config doorbell.json --check     validate the configuration only
    cxl-ivshmem-server --config doorbell.json --daemon --pidfile P --log-file L
                                                          supervised in the background (no systemd)
    cxl-ivshmem-server --pidfile P --status | --stop      is it running (0, else 3) / stop it
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import grp
import json
import logging
import mmap
import os
import pwd
import re
import select
import selectors
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# --------------------------------------------------------------------------------------------
# The wire format (QEMU docs/specs/ivshmem-spec.rst, "The ivshmem Client-Server Protocol")
# --------------------------------------------------------------------------------------------
#
# The connection is one way, server to client. Every message is one little-endian signed
# 64-bit integer, with at most one file descriptor beside it (SCM_RIGHTS):
#
#   on connect, in this order:
#     0                       protocol version, no fd
#     <own id>                the client's peer id (0..65535), no fd
#     -1                      + the fd of the device's memory (BAR2)
#     <peer id> x vectors     + one eventfd each: ring that peer on vector 0, 1, ...
#                               (repeated for every visible peer already connected)
#     <own id> x vectors      + one eventfd each: the client's own vectors 0, 1, ...
#   later:
#     <peer id> x vectors     + one eventfd each: a visible peer connected
#     <peer id>               no fd: that peer disconnected (close its eventfds)
#
# Anything the client sends is a protocol violation: QEMU never writes to this socket.
# A connection refused (its VM's socket is held by a live QEMU) gets REFUSED_VERSION and is
# closed: QEMU then fails with "server sent version -2, expecting 0". (Closing without a word
# would leave QEMU spinning in its setup read, which does not handle end of file.)
MESSAGE = struct.Struct("<q")
PROTOCOL_VERSION = 0
REFUSED_VERSION = -2
SHM_MESSAGE = -1
MAX_PEER_ID = 0xFFFF  # the Doorbell register carries the peer id in 16 bits
MAX_VECTORS = 64
PAGE_SIZE = 4096
MAX_MEMORY_SIZE = 1 << 20
SEND_TIMEOUT = 5.0  # seconds a peer may leave its socket full before it is dropped
PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

# The directory at offset 0 of each VM's own doorbell memory (BAR2), little-endian, written
# by the server only; the guest reads it, never writes it (writes reach no one but itself):
#
#   0   8  magic b"CXLBELL\0"
#   8   4  layout version, 1
#   12  4  seq: odd while the server rewrites the directory, even when it is stable
#          (read seq, the fields, seq again; retry if it was odd or has changed)
#   16  4  this VM's own peer id (the device's IVPosition register says the same)
#   20  4  vectors per peer
#   24  4  n: the number of entries
#   28  4  reserved, 0
#   32  n entries of 48 bytes, one per peer this VM may ring, in the configuration's order:
#       0   40  the peer VM's name, UTF-8, NUL-padded
#       40  4   its current peer id (signed), -1 while it is not connected
#       44  4   reserved, 0
DIRECTORY_MAGIC = b"CXLBELL\0"
DIRECTORY_VERSION = 1
DIRECTORY_HEADER = struct.Struct("<8sIIiIII")
DIRECTORY_SEQ = 12
DIRECTORY_ENTRY = struct.Struct("<40siI")
MAX_DIRECTORY_ENTRIES = (PAGE_SIZE - DIRECTORY_HEADER.size) // DIRECTORY_ENTRY.size
SEQ = struct.Struct("<I")

EXIT_CONFIG = 2  # the configuration is invalid: restarting will not help
EXIT_NOT_RUNNING = 3  # --status: LSB's "program is not running"

log = logging.getLogger("cxl-ivshmem-server")


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


class ConfigError(ValueError):
    """The configuration is invalid; ``errors`` lists every problem, each with its fix."""

    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class VmPolicy:
    """One VM: the peer id of its first connection, its socket, the VMs whose eventfds it
    receives (the peers it may ring)."""

    name: str
    peer_id: int
    peers: tuple[str, ...]
    socket_path: Path


@dataclass(frozen=True)
class DoorbellConfig:
    socket_dir: Path
    vms: dict[str, VmPolicy]
    vectors: int = 1
    memory_size: int = PAGE_SIZE
    dir_mode: int = 0o750
    socket_mode: int = 0o600
    owner: int | None = None  # uid of the sockets and their directory; None: the server's
    group: int | None = None
    state_file: Path | None = None
    warnings: list[str] = field(default_factory=list)


_VM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,38}$")  # fits a directory entry
_KEYS = {
    "socket_dir",
    "vectors",
    "memory_size",
    "dir_mode",
    "socket_mode",
    "owner",
    "group",
    "state_file",
    "vms",
}
_VM_KEYS = {"name", "id", "peers"}


def _mode(value, key: str, errors: list[str]) -> int | None:
    try:
        mode = int(value, 8) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        errors.append(f"{key}: {value!r} is not an octal mode; write it as a string, e.g. '0600'")
        return None
    if mode & 0o007:
        errors.append(f"{key}: {value!r} gives others access; drop the last digit to 0")
    if mode & ~0o777:
        errors.append(f"{key}: {value!r} has bits beyond rwx; use a mode like '0660'")
    return mode


def _account(value, key: str, lookup, errors: list[str]) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return lookup(str(value))
    except KeyError:
        errors.append(f"{key}: {value!r} does not exist on this host; create it or fix the name")
        return None


def parse_config(data: dict) -> DoorbellConfig:
    """Validate a configuration (the JSON file's object); every error is collected."""
    errors: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError(["the configuration must be a JSON object"])
    for key in sorted(set(data) - _KEYS):
        errors.append(f"{key}: unknown key; the keys are {', '.join(sorted(_KEYS))}")

    socket_dir = data.get("socket_dir")
    if not isinstance(socket_dir, str) or not socket_dir.startswith("/"):
        errors.append("socket_dir: required, an absolute path (e.g. /run/cxl-dsm-lab/doorbell)")
        socket_dir = "/"

    vectors = data.get("vectors", 1)
    if not isinstance(vectors, int) or isinstance(vectors, bool) or not 1 <= vectors <= MAX_VECTORS:
        errors.append(f"vectors: {vectors!r}; give 1 to {MAX_VECTORS}, as the devices' vectors=")
        vectors = 1

    memory_size = data.get("memory_size", PAGE_SIZE)
    if (
        not isinstance(memory_size, int)
        or isinstance(memory_size, bool)
        or not PAGE_SIZE <= memory_size <= MAX_MEMORY_SIZE
        or memory_size & (memory_size - 1)
    ):
        errors.append(
            f"memory_size: {memory_size!r}; QEMU maps it as a BAR: a power of two "
            f"from {PAGE_SIZE} to {MAX_MEMORY_SIZE} bytes"
        )
        memory_size = PAGE_SIZE

    dir_mode = _mode(data.get("dir_mode", "0750"), "dir_mode", errors)
    socket_mode = _mode(data.get("socket_mode", "0600"), "socket_mode", errors)
    owner = _account(data.get("owner"), "owner", lambda n: pwd.getpwnam(n).pw_uid, errors)
    group = _account(data.get("group"), "group", lambda n: grp.getgrnam(n).gr_gid, errors)

    state_file = data.get("state_file")
    if state_file is not None and (
        not isinstance(state_file, str) or not state_file.startswith("/")
    ):
        errors.append("state_file: an absolute path, or leave it out")
        state_file = None

    vms: dict[str, VmPolicy] = {}
    raw_vms = data.get("vms")
    if not isinstance(raw_vms, list) or not raw_vms:
        errors.append("vms: required, a list of {name, id, peers}")
        raw_vms = []
    ids: dict[int, str] = {}
    for index, vm in enumerate(raw_vms):
        where = f"vms[{index}]"
        if not isinstance(vm, dict):
            errors.append(f"{where}: must be an object {{name, id, peers}}")
            continue
        for key in sorted(set(vm) - _VM_KEYS):
            errors.append(f"{where}.{key}: unknown key; the keys are id, name, peers")
        name = vm.get("name")
        if not isinstance(name, str) or not _VM_NAME.match(name):
            errors.append(
                f"{where}.name: {name!r}; up to 39 letters, digits, '_', '.', '-' (a file name)"
            )
            continue
        where = f"vms[{index}] ({name})"
        if name in vms:
            errors.append(f"{where}: a second VM named {name}; names must be unique")
            continue
        peer_id = vm.get("id")
        if (
            not isinstance(peer_id, int)
            or isinstance(peer_id, bool)
            or not 0 <= peer_id <= MAX_PEER_ID
        ):
            errors.append(f"{where}.id: {peer_id!r}; a peer id from 0 to {MAX_PEER_ID}")
            peer_id = -1
        elif peer_id in ids:
            errors.append(f"{where}.id: {peer_id} is already {ids[peer_id]}'s; ids must be unique")
        else:
            ids[peer_id] = name
        peers = vm.get("peers", [])
        if not isinstance(peers, list) or not all(isinstance(p, str) for p in peers):
            errors.append(f"{where}.peers: a list of VM names")
            peers = []
        if len(set(peers)) != len(peers):
            errors.append(f"{where}.peers: {peers} names a VM twice")
        if len(peers) > MAX_DIRECTORY_ENTRIES:
            errors.append(f"{where}.peers: at most {MAX_DIRECTORY_ENTRIES} (one page of directory)")
        vms[name] = VmPolicy(
            name=name,
            peer_id=peer_id,
            peers=tuple(dict.fromkeys(peers)),
            socket_path=Path(socket_dir) / f"{name}.sock",
        )

    warnings: list[str] = []
    for vm in vms.values():
        for peer in vm.peers:
            if peer == vm.name:
                errors.append(f"vms ({vm.name}).peers: names the VM itself; a VM rings others")
            elif peer not in vms:
                errors.append(f"vms ({vm.name}).peers: {peer} is not a VM of this configuration")
            elif vm.name not in vms[peer].peers:
                warnings.append(f"{vm.name} may ring {peer} but {peer} may not ring {vm.name}")

    if errors:
        raise ConfigError(errors)
    return DoorbellConfig(
        socket_dir=Path(socket_dir),
        vms=vms,
        vectors=vectors,
        memory_size=memory_size,
        dir_mode=dir_mode,
        socket_mode=socket_mode,
        owner=owner,
        group=group,
        state_file=Path(state_file) if state_file else None,
        warnings=warnings,
    )


def load_config(path: str | os.PathLike) -> DoorbellConfig:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError([f"{path}: cannot read it as JSON: {exc}"]) from exc
    return parse_config(data)


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class Peer:
    """One live connection: the VM it came in on, its peer id, its eventfds, its own memory
    (kept mapped to update its directory) and who connected (SO_PEERCRED)."""

    def __init__(self, vm: VmPolicy, peer_id: int, sock: socket.socket, config: DoorbellConfig):
        self.vm = vm
        self.peer_id = peer_id
        self.sock = sock
        self.pid, self.uid, self.gid = PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size)
        )
        self.eventfds: list[int] = []
        self.memfd = -1
        self.memory: mmap.mmap | None = None
        try:
            for _ in range(config.vectors):
                self.eventfds.append(os.eventfd(0, os.EFD_CLOEXEC))
            self.memfd = own_memory(vm.name, config.memory_size)
            self.memory = mmap.mmap(self.memfd, config.memory_size)
        except OSError:
            self.close()
            raise

    @property
    def label(self) -> str:
        return f"{self.vm.name} (peer {self.peer_id}, pid {self.pid}, uid {self.uid})"

    def write_directory(self, peer_ids: dict[str, int], vectors: int) -> None:
        """Rewrite the directory: the current id of each peer this VM may ring."""
        m = self.memory
        seq = SEQ.unpack_from(m, DIRECTORY_SEQ)[0]
        SEQ.pack_into(m, DIRECTORY_SEQ, seq + 1 | 1)  # odd: being rewritten
        for index, name in enumerate(self.vm.peers):
            DIRECTORY_ENTRY.pack_into(
                m,
                DIRECTORY_HEADER.size + index * DIRECTORY_ENTRY.size,
                name.encode(),
                peer_ids.get(name, -1),
                0,
            )
        DIRECTORY_HEADER.pack_into(
            m,
            0,
            DIRECTORY_MAGIC,
            DIRECTORY_VERSION,
            seq + 1 | 1,
            self.peer_id,
            vectors,
            len(self.vm.peers),
            0,
        )
        SEQ.pack_into(m, DIRECTORY_SEQ, (seq | 1) + 1)  # even: stable

    def close(self) -> None:
        for fd in self.eventfds:
            os.close(fd)
        self.eventfds = []
        if self.memory is not None:
            self.memory.close()
            self.memory = None
        if self.memfd >= 0:
            os.close(self.memfd)
            self.memfd = -1
        self.sock.close()


def own_memory(name: str, size: int) -> int:
    """A zeroed memfd of `size` bytes for one connection, sealed at that size."""
    fd = os.memfd_create(f"cxl-doorbell-{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(
            fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        )
    except OSError:
        os.close(fd)
        raise
    return fd


class SendFailed(Exception):
    pass


def _recv_now(sock: socket.socket, flags: int = 0) -> bytes | None:
    """What the peer sent (b"" at its end or on a reset), None if nothing is there yet. Never
    waits: the connection's timeout (for sends) would make recv() wait for data first."""
    ready, _, _ = select.select([sock], [], [], 0)
    if not ready:
        return None
    try:
        return sock.recv(64, flags)
    except OSError:
        return b""


class DoorbellServer:
    """The listening sockets, the live peers and the policy between them."""

    def __init__(self, config: DoorbellConfig):
        self.config = config
        self.selector = selectors.DefaultSelector()
        self.listeners: dict[str, socket.socket] = {}
        self.peers: dict[str, Peer] = {}  # VM name -> its live connection
        self.counts = {name: {"connections": 0, "refused": 0} for name in config.vms}
        # QEMU cannot take a peer id back (see the top): every id is given out once
        self.used_ids: set[int] = set()
        self.next_id = max(vm.peer_id for vm in config.vms.values()) + 1
        self.lock_fd: int | None = None
        self.stopping = False
        self._wakeup_r: socket.socket | None = None
        self._wakeup_w: socket.socket | None = None

    # ---- setting up and tearing down ------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        self._prepare_dir()
        lock_path = cfg.socket_dir / ".lock"
        self.lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.lock_fd)
            self.lock_fd = None
            raise RuntimeError(
                f"another cxl-ivshmem-server serves {cfg.socket_dir} ({lock_path} is locked); "
                "stop it first"
            ) from exc
        for vm in cfg.vms.values():
            self.listeners[vm.name] = self._listen(vm)
        for warning in cfg.warnings:
            log.warning("policy: %s", warning)
        log.info(
            "serving %d VMs in %s: %d vectors, %d bytes of memory per VM",
            len(cfg.vms),
            cfg.socket_dir,
            cfg.vectors,
            cfg.memory_size,
        )
        self._write_state()

    def _prepare_dir(self) -> None:
        cfg, path = self.config, self.config.socket_dir
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)  # e.g. /run/cxl-dsm-lab
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, cfg.dir_mode)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise RuntimeError(f"{path} exists and is not a directory; remove it or pick another")
        os.chmod(path, cfg.dir_mode)
        if cfg.owner is not None or cfg.group is not None:
            os.chown(
                path, -1 if cfg.owner is None else cfg.owner, -1 if cfg.group is None else cfg.group
            )

    def _listen(self, vm: VmPolicy) -> socket.socket:
        cfg, path = self.config, vm.socket_path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise RuntimeError(f"{path} exists and is not a socket; remove it")
            os.unlink(path)  # a stale socket: the lock says no other server owns it
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # never reachable by others, not even before chmod
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, cfg.socket_mode)
        if cfg.owner is not None or cfg.group is not None:
            os.chown(
                path, -1 if cfg.owner is None else cfg.owner, -1 if cfg.group is None else cfg.group
            )
        sock.listen(8)
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ, ("listen", vm.name))
        return sock

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT end serve_forever() promptly (a wakeup fd in the selector)."""
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        for s in (self._wakeup_r, self._wakeup_w):
            s.setblocking(False)
        signal.set_wakeup_fd(self._wakeup_w.fileno())
        self.selector.register(self._wakeup_r, selectors.EVENT_READ, ("signal", None))

        def stop(signum, _frame):
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def close(self) -> None:
        """Close every connection and remove the sockets. Peers are not told: QEMU keeps
        the eventfds it holds, so VMs that are connected can still ring each other."""
        for peer in list(self.peers.values()):
            self.selector.unregister(peer.sock)
            peer.close()
        self.peers.clear()
        for name, sock in self.listeners.items():
            self.selector.unregister(sock)
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.config.vms[name].socket_path)
        self.listeners.clear()
        if self.lock_fd is not None:  # only the server that holds the lock owns these
            if self.config.state_file:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.config.state_file)
            os.unlink(self.config.socket_dir / ".lock")
            os.close(self.lock_fd)
            self.lock_fd = None
        if self._wakeup_r is not None:
            signal.set_wakeup_fd(-1)
            self.selector.unregister(self._wakeup_r)
            self._wakeup_r.close()
            self._wakeup_w.close()
        self.selector.close()

    # ---- the loop -------------------------------------------------------------------------

    def serve_forever(self) -> None:
        while not self.stopping:
            self.step(timeout=None)
        log.info("stopping: %d VMs connected", len(self.peers))

    def step(self, timeout: float | None = 0.1) -> None:
        for key, _ in self.selector.select(timeout):
            kind, name = key.data
            if kind == "listen":
                self._accept(name)
            elif kind == "peer":
                self._readable(name)
            else:
                try:
                    while self._wakeup_r.recv(64):
                        pass
                except BlockingIOError:
                    pass

    # ---- connections ----------------------------------------------------------------------

    def _accept(self, name: str) -> None:
        try:
            sock, _ = self.listeners[name].accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.error("%s: accept failed: %s", name, exc)
            return
        vm = self.config.vms[name]
        sock.set_inheritable(False)
        live = self.peers.get(name)
        if live is not None:
            self._poll_live(live)  # a restarted QEMU may arrive before its old socket's EOF
            live = self.peers.get(name)
        if live is not None:
            pid, uid, _ = PEERCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size)
            )
            self.counts[name]["refused"] += 1
            log.warning(
                "%s: refused a second connection (pid %d, uid %d) on %s while %s holds it; "
                "keeping the first",
                name,
                pid,
                uid,
                vm.socket_path,
                live.label,
            )
            self._refuse(sock)
            self._write_state()
            return
        peer_id = self._allocate_id(vm)
        if peer_id is None:
            log.error(
                "%s: every peer id up to %d was given out; restart the server and the VMs",
                name,
                MAX_PEER_ID,
            )
            self._refuse(sock)
            return
        try:
            peer = Peer(vm, peer_id, sock, self.config)
        except OSError as exc:
            log.error("%s: cannot create eventfds or memory: %s; connection closed", name, exc)
            sock.close()
            return
        sock.settimeout(SEND_TIMEOUT)
        try:
            self._send_setup(peer)
        except SendFailed as exc:
            log.warning("%s: setup failed (%s); connection closed", peer.label, exc)
            peer.close()
            return
        self.peers[name] = peer
        self.counts[name]["connections"] += 1
        self.selector.register(sock, selectors.EVENT_READ, ("peer", name))
        sees = [p for p in vm.peers if p in self.peers]
        log.info(
            "%s connected; rings %s; told %s",
            peer.label,
            ", ".join(sees) or "nobody yet",
            ", ".join(self._watchers(name)) or "nobody",
        )
        failed = []
        for watcher in self._watchers(name):
            try:
                self._send_eventfds(self.peers[watcher], peer)
            except SendFailed as exc:
                failed.append((watcher, exc))
        for watcher, exc in failed:
            self._drop(watcher, f"cannot be told of {name}: {exc}")
        self._update_directories()  # after the eventfds: an id in a directory can be rung
        self._write_state()

    def _allocate_id(self, vm: VmPolicy) -> int | None:
        if vm.peer_id not in self.used_ids:
            peer_id = vm.peer_id
        else:
            while self.next_id in self.used_ids:
                self.next_id += 1
            if self.next_id > MAX_PEER_ID:
                return None
            peer_id = self.next_id
        self.used_ids.add(peer_id)
        return peer_id

    def _refuse(self, sock: socket.socket) -> None:
        """Tell the QEMU on `sock` a version it rejects, so that it fails with a message."""
        try:
            sock.setblocking(False)
            sock.send(MESSAGE.pack(REFUSED_VERSION))
        except OSError:
            pass
        sock.close()

    def _update_directories(self) -> None:
        ids = {name: peer.peer_id for name, peer in self.peers.items()}
        for peer in self.peers.values():
            peer.write_directory(ids, self.config.vectors)

    def _poll_live(self, peer: Peer) -> None:
        data = _recv_now(peer.sock, socket.MSG_PEEK)
        if data == b"":
            self._drop(peer.vm.name, "disconnected")
        # bytes: left for _readable, which drops the peer for them

    def _readable(self, name: str) -> None:
        data = _recv_now(self.peers[name].sock)
        if data is None:
            return
        if data:
            self._drop(name, f"sent {len(data)} bytes on a one-way protocol; dropped")
        else:
            self._drop(name, "disconnected")

    def _drop(self, name: str, why: str) -> None:
        peer = self.peers.pop(name, None)
        if peer is None:
            return
        self.selector.unregister(peer.sock)
        watchers = self._watchers(name)
        log.info("%s %s; told %s", peer.label, why, ", ".join(watchers) or "nobody")
        peer.close()
        self._update_directories()  # before the eventfds go: nobody looks the old id up
        failed = []
        for watcher in watchers:
            try:
                self._send(self.peers[watcher], peer.peer_id)
            except SendFailed as exc:
                failed.append((watcher, exc))
        for watcher, exc in failed:
            self._drop(watcher, f"cannot be told that {name} left: {exc}")
        self._write_state()

    def _watchers(self, name: str) -> list[str]:
        """The connected VMs that receive `name`'s eventfds (whose peers list names it)."""
        return [w for w, p in self.peers.items() if w != name and name in p.vm.peers]

    # ---- messages -------------------------------------------------------------------------

    def _send(self, peer: Peer, value: int, fd: int | None = None) -> None:
        data = MESSAGE.pack(value)
        try:
            if fd is None:
                peer.sock.sendall(data)
            else:
                ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]
                sent = peer.sock.sendmsg([data], ancillary)
                if sent != len(data):  # 8 bytes on a stream socket: all or an error, but check
                    peer.sock.sendall(data[sent:])
        except (OSError, TimeoutError) as exc:
            raise SendFailed(str(exc) or type(exc).__name__) from exc

    def _send_eventfds(self, to: Peer, owner: Peer) -> None:
        for fd in owner.eventfds:
            self._send(to, owner.peer_id, fd)

    def _send_setup(self, peer: Peer) -> None:
        self._send(peer, PROTOCOL_VERSION)
        self._send(peer, peer.peer_id)
        self._send(peer, SHM_MESSAGE, peer.memfd)
        for other in peer.vm.peers:
            if other in self.peers:
                self._send_eventfds(peer, self.peers[other])
        self._send_eventfds(peer, peer)

    # ---- state ----------------------------------------------------------------------------

    def state(self) -> dict:
        vms = {}
        for name, vm in self.config.vms.items():
            peer = self.peers.get(name)
            vms[name] = {
                "id": peer.peer_id if peer else None,
                "first_id": vm.peer_id,
                "socket": str(vm.socket_path),
                "connected": peer is not None,
                "pid": peer.pid if peer else None,
                "uid": peer.uid if peer else None,
                "rings": [p for p in vm.peers if p in self.peers] if peer else [],
                "rung_by": self._watchers(name) if peer else [],
                **self.counts[name],
            }
        return {"pid": os.getpid(), "vectors": self.config.vectors, "vms": vms}

    def _write_state(self) -> None:
        path = self.config.state_file
        if path is None:
            return
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.state(), f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Running it: in the foreground, or supervised in the background without systemd
# --------------------------------------------------------------------------------------------


def serve(config_path: str) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for error in exc.errors:
            log.error("config: %s", error)
        return EXIT_CONFIG
    server = DoorbellServer(config)
    server.install_signal_handlers()
    try:
        server.start()
    except (OSError, RuntimeError) as exc:
        log.error("cannot start: %s", exc)
        server.close()
        return 1
    try:
        server.serve_forever()
    finally:
        server.close()
    return 0


def _read_pid(pidfile: str) -> int | None:
    """The supervisor's pid if the pidfile names a live cxl-ivshmem-server process."""
    try:
        pid = int(Path(pidfile).read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if b"cxl_ivshmem_server" in cmdline or b"cxl-ivshmem-server" in cmdline else None


def supervise(config_path: str, pidfile: str, log_file: str) -> int:
    """Daemonize, then run the server as a child and restart it when it dies (not when its
    configuration is invalid); SIGTERM stops both. For hosts without systemd."""
    if _read_pid(pidfile):
        log.info("already running (%s)", pidfile)
        return 0
    if os.fork():
        # the parent returns once the daemon wrote its pidfile
        for _ in range(100):
            if _read_pid(pidfile):
                return 0
            time.sleep(0.05)
        log.error("the daemon did not start; see %s", log_file)
        return 1
    os.setsid()
    if os.fork():
        os._exit(0)
    out = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    os.close(null)
    os.chdir("/")
    Path(pidfile).write_text(f"{os.getpid()}\n")
    stopping = False
    child: subprocess.Popen | None = None

    def stop(signum, _frame):
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    backoff = 1.0
    code = 0
    while not stopping:
        started = time.monotonic()
        child = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--config", config_path]
        )
        while True:
            try:
                code = child.wait()
                break
            except InterruptedError:
                continue
        if stopping:
            break
        if code == EXIT_CONFIG:
            log.error("supervisor: the configuration is invalid; not restarting")
            break
        if time.monotonic() - started > 60:
            backoff = 1.0
        log.warning("supervisor: the server exited with %d; restarting in %.0f s", code, backoff)
        time.sleep(backoff)
        backoff = min(backoff * 2, 30.0)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pidfile)
    os._exit(0 if stopping else 1)


def stop_daemon(pidfile: str, timeout: float = 10.0) -> int:
    pid = _read_pid(pidfile)
    if pid is None:
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return 0
        time.sleep(0.05)
    log.error("pid %d did not stop within %.0f s", pid, timeout)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cxl-ivshmem-server", description="The CXL lab's ivshmem server (doorbells)."
    )
    parser.add_argument("--config", help="the JSON configuration")
    parser.add_argument("--check", action="store_true", help="validate the configuration, exit")
    parser.add_argument("--daemon", action="store_true", help="run supervised in the background")
    parser.add_argument("--pidfile", help="the supervisor's pidfile (--daemon, --status, --stop)")
    parser.add_argument("--log-file", help="where the daemon logs (--daemon)")
    parser.add_argument("--status", action="store_true", help="exit 0 if running, else 3")
    parser.add_argument("--stop", action="store_true", help="stop the daemon of --pidfile")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s cxl-ivshmem-server[%(process)d] %(message)s"
    )
    if args.status or args.stop:
        if not args.pidfile:
            parser.error("--status and --stop need --pidfile")
        if args.status:
            return 0 if _read_pid(args.pidfile) else EXIT_NOT_RUNNING
        return stop_daemon(args.pidfile)
    if not args.config:
        parser.error("--config is required")
    if args.check:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            for error in exc.errors:
                print(f"config: {error}", file=sys.stderr)
            return EXIT_CONFIG
        for warning in config.warnings:
            print(f"policy: {warning}", file=sys.stderr)
        return 0
    if args.daemon:
        if not args.pidfile or not args.log_file:
            parser.error("--daemon needs --pidfile and --log-file")
        return supervise(args.config, args.pidfile, args.log_file)
    return serve(args.config)


if __name__ == "__main__":
    sys.exit(main())
