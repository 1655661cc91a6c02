#!/usr/bin/env python3
"""Ring vs TCP benchmark for the cxl_ring Redis driver (``make bench``).

One redis-server with the cxl_ring module loaded serves everything in one run:

* the ring, driven by ``build/cxl-ring-bench`` (pipelined GET and SET, and the
  unpipelined round trip of one thread), on a region with ``security off`` (one file);
* the ring without Redis: the same pipelined runs against ``build/cxl-null-server`` (the
  driver's ring code answering GET with a fixed value and SET with OK, no keyspace), the
  transport's own limit on this machine; and the real server's pipelined runs again with a
  small keyspace (1 000 keys, cache-resident) beside the 100 000-key one, so that what the
  keyspace costs and what the transport costs are told apart;
* the same ring runs on a second server whose region has ``security secdsm`` (a directory of
  segment files, two channel groups), the bench given a view directory holding only its
  group's segments and the header (symlinks, as a guest's ``/dev/cxl/<region>/``); the runs
  alternate between the two regions, and ``secdsm/off`` ratios say what Sec-DSM costs;
* TCP on 127.0.0.1 and a unix socket, driven by ``redis-benchmark``
  (``-P 1`` and ``-P 16``; ``-c 1 -P 1`` for the round trip; ``-P 16`` with both keyspaces);
* ``build/cxl-gateway`` (the native RESP gateway) in front of the same server's ring, driven
  by ``redis-benchmark`` with the TCP rows' -n, -c and keyspace (``-P 16`` and ``-P 1``), and
  the ratios gateway / direct TCP; then the application workload (``build/cxl-ycsb``: YCSB
  workload A, zipfian keys, 1 KiB values) through that gateway and over direct TCP;
* the Python ring client against redis-py: ``bench/py_bench.py``'s ``run()``;
* then, after 1 s without traffic, redis-server's CPU use from ``/proc/PID/stat``;
* last, ``bench/fairness.py``'s ``run()``: TCP PING latency while ring clients saturate a
  server of their own (8 and 256 channels, GET and SET, 64 B and 1 MiB values, clients that
  read their replies and clients that never do).

The server under test is ``--redis-server`` (default ``redis-server`` from PATH; any Redis or
Valkey build that loads the module); its ``INFO server`` name and version are recorded
(``server_name``: redis or valkey, ``server_version``).

With two or more CPUs the server is pinned to one CPU (``--server-cpu``, default 1)
and every load generator to another (``--client-cpu``, default 0).

Outputs ``OUT/latest.json`` (numbers, ratios, machine, versions, the exact
commands) and ``OUT/latest.md`` (a table), and prints PASS/MISS per target. It is a
benchmark, not a test: it exits 0 whether the targets are met or not, and non-zero
only when it could not measure (missing build, server would not start).

Usage::

    .venv/bin/python bench/run.py --out bench/results            # about a minute
    .venv/bin/python bench/run.py --out /tmp/b --quick           # a few seconds
    .venv/bin/python bench/run.py --out /tmp/v --redis-server /opt/valkey/bin/valkey-server
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import importlib.util
import io
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent

# Targets, as ratios from the same run on the same machine (the issue "Ring transport").
# Sec-DSM (the issue "Sec-DSM"): the segment-per-writer region costs at most 5 % of the ring's
# throughput and round trip (secdsm/off, both as rates: higher is better).
# Keyspace (the issue "make bench separates the transport from the keyspace"): with a keyspace
# that fits in cache the ring's pipelined GET is at least 3x TCP -P 16's, and at least a quarter
# of the null server's (the transport's own limit); the 100 000-key figures are reported with
# what bounds them, not held to a target of their own beyond the first one below.
TARGETS = {
    "pipelined_get_ring_vs_tcp_p16": (">=", 2.0),
    "pipelined_get_ring_vs_tcp_p16_small_keyspace": (">=", 3.0),
    "pipelined_get_ring_small_keyspace_vs_null": (">=", 0.25),
    "rtt_p50_ring_vs_tcp": ("<=", 0.1),
    "server_idle_cpu_pct": ("<=", 2.0),
    "pipelined_get_secdsm_vs_off": (">=", 0.95),
    "rtt_p50_secdsm_vs_off": (">=", 0.95),
    # The issue "The poll loop: fair to TCP clients": a TCP PING's p99 while the ring is
    # saturated, in ms, the worst of bench/fairness.py's cases.
    "tcp_ping_p99_ms_ring_saturated": ("<=", 5.0),
    # Notification instead of polling (docs/ring-protocol.md section 8): two servers of the
    # same geometry, `notify auto` (futex here) and `notify off`, measured side by side.
    "notify_idle_cpu_pct": ("<=", 0.1),
    "notify_wake_p50_us": ("<=", 20.0),
    "pipelined_get_notify_vs_poll": (">=", 0.95),
    "rtt_p50_notify_vs_poll": (">=", 0.95),
    # The native RESP gateway (gateway/README.md): redis-benchmark -P 16 GET through it, as a
    # share of the same command straight to the server's TCP port (the Python proxy: ~0.11).
    "gateway_get_p16_vs_tcp": (">=", 0.5),
}

# The bench client's channel group in the secdsm region, and the groups the region has: the
# same 8 channels as the off region, in two groups, so that the bench's view lacks a group.
SECDSM_GROUPS = (4, 4)
BENCH_CLIENT_LEASE_MS = 30000
SECDSM_BENCH_GROUP = 0

# The keyspaces: redis-benchmark -r's default shape, 100 000 random keys (a keyspace whose
# lookups miss the cache), and a small one whose keys, entries and values stay in cache.
LARGE_KEYSPACE = 100_000
SMALL_KEYSPACE = 1_000
VALUE_SIZE = 64

# Layout v5 header fields the runner polls to know the driver is serving
# (docs/ring-protocol.md 2.1): magic at 0, server_state at 144 (2 = RUNNING).
V5_MAGIC = b"CXLDSMR\0"
V2_MAGIC = b"CXLSHM1\0"
STATE_OFFSET = 144
STATE_RUNNING = 2


class BenchError(RuntimeError):
    """The runner could not measure (as opposed to a missed target)."""


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------

def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def pinner(cpu: int | None) -> Callable[[], None] | None:
    """A preexec_fn that pins the child (and its threads) to one CPU."""
    if cpu is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return pin


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all threads, in seconds (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def region_state(path: str, layout: str) -> str | None:
    """'running' when the region's header says the driver serves it, else None. path is the
    region file, or a region directory (its ``header`` segment file)."""
    if os.path.isdir(path):
        path = os.path.join(path, "header")
    try:
        with open(path, "rb") as f:
            head = f.read(STATE_OFFSET + 4)
    except OSError:
        return None
    if layout == "v2":
        return "running" if head[:8] == V2_MAGIC else None
    if len(head) < STATE_OFFSET + 4 or head[:8] != V5_MAGIC:
        return None
    (state,) = struct.unpack_from("<I", head, STATE_OFFSET)
    return "running" if state == STATE_RUNNING else None


def end_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, 10 s to exit, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class RedisWithRing:
    """A redis-server with the cxl_ring module: TCP on 127.0.0.1, a unix socket, a region.

    ``security="off"``: the region is one file (``channels`` channels). ``"secdsm"``: the
    region is a directory the driver fills with segment files, ``groups`` channels per
    group; ``view(g)`` makes a directory holding only group g's segments and the header
    (symlinks), what a client VM is granted.

    Used by the runner and by tests/bench. Always call stop() (or use ``with``):
    it ends the server and removes the region (file or directory), the views and the
    scratch directory.
    """

    def __init__(
        self,
        module: Path,
        region: str,
        *,
        layout: str = "v5",
        channels: int = 8,
        security: str = "off",
        groups: tuple[int, ...] | None = None,
        module_args: list[str] | None = None,
        cpu: int | None = None,
        redis_server: str = "redis-server",
        workdir: Path | None = None,
    ) -> None:
        if security not in ("off", "secdsm"):
            raise BenchError(f"security {security!r}: off or secdsm")
        if security == "secdsm" and layout == "v2":
            raise BenchError("layout v2 has no segments: security secdsm needs layout v5")
        self.module = Path(module)
        self.region = region
        self.layout = layout
        self.security = security
        self.groups = tuple(groups) if groups else (channels,)
        self.channels = sum(self.groups) if groups else channels
        self.extra_args = list(module_args or [])
        self.cpu = cpu
        self.redis_server = redis_server
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="cxl-bench-"))
        self.port = 0
        self.unix_socket = str(self.workdir / "redis.sock")
        self.logfile = self.workdir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.command: list[str] = []

    def module_argv(self) -> list[str]:
        args = ["path", self.region, "layout", self.layout]
        if self.security == "secdsm":
            args += ["groups", ",".join(str(n) for n in self.groups)]
        elif self.layout != "v2":
            args += ["channels", str(self.channels)]
        return args + self.extra_args

    def view(self, group: int) -> str:
        """A directory with only group ``group``'s segments and the header, as symlinks into
        the region directory: what a client of that group is granted (secdsm only)."""
        if self.security != "secdsm":
            raise BenchError("a view is a secdsm region's: this region is one file")
        if not 0 <= group < len(self.groups):
            raise BenchError(f"group {group}: the region has groups 0..{len(self.groups) - 1}")
        view = self.workdir / f"view-{group}"
        view.mkdir(mode=0o700, exist_ok=True)
        for name in ("header", f"client-{group}", f"server-{group}"):
            link = view / name
            if not link.is_symlink():
                link.symlink_to(os.path.join(self.region, name))
        return str(view)

    def start(self, timeout: float = 30.0) -> RedisWithRing:
        if not self.module.exists():
            raise BenchError(f"{self.module} does not exist: run `make build` first")
        if self.security == "secdsm":
            # The driver creates the segment files in an existing directory (one host).
            os.makedirs(self.region, mode=0o700, exist_ok=True)
        self.port = free_tcp_port()
        self.command = [
            self.redis_server,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--unixsocket", self.unix_socket,
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "yes",
            "--dir", str(self.workdir),
            "--logfile", str(self.logfile),
            "--loadmodule", str(self.module), *self.module_argv(),
        ]
        self.proc = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT, preexec_fn=pinner(self.cpu),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"redis-server exited with {self.proc.returncode}; its log:\n{self.log_tail()}"
                )
            if self._pingable() and region_state(self.region, self.layout) == "running":
                return self
            time.sleep(0.05)
        self.stop()
        raise BenchError(f"redis-server did not serve the ring within {timeout} s:\n"
                         f"{self.log_tail()}")

    def _pingable(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1.0)
                s.connect(self.unix_socket)
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def info(self, section: str = "server", timeout: float = 10.0) -> dict[str, str]:
        """``INFO <section>`` over the unix socket, as {field: value}."""
        cmd = f"*2\r\n$4\r\nINFO\r\n${len(section)}\r\n{section}\r\n".encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(self.unix_socket)
                s.sendall(cmd)
                buf = b""
                while b"\r\n" not in buf:
                    buf += _recv(s)
                line, _, body = buf.partition(b"\r\n")
                if not line.startswith(b"$"):
                    raise BenchError(f"INFO {section}: {line.decode(errors='replace')}")
                size = int(line[1:])
                while len(body) < size:
                    body += _recv(s)
        except OSError as e:
            raise BenchError(f"INFO {section} on {self.unix_socket}: {e}") from e
        return parse_info(body[:size].decode(errors="replace"))

    def ring_info(self, timeout: float = 10.0) -> dict[str, str]:
        """``CXLRING.INFO``'s server fields (the channels left out), through redis-cli."""
        out = subprocess.run(["redis-cli", "-s", self.unix_socket, "CXLRING.INFO"],
                             capture_output=True, text=True, timeout=timeout).stdout
        lines = out.splitlines()
        fields: dict[str, str] = {}
        for k, v in zip(lines[0::2], lines[1::2]):
            if k == "channels":
                break
            fields[k] = v
        return fields

    def flushall(self, timeout: float = 30.0) -> None:
        """``FLUSHALL`` over the unix socket: the next run's keyspace is the only one."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(self.unix_socket)
                s.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
                buf = b""
                while b"\r\n" not in buf:
                    buf += _recv(s)
        except OSError as e:
            raise BenchError(f"FLUSHALL on {self.unix_socket}: {e}") from e
        if not buf.startswith(b"+OK"):
            raise BenchError(f"FLUSHALL: {buf.decode(errors='replace').strip()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            end_process(self.proc)
        for view in self.workdir.glob("view-*"):
            shutil.rmtree(view, ignore_errors=True)
        if os.path.isdir(self.region) and not os.path.islink(self.region):
            shutil.rmtree(self.region, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.region)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisWithRing:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NullServer:
    """``build/cxl-null-server`` on a region file: the driver's ring code with no Redis behind
    it (GET answers ``value_size`` bytes, SET OK; bench/c/null/null_server.c).

    Used by the runner and by tests/bench. Always call stop() (or use ``with``): it ends the
    server, removes the region and the scratch directory, and returns the server's stderr
    (its last line says what it served).
    """

    def __init__(self, binary: Path, region: str, *, channels: int = 8,
                 value_size: int = VALUE_SIZE, args: list[str] | None = None,
                 cpu: int | None = None) -> None:
        self.binary = Path(binary)
        self.region = region
        self.channels = channels
        self.value_size = value_size
        self.extra_args = list(args or [])
        self.cpu = cpu
        self.workdir = Path(tempfile.mkdtemp(prefix="cxl-null-"))
        self.logfile = self.workdir / "null-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.command: list[str] = []
        self.returncode: int | None = None

    def start(self, timeout: float = 30.0) -> NullServer:
        if not self.binary.exists():
            raise BenchError(f"{self.binary} does not exist: run `make build` first")
        self.command = [str(self.binary), "--path", self.region, "--channels",
                        str(self.channels), "--value-size", str(self.value_size),
                        *self.extra_args]
        with open(self.logfile, "wb") as log:
            self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, preexec_fn=pinner(self.cpu))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"cxl-null-server exited with {self.proc.returncode}:\n"
                                 f"{self.log()}")
            if region_state(self.region, "v5") == "running":
                return self
            time.sleep(0.02)
        self.stop()
        raise BenchError(f"cxl-null-server did not serve the ring within {timeout} s:\n"
                         f"{self.log()}")

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace").strip()
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> str:
        if self.proc is not None:
            end_process(self.proc)
            self.returncode = self.proc.returncode
        log = self.log()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.region)
        shutil.rmtree(self.workdir, ignore_errors=True)
        return log

    def __enter__(self) -> NullServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _recv(s: socket.socket) -> bytes:
    chunk = s.recv(65536)
    if not chunk:
        raise BenchError("the server closed the connection")
    return chunk


def parse_info(text: str) -> dict[str, str]:
    """INFO's ``field:value`` lines as a dict (``# Section`` lines and blanks skipped)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    return out


