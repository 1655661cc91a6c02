"""Load generator behind ``cxl-ring bench``: the C bench's knobs, the Python client's numbers.

Phases (``set``, ``get``, ``mix``) run ``requests`` operations over ``threads`` threads (each
on its own channel; Python threads share the GIL, so more threads add channels, not CPU).
Every thread releases its channel when it finishes, and the prefill releases its own, so a
run never holds more than ``threads`` channels at a time.
Without ``pipeline`` every request is one round trip and its latency is measured alone;
with it, requests go in pipelines of ``max_inflight`` and each request is charged its
pipeline's round trip (like the C bench's one clock read per batch).
"""

from __future__ import annotations

import csv
import json
import os
import random
import threading
import time
from dataclasses import asdict, dataclass, field

from .client import RingClient

# The PoC's CSV header (as cxl-ring-bench writes it), so its plotting scripts still work.
CSV_HEADER = ("label,op,threads,rings,requests,pipeline,max_inflight,throughput_rps,avg_us,"
              "p50_us,p75_us,p90_us,p99_us,p99.9_us,p99.99_us,push_retries,sleep_ms")
QUANTILES = (("p50", 0.50), ("p75", 0.75), ("p90", 0.90), ("p99", 0.99), ("p99.9", 0.999),
             ("p99.99", 0.9999))


@dataclass
class BenchConfig:
    path: str
    ops: tuple = ("set", "get")
    requests: int = 100_000
    duration: float | None = None
    get_ratio: float = 0.9
    threads: int = 1
    pipeline: bool = False
    max_inflight: int = 1024
    value_size: int = 64
    keyspace: int = 100_000
    prefill: bool = True
    timeout: float = 60.0
    map_size: int | None = None
    layout: str = "auto"
    label: str = "py_ring"


@dataclass
class PhaseResult:
    op: str
    requests: int
    seconds: float
    rps: float
    errors: int
    latency_us: dict = field(default_factory=dict)   # avg, p50, ...


def _quantiles(samples_ns: list[int], weights: list[int] | None = None) -> dict:
    if not samples_ns:
        return {}
    if weights is None:
        s = sorted(samples_ns)
        total = len(s)
        out = {"avg": sum(s) / total / 1000}
        for name, q in QUANTILES:
            out[name] = s[min(total - 1, int(q * total))] / 1000
        return out
    pairs = sorted(zip(samples_ns, weights))
    total = sum(weights)
    out = {"avg": sum(a * w for a, w in pairs) / total / 1000}
    for name, q in QUANTILES:
        target, acc = q * total, 0
        for value, w in pairs:
            acc += w
            if acc > target:
                out[name] = value / 1000
                break
        else:
            out[name] = pairs[-1][0] / 1000
    return out


def _keys(keyspace: int) -> list[bytes]:
    return [b"key:%012d" % i for i in range(keyspace)]


def _worker(client: RingClient, cfg: BenchConfig, op: str, count: int, keys: list[bytes],
            value: bytes, seed: int, start: threading.Barrier, shared: dict,
            result: dict) -> None:
    rnd = random.Random(seed)
    nkeys = len(keys)
    lat: list[int] = []
    weights: list[int] = []
    errors = done = 0
    clock = time.perf_counter_ns
    try:
        client.ping()                        # claim this thread's channel before the clock
    except Exception as e:  # noqa: BLE001 - reported by the caller
        result["exception"] = e
    start.wait()
    stop_at = shared.get("stop_at")
    try:
        if "exception" in result:
            return
        if cfg.pipeline:
            pipe = client.pipeline()
            while done < count and (stop_at is None or time.monotonic() < stop_at):
                n = min(cfg.max_inflight, count - done)
                for _ in range(n):
                    k = keys[int(rnd.random() * nkeys)]
                    if op == "get" or (op == "mix" and rnd.random() < cfg.get_ratio):
                        pipe.get(k)
                    else:
                        pipe.set(k, value)
                t0 = clock()
                out = pipe.execute(raise_on_error=False)
                lat.append(clock() - t0)
                weights.append(n)
                errors += sum(isinstance(v, Exception) for v in out)
                done += n
        else:
            get, set_ = client.get, client.set
            while done < count and (stop_at is None or time.monotonic() < stop_at):
                k = keys[int(rnd.random() * nkeys)]
                is_get = op == "get" or (op == "mix" and rnd.random() < cfg.get_ratio)
                t0 = clock()
                if is_get:
                    get(k)
                else:
                    set_(k, value)
                lat.append(clock() - t0)
                done += 1
    except Exception as e:  # noqa: BLE001 - reported by the caller
        result["exception"] = e
    finally:
        result.update(lat=lat, weights=weights, errors=errors, done=done)
        # This thread's channel goes back now, not at the end of the run: the next phase's
        # threads (and the prefill) need channels of their own.
        try:
            client.release_session()
        except Exception as e:  # noqa: BLE001 - reported by the caller
            result.setdefault("exception", e)


