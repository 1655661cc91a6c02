"""Fixtures for the Python ring client tests: unique /dev/shm names, the in-process fake
server, and a real redis-server with build/cxl_ring.so (skipped until the driver is built).

Everything a fixture starts is stopped and every /dev/shm file it names is removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from clientutil import MODULE, free_port, shm_name  # noqa: E402,F401
from cxl_ring import channel  # noqa: E402
from cxl_ring import protocol as P  # noqa: E402
from fakeserver import FakeServer  # noqa: E402


@pytest.fixture
def shm_path():
    path = shm_name()
    yield path
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@pytest.fixture
def shm_dir():
    """A /dev/shm path for a region directory (created by whoever formats it), and one for a
    view of it; both removed afterwards, with everything in them."""
    path = shm_name()
    view = path + "-view"
    yield path, view
    for d in (view, path):
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fake(shm_path):
    server = FakeServer(shm_path).start()
    yield server
    server.close()


class RealServer:
    """redis-server with the cxl_ring module on a fresh /dev/shm region: one file, or with
    ``security="secdsm"`` a directory in which the driver creates the segment files."""

    def __init__(self, tmp: Path, security: str = "off", **module_args: object) -> None:
        self.path = shm_name()
        self.security = security
        if security == "secdsm":
            os.mkdir(self.path, 0o700)
        # where the header is: the region file, or the directory's header segment file
        self.header_path = os.path.join(self.path, "header") if security == "secdsm" \
            else self.path
        self.port = free_port()
        self.sock = str(tmp / f"redis-{self.port}.sock")
        self.tmp = tmp
        self.module_args = {"path": self.path,
                            **({} if "groups" in module_args else {"channels": 8}),
                            **module_args}
        self.proc: subprocess.Popen | None = None
        self.log = tmp / f"redis-{self.port}.log"
        self.last_epoch = -1

    def argv(self) -> list[str]:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--unixsocket", self.sock, "--save", "", "--appendonly", "no",
                "--dir", str(self.tmp), "--logfile", str(self.log),
                "--loadmodule", str(MODULE)]
        for k, v in self.module_args.items():
            argv += [k, str(v)]
        return argv

    def start(self, timeout: float = 30.0) -> RealServer:
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_tail()}")
            if self.running():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"cxl_ring region never became RUNNING: {self.log_tail()}")

    def restart(self, timeout: float = 30.0) -> RealServer:
        """kill -9, then a new redis-server on the same region (the driver reuses it)."""
        self.kill()
        self.port = free_port()
        self.sock = str(self.tmp / f"redis-{self.port}.sock")
        return self.start(timeout)

    def running(self) -> bool:
        try:
            with open(self.header_path, "rb") as f:
                head = f.read(152)
        except OSError:
            return False
        if len(head) < 152 or head[:8] not in (P.MAGIC, P.V2_MAGIC):
            return False
        if head[:8] == P.V2_MAGIC:
            return self.redis_ready()
        epoch = int.from_bytes(head[128:136], "little")
        state = int.from_bytes(head[144:148], "little")
        return state == P.SERVER_RUNNING and epoch != self.last_epoch and self.redis_ready()

    def redis_ready(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port),
                                                                    timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        return False

    def log_tail(self) -> str:
        try:
            return self.log.read_text()[-2000:]
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        with contextlib.suppress(OSError), open(self.header_path, "rb") as f:
            self.last_epoch = int.from_bytes(f.read(136)[128:136], "little")
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def cleanup(self) -> None:
        self.stop()
        self.kill()
        if self.security == "secdsm":
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def redis(self):
        import redis

        return redis.Redis(port=self.port)


def need_real_server() -> None:
    if not MODULE.exists():
        pytest.skip(f"{MODULE.relative_to(REPO)} not built yet (make build)")
    if not shutil.which("redis-server"):
        pytest.skip("redis-server not installed (requirements/apt-ring.txt)")


@pytest.fixture
def real_server_factory(tmp_path):
    need_real_server()
    servers: list[RealServer] = []

    def make(**module_args: object) -> RealServer:
        s = RealServer(tmp_path, **module_args)
        servers.append(s)
        return s.start()

    yield make
    for s in servers:
        s.cleanup()


@pytest.fixture
def real_server(real_server_factory):
    return real_server_factory(max_value=65536, req_ring=1 << 20, resp_ring=1 << 20)


@pytest.fixture(params=["python", "c"])
def impl(request, monkeypatch):
    """Make new sessions pure-Python or C-backed for the duration of one test."""
    if request.param == "c":
        if not channel.SPEEDUPS:
            pytest.skip("cxl_ring._speedups not in use (not built, stale: pip install -e ., "
                        "or CXL_RING_PURE is set)")
        monkeypatch.setattr(channel, "SessionType", channel.FastSession)
    else:
        monkeypatch.setattr(channel, "SessionType", channel.Session)
    return request.param
