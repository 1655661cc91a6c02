"""cxl-ring-bench against a real redis-server with the cxl_ring module: short runs in
layout v5 (a region file, and a directory of segment files through a client's view) and v2,
the PoC's CSV, JSON, channel release, and the errors a user sees when the server is stopped
or dies mid-run."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from benchutil import BENCH, channel_sections, read_u64, run_bench, runner

pytestmark = pytest.mark.timeout(90)

POC_CSV_HEADER = ("label,op,threads,rings,requests,pipeline,max_inflight,throughput_rps,"
                  "avg_us,p50_us,p75_us,p90_us,p99_us,p99.9_us,p99.99_us,push_retries,"
                  "sleep_ms")

def wait_for_traffic(region: str, timeout: float = 30) -> None:
    """Until a claimed channel's server has consumed requests (req_tail, at 64 in its server
    section, moved)."""
    deadline = time.monotonic() + timeout
    while True:
        for _, _, s_file, s_off in channel_sections(region):
            if read_u64(s_file, s_off + 64) > 0:
                return
        assert time.monotonic() < deadline, "cxl-ring-bench never sent a request"
        time.sleep(0.01)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def claim_tokens(region: str) -> list[int]:
    """Every channel's claim_token (offset 0 of its client section)."""
    return [read_u64(c_file, c_off) for c_file, c_off, _, _ in channel_sections(region)]


def client_heartbeats(region: str) -> list[int]:
    return [read_u64(c_file, c_off + 8) for c_file, c_off, _, _ in channel_sections(region)]


