#!/usr/bin/env python3
"""TCP PING latency while the ring is saturated: is the driver fair to TCP clients?

The poll thread serves the rings while it holds Redis's lock (the GIL); a TCP client waits
for the main thread, which needs that lock. This measures how long a TCP ``PING`` to the
same server waits while ring clients keep the poll thread busy, in every case of

    channels (8, 256) x op (GET, SET) x value (64 B, 1 MiB) x client (pipelined, no-read)

``pipelined``: ``cxl-ring-bench --pipeline`` on every channel, reading its replies.
``no-read``: ``cxl-ring-bench --no-read``, an attacker: requests as fast as the rings take
them, replies never read (response rings fill, answers wait in the server), and a channel
that takes nothing for 50 ms released and claimed again.

Each case gets its own redis-server with the module (``channels N``, default rings, on a
region file in /dev/shm), GET cases their keys SET first over TCP; the load runs for the
whole case and is ended once the PINGs are done; one TCP connection sends ``PING`` every
2 ms and times each answer. Everything is bounded: ``pings`` PINGs (more when they take
less than MIN_PING_WINDOW_S), each answered within ``ping_timeout`` s (else counted as a
timeout, at that value), at most ``case_seconds`` of PINGs per case. The pinger shares a
CPU (``client_cpu``) with the load generator, which runs at nice 19, and pings at
SCHED_FIFO where allowed (``pinger_priority``), so that what is
timed is the server's answer, not the pinger waiting for its own CPU. The target (the issue
"The poll loop: fair to TCP clients"): PING p99 <= 5 ms in every case.

Used by ``bench/run.py`` (``make bench``), or on its own::

    .venv/bin/python bench/fairness.py                       # every case, ~1 min
    .venv/bin/python bench/fairness.py --pings 100 --channels 256 --value-size 1048576
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from run import BenchError, RedisWithRing, cpu_count, pinner  # noqa: E402

TARGET_P99_MS = 5.0
CHANNELS = (8, 256)
OPS = ("get", "set")
VALUE_SIZES = (64, 1 << 20)
CLIENTS = ("pipelined", "no-read")
PING_INTERVAL_S = 0.002
# PINGs go on for at least this long, so that a window of few PINGs still spans several of
# the --no-read attacker's 100 ms rounds (between two, its jammed channels serve nothing).
MIN_PING_WINDOW_S = 0.5
WARMUP_S = 0.5
LEASE = ["client_lease_ms", "30000"]


_case_numbers = itertools.count()


def keyspace_for(value_size: int) -> int:
    """Keys the load uses: enough for 64 B values, few enough to SET first at 1 MiB."""
    return 64 if value_size > 4096 else 10000


def key_name(k: int) -> bytes:
    """The bench's key names (bench/c/bench.h): key:000000000042."""
    return b"key:%012d" % k


# ---------------------------------------------------------------------------
# RESP over one TCP connection
# ---------------------------------------------------------------------------