def server_identity(info: dict[str, str]) -> dict[str, str | None]:
    """Which server answered: Valkey says ``server_name:valkey`` and ``valkey_version`` (and a
    ``redis_version`` for compatibility); Redis has no ``server_name`` and says
    ``redis_version``."""
    name = info.get("server_name") or "redis"
    return {"server_name": name,
            "server_version": info.get(f"{name}_version") or info.get("redis_version")}


# ---------------------------------------------------------------------------
# Load generators
# ---------------------------------------------------------------------------

def run_cmd(cmd: list[str], cpu: int | None, timeout: float) -> str:
    try:
        out = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=timeout, preexec_fn=pinner(cpu),
        )
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{shlex.join(cmd)} took longer than {timeout} s") from e
    if out.returncode != 0:
        raise BenchError(f"{shlex.join(cmd)} exited with {out.returncode}:\n"
                         f"{out.stderr.strip()}\n{out.stdout.strip()[-2000:]}")
    return out.stdout


def ring_bench(bench: Path, path: str, args: list[str], cpu: int | None,
               timeout: float, commands: dict[str, str], name: str) -> dict[str, dict[str, Any]]:
    """Run cxl-ring-bench on the region at path (a file, or a secdsm view directory) with
    --json; returns {op: result} (op: GET, SET, MIX)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        json_path = tmp.name
    cmd = [str(bench), "--path", path, *args, "--quiet", "--json", json_path,
           "--timeout", str(int(timeout))]
    commands[name] = shlex.join(cmd)
    try:
        run_cmd(cmd, cpu, timeout + 10)
        with open(json_path) as f:
            doc = json.load(f)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(json_path)
    return {r["op"]: r for r in doc["results"]}


def redis_benchmark(server: RedisWithRing, target: list[str], tests: str, requests: int,
                    pipeline: int, clients: int, cpu: int | None, timeout: float,
                    commands: dict[str, str], name: str, keyspace: int = LARGE_KEYSPACE
                    ) -> dict[str, dict[str, float]]:
    """Run redis-benchmark --csv; returns {TEST: {rps, avg_latency_ms, p50_latency_ms, ...}}."""
    cmd = ["redis-benchmark", *target, "-t", tests, "-n", str(requests), "-P", str(pipeline),
           "-c", str(clients), "-d", str(VALUE_SIZE), "-r", str(keyspace), "--csv"]
    commands[name] = shlex.join(cmd)
    out = run_cmd(cmd, cpu, timeout)
    rows: dict[str, dict[str, float]] = {}
    for row in csv.DictReader(io.StringIO(out)):
        test = row.pop("test")
        rows[test] = {k: float(v) for k, v in row.items() if v not in (None, "")}
    if not rows:
        raise BenchError(f"no CSV from {shlex.join(cmd)}:\n{out}")
    return rows


def median_of(runs: list[dict[str, dict[str, Any]]], key: str) -> dict[str, dict[str, Any]]:
    """For each op, the run with the median `key` value."""
    best: dict[str, dict[str, Any]] = {}
    for op in runs[0]:
        ordered = sorted((r[op] for r in runs if op in r), key=lambda x: x[key])
        best[op] = ordered[len(ordered) // 2]
    return best


def median_runs(n: int, fn: Callable[[], dict[str, dict[str, Any]]], key: str
                ) -> dict[str, dict[str, Any]]:
    """Run fn n times; for each op keep the run with the median `key` value."""
    return median_of([fn() for _ in range(n)], key)


def paired_runs(n: int, fns: dict[str, Callable[[], dict[str, dict[str, Any]]]], key: str
                ) -> dict[str, dict[str, dict[str, Any]]]:
    """Run every fn n times, alternating between them (a drift in the machine's load then
    weighs on each alike); for each fn and op keep the run with the median `key` value."""
    runs: dict[str, list[dict[str, dict[str, Any]]]] = {name: [] for name in fns}
    for _ in range(n):
        for name, fn in fns.items():
            runs[name].append(fn())
    return {name: median_of(r, key) for name, r in runs.items()}


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """utime+stime of each thread of pid, by thread name (summed where names repeat)."""
    hz = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / hz
    return out


def idle_cpu_split(pid: int, settle: float, window: float) -> dict[str, float]:
    """The whole process's and each thread's CPU in % of one core over the same window."""
    time.sleep(settle)
    c0, th0, t0 = proc_cpu_seconds(pid), thread_cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    c1, th1, t1 = proc_cpu_seconds(pid), thread_cpu_seconds(pid), time.monotonic()
    out = {"process": round(100.0 * (c1 - c0) / (t1 - t0), 3)}
    for name, v in th1.items():
        out[name] = round(100.0 * (v - th0.get(name, 0.0)) / (t1 - t0), 3)
    return out


def wake_latency(tool: Path, path: str | None, samples: int, gap_ms: int, cpu: int | None,
                 commands: dict[str, str], name: str, cpus: str | None = None
                 ) -> dict[str, Any]:
    """cxl-wake-latency: the round trip of the first request after gap_ms of idleness; with
    path None, the machine's floor (a bare FUTEX_WAKE of a process idle on the other CPU)."""
    target = ["--path", path] if path else ["--floor", *(["--cpus", cpus] if cpus else [])]
    cmd = [str(tool), *target, "--samples", str(samples), "--gap-ms", str(gap_ms)]
    commands[name] = shlex.join(cmd)
    out = run_cmd(cmd, cpu, samples * (gap_ms / 1000.0 + 10) + 30)
    return json.loads(out.strip().splitlines()[-1])