def run_phase(client: RingClient, cfg: BenchConfig, op: str, keys: list[bytes]) -> PhaseResult:
    value = os.urandom(cfg.value_size // 2 + 1).hex()[: cfg.value_size].encode()
    if cfg.duration:
        per_thread = [1 << 62] * cfg.threads
    else:
        per_thread = [cfg.requests // cfg.threads + (i < cfg.requests % cfg.threads)
                      for i in range(cfg.threads)]
    results: list[dict] = [{} for _ in range(cfg.threads)]
    start = threading.Barrier(cfg.threads + 1)
    shared: dict = {}
    threads = [threading.Thread(target=_worker, name=f"bench-{i}",
                                args=(client, cfg, op, per_thread[i], keys, value, 1000 + i,
                                      start, shared, results[i]))
               for i in range(cfg.threads)]
    for th in threads:
        th.start()
    if cfg.duration:
        shared["stop_at"] = time.monotonic() + cfg.duration
    t0 = time.perf_counter()
    start.wait()
    for th in threads:
        th.join()
    seconds = time.perf_counter() - t0
    for res in results:
        if "exception" in res:
            raise res["exception"]
    done = sum(r["done"] for r in results)
    lat = [x for r in results for x in r["lat"]]
    weights = [w for r in results for w in r["weights"]] if cfg.pipeline else None
    return PhaseResult(op=op, requests=done, seconds=seconds,
                       rps=done / seconds if seconds else 0.0,
                       errors=sum(r["errors"] for r in results),
                       latency_us=_quantiles(lat, weights))


def prefill(client: RingClient, cfg: BenchConfig, keys: list[bytes]) -> None:
    value = b"v" * cfg.value_size
    pipe = client.pipeline()
    for i in range(0, len(keys), 4096):
        for k in keys[i : i + 4096]:
            pipe.set(k, value)
        pipe.execute()
    client.release_session()    # the phase's threads claim their own channels


def run(cfg: BenchConfig) -> list[PhaseResult]:
    keys = _keys(cfg.keyspace)
    out = []
    with RingClient(cfg.path, map_size=cfg.map_size, timeout=min(cfg.timeout, 5.0),
                    layout=cfg.layout) as client:
        prefilled = False
        for op in cfg.ops:
            if op in ("get", "mix") and cfg.prefill and not prefilled:
                prefill(client, cfg, keys)
                prefilled = True
            out.append(run_phase(client, cfg, op, keys))
    return out


def format_table(cfg: BenchConfig, results: list[PhaseResult]) -> str:
    mode = f"pipeline {cfg.max_inflight}" if cfg.pipeline else "unpipelined"
    lines = [f"cxl-ring bench: {cfg.path}, {cfg.threads} thread(s), {mode}, "
             f"value {cfg.value_size} B, keyspace {cfg.keyspace}",
             f"{'op':<5} {'requests':>10} {'seconds':>8} {'req/s':>11} {'avg us':>9} "
             f"{'p50 us':>9} {'p99 us':>9} {'p99.9 us':>9} {'errors':>7}"]
    for r in results:
        q = r.latency_us
        lines.append(f"{r.op:<5} {r.requests:>10} {r.seconds:>8.3f} {r.rps:>11.0f} "
                     f"{q.get('avg', 0):>9.2f} {q.get('p50', 0):>9.2f} {q.get('p99', 0):>9.2f} "
                     f"{q.get('p99.9', 0):>9.2f} {r.errors:>7}")
    return "\n".join(lines)


def write_json(cfg: BenchConfig, results: list[PhaseResult], path: str) -> None:
    doc = {"tool": "cxl-ring bench (python)", "label": cfg.label, "path": cfg.path,
           "config": {k: v for k, v in asdict(cfg).items() if k != "path"},
           "phases": [asdict(r) for r in results]}
    text = json.dumps(doc, indent=2) + "\n"
    if path == "-":
        print(text, end="")
    else:
        with open(path, "w") as f:
            f.write(text)


def append_csv(cfg: BenchConfig, results: list[PhaseResult], path: str) -> None:
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            f.write(CSV_HEADER + "\n")
        for r in results:
            q = r.latency_us
            w.writerow([cfg.label, r.op, cfg.threads, cfg.threads, r.requests,
                        int(cfg.pipeline), cfg.max_inflight if cfg.pipeline else 1,
                        f"{r.rps:.2f}", f"{q.get('avg', 0):.3f}"]
                       + [f"{q.get(name, 0):.3f}" for name, _ in QUANTILES] + [0, 0])