def encode(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Resp:
    """A blocking RESP2 connection with a timeout on every read."""

    def __init__(self, port: int, timeout: float) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise BenchError("the server closed the connection")
        self.buf += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def read(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b"-"):
            return rest if kind == b"+" else BenchError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self._fill()
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise BenchError(f"unexpected RESP line {line[:40]!r}")

    def call(self, *args: bytes) -> Any:
        self.sock.sendall(encode(*args))
        reply = self.read()
        if isinstance(reply, BenchError):
            raise reply
        return reply


def driver_info(conn: Resp) -> dict[str, Any]:
    """CXLRING.INFO: the requests served (all channels) and the server-wide counters
    (gil_holds, gil_hold_max_us, gil_handoffs, ... when this build has them)."""
    info = conn.call(b"CXLRING.INFO")
    fields = dict(zip(info[::2], info[1::2]))
    out: dict[str, Any] = {k.decode(): v for k, v in fields.items() if isinstance(v, int)}
    out["requests"] = sum(int(dict(zip(c[::2], c[1::2])).get(b"requests") or 0)
                          for c in fields.get(b"channels") or [])
    return out


def prefill(port: int, value_size: int, keys: int) -> None:
    """SET the load's keys over TCP, pipelined, so that its GETs hit."""
    conn = Resp(port, 30.0)
    try:
        value = b"x" * value_size
        for first in range(0, keys, 256):
            batch = range(first, min(keys, first + 256))
            conn.sock.sendall(b"".join(encode(b"SET", key_name(k), value) for k in batch))
            for _ in batch:
                reply = conn.read()
                if reply != b"OK":
                    raise BenchError(f"prefill SET answered {reply!r}")
    finally:
        conn.close()


def quantile(sorted_ms: list[float], q: float) -> float | None:
    """Nearest-rank quantile of an ascending list."""
    if not sorted_ms:
        return None
    rank = max(1, -(-int(q * 1000) * len(sorted_ms) // 1000))  # ceil(q * n)
    return sorted_ms[min(rank, len(sorted_ms)) - 1]


@contextlib.contextmanager
def pinger_priority() -> Iterator[str]:
    """Run the PINGs (this thread) ahead of the load generator on their shared CPU:
    SCHED_FIFO 1 where that is allowed (root, CAP_SYS_NICE), else the normal policy (the
    load runs at nice 19 either way). 256 load threads at nice 19 still weigh 3.75 times a
    nice 0 pinger, which then waits for its own CPU for milliseconds: that is not the
    server's answer. Yields the policy used: "fifo" or "other"."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except (PermissionError, OSError):
        yield "other"
        return
    try:
        yield "fifo"
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def ping_latencies(port: int, pings: int, timeout: float, deadline: float) -> dict[str, Any]:
    """PING every PING_INTERVAL_S over one connection; each answer timed (ms). A PING not
    answered within timeout counts as a timeout, at timeout, and the connection is made
    anew. Stops after `pings` and MIN_PING_WINDOW_S, or at the deadline (monotonic)."""
    lat: list[float] = []
    timeouts = 0
    conn = Resp(port, timeout)
    window_end = time.monotonic() + MIN_PING_WINDOW_S
    try:
        while ((len(lat) < pings or time.monotonic() < window_end) and
               time.monotonic() < deadline):
            t0 = time.perf_counter()
            try:
                conn.sock.sendall(b"PING\r\n")
                reply = conn.read()
            except (TimeoutError, socket.timeout):
                timeouts += 1
                lat.append(timeout * 1000.0)
                conn.close()
                conn = Resp(port, timeout)
                continue
            lat.append((time.perf_counter() - t0) * 1000.0)
            if reply != b"PONG":
                raise BenchError(f"PING answered {reply!r}")
            time.sleep(PING_INTERVAL_S)
    finally:
        conn.close()
    lat.sort()
    return {"pings": len(lat), "timeouts": timeouts,
            "p50_ms": quantile(lat, 0.50), "p99_ms": quantile(lat, 0.99),
            "max_ms": lat[-1] if lat else None}


# ---------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------

def load_command(bench: Path, region: str, channels: int, op: str, value_size: int,
                 client: str, seconds: float) -> list[str]:
    cmd = [str(bench), "--path", region, "--op", op, "--threads", str(channels),
           "--duration", f"{seconds:g}", "--value-size", str(value_size),
           "--keyspace", str(keyspace_for(value_size)), "--no-prefill", "--quiet",
           "--timeout", f"{seconds + 30:g}"]
    if client == "no-read":
        return cmd + ["--no-read"]
    # A window that keeps every ring busy without holding many 1 MiB messages per thread.
    return cmd + ["--pipeline", "--max-inflight", "256" if value_size <= 4096 else "4"]


def niced(cpu: int | None) -> Callable[[], None]:
    pin = pinner(cpu)

    def run() -> None:
        if pin:
            pin()
        os.nice(19)

    return run


def measure_case(module: Path, bench: Path, channels: int, op: str, value_size: int,
                 client: str, *, pings: int, ping_timeout: float, case_seconds: float,
                 server_cpu: int | None, client_cpu: int | None, redis_server: str,
                 module_args: list[str] | None = None) -> dict[str, Any]:
    """One case on a server of its own; returns the PING figures and what the ring served."""
    region = f"/dev/shm/cxlbench-fair-{os.getpid()}-{next(_case_numbers)}"
    server = RedisWithRing(module, region, channels=channels, cpu=server_cpu,
                           redis_server=redis_server, module_args=LEASE + (module_args or []))
    case: dict[str, Any] = {"channels": channels, "op": op.upper(), "value_size": value_size,
                            "client": client}
    with server:
        if op == "get":
            prefill(server.port, value_size, keyspace_for(value_size))
        # The load outlives the PINGs; it is ended below once they are done.
        cmd = load_command(bench, region, channels, op, value_size, client,
                           WARMUP_S + case_seconds + 30)
        case["load_command"] = shlex.join(cmd).replace(f"{ROOT}/", "")
        load = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, preexec_fn=niced(client_cpu))
        saved = os.sched_getaffinity(0)
        try:
            if client_cpu is not None:
                os.sched_setaffinity(0, {client_cpu})
            time.sleep(WARMUP_S)
            if load.poll() is not None:
                raise BenchError(f"the load exited early ({load.returncode}): "
                                 f"{load.stderr.read().decode(errors='replace')[-500:]}")
            with contextlib.closing(Resp(server.port, ping_timeout * 4)) as conn:
                info0, t0 = driver_info(conn), time.monotonic()
            started = time.monotonic()
            with pinger_priority() as policy:
                case.update(ping_latencies(server.port, pings, ping_timeout,
                                           started + case_seconds))
            case["pinger_policy"] = policy
            case["ping_seconds"] = round(time.monotonic() - started, 3)
            with contextlib.closing(Resp(server.port, ping_timeout * 4)) as conn:
                info1, t1 = driver_info(conn), time.monotonic()
            case["ring_served_rps"] = round((info1["requests"] - info0["requests"]) /
                                            (t1 - t0), 1)
            # The longest GIL hold of the whole case, and the main thread's turns.
            for key in ("gil_hold_max_us", "gil_holds", "gil_handoffs", "gil_handoffs_taken"):
                if key in info1:
                    case[key] = info1[key] - (info0[key] if key != "gil_hold_max_us" else 0)
            # Saturated throughout: the load was still running when the last PING came back,
            # and the ring served requests meanwhile (a load generator starved of its CPU by
            # other processes serves none, and the PINGs then measure an idle server).
            case["load_ran_throughout"] = load.poll() is None and info1["requests"] > \
                info0["requests"]
        finally:
            os.sched_setaffinity(0, saved)
            if load.poll() is None:
                load.send_signal(signal.SIGTERM)
            try:
                load.wait(timeout=10)
            except subprocess.TimeoutExpired:
                load.kill()
                load.wait(timeout=10)
            load.stderr.close()
        if not server.alive():
            raise BenchError(f"redis-server died during the case:\n{server.log_tail()}")
    return case


def case_label(c: dict[str, Any]) -> str:
    size = "1 MiB" if c["value_size"] == 1 << 20 else f"{c['value_size']} B"
    return f"{c['channels']} ch, {c['op']} {size}, {c['client']}"


def run(module: Path | None = None, bench: Path | None = None, *, quick: bool = False,
        pings: int | None = None, ping_timeout: float = 10.0, case_seconds: float = 30.0,
        server_cpu: int | None = None, client_cpu: int | None = None,
        redis_server: str = "redis-server", channels: tuple[int, ...] = CHANNELS,
        ops: tuple[str, ...] = OPS, value_sizes: tuple[int, ...] = VALUE_SIZES,
        clients: tuple[str, ...] = CLIENTS, module_args: list[str] | None = None,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every case; returns {"cases": [...], "worst_p99_ms", "target", "result", ...}."""
    module = module or ROOT / "build" / "cxl_ring.so"
    bench = bench or ROOT / "build" / "cxl-ring-bench"
    for path in (module, bench):
        if not Path(path).exists():
            raise BenchError(f"{path} does not exist: run `make build` first")
    pings = pings or (30 if quick else 300)
    cases = []
    for n in channels:
        for value_size in value_sizes:
            for op in ops:
                for client in clients:
                    c = measure_case(module, bench, n, op, value_size, client, pings=pings,
                                     ping_timeout=ping_timeout, case_seconds=case_seconds,
                                     server_cpu=server_cpu, client_cpu=client_cpu,
                                     redis_server=redis_server, module_args=module_args)
                    cases.append(c)
                    if progress:
                        progress(f"{case_label(c)}: PING p50 {fmt_ms(c['p50_ms'])} p99 "
                                 f"{fmt_ms(c['p99_ms'])} max {fmt_ms(c['max_ms'])} "
                                 f"({c['pings']} PINGs, {c['timeouts']} timeouts; ring "
                                 f"{c['ring_served_rps']:,.0f} req/s; longest GIL hold "
                                 f"{c.get('gil_hold_max_us', 'n/a')} us; handoffs "
                                 f"{c.get('gil_handoffs_taken', 'n/a')}/"
                                 f"{c.get('gil_handoffs', 'n/a')} taken)")
    return {"cases": cases, "pings_per_case": pings,
            "ping_interval_ms": PING_INTERVAL_S * 1000, "ping_timeout_s": ping_timeout,
            **summary(cases)}


def summary(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The worst p99 of the cases and the verdict: met when every case's p99 is within the
    target, no PING timed out and the load ran until the last PING."""
    worst = max((c["p99_ms"] for c in cases if c["p99_ms"] is not None), default=None)
    met = worst is not None and worst <= TARGET_P99_MS and all(
        c["load_ran_throughout"] and not c["timeouts"] for c in cases)
    return {"worst_p99_ms": worst, "target": f"<= {TARGET_P99_MS} ms (PING p99, every case)",
            "result": "PASS" if met else "MISS"}


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f} ms" if v < 10 else f"{v:,.0f} ms"


def markdown(res: dict[str, Any]) -> list[str]:
    """The table bench/run.py puts into latest.md."""
    policies = sorted({c.get("pinger_policy", "?") for c in res["cases"]})
    lines = [
        f"TCP PING while ring clients saturate the server (bench/fairness.py; "
        f"{res['pings_per_case']} PINGs per case, one every {res['ping_interval_ms']:g} ms, "
        f"pinger scheduled {'/'.join(policies)}):",
        "",
        "| channels | op | value | ring client | PING p50 | p99 | max | ring req/s | "
        "longest GIL hold |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in res["cases"]:
        size = "1 MiB" if c["value_size"] == 1 << 20 else f"{c['value_size']} B"
        flag = "" if c["load_ran_throughout"] else " (the load ended or served nothing)"
        hold = (fmt_ms(c["gil_hold_max_us"] / 1000.0) if c.get("gil_hold_max_us") is not None
                else "n/a")
        lines.append(f"| {c['channels']} | {c['op']} | {size} | {c['client']} | "
                     f"{fmt_ms(c['p50_ms'])} | {fmt_ms(c['p99_ms'])} | "
                     f"{fmt_ms(c['max_ms'])}{flag} | {c['ring_served_rps']:,.0f} | "
                     f"{hold} |")
    lines += ["", f"Worst PING p99: {fmt_ms(res['worst_p99_ms'])}; target {res['target']}: "
              f"**{'met' if res['result'] == 'PASS' else 'not met'}**."]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pings", type=int, default=300, help="PINGs per case (default 300)")
    p.add_argument("--case-seconds", type=float, default=30.0,
                   help="at most this long of PINGs per case (default 30)")
    p.add_argument("--ping-timeout", type=float, default=10.0,
                   help="a PING not answered within this many s is a timeout (default 10)")
    p.add_argument("--channels", type=int, action="append", help="8, 256 (default both)")
    p.add_argument("--op", action="append", choices=OPS, help="get, set (default both)")
    p.add_argument("--value-size", type=int, action="append",
                   help="64, 1048576 (default both)")
    p.add_argument("--client", action="append", choices=CLIENTS,
                   help="pipelined, no-read (default both)")
    p.add_argument("--module-arg", action="append", default=[],
                   help="extra driver arguments, e.g. --module-arg batch --module-arg 64")
    p.add_argument("--server-cpu", type=int, default=1)
    p.add_argument("--client-cpu", type=int, default=0)
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--module", type=Path, default=ROOT / "build" / "cxl_ring.so")
    p.add_argument("--bench-bin", type=Path, default=ROOT / "build" / "cxl-ring-bench")
    p.add_argument("--redis-server", default="redis-server")
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args(argv)
    pin = not a.no_pin and cpu_count() >= 2
    try:
        res = run(a.module, a.bench_bin, pings=a.pings, ping_timeout=a.ping_timeout,
                  case_seconds=a.case_seconds, server_cpu=a.server_cpu if pin else None,
                  client_cpu=a.client_cpu if pin else None, redis_server=a.redis_server,
                  channels=tuple(a.channels or CHANNELS), ops=tuple(a.op or OPS),
                  value_sizes=tuple(a.value_size or VALUE_SIZES),
                  clients=tuple(a.client or CLIENTS), module_args=a.module_arg,
                  progress=lambda line: print(line, flush=True))
    except BenchError as e:
        print(f"bench/fairness.py: cannot measure: {e}", file=sys.stderr)
        return 2
    print("\n".join(markdown(res)))
    if a.json:
        a.json.write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