def notify_bench(a: argparse.Namespace, region: str, server_cpu: int | None,
                 client_cpu: int | None, commands: dict[str, str]) -> dict[str, Any]:
    """Notification against polling, in one run: a server with `notify auto` (futex on files of
    this host) and one with `notify off`, the same geometry; alternately: the first request
    after an idle gap, the idle CPU (whole process and per thread, and a plain redis-server
    without the module for the floor), and the busy path (pipelined GET, round trip)."""
    lease = ["client_lease_ms", str(BENCH_CLIENT_LEASE_MS)]
    servers = {
        "notify": RedisWithRing(a.module, f"{region}-notify", cpu=server_cpu,
                                redis_server=a.redis_server, module_args=lease),
        "poll": RedisWithRing(a.module, f"{region}-poll", cpu=server_cpu,
                              redis_server=a.redis_server, module_args=[*lease, "notify", "off"]),
    }
    out: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        for name, srv in servers.items():
            stack.enter_context(srv)
            commands[f"redis_server_{name}"] = shlex.join(srv.command)
            out[f"{name}_info"] = {k: srv.ring_info().get(k) for k in ("notify",
                                                                         "notify_fallback")}
        t = a.timeout
        pipelined = ["--op", "set,get", "--bench", str(a.ring_requests), "--pipeline",
                     "--max-inflight", str(a.max_inflight), "--value-size", str(VALUE_SIZE),
                     "--keyspace", str(SMALL_KEYSPACE)]
        busy = paired_runs(a.repeat, {
            name: (lambda srv=srv, name=name: ring_bench(
                a.bench_bin, srv.region, pipelined, client_cpu, t, commands,
                f"ring_pipelined_{name}"))
            for name, srv in servers.items()}, key="rps")
        rtt_args = ["--op", "get", "--bench", str(a.rtt_requests), "--latency",
                    "--value-size", str(VALUE_SIZE), "--keyspace", str(SMALL_KEYSPACE),
                    "--csv", os.devnull]
        rtt = paired_runs(a.repeat, {
            name: (lambda srv=srv, name=name: ring_bench(
                a.bench_bin, srv.region, rtt_args, client_cpu, t, commands, f"ring_rtt_{name}"))
            for name, srv in servers.items()}, key="p50_us")
        for name in servers:
            out[f"{name}_get_rps"] = busy[name]["GET"]["rps"]
            out[f"{name}_rtt_p50_us"] = rtt[name]["GET"]["p50_us"]
        wake: dict[str, list[dict[str, Any]]] = {name: [] for name in [*servers, "floor"]}
        cpus = f"{client_cpu},{server_cpu}" if client_cpu is not None else None
        for _ in range(2):  # alternately, half the samples each time
            for name, srv in servers.items():
                wake[name].append(wake_latency(a.wake_bin, srv.region, a.wake_samples // 2,
                                               a.wake_gap_ms, client_cpu, commands,
                                               f"wake_latency_{name}"))
            wake["floor"].append(wake_latency(a.wake_bin, None, a.wake_samples // 2,
                                              a.wake_gap_ms, None, commands,
                                              "wake_latency_floor", cpus))
        for name in [*servers, "floor"]:
            runs = wake[name]
            out[f"{name}_wake"] = runs
            out[f"{name}_wake_p50_us"] = round(statistics.median(r["p50_us"] for r in runs), 1)
            out[f"{name}_wake_p99_us"] = max(r["p99_us"] for r in runs)
        for name, srv in servers.items():
            split = idle_cpu_split(srv.pid, 1.0, a.notify_idle_seconds)
            out[f"{name}_idle_cpu_pct"] = split["process"]
            out[f"{name}_idle_cpu_threads"] = split
        sleeps = servers["notify"].ring_info()
        out["notify_sleeps"] = int(sleeps.get("sleeps", 0))
        out["notify_sleep_wakes"] = int(sleeps.get("sleep_wakes", 0))
    out["plain_redis_idle_cpu_pct"] = plain_redis_idle(a, server_cpu, commands)
    out["ratio_get_notify_vs_poll"] = ratio(out["notify_get_rps"], out["poll_get_rps"])
    out["ratio_rtt_p50_notify_vs_poll"] = ratio(out["poll_rtt_p50_us"], out["notify_rtt_p50_us"])
    return out


