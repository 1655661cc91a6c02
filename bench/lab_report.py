#!/usr/bin/env python3
"""Turn the lab benchmark's raw results into one table, PNG plots and a markdown report.

playbooks/bench.yml runs the load generators inside the lab and fetches their CSV files
to the controller, one folder per guest::

    RESULTS/<guest>/<transport>__d<value size>__t<threads>.csv

``<transport>`` names who talked to Redis and how:

    ring_c_P1, ring_c_P16   the C bench client through the shared region, one request at
                            a time / 16 in flight per thread          (PoC CSV format)
    ring_py_P1              the Python ring client, one at a time     (PoC CSV format)
    ring_c_P1_off, _P16_off the C bench client on a region of security off, served by a
                            transient second Redis (the others use the lab's Redis and
                            its secdsm region)                         (PoC CSV format)
    ring_c_P1_devdax,       the same on a devdax region of security off (another transient
    ring_c_P16_devdax       Redis): the medium against ivshmem's _off  (PoC CSV format)
    ring_c_P1_delay         ring_c_P1_off again, its server and client spinning the injected
                            far-memory delay per batch read            (PoC CSV format)
    tcp_vm_P1, tcp_vm_P16   redis-benchmark in the client VM over the inter-VM link,
                            -P 1 / -P 16                               (redis-benchmark --csv)
    tcp_local_P1, _P16      redis-benchmark inside the server VM over loopback
    gw_vm_P1, gw_vm_P16     redis-benchmark in the client VM through the native gateway
                            (cxl-gateway on the VM's loopback, its commands over the
                            ring), -P 1 / -P 16                       (redis-benchmark --csv)

and ``RESULTS/<guest>/ycsb_<gateway|tcp>.json``: the application workload (cxl-ycsb,
bench/c/ycsb) through the gateway and over TCP, reported in a table of its own.

This script normalises both formats to ``results.csv`` (throughput in requests/s,
latencies in microseconds), draws ``throughput.png`` and ``latency.png`` (needs
matplotlib: requirements/bench.txt; without it only the tables are written) and writes
``report.md``. Under TCG (no KVM) absolute numbers are those of an emulated CPU; the
ratios between transports measured in the same run are what the report discusses.

Sec-DSM against security off: every ring phase measured on both regions (``X`` and
``X_off``) gives a secdsm/off ratio, for throughput (secdsm req/s / off req/s) and for the
round trip of one request in flight (off p50 / secdsm p50: a rate, higher is better). The
report lists them against the target (0.95) with their median and minimum, and the script
prints the summary. It is a benchmark, not a test: a missed target does not change the
exit code.

Usage::

    python bench/lab_report.py RESULTS [--out DIR] [--virt-type kvm|qemu] [--title TEXT]
                               [--secdsm-region NAME] [--off-region NAME]
                               [--devdax-region NAME] [--access-delay-ns NS]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import re
import statistics
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

FILE_NAME = re.compile(
    r"^(?P<transport>[a-z0-9_]+?_P\d+(?:_off|_devdax|_delay)?)__d(?P<size>\d+)__t(?P<threads>\d+)"
    r"(?:__r(?P<round>\d+))?\.csv$")

# Display order and colours: ring first, then the TCP baselines.
TRANSPORTS = ["ring_c_P1", "ring_c_P1_off", "ring_c_P16", "ring_c_P16_off", "ring_c_P1_devdax",
              "ring_c_P16_devdax", "ring_c_P1_delay", "ring_py_P1",
              "gw_vm_P1", "gw_vm_P16", "tcp_vm_P1", "tcp_vm_P16", "tcp_local_P1",
              "tcp_local_P16"]
DESCRIPTIONS = {
    "ring_c_P1": "C ring client, 1 in flight",
    "ring_c_P1_off": "C ring client, 1 in flight, region of security off (transient Redis)",
    "ring_c_P16": "C ring client, 16 in flight",
    "ring_c_P16_off": "C ring client, 16 in flight, region of security off (transient Redis)",
    "ring_c_P1_devdax": "C ring client, 1 in flight, devdax region of security off "
                        "(transient Redis)",
    "ring_c_P16_devdax": "C ring client, 16 in flight, devdax region of security off "
                         "(transient Redis)",
    "ring_c_P1_delay": "C ring client, 1 in flight, region of security off with the injected "
                       "far-memory delay (transient Redis)",
    "ring_py_P1": "Python ring client, 1 in flight",
    "gw_vm_P1": "redis-benchmark through the native gateway in the client VM, -P 1",
    "gw_vm_P16": "redis-benchmark through the native gateway in the client VM, -P 16",
    "tcp_vm_P1": "redis-benchmark VM to VM, -P 1",
    "tcp_vm_P16": "redis-benchmark VM to VM, -P 16",
    "tcp_local_P1": "redis-benchmark in the server VM, -P 1",
    "tcp_local_P16": "redis-benchmark in the server VM, -P 16",
}
# The comparisons the report spells out: (numerator, denominator, metric, meaning).
RATIOS = [
    ("ring_c_P1", "tcp_vm_P1", "p50_us", "round trip (p50), ring / TCP between VMs"),
    ("ring_c_P16", "tcp_vm_P16", "rps", "pipelined throughput, ring / TCP between VMs"),
    ("ring_c_P1", "tcp_local_P1", "p50_us", "round trip (p50), ring / TCP loopback in the server"),
    ("ring_py_P1", "tcp_vm_P1", "p50_us", "round trip (p50), Python ring / TCP between VMs"),
    # Unmodified clients: the same redis-benchmark through the gateway or over TCP (issue
    # 12 wants the gateway at 3x TCP or more, -P 1 and -P 16).
    ("gw_vm_P1", "tcp_vm_P1", "rps", "throughput -P 1, gateway / TCP between VMs"),
    ("gw_vm_P16", "tcp_vm_P16", "rps", "throughput -P 16, gateway / TCP between VMs"),
]
# Sec-DSM against security off: (transport, metric, what it measures). A transport's
# phase on the off region is labelled <transport>_off.
SECURITY_PAIRS = [
    ("ring_c_P1", "rps", "throughput"),
    ("ring_c_P1", "p50_us", "round trip"),
    ("ring_c_P16", "rps", "throughput"),
]
OFF_SUFFIX = "_off"
# Wanted: secdsm at least this fraction of off, for throughput and round trip alike.
SECURITY_TARGET = 0.95


@dataclass
class Row:
    """One measured phase: a transport, an operation, a value size and a thread count."""

    host: str
    transport: str
    op: str
    value_size: int
    threads: int
    requests: int
    rps: float
    avg_us: float
    p50_us: float
    p99_us: float
    p999_us: float | None
    round: int = 0  # the comparison phases run in rounds of opposite order (file name __r<N>)


def _float(text: str) -> float:
    return float(text.strip().strip('"'))


def parse_poc_csv(path: Path, host: str, transport: str, size: int, threads: int) -> list[Row]:
    """Rows of the C bench / Python client CSV (the PoC's header)."""
    rows = []
    with path.open(newline="") as f:
        for record in csv.DictReader(f):
            rows.append(Row(host, transport, record["op"].lower(), size, threads,
                            int(float(record["requests"])), _float(record["throughput_rps"]),
                            _float(record["avg_us"]), _float(record["p50_us"]),
                            _float(record["p99_us"]), _float(record["p99.9_us"])))
    return rows


def parse_redis_benchmark_csv(path: Path, host: str, transport: str, size: int,
                              threads: int) -> list[Row]:
    """Rows of `redis-benchmark --csv` (Redis 7: latencies in milliseconds)."""
    rows = []
    with path.open(newline="") as f:
        for record in csv.DictReader(f):
            if not record.get("test"):
                continue
            ms = {key: _float(value) * 1000.0 for key, value in record.items()
                  if key.endswith("_ms")}
            rows.append(Row(host, transport, record["test"].lower(), size, threads, 0,
                            _float(record["rps"]), ms["avg_latency_ms"], ms["p50_latency_ms"],
                            ms["p99_latency_ms"], None))
    return rows


def load(results: Path) -> tuple[list[Row], list[str]]:
    """Every row under RESULTS, and a note for each file that could not be read."""
    rows: list[Row] = []
    problems: list[str] = []
    for path in sorted(results.glob("*/*.csv")):
        match = FILE_NAME.match(path.name)
        if not match:
            continue
        transport, size, threads = match["transport"], int(match["size"]), int(match["threads"])
        parse = (parse_redis_benchmark_csv if transport.startswith(("tcp_", "gw_"))
                 else parse_poc_csv)
        try:
            found = parse(path, path.parent.name, transport, size, threads)
        except (KeyError, ValueError, OSError) as e:
            problems.append(f"{path.relative_to(results)}: unreadable ({e!r})")
            continue
        if not found:
            problems.append(f"{path.relative_to(results)}: no rows")
        for row in found:
            row.round = int(match["round"] or 0)
        rows.extend(found)
    return rows, problems


def write_table(rows: Iterable[Row], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[field.name for field in fields(Row)])
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))