def test_pipelined_set_get_v5(ring_server, tmp_path: Path) -> None:
    out = run_bench("--path", ring_server.region, "--bench", "20000", "--pipeline",
                    "--max-inflight", "256", "--json", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    assert "SET: 20000 requests" in out.stdout and "GET: 20000 requests" in out.stdout
    doc = read_json(tmp_path / "r.json")
    assert doc["outcome"] == "ok" and doc["layout"] == "v5" and doc["pipeline"] is True
    ops = {r["op"]: r for r in doc["results"]}
    assert set(ops) == {"SET", "GET"}
    for r in ops.values():
        assert r["requests"] == 20000 and r["errors"] == 0 and r["rps"] > 0
        assert 0 < r["p50_us"] <= r["p99_us"] <= r["p99.99_us"] <= r["max_us"] * 1.02
    assert ops["GET"]["get_misses"] == 0      # every key was prefilled


def test_info_server_names_the_server(ring_server) -> None:
    ident = runner.server_identity(ring_server.info("server"))
    assert ident["server_name"] in ("redis", "valkey")
    version = subprocess.run([ring_server.redis_server, "--version"], capture_output=True,
                             text=True, timeout=10).stdout
    assert ident["server_version"] and f"v={ident['server_version']}" in version


def test_values_written_through_the_ring_are_visible_over_tcp(ring_server) -> None:
    out = run_bench("--path", ring_server.region, "--op", "set", "--bench", "2000",
                    "--keyspace", "10", "--value-size", "100", "--quiet")
    assert out.returncode == 0, out.stderr
    got = subprocess.run(["redis-cli", "-s", ring_server.unix_socket, "GET",
                          "key:000000000007"], capture_output=True, text=True, timeout=10)
    assert got.stdout.strip() == "x" * 100


def test_unpipelined_latency_and_poc_csv(ring_server, tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    for label in ("first", "second"):
        out = run_bench("--path", ring_server.region, "--bench", "2000", "--latency",
                        "--cost", "--csv", str(path), "--label", label)
        assert out.returncode == 0, out.stderr
        assert "push retries" in out.stdout     # --cost
    lines = path.read_text().splitlines()
    assert lines[0] == POC_CSV_HEADER          # exactly the PoC's header, once
    rows = list(csv.DictReader(lines))
    assert [(r["label"], r["op"]) for r in rows] == [
        ("first", "SET"), ("first", "GET"), ("second", "SET"), ("second", "GET")]
    for r in rows:
        assert len(r) == 17 and None not in r
        assert r["threads"] == "1" and r["rings"] == "1" and r["requests"] == "2000"
        assert r["pipeline"] == "0" and r["max_inflight"] == "1"
        assert float(r["throughput_rps"]) > 0 and float(r["p50_us"]) > 0


def test_latency_flag_defaults_to_the_poc_csv_path(ring_server, tmp_path: Path) -> None:
    out = run_bench("--path", ring_server.region, "--bench", "500", "--latency", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = (tmp_path / "results" / "ring_metrics.csv").read_text().splitlines()
    assert lines[0] == POC_CSV_HEADER and len(lines) == 3


def test_threads_claim_and_release_their_channels(ring_server, tmp_path: Path) -> None:
    for _ in range(2):          # the second run claims channels the first released
        out = run_bench("--path", ring_server.region, "--threads", "3", "--bench", "6000",
                        "--pipeline", "--op", "mix", "--json", str(tmp_path / "r.json"))
        assert out.returncode == 0, out.stderr
        doc = read_json(tmp_path / "r.json")
        assert doc["threads"] == 3 and doc["results"][0]["op"] == "MIX"
        assert doc["results"][0]["requests"] == 6000
        assert claim_tokens(ring_server.region) == [0, 0, 0, 0]


def test_more_threads_than_channels_is_refused(ring_server) -> None:
    out = run_bench("--path", ring_server.region, "--threads", "5", "--bench", "10")
    assert out.returncode == 1
    assert "only 4 channels" in out.stderr


def test_duration_mode(ring_server, tmp_path: Path) -> None:
    """--duration 0.5 runs for half a second and stops by itself (run_bench's 60 s timeout
    catches a run that never stops; how much longer than 0.5 s it takes is not asserted)."""
    out = run_bench("--path", ring_server.region, "--op", "get", "--duration", "0.5",
                    "--pipeline", "--json", str(tmp_path / "r.json"), timeout=60)
    assert out.returncode == 0, out.stderr
    r = read_json(tmp_path / "r.json")["results"][0]
    assert r["seconds"] >= 0.45 and r["requests"] > 0


def test_v2_compat_mode(ring_server_v2, tmp_path: Path) -> None:
    path = tmp_path / "v2.csv"
    out = run_bench("--path", ring_server_v2.region, "--layout", "v2", "--bench", "20000",
                    "--pipeline", "--threads", "2", "--max-inflight", "200", "--latency",
                    "--csv", str(path), "--json", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    doc = read_json(tmp_path / "r.json")
    assert doc["layout"] == "v2" and doc["label"] == "ring_v2" and doc["rings"] == 4
    ops = {r["op"]: r for r in doc["results"]}
    assert ops["SET"]["requests"] == ops["GET"]["requests"] == 20000
    assert ops["GET"]["errors"] == 0 and ops["GET"]["get_misses"] == 0
    lines = path.read_text().splitlines()
    assert lines[0] == POC_CSV_HEADER and len(lines) == 3
    # one request at a time works too
    out = run_bench("--path", ring_server_v2.region, "--layout", "v2", "--bench", "500")
    assert out.returncode == 0, out.stderr


def test_layout_mismatch_against_real_servers(ring_server, ring_server_v2) -> None:
    out = run_bench("--path", ring_server_v2.region, "--bench", "10")
    assert out.returncode == 3 and "layout v2" in out.stderr
    out = run_bench("--path", ring_server.region, "--layout", "v2", "--bench", "10")
    assert out.returncode == 3 and "layout v5" in out.stderr
    out = run_bench("--path", ring_server_v2.region, "--layout", "v2", "--threads", "5")
    assert out.returncode == 1 and "only 4 rings" in out.stderr


def test_stopped_server_is_reported(own_server) -> None:
    own_server.proc.send_signal(signal.SIGTERM)
    own_server.proc.wait(timeout=10)
    out = run_bench("--path", own_server.region, "--bench", "10")
    assert out.returncode == 4, out
    assert "not running" in out.stderr


def test_server_killed_mid_run_reports_unknown_outcomes(own_server, tmp_path: Path) -> None:
    bench = subprocess.Popen(
        [str(BENCH), "--path", own_server.region, "--op", "set", "--duration", "20",
         "--pipeline", "--json", str(tmp_path / "r.json"), "--timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_traffic(own_server.region)     # requests in flight, not a claim half done
        own_server.proc.kill()                  # no clean shutdown: heartbeat stops
        own_server.proc.wait(timeout=10)
        _, err = bench.communicate(timeout=20)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert bench.returncode == 4, err
    assert "server gone" in err and "unknown outcome" in err
    assert read_json(tmp_path / "r.json")["outcome"] == "error"


# ---- Security secdsm: a directory of segment files, the bench given a client's view -------

def test_secdsm_view_claims_only_its_groups_channels(secdsm_server, tmp_path: Path) -> None:
    view = secdsm_server.view(1)
    assert sorted(os.listdir(view)) == ["client-1", "header", "server-1"]
    beats_before = client_heartbeats(secdsm_server.region)
    out = run_bench("--path", view, "--threads", "2", "--bench", "4000", "--pipeline",
                    "--max-inflight", "64", "--json", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["outcome"] == "ok" and doc["layout"] == "v5"
    assert {r["op"]: r["requests"] for r in doc["results"]} == {"SET": 4000, "GET": 4000}
    beats_after = client_heartbeats(secdsm_server.region)
    # group 0's channels (0, 1) untouched; group 1's (2, 3) claimed, beaten, released
    assert beats_after[:2] == beats_before[:2]
    assert all(a > b for a, b in zip(beats_after[2:], beats_before[2:]))
    assert claim_tokens(secdsm_server.region) == [0, 0, 0, 0]


def test_secdsm_round_trip_through_a_view(secdsm_server) -> None:
    out = run_bench("--path", secdsm_server.view(0), "--op", "get", "--bench", "300",
                    "--latency", "--csv", os.devnull)
    assert out.returncode == 0, out.stderr
    assert "GET: 300 requests" in out.stdout


def test_secdsm_view_has_as_many_lanes_as_its_group(secdsm_server) -> None:
    out = run_bench("--path", secdsm_server.view(0), "--threads", "3", "--bench", "10")
    assert out.returncode == 1, out
    assert "only 2 channels this process may claim" in out.stderr


def test_secdsm_view_without_its_server_segment_claims_nothing(secdsm_server,
                                                                tmp_path: Path) -> None:
    view = tmp_path / "view"
    view.mkdir()
    for name in ("header", "client-0"):              # server-0 not granted
        (view / name).symlink_to(os.path.join(secdsm_server.region, name))
    out = run_bench("--path", str(view), "--bench", "10")
    assert out.returncode == 2, out
    assert "no channel can be claimed" in out.stderr


def test_no_read_never_reads_and_claims_jammed_channels_again(ring_server,
                                                               tmp_path: Path) -> None:
    """--no-read, an attacker's load: requests go in, no reply is read, so the server's
    replies wait (resp_full), and a channel that takes nothing for 50 ms is claimed
    again (a new session each time)."""
    out = run_bench("--path", ring_server.region, "--op", "get", "--threads", "2",
                    "--duration", "0.6", "--no-read", "--value-size", "65536",
                    "--keyspace", "4", "--json", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    assert "never read:" in out.stdout
    (get,) = read_json(tmp_path / "r.json")["results"]
    assert get["op"] == "GET" and get["requests"] > 0 and get["reclaims"] >= 2
    info = subprocess.run(["redis-cli", "-s", ring_server.unix_socket, "CXLRING.INFO"],
                          capture_output=True, text=True, timeout=10).stdout.split("\n")
    resp_full = [int(info[i + 1]) for i, f in enumerate(info) if f == "resp_full"]
    sessions = [int(info[i + 1]) for i, f in enumerate(info) if f == "sessions"]
    assert sum(resp_full) > 0 and sum(sessions) >= 2 + get["reclaims"]