def plain_redis_idle(a: argparse.Namespace, cpu: int | None, commands: dict[str, str]) -> float:
    """The floor: a redis-server without the module, idle, measured the same way."""
    port = free_tcp_port()
    with tempfile.TemporaryDirectory(prefix="cxl-bench-plain-") as d:
        cmd = [a.redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", d]
        commands["redis_server_plain"] = shlex.join(cmd)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=pinner(cpu))
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                        s.sendall(b"PING\r\n")
                        if _recv(s).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise BenchError(f"{shlex.join(cmd)} did not start")
                time.sleep(0.05)
            return round(idle_cpu_pct(proc.pid, 1.0, a.notify_idle_seconds), 3)
        finally:
            end_process(proc)


def idle_cpu_pct(pid: int, settle: float, window: float) -> float:
    """redis-server's CPU in % of one core over `window` s, after `settle` s of quiet."""
    time.sleep(settle)
    c0, t0 = proc_cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    c1, t1 = proc_cpu_seconds(pid), time.monotonic()
    return 100.0 * (c1 - c0) / (t1 - t0)


def python_bench(server: RedisWithRing, quick: bool, notes: list[str]) -> dict[str, Any]:
    """bench/py_bench.py's run() against this server: the Python client's keys.

    A failure there is noted and yields {}: it must not lose the ring numbers."""
    spec = importlib.util.spec_from_file_location("py_bench", ROOT / "bench" / "py_bench.py")
    assert spec and spec.loader
    py_bench = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(py_bench)
        return py_bench.run(tcp_port=server.port, region_path=server.region, quick=quick)
    except Exception as e:  # noqa: BLE001 - reported in the results' notes
        notes.append(f"bench/py_bench.py run() failed: {e!r}")
        return {}


def gateway_bench(a: argparse.Namespace, server: RedisWithRing, cpu: int | None,
                  commands: dict[str, str], notes: list[str]) -> dict[str, Any]:
    """redis-benchmark GET and SET, -P 16 and -P 1, through build/cxl-gateway on the server's
    region (the TCP rows' -n, -c and keyspace). The gateway runs on the load generators' CPU:
    it is the client side of the ring (in the lab, a process of the client VM).

    A gateway that cannot start is noted and yields {}: it must not lose the other rows."""
    if not Path(a.gateway_bin).exists():
        notes.append(f"{a.gateway_bin} does not exist: no gateway rows (make build)")
        return {}
    port = free_tcp_port()
    cmd = [str(a.gateway_bin), "--path", server.region, "--listen", f"127.0.0.1:{port}",
           "--quiet"]
    commands["gateway"] = shlex.join(cmd)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, preexec_fn=pinner(cpu))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    end_process(proc)
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    notes.append(f"cxl-gateway did not start: {err.strip()[-500:]}")
                    return {}
                time.sleep(0.05)
        target = ["-h", "127.0.0.1", "-p", str(port)]
        p16 = median_runs(a.repeat, lambda: redis_benchmark(
            server, target, "set,get", a.tcp_requests, 16, 50, cpu, a.timeout, commands,
            "gateway_p16"), key="rps")
        p1 = median_runs(a.repeat, lambda: redis_benchmark(
            server, target, "set,get", a.tcp_p1_requests, 1, 50, cpu, a.timeout, commands,
            "gateway_p1"), key="rps")
        ycsb = ycsb_bench(a, server, port, cpu, commands, notes)
        if proc.poll() is not None:
            raise BenchError(f"cxl-gateway exited during the run ({proc.returncode})")
    finally:
        end_process(proc)
    return {"gateway_p16_get_rps": p16["GET"]["rps"], "gateway_p16_set_rps": p16["SET"]["rps"],
            "gateway_p1_get_rps": p1["GET"]["rps"], "gateway_p1_set_rps": p1["SET"]["rps"],
            **ycsb}


def ycsb_bench(a: argparse.Namespace, server: RedisWithRing, gateway_port: int,
               cpu: int | None, commands: dict[str, str], notes: list[str]) -> dict[str, Any]:
    """The application workload (build/cxl-ycsb: YCSB workload A, zipfian keys, 1 KiB values,
    16 connections, one request in flight each) through the gateway and over direct TCP to the
    same server, back to back: ops/s and the read and update p50/p99 of each."""
    if not Path(a.ycsb_bin).exists():
        notes.append(f"{a.ycsb_bin} does not exist: no application workload rows (make build)")
        return {}
    out: dict[str, Any] = {}
    for name, port in (("gateway", gateway_port), ("tcp", server.port)):
        cmd = [str(a.ycsb_bin), "--port", str(port), "--workload", "a", "--records",
               str(a.ycsb_records), "--ops", str(a.ycsb_ops), "--connections", "16",
               "--max-seconds", str(a.timeout), "--label", name]
        commands[f"ycsb_{name}"] = shlex.join(cmd)
        rep = json.loads(run_cmd(cmd, cpu, a.timeout + 60))
        if rep["run"]["errors"]:
            notes.append(f"cxl-ycsb {name}: {rep['run']['errors']} error replies, the first: "
                         f"{rep['run']['first_error']}")
        out[f"ycsb_{name}_ops_per_s"] = rep["run"]["ops_per_s"]
        for kind in ("read", "update"):
            for q in ("p50", "p99"):
                out[f"ycsb_{name}_{kind}_{q}_us"] = rep["latency"][kind][f"{q}_us"]
    return out


def gateway_ratios(res: dict[str, Any]) -> dict[str, Any]:
    """gateway / direct TCP, same -P (or the same workload), same run."""
    g = res.get
    return {**{f"ratio_gateway_{op}_p{p}_vs_tcp": ratio(g(f"gateway_p{p}_{op}_rps"),
                                                        g(f"tcp_p{p}_{op}_rps"))
               for op in ("get", "set") for p in (16, 1)},
            "ratio_ycsb_gateway_vs_tcp": ratio(g("ycsb_gateway_ops_per_s"),
                                               g("ycsb_tcp_ops_per_s"))}


def gateway_markdown(res: dict[str, Any]) -> list[str]:
    g = res.get
    rows = ["cxl-gateway (the native RESP gateway, gateway/README.md) against direct TCP, "
            "redis-benchmark, same server, same run:", "",
            "| req/s | through cxl-gateway | direct TCP | gateway / TCP |", "|---|---|---|---|"]
    for p in (16, 1):
        for op in ("get", "set"):
            rows.append(f"| {op.upper()} -P {p} | {fmt(g(f'gateway_p{p}_{op}_rps'))} | "
                        f"{fmt(g(f'tcp_p{p}_{op}_rps'))} | "
                        f"{fmt(g(f'ratio_gateway_{op}_p{p}_vs_tcp'))} |")
    if g("ycsb_gateway_ops_per_s") is not None:
        rows += ["", "The application workload (build/cxl-ycsb: YCSB workload A, 50 % GET / 50 % "
                 "SET, zipfian keys, 1 KiB values, 16 connections, one request in flight each):",
                 "", "| | ops/s | read p50 / p99 µs | update p50 / p99 µs |", "|---|---|---|---|"]
        for name in ("gateway", "tcp"):
            rows.append(f"| {name} | {fmt(g(f'ycsb_{name}_ops_per_s'))} | "
                        f"{fmt(g(f'ycsb_{name}_read_p50_us'))} / "
                        f"{fmt(g(f'ycsb_{name}_read_p99_us'))} | "
                        f"{fmt(g(f'ycsb_{name}_update_p50_us'))} / "
                        f"{fmt(g(f'ycsb_{name}_update_p99_us'))} |")
        rows.append(f"| gateway / TCP | {fmt(g('ratio_ycsb_gateway_vs_tcp'))} | | |")
    return rows


def load_fairness() -> Any:
    """bench/fairness.py as a module. It imports this file as ``run``: when this file runs
    as ``__main__``, that name is bound to it first, so that both share one BenchError."""
    sys.modules.setdefault("run", sys.modules[__name__])
    spec = importlib.util.spec_from_file_location("fairness", ROOT / "bench" / "fairness.py")
    assert spec and spec.loader
    fairness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fairness)
    return fairness


