"""Real redis-server processes with the cxl_ring module, for the driver tests.

Each server gets a unique unix socket and a free TCP port on 127.0.0.1, its own working
directory, `--save '' --appendonly no` unless a test asks otherwise, and a unique region
`/dev/shm/cxltest-<pid>-<n>`: one file (security off), or a directory `...-<n>.d` in which the
driver creates the segment files (Sec-DSM, docs/ring-protocol.md section 2). A Cluster's
`form` picks which (FILE or DIRECTORY; CXL_RING_TEST_REGION=directory makes it the default).
`Cluster.close()` stops every process it started and removes every region it named; the
`ring_servers` fixture calls it whatever happens.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build"
# CXL_RING_TEST_MODULE=cxl_ring_asan.so runs every driver test against the ASan build.
MODULE = BUILD / os.environ.get("CXL_RING_TEST_MODULE", "cxl_ring.so")
MODULE_ASAN = BUILD / "cxl_ring_asan.so"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
# Another server (docs/servers.md, `make test-servers`): CXL_TEST_SERVER is its binary
# (Redis 8's redis-server, valkey-server), CXL_TEST_MODULE the module built against its
# header (build/<server>/cxl_ring.so), CXL_TEST_MODULE_ASAN that build's ASan twin
# (default: cxl_ring_asan.so next to CXL_TEST_MODULE).
if os.environ.get("CXL_TEST_SERVER"):
    REDIS_SERVER = os.environ["CXL_TEST_SERVER"]
if os.environ.get("CXL_TEST_MODULE"):
    MODULE = Path(os.environ["CXL_TEST_MODULE"]).resolve()
    MODULE_ASAN = Path(os.environ.get("CXL_TEST_MODULE_ASAN")
                       or MODULE.with_name("cxl_ring_asan.so")).resolve()
# Non-empty: why the ASan build cannot run in this server (scripts/prepare-server.sh).
NO_ASAN = os.environ.get("CXL_TEST_NO_ASAN", "")

# Every wait in the driver tests only catches a hang: none measures the machine's speed.
HANG_S = 30.0


def wait_for(predicate, what: str, timeout: float = HANG_S):
    """Poll predicate() until it is true and return its value; the deadline catches a hang."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def freeze(pid: int) -> None:
    """SIGSTOP pid and return once every one of its threads is stopped. kill() returns when
    the signal is queued: until the thread that takes it runs, the others (the driver's
    ring thread) go on serving, long enough on a loaded machine to answer a request."""
    os.kill(pid, signal.SIGSTOP)

    def all_stopped() -> bool:
        states = []
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:
                continue                        # a thread that exited meanwhile
        return bool(states) and all(s in "tT" for s in states)

    wait_for(all_stopped, f"every thread of {pid} to stop")


# Small rings and values: fast to format, enough for most tests (conftest's srv fixture).
SMALL = {"channels": 4, "req_ring": "256k", "resp_ring": "256k", "max_value": 65536}

_names = itertools.count()

FILE, DIRECTORY = "file", "directory"
FORMS = (FILE, DIRECTORY)
DEFAULT_FORM = os.environ.get("CXL_RING_TEST_REGION", FILE)


def region_name(form: str = FILE) -> str:
    """A fresh region path; a directory region's directory exists (the driver fills it)."""
    path = f"/dev/shm/cxltest-{os.getpid()}-{next(_names)}"
    if form == DIRECTORY:
        path += ".d"
        os.mkdir(path, 0o750)
    return path


