#!/usr/bin/env python3
"""Python ring client vs redis-py over TCP, and redis-benchmark through the RESP proxy.

Same server, same run: one redis-server with the cxl_ring module serves both the ring region
and TCP. Measured:

* pipelined GET and SET throughput: cxl_ring.RingClient.pipeline() vs redis-py's
  pipeline(transaction=False) (hiredis parser when installed), the same loop, the same
  pipeline size (1000) and keys;
* unpipelined round trip (GET of one existing key): p50/p99 per request, both ways; when the
  optional C core (cxl_ring._speedups) is in use, the pure-Python path too (py_ring_pure_*);
* redis-benchmark -P 16 GET through ``cxl-ring proxy`` vs the same command on direct TCP;
* with ``secdsm_path`` (a Sec-DSM region directory, or a view of one group of it, served by a
  second server), the ring's pipelined GET and round trip there too, against the same numbers
  on ``region_path`` (one file, security off): what mapping each segment on its own costs the
  Python client.

The entry point is ``run(tcp_port=..., region_path=..., quick=...)``: bench/run.py (``make
bench``) calls exactly that, and it returns the flat dict of results (and writes it to
``out_json`` when given). Standalone:

    .venv/bin/python bench/py_bench.py --start-server --out /tmp/py_bench.json
    .venv/bin/python bench/py_bench.py --port 6379 --path /dev/shm/cxl0 --out r.json
    .venv/bin/python bench/py_bench.py --start-server --pin --rtt-only   # round trip only
    .venv/bin/python bench/py_bench.py --start-server --security both --quick   # secdsm vs off

Keys: py_ring_pipe_rps, py_tcp_pipe_rps (GET), py_ring_pipe_set_rps, py_tcp_pipe_set_rps,
py_ring_rtt_p50_us, py_tcp_rtt_p50_us (and p99), py_ring_pure_rtt_p50_us (and p99; only
when the C core is in use), proxy_p16_get_rps, tcp_p16_get_rps, the
ratios py_pipe_ring_vs_tcp and py_rtt_ring_vs_tcp, and py_bench_commands. With
``secdsm_path``: py_secdsm_ring_pipe_rps, py_secdsm_ring_rtt_p50_us (and p99) and, as rates
(higher is better, 1.0 = no cost), py_secdsm_vs_off_pipe and py_secdsm_vs_off_rtt_p50.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "client"))

import cxl_ring  # noqa: E402
from cxl_ring import channel  # noqa: E402

PIPE = 1000
VALUE = b"v" * 64


def _keys(n: int) -> list[bytes]:
    return [b"pyb:%08d" % i for i in range(n)]


def _pipelined(make_pipe: Callable[[], Any], keys: list[bytes], total: int, op: str) -> float:
    """Requests per second of `total` GETs/SETs in pipelines of PIPE (queueing included)."""
    nkeys = len(keys)
    done = 0
    t0 = time.perf_counter()
    while done < total:
        pipe = make_pipe()
        base = done % nkeys
        if op == "get":
            for i in range(PIPE):
                pipe.get(keys[(base + i) % nkeys])
        else:
            for i in range(PIPE):
                pipe.set(keys[(base + i) % nkeys], VALUE)
        out = pipe.execute()
        if len(out) != PIPE:
            raise RuntimeError(f"pipeline returned {len(out)} results for {PIPE}")
        done += PIPE
    return total / (time.perf_counter() - t0)


def _rtt(get: Callable[[bytes], Any], key: bytes, n: int) -> tuple[float, float]:
    clock = time.perf_counter_ns
    lat = []
    for _ in range(min(1000, n)):         # warm-up: caches, the server's poll loop
        get(key)
    for _ in range(n):
        t = clock()
        get(key)
        lat.append(clock() - t)
    lat.sort()
    return lat[len(lat) // 2] / 1000, lat[int(len(lat) * 0.99)] / 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_benchmark(port: int, n: int) -> tuple[float, list[str]]:
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "get", "-n", str(n),
           "-P", "16", "-c", "50", "-q"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    m = re.search(r"GET: ([\d.]+) requests per second", out.stdout)
    if not m:
        raise RuntimeError(f"redis-benchmark said: {out.stdout[-300:]} {out.stderr[-300:]}")
    return float(m.group(1)), cmd


@contextlib.contextmanager
def _proxy(region: str):
    port = _free_port()
    cmd = [sys.executable, "-m", "cxl_ring.cli", "proxy", "--path", region, "--listen",
           f"127.0.0.1:{port}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "client")}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("cxl-ring proxy did not start") from None
                time.sleep(0.05)
        yield port, ["cxl-ring", "proxy", "--path", region, "--listen", f"127.0.0.1:{port}"]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _pure_rtt(region_path: str, key: bytes, n: int) -> tuple[float, float]:
    """The round trip with the pure-Python session, though the C core is importable."""
    saved = channel.SessionType
    channel.SessionType = channel.Session
    try:
        with cxl_ring.RingClient(region_path, timeout=10) as ring:
            return _rtt(ring.get, key, n)
    finally:
        channel.SessionType = saved


def _secdsm(path: str, keys: list[bytes], total: int, rtt_n: int, rtt_only: bool,
            res: dict[str, Any]) -> None:
    """The ring on a Sec-DSM region (directory or view): pipelined GET and the round trip."""
    with cxl_ring.RingClient(path, timeout=10) as ring:
        fill = ring.pipeline()
        for k in keys:
            fill.set(k, VALUE)
        fill.execute()
        if not rtt_only:
            res["py_secdsm_ring_pipe_rps"] = _pipelined(ring.pipeline, keys, total, "get")
            res["py_secdsm_vs_off_pipe"] = res["py_secdsm_ring_pipe_rps"] / res[
                "py_ring_pipe_rps"]
        res["py_secdsm_ring_rtt_p50_us"], res["py_secdsm_ring_rtt_p99_us"] = _rtt(
            ring.get, keys[0], rtt_n)
    res["py_secdsm_vs_off_rtt_p50"] = res["py_ring_rtt_p50_us"] / res[
        "py_secdsm_ring_rtt_p50_us"]


def run(*, tcp_port: int, region_path: str, out_json: str | None = None,
        quick: bool = False, rtt_only: bool = False,
        secdsm_path: str | None = None) -> dict[str, Any]:
    """The entry point: measure everything against a running redis-server with the cxl_ring
    module (TCP on 127.0.0.1:``tcp_port``, ring region ``region_path``: a file or a region
    directory); returns (and with ``out_json`` writes) the keys listed in the module docstring.

    rtt_only: only the unpipelined round trips (no pipelines, no proxy).
    secdsm_path: a Sec-DSM region directory or view (another server's) to compare with."""
    import redis

    total = 20_000 if quick else 200_000
    rtt_n = 2_000 if quick else 20_000
    rb_n = 50_000 if quick else 500_000
    keys = _keys(10_000)
    res: dict[str, Any] = {}
    tcp = redis.Redis(host="127.0.0.1", port=tcp_port)
    try:
        hiredis_version = __import__("hiredis").__version__
    except ImportError:
        hiredis_version = None
    with cxl_ring.RingClient(region_path, timeout=10) as ring:
        fill = ring.pipeline()
        for k in keys:
            fill.set(k, VALUE)
        fill.execute()
        if not rtt_only:
            res["py_ring_pipe_set_rps"] = _pipelined(ring.pipeline, keys, total, "set")
            res["py_tcp_pipe_set_rps"] = _pipelined(lambda: tcp.pipeline(transaction=False),
                                                    keys, total, "set")
            res["py_ring_pipe_rps"] = _pipelined(ring.pipeline, keys, total, "get")
            res["py_tcp_pipe_rps"] = _pipelined(lambda: tcp.pipeline(transaction=False), keys,
                                                total, "get")
        res["py_ring_rtt_p50_us"], res["py_ring_rtt_p99_us"] = _rtt(ring.get, keys[0], rtt_n)
        res["py_tcp_rtt_p50_us"], res["py_tcp_rtt_p99_us"] = _rtt(tcp.get, keys[0], rtt_n)
    if channel.SPEEDUPS:
        res["py_ring_pure_rtt_p50_us"], res["py_ring_pure_rtt_p99_us"] = _pure_rtt(
            region_path, keys[0], rtt_n)
    if secdsm_path:
        _secdsm(secdsm_path, keys, total, rtt_n, rtt_only, res)
    tcp.close()
    if not rtt_only:
        res["py_pipe_ring_vs_tcp"] = res["py_ring_pipe_rps"] / res["py_tcp_pipe_rps"]
    res["py_rtt_ring_vs_tcp"] = res["py_ring_rtt_p50_us"] / res["py_tcp_rtt_p50_us"]
    if channel.SPEEDUPS:
        res["py_rtt_pure_vs_tcp"] = res["py_ring_pure_rtt_p50_us"] / res["py_tcp_rtt_p50_us"]
    commands = {
        "pipelined": f"RingClient.pipeline() vs redis.Redis(port={tcp_port}).pipeline("
                     f"transaction=False): {total} GET and {total} SET in pipelines of {PIPE}, "
                     f"64-byte values, 10000 keys",
        "rtt": f"{rtt_n} x get(one key) after 1000 warm-up, p50/p99",
    }
    if secdsm_path:
        commands["secdsm"] = (f"the same pipelined GET and rtt on RingClient({secdsm_path!r}) "
                              f"(Sec-DSM segments), another server")
    if shutil.which("redis-benchmark") and not rtt_only:
        with _proxy(region_path) as (pport, pcmd):
            res["proxy_p16_get_rps"], rb_cmd = _redis_benchmark(pport, rb_n)
        res["tcp_p16_get_rps"], rb_tcp_cmd = _redis_benchmark(tcp_port, rb_n)
        res["proxy_vs_tcp_p16_get"] = res["proxy_p16_get_rps"] / res["tcp_p16_get_rps"]
        commands["proxy"] = " ".join(pcmd) + "  +  " + " ".join(rb_cmd)
        commands["tcp"] = " ".join(rb_tcp_cmd)
    res["py_bench_commands"] = commands
    res["py_bench_env"] = {"python": platform.python_version(),
                           "redis_py": redis.__version__, "hiredis": hiredis_version,
                           "cas_backend": cxl_ring.CAS_BACKEND, "cpus": os.cpu_count(),
                           "speedups": channel.SPEEDUPS, "quick": quick,
                           "region_form": _form(region_path),
                           "secdsm_path": secdsm_path}
    res["py_targets"] = {"rtt_p50_ring_vs_tcp_le_0.1": res["py_rtt_ring_vs_tcp"] <= 0.1}
    if not rtt_only:
        res["py_targets"]["pipelined_ring_vs_tcp_ge_3x"] = res["py_pipe_ring_vs_tcp"] >= 3.0
    if channel.SPEEDUPS:
        res["py_targets"]["rtt_p50_pure_python_vs_tcp_le_0.1"] = res["py_rtt_pure_vs_tcp"] <= 0.1
    if out_json:
        Path(out_json).write_text(json.dumps(res, indent=2) + "\n")
    return res


def _form(path: str) -> str:
    return "secdsm" if os.path.isdir(path) else "off"


# A Sec-DSM region of the bench: two groups of 4 channels; the bench is given group 0's view
# (header, client-0, server-0), as a client VM would be.
SECDSM_GROUPS = "4,4"


@contextlib.contextmanager
def _own_server(pin: bool = False, redis_server: str = "redis-server",
                security: str = "off"):
    """``redis_server`` with build/cxl_ring.so; with ``pin``, on the last CPU (poll thread
    too) while this process moves to CPU 0. ``security="secdsm"``: the region is a directory
    of segment files (groups SECDSM_GROUPS) and what is yielded is group 0's view of it."""
    module = ROOT / "build" / "cxl_ring.so"
    if not module.exists():
        raise SystemExit(f"{module} does not exist: make build")
    port = _free_port()
    region = f"/dev/shm/cxl-pybench-{os.getpid()}-{security}"
    view = region + "-view"
    tmp = tempfile.mkdtemp(prefix="py-bench-")
    argv = [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", tmp, "--loadmodule", str(module), "path", region]
    if security == "secdsm":
        os.mkdir(region, 0o700)
        argv += ["groups", SECDSM_GROUPS]
    else:
        argv += ["channels", "8"]
    if pin:
        cpu = max(os.sched_getaffinity(0))
        argv = ["taskset", "-c", str(cpu)] + argv + ["cpu", str(cpu)]
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with cxl_ring.RingClient(region, timeout=1) as r:
                    r.ping()
                break
            except (cxl_ring.CxlRingError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("redis-server with cxl_ring.so did not start") from None
                time.sleep(0.05)
        if security == "secdsm":
            yield port, cxl_ring.make_view(region, view, cxl_ring.group_segments(0))
        else:
            yield port, region
    finally:
        proc.terminate()
        proc.wait(10)
        cxl_ring.remove_view(view)
        if os.path.isdir(region):
            shutil.rmtree(region, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(region)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, help="TCP port of the redis-server with cxl_ring")
    ap.add_argument("--path", help="its ring region")
    ap.add_argument("--start-server", action="store_true",
                    help="start a redis-server with build/cxl_ring.so for this run")
    ap.add_argument("--out", help="write the JSON here")
    ap.add_argument("--quick", action="store_true", help="a few seconds instead of ~a minute")
    ap.add_argument("--rtt-only", action="store_true",
                    help="only the unpipelined round trips (no pipelines, no proxy)")
    ap.add_argument("--pin", action="store_true",
                    help="with --start-server: server on the last CPU, this client on the first")
    ap.add_argument("--redis-server", default="redis-server",
                    help="with --start-server: the server binary (default redis-server)")
    ap.add_argument("--security", choices=("off", "secdsm", "both"), default="off",
                    help="with --start-server: the region one file (off), a directory of "
                         "segment files given to the bench as one group's view (secdsm), or "
                         "both, a server each, compared (default off)")
    ap.add_argument("--secdsm-path",
                    help="with --port/--path: a Sec-DSM region directory or view (another "
                         "server's) to compare with")
    a = ap.parse_args()
    opts = {"out_json": a.out, "quick": a.quick, "rtt_only": a.rtt_only}
    if a.start_server and a.security == "both":
        with _own_server(a.pin, a.redis_server) as (port, region), \
                _own_server(a.pin, a.redis_server, "secdsm") as (_, view):
            res = run(tcp_port=port, region_path=region, secdsm_path=view, **opts)
    elif a.start_server:
        with _own_server(a.pin, a.redis_server, a.security) as (port, region):
            res = run(tcp_port=port, region_path=region, **opts)
    elif a.port and a.path:
        res = run(tcp_port=a.port, region_path=a.path, secdsm_path=a.secdsm_path, **opts)
    else:
        ap.error("give --port and --path, or --start-server")
    for k, v in res.items():
        if isinstance(v, float):
            print(f"{k:28} {v:14.2f}")
    print(json.dumps(res["py_targets"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