def _order(transport: str) -> int:
    return TRANSPORTS.index(transport) if transport in TRANSPORTS else len(TRANSPORTS)


def _pick(rows: list[Row], transport: str, op: str, size: int, threads: int) -> Row | None:
    """The first round's row of a phase."""
    for row in rows:
        if (row.transport, row.op, row.value_size, row.threads, row.round) == (
                transport, op, size, threads, 0):
            return row
    return None


def _rounds(rows: list[Row], transport: str, op: str, size: int, threads: int) -> list[Row]:
    """Every round's row of a phase."""
    return [row for row in rows
            if (row.transport, row.op, row.value_size, row.threads) == (transport, op, size,
                                                                         threads)]


def ratios(rows: list[Row]) -> list[tuple[str, str, int, int, float]]:
    """(meaning, op, value size, threads, ratio) for every comparison both sides measured."""
    out = []
    combos = sorted({(row.op, row.value_size, row.threads) for row in rows})
    for numerator, denominator, metric, meaning in RATIOS:
        for op, size, threads in combos:
            top, bottom = (_pick(rows, t, op, size, threads) for t in (numerator, denominator))
            if top and bottom and getattr(bottom, metric):
                ratio = getattr(top, metric) / getattr(bottom, metric)
                out.append((meaning, op, size, threads, ratio))
    return out