def remove_region(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def asan_env() -> dict[str, str]:
    lib = subprocess.run(["cc", "-print-file-name=libasan.so"], capture_output=True,
                         text=True, check=True).stdout.strip()
    env = dict(os.environ)
    env["LD_PRELOAD"] = lib
    # leaks: redis-server itself does not free everything at exit
    env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=0:halt_on_error=1"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    return env


class ServerFailed(Exception):
    pass


class RedisRing:
    """One redis-server with the module loaded."""

    def __init__(self, workdir: Path, region: str, module: Path = MODULE,
                 module_args: dict | None = None, conf: list[str] | None = None,
                 name: str = "r"):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.region = region
        self.module = Path(module)
        self.module_args = dict(module_args or {})
        self.conf = list(conf or [])
        self.name = name
        self.sock = str(workdir / f"{name}.sock")
        self.port = free_port()
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.password: str | None = None  # the harness's own connections AUTH with it

    @property
    def asan(self) -> bool:
        return "asan" in self.module.name

    def argv(self) -> list[str]:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--unixsocket", self.sock, "--unixsocketperm", "700",
                "--dir", str(self.workdir), "--logfile", str(self.log),
                "--dbfilename", f"{self.name}.rdb", "--appendfilename", f"{self.name}.aof",
                "--save", "", "--appendonly", "no", "--enable-debug-command", "yes",
                "--enable-module-command", "yes"]
        args += self.conf
        margs = ["path", self.region]
        for k, v in self.module_args.items():
            margs += [k, str(v)]
        return args + ["--loadmodule", str(self.module), *margs]

    def start(self, timeout: float = 20.0) -> RedisRing:
        env = asan_env() if self.asan else None
        with open(self.workdir / f"{self.name}.stderr", "ab") as err:
            self.proc = subprocess.Popen(self.argv(), stdout=err, stderr=err, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(f"redis-server exited ({self.proc.returncode}):\n"
                                   + self.log_text()[-3000:] + self.stderr_text()[-3000:])
            if not os.path.exists(self.sock):
                time.sleep(0.01)
                continue
            try:
                if self.client().ping():
                    return self
            except (redis.ConnectionError, redis.BusyLoadingError, FileNotFoundError):
                time.sleep(0.02)
        raise ServerFailed("redis-server did not answer PING:\n" + self.log_text()[-3000:])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, **kw) -> redis.Redis:
        kw.setdefault("password", self.password)
        return redis.Redis(unix_socket_path=self.sock, socket_timeout=10, **kw)

    def tcp_client(self, **kw) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10, **kw)

    def info(self, chan: int | None = None) -> dict:
        c = self.client()
        raw = c.execute_command("CXLRING.INFO", *([] if chan is None else [chan]))
        return pairs(raw)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr_text(self) -> str:
        try:
            return (self.workdir / f"{self.name}.stderr").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """SIGTERM (a clean shutdown) or SIGKILL; returns the exit code."""
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


def pairs(raw) -> dict:
    """A RESP2 flat field/value array (CXLRING.INFO) as a dict, recursively."""
    items = raw.items() if isinstance(raw, dict) else zip(raw[0::2], raw[1::2])
    out = {}
    for k, v in items:
        k = k.decode() if isinstance(k, bytes) else k
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list) and v and isinstance(v[0], (list, dict)):
            v = [pairs(x) for x in v]
        out[k] = v
    return out


class Cluster:
    """Everything one test started: servers and regions, all cleaned up by close()."""

    def __init__(self, workdir: Path, form: str = DEFAULT_FORM):
        self.workdir = workdir
        self.form = form
        self.servers: list[RedisRing] = []
        self.regions: list[str] = []

    def region(self, form: str | None = None) -> str:
        """A new region path of this cluster's form (or `form`), removed by close()."""
        path = region_name(form or self.form)
        self.regions.append(path)
        return path

    def keep(self, path: str) -> str:
        """Remove `path` (a file, a directory, a symlink) at close() too."""
        self.regions.append(path)
        return path

    def server(self, module_args: dict | None = None, region: str | None = None,
               module: Path = MODULE, conf: list[str] | None = None, start: bool = True,
               name: str | None = None) -> RedisRing:
        # layout v2 has one form: one file
        v2 = str((module_args or {}).get("layout", "")).lower() in ("v2", "2")
        region = region or self.region(FILE if v2 else None)
        if region not in self.regions:
            self.regions.append(region)
        srv = RedisRing(self.workdir, region, module, module_args, conf,
                        name or f"r{len(self.servers)}")
        self.servers.append(srv)
        return srv.start() if start else srv

    def close(self) -> None:
        for srv in self.servers:
            try:
                srv.stop()
            except Exception:  # noqa: BLE001 - cleanup goes on
                if srv.proc:
                    srv.proc.kill()
        for path in reversed(self.regions):
            remove_region(path)