def fairness_bench(a: argparse.Namespace, server_cpu: int | None,
                   client_cpu: int | None) -> dict[str, Any]:
    """bench/fairness.py's run(): every case, or with --quick two of them."""
    fairness = load_fairness()
    kw: dict[str, Any] = {}
    if a.quick:
        # The attack of the issue and the busiest small case, a few PINGs each.
        kw = {"channels": (256,), "ops": ("get",), "value_sizes": (1 << 20,),
              "clients": ("no-read",)}
    res = fairness.run(a.module, a.bench_bin, quick=a.quick, pings=a.fairness_pings,
                       server_cpu=server_cpu, client_cpu=client_cpu,
                       redis_server=a.redis_server, **kw,
                       progress=lambda line: print(f"fairness: {line}", flush=True))
    if a.quick:
        res["cases"] += fairness.run(
            a.module, a.bench_bin, quick=True, pings=a.fairness_pings, server_cpu=server_cpu,
            client_cpu=client_cpu, redis_server=a.redis_server, channels=(8,), ops=("get",),
            value_sizes=(64,), clients=("pipelined",))["cases"]
        res.update(fairness.summary(res["cases"]))
    return res


def fairness_markdown(fair: dict[str, Any]) -> list[str]:
    return load_fairness().markdown(fair)


# ---------------------------------------------------------------------------
# Machine, report
# ---------------------------------------------------------------------------

