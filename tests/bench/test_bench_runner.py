"""bench/run.py --quick: a smoke run of the whole benchmark into a temporary directory,
checked for the shape of latest.json and latest.md (not for the numbers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from benchutil import MODULE, REPO, RUNNER

REQUIRED_KEYS = [
    "ring_get_rps", "ring_set_rps", "tcp_p16_get_rps", "tcp_p16_set_rps", "tcp_p1_get_rps",
    "unix_p16_get_rps", "ring_rtt_p50_us", "tcp_rtt_p50_us", "server_idle_cpu_pct",
    "ratio_ring_get_vs_tcp_p16", "ratio_rtt_p50_ring_vs_tcp", "machine", "commands", "targets",
]


def test_runner_help() -> None:
    out = subprocess.run([sys.executable, str(RUNNER), "--help"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and "--quick" in out.stdout and "--out" in out.stdout


def test_runner_without_module_says_what_to_do(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(RUNNER), "--out", str(tmp_path), "--quick",
                          "--module", str(tmp_path / "missing.so")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "run `make build` first" in out.stderr
    assert not (tmp_path / "latest.json").exists()


@pytest.mark.timeout(120)
def test_runner_quick_writes_latest_json(bench_bin: Path, tmp_path: Path) -> None:
    if not MODULE.exists():
        pytest.skip(f"{MODULE.relative_to(REPO)} is not built yet (the cxl_ring driver)")
    regions_before = set(Path("/dev/shm").glob("cxlbench-*"))
    out = subprocess.run(
        [sys.executable, str(RUNNER), "--out", str(tmp_path), "--quick", "--idle-seconds",
         "1", "--no-python"],
        capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, out.stderr + out.stdout
    doc = json.loads((tmp_path / "latest.json").read_text())
    for key in REQUIRED_KEYS:
        assert doc.get(key) is not None, key
    for key in ("ring_get_rps", "tcp_p16_get_rps", "tcp_p1_get_rps", "unix_p16_get_rps"):
        assert doc[key] > 0
    assert set(doc["targets"]) == {"pipelined_get_ring_vs_tcp_p16", "rtt_p50_ring_vs_tcp",
                                   "server_idle_cpu_pct"}
    assert all(v["result"] in ("PASS", "MISS") for v in doc["targets"].values())
    assert "redis-benchmark" in doc["commands"]["tcp_p16"]
    assert "cxl-ring-bench" in doc["commands"]["ring_pipelined"]
    md = (tmp_path / "latest.md").read_text()
    assert "| GET, pipelined |" in md
    verdict_lines = [ln for ln in out.stdout.splitlines() if ln.startswith(("PASS:", "MISS:"))]
    assert len(verdict_lines) == 3
    assert set(Path("/dev/shm").glob("cxlbench-*")) == regions_before   # region removed
