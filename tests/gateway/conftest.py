"""Fixtures for the cxl-gateway tests: real redis-server processes with build/cxl_ring.so
(tests/ring's harness, reused through sys.path) and build/cxl-gateway (or its ASan+UBSan
build) in front of them.

`ring_servers` hands a test a Cluster (every server stopped, every /dev/shm region removed
afterwards); `gateways` starts gateways and stops every one it started (SIGTERM, then
SIGKILL if it does not exit), whatever the test's outcome, and fails the test when an ASan
build's stderr holds a report. CXL_GATEWAY_TEST_BINARY=cxl-gateway-asan runs every test
against the ASan+UBSan build (the hostile-input test always does).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
RING_TESTS = HERE.parent / "ring"
sys.path.insert(0, str(RING_TESTS))

from ringharness import BUILD, MODULE, Cluster, free_port, wait_for  # noqa: E402

GATEWAY = BUILD / os.environ.get("CXL_GATEWAY_TEST_BINARY", "cxl-gateway")
GATEWAY_ASAN = BUILD / "cxl-gateway-asan"
SANITIZER_REPORT = ("AddressSanitizer", "LeakSanitizer", "runtime error:")


def _require(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} is not built (make build)")


class Gateway:
    """One cxl-gateway process listening on a free port of 127.0.0.1."""

    def __init__(self, workdir: Path, path: str, binary: Path = GATEWAY,
                 channels: int | None = None, args: list[str] | None = None,
                 name: str = "gw"):
        self.port = free_port()
        self.binary = binary
        self.stderr_path = workdir / f"{name}.stderr"
        self.argv = [str(binary), "--path", path, "--listen", f"127.0.0.1:{self.port}",
                     *(["--channels", str(channels)] if channels else []), *(args or [])]
        env = dict(os.environ)
        if "asan" in binary.name:
            # Leaks at exit are not looked for: the connections still open at SIGTERM are
            # dropped, not freed. Any other report stops the process (halt_on_error).
            env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=0:halt_on_error=1"
            env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
        with open(self.stderr_path, "ab") as err:
            self.proc: subprocess.Popen | None = subprocess.Popen(
                self.argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
        wait_for(self._listening, f"cxl-gateway on port {self.port}", 30)

    def _listening(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"cxl-gateway exited ({self.proc and self.proc.returncode})"
                                 f":\n{self.stderr_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def client(self, **kw):
        import redis

        kw.setdefault("protocol", 2)
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=30, **kw)

    def sock(self, timeout: float = 30.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Signal it and wait; returns its exit code (SIGKILL after timeout)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        rc = self.proc.returncode
        self.proc = None
        return rc


@pytest.fixture
def ring_servers(tmp_path):
    _require(MODULE)
    cluster = Cluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def server(ring_servers):
    """One server, 4 channels, small rings (fast to format)."""
    return ring_servers.server({"channels": 4, "req_ring": "2m", "resp_ring": "2m"})


@pytest.fixture
def gateways(tmp_path):
    """start(path, binary=GATEWAY, channels=None, args=None) -> Gateway; all stopped after."""
    started: list[Gateway] = []

    def start(path: str, binary: Path = GATEWAY, channels: int | None = None,
              args: list[str] | None = None) -> Gateway:
        _require(binary)
        gw = Gateway(tmp_path, path, binary, channels, args, name=f"gw{len(started)}")
        started.append(gw)
        return gw

    yield start
    reports = []
    for gw in started:
        gw.stop()
        err = gw.stderr_text()
        if "asan" in gw.binary.name and any(r in err for r in SANITIZER_REPORT):
            reports.append(err[-4000:])
    if reports:
        pytest.fail("sanitizer report from cxl-gateway-asan:\n" + "\n".join(reports))