def first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def machine_info(redis_server: str = "redis-server") -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    return {
        "cpu_model": model,
        "cpus": cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis_server": first_line([redis_server, "--version"]),
        "redis_benchmark": first_line(["redis-benchmark", "--version"]),
        "cc": first_line(["cc", "--version"]),
        "git_commit": commit,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def keyspace_ratios(res: dict[str, Any]) -> dict[str, Any]:
    """The keyspace rows' ratios, and a sentence on what bounds the 100 000-key figures.

    ``ring_*`` is the real server with 100 000 keys, ``ring_small_*`` with 1 000,
    ``ring_null_*`` the null server (no keyspace: the transport's own limit)."""
    g = res.get
    out: dict[str, Any] = {
        "ratio_ring_get_vs_tcp_p16_small": ratio(g("ring_small_get_rps"),
                                                 g("tcp_p16_small_get_rps")),
        "ratio_ring_set_vs_tcp_p16_small": ratio(g("ring_small_set_rps"),
                                                 g("tcp_p16_small_set_rps")),
        "ratio_ring_small_vs_null_get_rps": ratio(g("ring_small_get_rps"),
                                                  g("ring_null_get_rps")),
        "ratio_ring_small_vs_null_set_rps": ratio(g("ring_small_set_rps"),
                                                  g("ring_null_set_rps")),
        "ratio_ring_vs_null_get_rps": ratio(g("ring_get_rps"), g("ring_null_get_rps")),
        "ratio_ring_vs_null_set_rps": ratio(g("ring_set_rps"), g("ring_null_set_rps")),
        # large keyspace / small keyspace, per transport: what the 99 000 more keys cost
        "ratio_ring_large_vs_small_get_rps": ratio(g("ring_get_rps"), g("ring_small_get_rps")),
        "ratio_tcp_p16_large_vs_small_get_rps": ratio(g("tcp_p16_get_rps"),
                                                      g("tcp_p16_small_get_rps")),
    }
    out["keyspace_bound"] = keyspace_bound(res, out)
    return out


def keyspace_bound(res: dict[str, Any], r: dict[str, Any]) -> str:
    """One sentence, from the numbers, on what bounds pipelined GET with 100 000 keys."""
    ring_loss = r["ratio_ring_large_vs_small_get_rps"]
    tcp_loss = r["ratio_tcp_p16_large_vs_small_get_rps"]
    of_null = r["ratio_ring_vs_null_get_rps"]
    if ring_loss is None or tcp_loss is None or of_null is None:
        return "not measured"
    large = res.get("keyspace", LARGE_KEYSPACE)
    small = res.get("keyspace_small", SMALL_KEYSPACE)
    where = (f"With {large:,} keys the ring's pipelined GET runs at {ring_loss:.2f} of its "
             f"rate with {small:,} keys and at {of_null:.2f} of the null server's, TCP -P 16's "
             f"at {tcp_loss:.2f} of its own with {small:,} keys: ")
    if ring_loss < 0.8 and ring_loss < tcp_loss:
        return where + ("the keyspace's lookups (keys, entries and values that miss the "
                        "cache), not the transport, bound it; they cost the ring more because "
                        "the ring spends less on everything else.")
    if ring_loss < 0.8:
        return where + ("the keyspace's lookups bound it, and TCP as much or more: the "
                        "server's, not the transport's, work.")
    return where + ("the keyspace costs little on this machine; the server's per-request "
                    "work, not its lookups, bounds it.")


def verdicts(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    values = {
        "pipelined_get_ring_vs_tcp_p16": res.get("ratio_ring_get_vs_tcp_p16"),
        "pipelined_get_ring_vs_tcp_p16_small_keyspace":
            res.get("ratio_ring_get_vs_tcp_p16_small"),
        "pipelined_get_ring_small_keyspace_vs_null": res.get("ratio_ring_small_vs_null_get_rps"),
        "rtt_p50_ring_vs_tcp": res.get("ratio_rtt_p50_ring_vs_tcp"),
        "server_idle_cpu_pct": res.get("server_idle_cpu_pct"),
        "pipelined_get_secdsm_vs_off": res.get("ratio_secdsm_vs_off_get_rps"),
        "rtt_p50_secdsm_vs_off": res.get("ratio_secdsm_vs_off_rtt_p50"),
        "tcp_ping_p99_ms_ring_saturated": (res.get("fairness") or {}).get("worst_p99_ms"),
        "notify_idle_cpu_pct": (res.get("notify") or {}).get("notify_idle_cpu_pct"),
        "notify_wake_p50_us": (res.get("notify") or {}).get("notify_wake_p50_us"),
        "pipelined_get_notify_vs_poll": (res.get("notify") or {}).get("ratio_get_notify_vs_poll"),
        "rtt_p50_notify_vs_poll": (res.get("notify") or {}).get("ratio_rtt_p50_notify_vs_poll"),
        "gateway_get_p16_vs_tcp": res.get("ratio_gateway_get_p16_vs_tcp"),
    }
    out = {}
    for name, (cmp, limit) in TARGETS.items():
        v = values[name]
        ok = v is not None and (v >= limit if cmp == ">=" else v <= limit)
        out[name] = {"value": v, "target": f"{cmp} {limit}", "result": "PASS" if ok else "MISS"}
    return out


def notify_markdown(n: dict[str, Any]) -> list[str]:
    rows = ["Notification against polling (two servers, `notify auto` and `notify off`, one run):",
            "", "| | notify (futex) | poll | notify / poll |", "|---|---|---|---|"]
    rows.append(f"| idle CPU, % of a core (redis-server; without the module: "
                f"{fmt(n.get('plain_redis_idle_cpu_pct'))}) | {fmt(n.get('notify_idle_cpu_pct'))} "
                f"| {fmt(n.get('poll_idle_cpu_pct'))} | |")
    rows.append(f"| first request after an idle gap, p50 / p99 µs (the machine's floor, a "
                f"bare futex wake of an idle CPU: {fmt(n.get('floor_wake_p50_us'))} / "
                f"{fmt(n.get('floor_wake_p99_us'))}) | "
                f"{fmt(n.get('notify_wake_p50_us'))} / {fmt(n.get('notify_wake_p99_us'))} | "
                f"{fmt(n.get('poll_wake_p50_us'))} / {fmt(n.get('poll_wake_p99_us'))} | |")
    rows.append(f"| pipelined GET, req/s | {fmt(n.get('notify_get_rps'))} | "
                f"{fmt(n.get('poll_get_rps'))} | {fmt(n.get('ratio_get_notify_vs_poll'))} |")
    rows.append(f"| round trip p50, µs | {fmt(n.get('notify_rtt_p50_us'))} | "
                f"{fmt(n.get('poll_rtt_p50_us'))} | {fmt(n.get('ratio_rtt_p50_notify_vs_poll'))} "
                f"(as rates) |")
    return rows


def fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        v = f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return f"{v}{unit}"


def markdown(res: dict[str, Any]) -> str:
    rows = [
        ("GET, pipelined", "ring_get_rps", "tcp_p16_get_rps", "unix_p16_get_rps",
         "tcp_p1_get_rps"),
        ("SET, pipelined", "ring_set_rps", "tcp_p16_set_rps", "unix_p16_set_rps",
         "tcp_p1_set_rps"),
    ]
    lines = [
        f"# Ring vs TCP, {res['date']} ({res['machine']['cpus']} CPUs, "
        f"{res['machine']['cpu_model']})",
        "",
        "Produced by `bench/run.py`; see `docs/benchmarks.md` for the method.",
        "",
        f"Server: {res.get('server_name', 'n/a')} {res.get('server_version') or 'n/a'} "
        f"(`{res.get('server_executable', 'n/a')}`).",
        "",
        f"| req/s, {res.get('keyspace', LARGE_KEYSPACE):,} keys | ring (C bench) | TCP -P 16 | "
        f"unix -P 16 | TCP -P 1 |",
        "|---|---|---|---|---|",
    ]
    for label, *keys in rows:
        lines.append(f"| {label} | " + " | ".join(fmt(res.get(k)) for k in keys) + " |")
    lines += [
        "",
        f"Keyspace against transport: pipelined, {res.get('value_size', VALUE_SIZE)}-byte "
        f"values; the null server is the ring with no Redis behind it (GET answers a fixed "
        f"value, SET OK): the transport's own limit on this machine.",
        "",
        f"| req/s | ring, {res.get('keyspace', LARGE_KEYSPACE):,} keys | ring, "
        f"{res.get('keyspace_small', SMALL_KEYSPACE):,} keys | ring, null server | "
        f"TCP -P 16, {res.get('keyspace', LARGE_KEYSPACE):,} keys | TCP -P 16, "
        f"{res.get('keyspace_small', SMALL_KEYSPACE):,} keys |",
        "|---|---|---|---|---|---|",
        *(f"| {op} | {fmt(res.get(f'ring_{o}_rps'))} | {fmt(res.get(f'ring_small_{o}_rps'))} | "
          f"{fmt(res.get(f'ring_null_{o}_rps'))} | {fmt(res.get(f'tcp_p16_{o}_rps'))} | "
          f"{fmt(res.get(f'tcp_p16_small_{o}_rps'))} |"
          for op, o in (("GET", "get"), ("SET", "set"))),
        "",
        "| ratio | GET | SET |",
        "|---|---|---|",
        f"| ring / TCP -P 16, {res.get('keyspace_small', SMALL_KEYSPACE):,} keys | "
        f"{fmt(res.get('ratio_ring_get_vs_tcp_p16_small'))} | "
        f"{fmt(res.get('ratio_ring_set_vs_tcp_p16_small'))} |",
        f"| ring, {res.get('keyspace_small', SMALL_KEYSPACE):,} keys / null server | "
        f"{fmt(res.get('ratio_ring_small_vs_null_get_rps'))} | "
        f"{fmt(res.get('ratio_ring_small_vs_null_set_rps'))} |",
        f"| ring / TCP -P 16, {res.get('keyspace', LARGE_KEYSPACE):,} keys | "
        f"{fmt(res.get('ratio_ring_get_vs_tcp_p16'))} | "
        f"{fmt(res.get('ratio_ring_set_vs_tcp_p16'))} |",
        f"| ring, {res.get('keyspace', LARGE_KEYSPACE):,} keys / null server | "
        f"{fmt(res.get('ratio_ring_vs_null_get_rps'))} | "
        f"{fmt(res.get('ratio_ring_vs_null_set_rps'))} |",
        "",
        f"{res.get('keyspace_bound', 'not measured')}",
        "",
        "| round trip, one request at a time | ring | TCP (-c 1 -P 1) |",
        "|---|---|---|",
        f"| GET p50 | {fmt(res.get('ring_rtt_p50_us'), ' µs')} | "
        f"{fmt(res.get('tcp_rtt_p50_us'), ' µs')} |",
        f"| GET p99 | {fmt(res.get('ring_rtt_p99_us'), ' µs')} | "
        f"{fmt(res.get('tcp_rtt_p99_us'), ' µs')} |",
        "",
        "Sec-DSM (a directory of segment files, the bench given only its group's segments) "
        "against security off (one file), same run, alternating:",
        "",
        "| ring | security off | secdsm | secdsm/off (as rates) |",
        "|---|---|---|---|",
        f"| GET pipelined, req/s | {fmt(res.get('ring_get_rps'))} | "
        f"{fmt(res.get('secdsm_ring_get_rps'))} | {fmt(res.get('ratio_secdsm_vs_off_get_rps'))} |",
        f"| SET pipelined, req/s | {fmt(res.get('ring_set_rps'))} | "
        f"{fmt(res.get('secdsm_ring_set_rps'))} | {fmt(res.get('ratio_secdsm_vs_off_set_rps'))} |",
        f"| GET round trip p50 | {fmt(res.get('ring_rtt_p50_us'), ' µs')} | "
        f"{fmt(res.get('secdsm_ring_rtt_p50_us'), ' µs')} | "
        f"{fmt(res.get('ratio_secdsm_vs_off_rtt_p50'))} |",
        f"| GET round trip avg | {fmt(res.get('ring_rtt_avg_us'), ' µs')} | "
        f"{fmt(res.get('secdsm_ring_rtt_avg_us'), ' µs')} | "
        f"{fmt(res.get('ratio_secdsm_vs_off_rtt_avg'))} |",
        "",
        f"Cache-line round trip between the two CPUs (the floor of any ring round trip): "
        f"{fmt(res.get('cacheline_rtt_ns'), ' ns')}.",
        "",
        f"Server CPU after 1 s idle: {fmt(res.get('server_idle_cpu_pct'), ' %')} of one core.",
        "",
    ]
    if res.get("gateway_p16_get_rps") is not None:
        lines += [*gateway_markdown(res), ""]
    lines += [
        "| target | value | wanted | result |",
        "|---|---|---|---|",
    ]
    for name, v in res["targets"].items():
        lines.append(f"| {name} | {fmt(v['value'])} | {v['target']} | {v['result']} |")
    py = {k: v for k, v in res.items() if k.startswith(("py_", "proxy_"))
          and isinstance(v, (int, float))}
    if py:
        lines += ["", "Python client (bench/py_bench.py; see docs/benchmarks-python.md):", ""]
        lines += [f"- `{k}`: {fmt(float(v))}" for k, v in sorted(py.items())]
    if res.get("notify"):
        lines += ["", *notify_markdown(res["notify"])]
    if res.get("fairness"):
        lines += ["", *fairness_markdown(res["fairness"])]
    if res.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results",
                   help="directory for latest.json and latest.md (default bench/results)")
    p.add_argument("--quick", action="store_true",
                   help="about 10x fewer requests and one repetition (a smoke run)")
    p.add_argument("--repeat", type=int, default=None,
                   help="repetitions of each measurement, median kept (default 3; quick 1)")
    p.add_argument("--ring-requests", type=int, default=None,
                   help="requests per pipelined ring phase (default 2000000; quick 200000)")
    p.add_argument("--tcp-requests", type=int, default=None,
                   help="requests per pipelined redis-benchmark test (default 1000000)")
    p.add_argument("--rtt-requests", type=int, default=None,
                   help="requests in the one-at-a-time round-trip runs (default 50000)")
    p.add_argument("--max-inflight", type=int, default=1024,
                   help="ring pipeline window (default 1024)")
    p.add_argument("--idle-seconds", type=float, default=3.0,
                   help="window for the idle CPU measurement (default 3)")
    p.add_argument("--server-cpu", type=int, default=1)
    p.add_argument("--client-cpu", type=int, default=0)
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--no-python", action="store_true", help="skip bench/py_bench.py")
    p.add_argument("--no-fairness", action="store_true",
                   help="skip bench/fairness.py (TCP PING while the ring is saturated)")
    p.add_argument("--fairness-pings", type=int, default=None,
                   help="PINGs per fairness case (default 300; quick 30, two cases)")
    p.add_argument("--no-gateway", action="store_true",
                   help="skip redis-benchmark through build/cxl-gateway")
    p.add_argument("--gateway-bin", type=Path, default=ROOT / "build" / "cxl-gateway")
    p.add_argument("--ycsb-bin", type=Path, default=ROOT / "build" / "cxl-ycsb")
    p.add_argument("--ycsb-records", type=int, default=None,
                   help="records of the application workload (default 10000; quick 1000)")
    p.add_argument("--ycsb-ops", type=int, default=None,
                   help="its operations, per path (default 200000; quick 5000)")
    p.add_argument("--no-notify", action="store_true",
                   help="skip the notification against polling measurements")
    p.add_argument("--wake-samples", type=int, default=None,
                   help="first requests after an idle gap, per server (default 20; quick 4)")
    p.add_argument("--wake-gap-ms", type=int, default=None,
                   help="the idle gap before each of them (default 1000; quick 200)")
    p.add_argument("--wake-bin", type=Path, default=ROOT / "build" / "cxl-wake-latency")
    p.add_argument("--bench-bin", type=Path, default=ROOT / "build" / "cxl-ring-bench")
    p.add_argument("--module", type=Path, default=ROOT / "build" / "cxl_ring.so")
    p.add_argument("--null-server-bin", type=Path, default=ROOT / "build" / "cxl-null-server")
    p.add_argument("--redis-server", default="redis-server",
                   help="the server binary to measure: redis-server (default, from PATH), "
                        "valkey-server, or a path; its name and version are recorded")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="limit for any single load run, seconds (default 120)")
    a = p.parse_args(argv)
    q = a.quick
    a.repeat = a.repeat or (1 if q else 3)
    a.ring_requests = a.ring_requests or (200_000 if q else 2_000_000)
    a.tcp_requests = a.tcp_requests or (100_000 if q else 1_000_000)
    a.tcp_p1_requests = max(a.tcp_requests // 5, 10_000)
    a.rtt_requests = a.rtt_requests or (5_000 if q else 50_000)
    a.wake_samples = max(2, a.wake_samples or (4 if q else 20))
    a.wake_gap_ms = a.wake_gap_ms or (200 if q else 1000)
    a.ycsb_records = a.ycsb_records or (1_000 if q else 10_000)
    a.ycsb_ops = a.ycsb_ops or (5_000 if q else 200_000)
    # CPU time comes in clock ticks (10 ms): 15 s resolve 0.07 % of a core.
    a.notify_idle_seconds = a.idle_seconds if q else max(a.idle_seconds, 15.0)
    return a


def measure(a: argparse.Namespace) -> dict[str, Any]:
    for path, what in ((a.bench_bin, "the C bench client"), (a.module, "the cxl_ring module"),
                       (a.null_server_bin, "the null server"),
                       *(() if a.no_notify else ((a.wake_bin, "the wake-up latency tool"),))):
        if not Path(path).exists():
            raise BenchError(f"{path} ({what}) does not exist: run `make build` first")
    if not shutil.which("redis-benchmark"):
        raise BenchError("redis-benchmark is not installed (apt-get install redis-tools)")
    server_executable = shutil.which(a.redis_server)
    if server_executable is None:
        raise BenchError(f"{a.redis_server}: no such server binary (give --redis-server PATH)")

    pin = not a.no_pin and cpu_count() >= 2
    server_cpu = a.server_cpu if pin else None
    client_cpu = a.client_cpu if pin else None
    notes: list[str] = []
    if not pin:
        notes.append("processes were not pinned (fewer than 2 CPUs, or --no-pin)")
    commands: dict[str, str] = {}
    region = f"/dev/shm/cxlbench-{os.getpid()}"
    res: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": a.quick,
        "repeat": a.repeat,
        "machine": machine_info(a.redis_server),
        "server_executable": server_executable,
        "pinning": {"server_cpu": server_cpu, "client_cpu": client_cpu},
        "value_size": VALUE_SIZE,
        "keyspace": LARGE_KEYSPACE,
        "keyspace_small": SMALL_KEYSPACE,
    }
    load1, load5, _ = os.getloadavg()
    res["loadavg_at_start"] = [round(load1, 2), round(load5, 2)]
    if load1 > 0.5 * cpu_count():
        notes.append(f"the machine was busy when the run started (load average {load1:.1f} "
                     f"on {cpu_count()} CPUs): TCP suffers more from contention than the "
                     f"ring, so the ratios are flattering; rerun on a quiet machine")
    started = time.monotonic()

    # A generous client lease: the run measures the data path, not crash recovery, and on a
    # loaded 2-core machine (a test run beside TCG VMs) a load generator's heartbeat thread
    # has been seen to stand still past the default 2 s, which retired its session mid-phase.
    lease = ["client_lease_ms", str(BENCH_CLIENT_LEASE_MS)]
    server = RedisWithRing(a.module, region, cpu=server_cpu, redis_server=a.redis_server,
                           module_args=lease)
    secdsm = RedisWithRing(a.module, f"{region}-secdsm", security="secdsm",
                           groups=SECDSM_GROUPS, cpu=server_cpu, redis_server=a.redis_server,
                           module_args=lease)
    # The transport's own limit: the same channels and lease, GET answering VALUE_SIZE bytes.
    null = NullServer(a.null_server_bin, f"{region}-null", channels=server.channels,
                      cpu=server_cpu, args=["--client-lease-ms", str(BENCH_CLIENT_LEASE_MS)])
    with contextlib.ExitStack() as stack:
        stack.enter_context(server)
        commands["redis_server"] = shlex.join(server.command)
        # The Sec-DSM region's server (the same channels, in two groups) and the null server;
        # both stopped once the ring runs are done, before any TCP run.
        secdsm_stack = stack.enter_context(contextlib.ExitStack())
        secdsm_stack.enter_context(secdsm)
        commands["redis_server_secdsm"] = shlex.join(secdsm.command)
        secdsm_stack.enter_context(null)
        commands["null_server"] = shlex.join(null.command)
        secdsm_view = secdsm.view(SECDSM_BENCH_GROUP)
        res["secdsm"] = {"groups": list(SECDSM_GROUPS), "bench_group": SECDSM_BENCH_GROUP,
                         "view": sorted(os.listdir(secdsm_view))}
        info = server.info("server")
        res.update(server_identity(info))
        # (not INFO's "executable": Redis makes it from its cwd and a relative argv[0])
        res["server_info"] = {k: info[k] for k in (
            "server_name", "redis_version", "valkey_version", "redis_mode", "redis_build_id",
            "arch_bits") if k in info}
        tcp = ["-h", "127.0.0.1", "-p", str(server.port)]
        unix = ["-s", server.unix_socket]
        t = a.timeout

        def pipelined(keyspace: int) -> list[str]:
            return ["--op", "set,get", "--bench", str(a.ring_requests), "--pipeline",
                    "--max-inflight", str(a.max_inflight), "--value-size", str(VALUE_SIZE),
                    "--keyspace", str(keyspace)]

        def small_keyspace_ring() -> dict[str, dict[str, Any]]:
            # Only the small keyspace in the server while it runs (the bench SETs every key
            # before its GET phase; the 100 000-key runs fill theirs again the same way).
            server.flushall()
            return ring_bench(a.bench_bin, server.region, pipelined(SMALL_KEYSPACE),
                              client_cpu, t, commands, "ring_pipelined_small")

        # Alternating, so that a drift in the machine's load weighs on every column alike.
        large = pipelined(LARGE_KEYSPACE)
        rings = paired_runs(a.repeat, {
            "off": lambda: ring_bench(a.bench_bin, server.region, large, client_cpu, t,
                                      commands, "ring_pipelined"),
            "secdsm": lambda: ring_bench(a.bench_bin, secdsm_view, large, client_cpu, t,
                                         commands, "ring_pipelined_secdsm"),
            "small": small_keyspace_ring,
            "null": lambda: ring_bench(a.bench_bin, null.region, large, client_cpu, t,
                                       commands, "ring_pipelined_null"),
        }, key="rps")
        ring = rings["off"]
        res["ring_set_rps"] = ring["SET"]["rps"]
        res["ring_get_rps"] = ring["GET"]["rps"]
        res["ring_pipelined"] = ring
        res["secdsm_ring_set_rps"] = rings["secdsm"]["SET"]["rps"]
        res["secdsm_ring_get_rps"] = rings["secdsm"]["GET"]["rps"]
        res["secdsm_ring_pipelined"] = rings["secdsm"]
        res["ring_small_set_rps"] = rings["small"]["SET"]["rps"]
        res["ring_small_get_rps"] = rings["small"]["GET"]["rps"]
        res["ring_small_pipelined"] = rings["small"]
        res["ring_null_set_rps"] = rings["null"]["SET"]["rps"]
        res["ring_null_get_rps"] = rings["null"]["GET"]["rps"]
        res["ring_null_pipelined"] = rings["null"]

        rtt_args = ["--op", "get", "--bench", str(a.rtt_requests), "--latency",
                    "--value-size", str(VALUE_SIZE), "--keyspace", str(LARGE_KEYSPACE),
                    "--csv", os.devnull]
        rtts = paired_runs(a.repeat, {
            "off": lambda: ring_bench(a.bench_bin, server.region, rtt_args, client_cpu, t,
                                      commands, "ring_rtt"),
            "secdsm": lambda: ring_bench(a.bench_bin, secdsm_view, rtt_args, client_cpu, t,
                                         commands, "ring_rtt_secdsm"),
        }, key="p50_us")
        rtt = rtts["off"]
        res["ring_rtt_p50_us"] = rtt["GET"]["p50_us"]
        res["ring_rtt_p99_us"] = rtt["GET"]["p99_us"]
        res["ring_rtt_avg_us"] = rtt["GET"]["avg_us"]
        res["ring_rtt_rps"] = rtt["GET"]["rps"]
        res["secdsm_ring_rtt_p50_us"] = rtts["secdsm"]["GET"]["p50_us"]
        res["secdsm_ring_rtt_p99_us"] = rtts["secdsm"]["GET"]["p99_us"]
        res["secdsm_ring_rtt_avg_us"] = rtts["secdsm"]["GET"]["avg_us"]
        res["secdsm_ring_rtt_rps"] = rtts["secdsm"]["GET"]["rps"]
        if not secdsm.alive():
            raise BenchError(f"the secdsm redis-server died during the run:\n"
                             f"{secdsm.log_tail()}")
        if not null.alive():
            raise BenchError(f"cxl-null-server died during the run:\n{null.log()}")
        secdsm_stack.close()

        def small_keyspace_tcp() -> dict[str, dict[str, Any]]:
            server.flushall()
            return redis_benchmark(server, tcp, "set,get", a.tcp_requests, 16, 50, client_cpu,
                                   t, commands, "tcp_p16_small", keyspace=SMALL_KEYSPACE)

        p16s = paired_runs(a.repeat, {
            "large": lambda: redis_benchmark(server, tcp, "set,get", a.tcp_requests, 16, 50,
                                             client_cpu, t, commands, "tcp_p16"),
            "small": small_keyspace_tcp,
        }, key="rps")
        p16 = p16s["large"]
        res["tcp_p16_set_rps"] = p16["SET"]["rps"]
        res["tcp_p16_get_rps"] = p16["GET"]["rps"]
        res["tcp_p16_small_set_rps"] = p16s["small"]["SET"]["rps"]
        res["tcp_p16_small_get_rps"] = p16s["small"]["GET"]["rps"]

        p1 = median_runs(a.repeat, lambda: redis_benchmark(
            server, tcp, "set,get", a.tcp_p1_requests, 1, 50, client_cpu, t, commands,
            "tcp_p1"), key="rps")
        res["tcp_p1_set_rps"] = p1["SET"]["rps"]
        res["tcp_p1_get_rps"] = p1["GET"]["rps"]

        u16 = median_runs(a.repeat, lambda: redis_benchmark(
            server, unix, "set,get", a.tcp_requests, 16, 50, client_cpu, t, commands,
            "unix_p16"), key="rps")
        res["unix_p16_set_rps"] = u16["SET"]["rps"]
        res["unix_p16_get_rps"] = u16["GET"]["rps"]

        trtt = median_runs(a.repeat, lambda: redis_benchmark(
            server, tcp, "get", a.rtt_requests, 1, 1, client_cpu, t, commands, "tcp_rtt"),
            key="p50_latency_ms")
        res["tcp_rtt_p50_us"] = trtt["GET"]["p50_latency_ms"] * 1000.0
        res["tcp_rtt_p99_us"] = trtt["GET"]["p99_latency_ms"] * 1000.0
        res["tcp_rtt_avg_us"] = trtt["GET"]["avg_latency_ms"] * 1000.0
        res["tcp_rtt_rps"] = trtt["GET"]["rps"]

        if not a.no_gateway:
            res.update(gateway_bench(a, server, client_cpu, commands, notes))

        if not a.no_python:
            # In this process: pin it like the other load generators while it runs.
            saved = os.sched_getaffinity(0)
            if client_cpu is not None:
                os.sched_setaffinity(0, {client_cpu})
            try:
                py = python_bench(server, a.quick, notes)
            finally:
                os.sched_setaffinity(0, saved)
            for key, value in py.items():
                # py_bench measures some things we do too (tcp_p16_get_rps, its own
                # redis-benchmark run): keep ours, file its under py_bench_<key>.
                res[key if key not in res else f"py_bench_{key}"] = value

        if pin:
            # The floor of any ring round trip between these two CPUs (bench/c/cacheline.c).
            cmd = [str(a.bench_bin), "--cacheline-rtt", f"{client_cpu},{server_cpu}"]
            commands["cacheline_rtt"] = shlex.join(cmd)
            out = run_cmd(cmd, None, 60)
            res["cacheline_rtt_ns"] = float(out.split(":")[-1].split()[0])

        if not server.alive():
            raise BenchError(f"redis-server died during the run:\n{server.log_tail()}")
        res["server_idle_cpu_pct"] = round(idle_cpu_pct(server.pid, 1.0, a.idle_seconds), 3)
        res["idle_cpu_method"] = (f"utime+stime of redis-server from /proc/{{pid}}/stat over "
                                  f"{a.idle_seconds} s, after 1 s without traffic")

    if not a.no_notify:
        # Servers of their own, after the main one has stopped.
        res["notify"] = notify_bench(a, region, server_cpu, client_cpu, commands)

    if not a.no_fairness:
        # Servers of its own, after the main one has stopped: bench/fairness.py.
        res["fairness"] = fairness_bench(a, server_cpu, client_cpu)
        commands.update({f"fairness_{i}": c["load_command"]
                         for i, c in enumerate(res["fairness"]["cases"])})

    res["ratio_ring_get_vs_tcp_p16"] = ratio(res["ring_get_rps"], res["tcp_p16_get_rps"])
    res["ratio_ring_set_vs_tcp_p16"] = ratio(res["ring_set_rps"], res["tcp_p16_set_rps"])
    res["ratio_ring_get_vs_unix_p16"] = ratio(res["ring_get_rps"], res["unix_p16_get_rps"])
    res["ratio_ring_get_vs_tcp_p1"] = ratio(res["ring_get_rps"], res["tcp_p1_get_rps"])
    res.update(keyspace_ratios(res))
    res.update(gateway_ratios(res))
    res["ratio_rtt_p50_ring_vs_tcp"] = ratio(res["ring_rtt_p50_us"], res["tcp_rtt_p50_us"])
    # secdsm/off as rates (higher is better): throughput, and the inverse of the round trip.
    res["ratio_secdsm_vs_off_get_rps"] = ratio(res["secdsm_ring_get_rps"], res["ring_get_rps"])
    res["ratio_secdsm_vs_off_set_rps"] = ratio(res["secdsm_ring_set_rps"], res["ring_set_rps"])
    res["ratio_secdsm_vs_off_rtt_p50"] = ratio(res["ring_rtt_p50_us"],
                                               res["secdsm_ring_rtt_p50_us"])
    res["ratio_secdsm_vs_off_rtt_avg"] = ratio(res["ring_rtt_avg_us"],
                                               res["secdsm_ring_rtt_avg_us"])
    res["targets"] = verdicts(res)
    # The checkout's own path is this machine's business: commands are written relative to it.
    res["commands"] = {k: v.replace(f"{ROOT}/", "") for k, v in commands.items()}
    res["notes"] = notes
    res["seconds"] = round(time.monotonic() - started, 1)
    return res


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        res = measure(a)
    except BenchError as e:
        print(f"bench/run.py: cannot measure: {e}", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "latest.json").write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    (a.out / "latest.md").write_text(markdown(res))
    print(markdown(res))
    for name, v in res["targets"].items():
        print(f"{v['result']}: {name} = {fmt(v['value'])} (target {v['target']})")
    print(f"wrote {a.out / 'latest.json'} and {a.out / 'latest.md'} in {res['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