@dataclass
class SecurityRatio:
    """One ring phase measured on the secdsm region and on the off region."""

    measure: str          # "throughput" or "round trip"
    transport: str        # the secdsm label; the off one is transport + OFF_SUFFIX
    op: str
    value_size: int
    threads: int
    secdsm: float         # req/s, or p50 µs for the round trip: the median of its rounds
    off: float
    ratio: float          # higher is better for both: secdsm/off req/s, off/secdsm p50
    rounds: int = 1       # rounds measured on both regions

    @property
    def met(self) -> bool:
        return self.ratio >= SECURITY_TARGET


def security_ratios(rows: list[Row]) -> list[SecurityRatio]:
    """secdsm/off ratios for every ring phase measured on both regions."""
    out = []
    combos = sorted({(row.op, row.value_size, row.threads) for row in rows})
    for transport, metric, measure in SECURITY_PAIRS:
        for op, size, threads in combos:
            secdsm = _rounds(rows, transport, op, size, threads)
            off = _rounds(rows, transport + OFF_SUFFIX, op, size, threads)
            if not (secdsm and off):
                continue
            a = statistics.median(getattr(row, metric) for row in secdsm)
            b = statistics.median(getattr(row, metric) for row in off)
            # Throughput: secdsm / off. Round trip: off / secdsm (a rate, higher is better).
            top, bottom = (a, b) if metric == "rps" else (b, a)
            if bottom > 0:
                out.append(SecurityRatio(measure, transport, op, size, threads, a, b, top / bottom,
                                         min(len(secdsm), len(off))))
    return out


def security_summary(found: list[SecurityRatio]) -> dict[str, dict[str, float | int | bool]]:
    """Per measure: how many ratios, their median and minimum, and whether the median meets
    the target."""
    summary = {}
    for measure in ("throughput", "round trip"):
        values = [r.ratio for r in found if r.measure == measure]
        if values:
            median = statistics.median(values)
            summary[measure] = {"count": len(values), "median": median, "min": min(values),
                                "met": median >= SECURITY_TARGET}
    return summary


