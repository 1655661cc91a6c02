"""bench/run.py --quick: a smoke run of the whole benchmark into a temporary directory,
checked for the shape of latest.json and latest.md (not for the numbers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from benchutil import MODULE, REPO, RUNNER, runner

REQUIRED_KEYS = [
    "ring_get_rps", "ring_set_rps", "tcp_p16_get_rps", "tcp_p16_set_rps", "tcp_p1_get_rps",
    "unix_p16_get_rps", "ring_rtt_p50_us", "tcp_rtt_p50_us", "server_idle_cpu_pct",
    "ratio_ring_get_vs_tcp_p16", "ratio_rtt_p50_ring_vs_tcp", "machine", "commands", "targets",
    "server_name", "server_version", "server_executable",
    "secdsm_ring_get_rps", "secdsm_ring_set_rps", "secdsm_ring_rtt_p50_us",
    "ratio_secdsm_vs_off_get_rps", "ratio_secdsm_vs_off_set_rps", "ratio_secdsm_vs_off_rtt_p50",
]

VALKEY_INFO = (
    "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.0.2\r\n"
    "redis_mode:standalone\r\n\r\n"
)
REDIS_INFO = ("# Server\r\nredis_version:8.0.3\r\nredis_git_sha1:00000000\r\n"
              "redis_mode:standalone\r\n")


def test_server_identity_from_info() -> None:
    valkey = runner.parse_info(VALKEY_INFO)
    assert runner.server_identity(valkey) == {"server_name": "valkey", "server_version": "8.0.2"}
    redis = runner.parse_info(REDIS_INFO)
    assert runner.server_identity(redis) == {"server_name": "redis", "server_version": "8.0.3"}


def test_py_bench_has_the_entry_point_the_runner_calls() -> None:
    import importlib.util
    import inspect

    spec = importlib.util.spec_from_file_location("py_bench", REPO / "bench" / "py_bench.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    params = inspect.signature(mod.run).parameters
    for name in ("tcp_port", "region_path", "quick"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name


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


def test_runner_with_a_missing_server_binary_says_so(tmp_path: Path) -> None:
    if not MODULE.exists():
        pytest.skip(f"{MODULE.relative_to(REPO)} is not built yet (the cxl_ring driver)")
    missing = str(tmp_path / "no-such-server")
    out = subprocess.run([sys.executable, str(RUNNER), "--out", str(tmp_path), "--quick",
                          "--redis-server", missing], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "no such server binary" in out.stderr and missing in out.stderr


@pytest.mark.timeout(330)
def test_runner_quick_writes_latest_json(bench_bin: Path, tmp_path: Path) -> None:
    """The shape of a run, not its numbers: small request counts, so that a busy machine
    only makes it slower (300 s only catches a hang)."""
    if not MODULE.exists():
        pytest.skip(f"{MODULE.relative_to(REPO)} is not built yet (the cxl_ring driver)")
    regions_before = set(Path("/dev/shm").glob("cxlbench-*"))   # files and directories
    out = subprocess.run(
        [sys.executable, str(RUNNER), "--out", str(tmp_path), "--quick", "--idle-seconds",
         "1", "--no-python", "--ring-requests", "20000", "--tcp-requests", "20000",
         "--rtt-requests", "2000"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr + out.stdout
    doc = json.loads((tmp_path / "latest.json").read_text())
    for key in REQUIRED_KEYS:
        assert doc.get(key) is not None, key
    for key in ("ring_get_rps", "tcp_p16_get_rps", "tcp_p1_get_rps", "unix_p16_get_rps"):
        assert doc[key] > 0
    assert set(doc["targets"]) == {"pipelined_get_ring_vs_tcp_p16", "rtt_p50_ring_vs_tcp",
                                   "server_idle_cpu_pct", "pipelined_get_secdsm_vs_off",
                                   "rtt_p50_secdsm_vs_off"}
    assert all(v["result"] in ("PASS", "MISS") for v in doc["targets"].values())
    assert "redis-benchmark" in doc["commands"]["tcp_p16"]
    assert "cxl-ring-bench" in doc["commands"]["ring_pipelined"]
    # the commands name the checkout's files relative to it: no path of this machine's clone
    assert not any(str(REPO) in c for c in doc["commands"].values())
    assert doc["commands"]["ring_pipelined"].startswith("build/cxl-ring-bench ")
    # the secdsm runs went through a view with only the bench group's segments
    assert doc["secdsm"]["view"] == ["client-0", "header", "server-0"]
    assert "/view-0 " in doc["commands"]["ring_pipelined_secdsm"]
    assert " groups 4,4" in doc["commands"]["redis_server_secdsm"]
    assert doc["server_name"] in ("redis", "valkey")
    assert doc["server_version"] and doc["server_version"][0].isdigit()
    md = (tmp_path / "latest.md").read_text()
    assert "| GET, pipelined |" in md
    assert "| GET pipelined, req/s |" in md and "secdsm/off" in md
    assert f"Server: {doc['server_name']} {doc['server_version']}" in md
    verdict_lines = [ln for ln in out.stdout.splitlines() if ln.startswith(("PASS:", "MISS:"))]
    assert len(verdict_lines) == 5
    assert set(Path("/dev/shm").glob("cxlbench-*")) == regions_before   # region removed