def security_lines(found: list[SecurityRatio], secdsm_region: str, off_region: str) -> list[str]:
    """The report's section on Sec-DSM against security off (empty when nothing was paired)."""
    if not found:
        return []
    secdsm_name = f" (`{secdsm_region}`)" if secdsm_region else ""
    off_name = f" (`{off_region}`)" if off_region else ""
    lines = ["## Sec-DSM against security off", "",
             f"The same client with the same parameters, back to back, on the secdsm region"
             f"{secdsm_name}, served by the lab's Redis, and on a region of security off"
             f"{off_name}, served by a transient second Redis with the same driver arguments, "
             "in rounds of opposite order (secdsm then off, then off then secdsm), so that "
             "neither side always runs first; each side is the median of its rounds. "
             "Ratio: throughput secdsm req/s / off req/s; round trip off p50 / secdsm p50 "
             "(a rate). "
             f"Target: both ≥ {SECURITY_TARGET:.2f}. This is a benchmark, not a test: under TCG "
             "and on a shared machine single phases vary by more than 5 %, so the verdict is "
             "the median's.", "",
             "| measure | transport | op | value | threads | rounds | secdsm | off | secdsm/off "
             f"| ≥ {SECURITY_TARGET:.2f} |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in found:
        unit = "req/s" if r.measure == "throughput" else "µs p50"
        fmt = "{:,.0f}" if r.measure == "throughput" else "{:.1f}"
        lines.append(f"| {r.measure} | {r.transport} | {r.op.upper()} | {r.value_size} B | "
                     f"{r.threads} | {r.rounds} | {fmt.format(r.secdsm)} {unit} | "
                     f"{fmt.format(r.off)} {unit} | "
                     f"{r.ratio:.3f} | {'yes' if r.met else 'no'} |")
    lines += ["", "| measure | phases | median | min | target |", "|---|---:|---:|---:|---|"]
    for measure, s in security_summary(found).items():
        lines.append(f"| {measure} | {s['count']} | {s['median']:.3f} | {s['min']:.3f} | "
                     f"{'**met**' if s['met'] else '**missed**'} (≥ {SECURITY_TARGET:.2f}) |")
    return lines + [""]


def _median(rows: list[Row], transport: str, op: str, size: int, threads: int,
            metric: str) -> float | None:
    found = _rounds(rows, transport, op, size, threads)
    return statistics.median(getattr(row, metric) for row in found) if found else None


def medium_lines(rows: list[Row], devdax_region: str, ivshmem_region: str) -> list[str]:
    """The devdax medium against ivshmem, both security off (empty without devdax phases)."""
    combos = sorted({(r.op, r.value_size, r.threads) for r in rows
                     if r.transport.endswith("_devdax")})
    if not combos:
        return []
    names = f" (`{devdax_region}` against `{ivshmem_region}`)" if devdax_region else ""
    lines = ["## The devdax medium against ivshmem", "",
             f"The C bench client on a devdax region and on an ivshmem region{names}, both of "
             "security off and each served by a transient Redis with the same driver arguments "
             "(ivshmem: the median of the `_off` rounds above). devdax maps the region "
             "write-back through an emulated NVDIMM in a CPU-less guest node, ivshmem uncached "
             "through a PCI BAR (docs/lab.md, \"Mediums\"); under TCG both are emulated loads "
             "and stores, so the ratio says what the medium costs the emulator, not a CPU.", "",
             "| transport | op | value | threads | ivshmem req/s | devdax req/s | devdax/ivshmem "
             "| ivshmem p50 µs | devdax p50 µs |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for op, size, threads in combos:
        for transport in ("ring_c_P1", "ring_c_P16"):
            dax = _median(rows, transport + "_devdax", op, size, threads, "rps")
            ivs = _median(rows, transport + OFF_SUFFIX, op, size, threads, "rps")
            if dax is None or ivs is None:
                continue
            dax_p50 = _median(rows, transport + "_devdax", op, size, threads, "p50_us")
            ivs_p50 = _median(rows, transport + OFF_SUFFIX, op, size, threads, "p50_us")
            ratio = f"{dax / ivs:.3f}" if ivs else "-"
            lines.append(f"| {transport} | {op.upper()} | {size} B | {threads} | {ivs:,.0f} | "
                         f"{dax:,.0f} | {ratio} | {ivs_p50:.1f} | {dax_p50:.1f} |")
    return lines + [""]


def delay_rows(rows: list[Row], delay_ns: int) -> list[dict]:
    """Per phase with the injected delay: the round trip without and with it, the added
    mean against the two delays one request alone in flight should add (2.4)."""
    out = []
    for row in rows:
        if row.transport != "ring_c_P1_delay":
            continue
        base = _median(rows, "ring_c_P1" + OFF_SUFFIX, row.op, row.value_size, row.threads,
                       "avg_us")
        base_p50 = _median(rows, "ring_c_P1" + OFF_SUFFIX, row.op, row.value_size,
                           row.threads, "p50_us")
        if base is None:
            continue
        # The medians: under TCG a few round trips of thousands of µs move the means by more
        # than the delay (measured: a mean 7 µs lower with the delay, its median 15 µs higher).
        added = row.p50_us - base_p50
        expected = 2 * delay_ns / 1000.0
        out.append({"op": row.op, "value_size": row.value_size, "threads": row.threads,
                    "avg_us": base, "p50_us": base_p50, "delayed_avg_us": row.avg_us,
                    "delayed_p50_us": row.p50_us, "added_us": added, "expected_us": expected,
                    "ratio": added / expected if expected else None})
    return out


def delay_lines(rows: list[Row], delay_ns: int) -> list[str]:
    """The injected far-memory delay's effect on the round trip (empty without its phase)."""
    found = delay_rows(rows, delay_ns)
    if not found:
        return []
    lines = ["## The injected far-memory delay", "",
             f"`access_delay_ns` {delay_ns} (docs/ring-protocol.md 2.4): the server spins it per "
             "batch of requests it reads, the client per batch of responses, so one request "
             f"alone in flight should take two delays ({2 * delay_ns / 1000:.1f} µs) more. The "
             "same region and the same transient Redis without the delay (the median of the "
             "`ring_c_P1_off` rounds) against one phase with it. Added: the p50's shift (the "
             "delay shifts every round trip alike; under TCG a few slow ones move the means "
             "by more than the delay).", "",
             "| op | value | threads | without: avg / p50 µs | with: avg / p50 µs "
             "| added (p50) µs | 2 × delay µs | added / expected |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in found:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        lines.append(f"| {r['op'].upper()} | {r['value_size']} B | {r['threads']} | "
                     f"{r['avg_us']:.1f} / {r['p50_us']:.1f} | "
                     f"{r['delayed_avg_us']:.1f} / {r['delayed_p50_us']:.1f} | "
                     f"{r['added_us']:.1f} | {r['expected_us']:.1f} | {ratio} |")
    return lines + [""]


def plot(rows: list[Row], out: Path) -> list[str]:
    """throughput.png and latency.png; returns the files written (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    ops = sorted({row.op for row in rows})
    transports = sorted({row.transport for row in rows}, key=_order)
    combos = sorted({(row.value_size, row.threads) for row in rows})

    fig, axes = plt.subplots(1, len(ops), figsize=(6 * len(ops), 4.5), squeeze=False)
    width = 0.8 / max(len(transports), 1)
    for ax, op in zip(axes[0], ops):
        for index, transport in enumerate(transports):
            values = [(_pick(rows, transport, op, size, threads) or Row("", "", "", 0, 0, 0, 0, 0,
                                                                          0, 0, None)).rps
                      for size, threads in combos]
            ax.bar([c + index * width for c in range(len(combos))], values, width, label=transport)
        ax.set_xticks([c + width * (len(transports) - 1) / 2 for c in range(len(combos))])
        ax.set_xticklabels([f"{size} B\n{threads} thr" for size, threads in combos])
        ax.set_title(f"{op.upper()} throughput")
        ax.set_ylabel("requests / s")
        ax.set_yscale("log")
    # One legend for the figure, below the plots, so it never hides a bar.
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), fontsize="small")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)
    written.append("throughput.png")

    # Latency percentiles at the smallest value size and one thread: the round trip.
    size, threads = combos[0] if combos else (0, 1)
    fig, axes = plt.subplots(1, len(ops), figsize=(6 * len(ops), 4.5), squeeze=False)
    for ax, op in zip(axes[0], ops):
        picked = [(t, _pick(rows, t, op, size, threads)) for t in transports]
        picked = [(t, row) for t, row in picked if row]
        for index, (name, metric) in enumerate((("p50", "p50_us"), ("p99", "p99_us"))):
            ax.bar([i + index * 0.4 for i in range(len(picked))],
                   [getattr(row, metric) for _, row in picked], 0.4, label=name)
        ax.set_xticks([i + 0.2 for i in range(len(picked))])
        ax.set_xticklabels([t for t, _ in picked], rotation=30, ha="right", fontsize="small")
        ax.set_title(f"{op.upper()} latency ({size} B, {threads} thread)")
        ax.set_ylabel("microseconds")
        ax.set_yscale("log")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
    written.append("latency.png")
    return written


def _json_list(path: Path) -> list[dict]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [f for f in found if isinstance(f, dict)] if isinstance(found, list) else []


def load_idle(results: Path, name: str = "idle.json") -> list[dict]:
    """idle.json or wake.json of the run (playbooks/bench.yml's idle play), or nothing."""
    return [f for f in _json_list(results / name) if "label" in f]


def load_latency(results: Path) -> list[dict]:
    """latency-<host>.json of the run (playbooks/bench.yml's pointer-chase play)."""
    found = []
    for path in sorted(results.glob("latency-*.json")):
        found += [f for f in _json_list(path)
                  if "memory" in f and isinstance(f.get("ns_per_load"), dict)]
    return found


def load_ycsb(results: Path) -> tuple[list[dict], list[str]]:
    """<host>/ycsb_<label>.json of the run (cxl-ycsb, the application workload), and a note for
    each file that could not be read."""
    found, problems = [], []
    for path in sorted(results.glob("*/ycsb_*.json")):
        try:
            f = json.loads(path.read_text())
            f["run"]["ops_per_s"], f["latency"]["read"]["p50_us"]     # the fields used below
        except (OSError, ValueError, KeyError, TypeError) as e:
            problems.append(f"{path.relative_to(results)}: unreadable ({e!r})")
            continue
        f["host"] = path.parent.name
        found.append(f)
    return found, problems


YCSB_NAMES = {"gateway": "through the native gateway (the ring)",
              "tcp": "over TCP to the server VM"}


def ycsb_lines(ycsb: list[dict]) -> list[str]:
    if not ycsb:
        return []
    w = ycsb[0]["workload"]
    lines = ["## An application's workload (YCSB-like)", "",
             f"`cxl-ycsb` (bench/c/ycsb) in the client VM: workload {w.get('name', '-')} "
             f"({w.get('read_proportion', 0) * 100:.0f} % GET, the rest SET), "
             f"{w.get('distribution', '?')} keys over {w.get('records', 0):,} records of "
             f"{w.get('value_size', 0)} B, {w.get('connections', 0)} connections with one "
             "request in flight each; the same run through the gateway and over TCP.", "",
             "| path | ops | ops/s | read p50 µs | read p99 µs | update p50 µs | update p99 µs "
             "| errors |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    by_label = {}
    for f in ycsb:
        run, lat = f["run"], f["latency"]
        label = f.get("label", "?")
        by_label[label] = run["ops_per_s"]
        lines.append(f"| {YCSB_NAMES.get(label, label)} | {run['ops']:,}"
                     + (" (truncated)" if run.get("truncated") else "")
                     + f" | {run['ops_per_s']:,.0f} | {lat['read']['p50_us']:.0f} "
                     f"| {lat['read']['p99_us']:.0f} | {lat['update']['p50_us']:.0f} "
                     f"| {lat['update']['p99_us']:.0f} | {run['errors']} |")
    if by_label.get("gateway") and by_label.get("tcp"):
        lines += ["", f"Throughput, gateway / TCP: {by_label['gateway'] / by_label['tcp']:.2f}."]
    return lines + [""]


# Published idle load-to-use latencies (Intel MLC), the anchors of the latency table.
LATENCY_ANCHORS = (("local DRAM", 113), ("remote NUMA node", 201), ("CXL memory expander", 300))


def latency_lines(latency: list[dict], virt_type: str = "") -> list[str]:
    if not latency:
        return []
    lines = ["## Load-to-use latency (pointer chase)", "",
             "`cxl-chase` (bench/c/chase): a random cycle of dependent loads, one per cache line, "
             "over a working set larger than the last-level cache; ns per load over timed "
             "batches. Guest RAM in each guest, the hypervisor's RAM and a /dev/shm file (the "
             "medium of the regions), and in each guest a devdax region, the CPU-less node "
             "(zeroed after); the served regions themselves are not chased (the chain would "
             "overwrite their rings)."]
    if virt_type == "qemu":
        lines += ["", "> Under TCG a guest's load is translated code and a software TLB: the "
                  "guests' figures are the emulator's, not memory's. The hypervisor's rows are "
                  "memory."]
    lines += ["", "| where | memory | working set | p50 ns | p90 ns | p99 ns |",
              "|---|---|---:|---:|---:|---:|"]
    for f in latency:
        ns = f["ns_per_load"]
        lines.append(f"| {f.get('host', '?')} | {f['memory']} | "
                     f"{int(f.get('size_bytes', 0)) >> 20} MiB | {ns.get('p50', 0):.1f} | "
                     f"{ns.get('p90', 0):.1f} | {ns.get('p99', 0):.1f} |")
    lines += ["", "Published idle latencies for comparison (Intel MLC): "
              + ", ".join(f"{name} ~{ns} ns" for name, ns in LATENCY_ANCHORS) + "."]
    return lines + [""]


def wake_lines(wake: list[dict]) -> list[str]:
    if not wake:
        return []
    lines = ["## Wake from idle", "",
             "The first request after an idle gap, from the client VM (`cxl-wake-latency`, "
             "bench/c/wake: one channel, nothing in flight for the gap, then a GET timed until "
             "its answer), to the lab's Redis and to the polling one beside it, in the same run.",
             "", "| server | samples | gap ms | p50 µs | p99 µs |", "|---|---:|---:|---:|---:|"]
    for f in wake:
        if "error" in f or "p50_us" not in f:
            lines.append(f"| {f['label']} | failed: {str(f.get('error', ''))[-80:]} | | | |")
        else:
            lines.append(f"| {f['label']} | {f.get('samples', 0)} | {f.get('gap_ms', 0)} "
                         f"| {f['p50_us']:.0f} | {f.get('p99_us', 0):.0f} |")
    return lines + [""]


def idle_lines(idle: list[dict]) -> list[str]:
    if not idle:
        return []
    idle = [f for f in idle if "percent" in f]
    if not idle:
        return []
    lines = ["## Idle server VM, seen from the hypervisor", "",
             "CPU of the server VM's QEMU process (all its threads, `/proc/<pid>/stat`) while "
             "no client sends anything: first with the lab's Redis alone (how it waits in "
             "brackets: `doorbell` sleeps until a client rings, `poll` naps), then with a "
             "second ring server beside it that has no doorbell and so polls.", "",
             "| what is idle | seconds | % of a core |", "|---|---:|---:|"]
    lines += [f"| {f['label']} | {f.get('seconds', 0):.1f} | {f['percent']:.2f} |" for f in idle]
    if len(idle) >= 2:
        lines += ["", f"What the polling server adds: "
                  f"{idle[1]['percent'] - idle[0]['percent']:+.2f} % of a core."]
    return lines + [""]


def report(rows: list[Row], problems: list[str], images: list[str], virt_type: str,
           title: str, secdsm_region: str = "", off_region: str = "",
           idle: list[dict] | None = None, wake: list[dict] | None = None,
           latency: list[dict] | None = None, ycsb: list[dict] | None = None,
           devdax_region: str = "", delay_ns: int = 0) -> str:
    lines = [f"# {title}", "",
             f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} by "
             "`playbooks/bench.yml` (bench/lab_report.py). Raw numbers: `results.csv`.", ""]
    if virt_type == "qemu":
        lines += ["> **The VMs ran under TCG (QEMU's emulator, no KVM).** Every instruction of the "
                  "guests is translated, so the absolute numbers below say little about real "
                  "hardware: a CXL load/store and a TCP stack are both emulated. The **ratios** "
                  "between transports, measured in the same run on the same emulated CPUs, still "
                  "show which path costs what: the ring avoids the guest network stacks, the "
                  "virtual NICs and the host's socket relay entirely.", ""]
    elif virt_type:
        lines += [f"Accelerator: {virt_type}.", ""]
    lines += ["## Transports", ""]
    lines += [f"- `{t}`: {DESCRIPTIONS.get(t, t)}" for t in
              sorted({row.transport for row in rows}, key=_order)]
    lines += [""]
    found = ratios(rows)
    if found:
        lines += ["## Ratios", "", "| comparison | op | value | threads | ratio |",
                  "|---|---|---:|---:|---:|"]
        lines += [f"| {meaning} | {op.upper()} | {size} B | {threads} | {ratio:.2f} |"
                  for meaning, op, size, threads, ratio in found]
        lines += ["", "A latency ratio below 1 and a throughput ratio above 1 favour the ring.", ""]
    lines += security_lines(security_ratios(rows), secdsm_region, off_region)
    lines += medium_lines(rows, devdax_region, off_region)
    lines += delay_lines(rows, delay_ns)
    lines += ycsb_lines(ycsb or [])
    lines += idle_lines(idle or []) + wake_lines(wake or [])
    lines += latency_lines(latency or [], virt_type)
    for image in images:
        lines += [f"![{image[:-4]}]({image})", ""]
    lines += ["## Results", "",
              "| transport | op | value | threads | req/s | avg µs | p50 µs | p99 µs |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in sorted(rows, key=lambda r: (r.op, r.value_size, r.threads, _order(r.transport),
                                           r.round)):
        name = row.transport + (f" (round {row.round + 1})" if row.round else "")
        lines.append(f"| {name} | {row.op.upper()} | {row.value_size} B | {row.threads} "
                     f"| {row.rps:,.0f} | {row.avg_us:.1f} | {row.p50_us:.1f} | {row.p99_us:.1f} |")
    if problems:
        lines += ["", "## Missing or unreadable results", ""] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="folder with one sub-folder of CSV files per guest")
    ap.add_argument("--out", type=Path, help="where to write the report (default: RESULTS)")
    ap.add_argument("--virt-type", default="",
                    help="kvm or qemu (TCG): the report says what it means")
    ap.add_argument("--title", default="CXL-DSM lab benchmark: ring vs TCP")
    ap.add_argument("--secdsm-region", default="",
                    help="name of the secdsm region the lab's Redis served (for the report's text)")
    ap.add_argument("--off-region", default="",
                    help="name of the region of security off the transient Redis served")
    ap.add_argument("--devdax-region", default="",
                    help="name of the devdax region of security off (the medium comparison)")
    ap.add_argument("--access-delay-ns", type=int, default=0,
                    help="the injected far-memory delay of the ring_c_P1_delay phase, in ns")
    args = ap.parse_args(argv)
    out = args.out or args.results
    out.mkdir(parents=True, exist_ok=True)
    rows, problems = load(args.results)
    ycsb, ycsb_problems = load_ycsb(args.results)
    idle = load_idle(args.results)
    wake = load_idle(args.results, "wake.json")
    latency = load_latency(args.results)
    # Any subset of the phases has its report (--tags latency alone, say).
    if not (rows or ycsb or idle or wake or latency):
        print(f"lab_report: no results under {args.results}", file=sys.stderr)
        return 1
    write_table(rows, out / "results.csv")
    images = plot(rows, out) if rows else []
    (out / "report.md").write_text(report(rows, problems + ycsb_problems, images, args.virt_type,
                                          args.title, args.secdsm_region, args.off_region, idle,
                                          wake, latency, ycsb, args.devdax_region,
                                          args.access_delay_ns))
    for f in idle:
        if "percent" in f:
            print(f"lab_report: idle server VM, {f['label']}: {f['percent']:.2f} % of a core")
    for f in latency:
        print(f"lab_report: pointer chase, {f.get('host', '?')} {f['memory']}: "
              f"p50 {f['ns_per_load'].get('p50', 0):.1f} ns per load")
    for f in ycsb:
        run, read = f["run"], f["latency"]["read"]
        print(f"lab_report: application workload, {f.get('label', '?')}: "
              f"{run['ops_per_s']:,.0f} ops/s, read p50 {read['p50_us']:.0f} us, "
              f"{run['errors']} errors")
    for f in wake:
        if "p50_us" in f:
            print(f"lab_report: wake from idle, {f['label']}: p50 {f['p50_us']:.0f} us, "
                  f"p99 {f.get('p99_us', 0):.0f} us")
    print(f"lab_report: {len(rows)} rows -> {out / 'report.md'}"
          + ("" if images else " (no plots: matplotlib is not installed)"))
    for r in delay_rows(rows, args.access_delay_ns):
        print(f"lab_report: injected delay {args.access_delay_ns} ns, {r['op']}: round trip "
              f"+{r['added_us']:.1f} us (two delays: {r['expected_us']:.1f} us)")
    for measure, s in security_summary(security_ratios(rows)).items():
        print(f"lab_report: Sec-DSM vs security off, {measure}: secdsm/off median {s['median']:.3f}"
              f" (min {s['min']:.3f}, {s['count']} phases), target >= {SECURITY_TARGET:.2f}: "
              + ("met" if s["met"] else "missed"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
