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
    "ring_small_get_rps", "ring_small_set_rps", "ring_null_get_rps", "ring_null_set_rps",
    "tcp_p16_small_get_rps", "tcp_p16_small_set_rps", "ratio_ring_get_vs_tcp_p16_small",
    "ratio_ring_small_vs_null_get_rps", "ratio_ring_vs_null_get_rps",
    "ratio_ring_large_vs_small_get_rps", "ratio_tcp_p16_large_vs_small_get_rps",
    "keyspace_bound", "keyspace", "keyspace_small",
]
TARGET_NAMES = {"pipelined_get_ring_vs_tcp_p16", "pipelined_get_ring_vs_tcp_p16_small_keyspace",
                "pipelined_get_ring_small_keyspace_vs_null", "rtt_p50_ring_vs_tcp",
                "server_idle_cpu_pct", "pipelined_get_secdsm_vs_off", "rtt_p50_secdsm_vs_off",
                "tcp_ping_p99_ms_ring_saturated", "notify_idle_cpu_pct", "notify_wake_p50_us",
                "pipelined_get_notify_vs_poll", "rtt_p50_notify_vs_poll",
                "gateway_get_p16_vs_tcp"}

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
         "--rtt-requests", "2000", "--fairness-pings", "20", "--wake-gap-ms", "50"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr + out.stdout
    doc = json.loads((tmp_path / "latest.json").read_text())
    for key in REQUIRED_KEYS:
        assert doc.get(key) is not None, key
    for key in ("ring_get_rps", "tcp_p16_get_rps", "tcp_p1_get_rps", "unix_p16_get_rps"):
        assert doc[key] > 0
    assert set(doc["targets"]) == TARGET_NAMES
    assert all(v["result"] in ("PASS", "MISS") for v in doc["targets"].values())
    assert "redis-benchmark" in doc["commands"]["tcp_p16"]
    assert "cxl-ring-bench" in doc["commands"]["ring_pipelined"]
    # the keyspace rows: the small keyspace and the null server, in the same run
    assert "--keyspace 1000 " in doc["commands"]["ring_pipelined_small"]
    assert "--keyspace 100000 " in doc["commands"]["ring_pipelined_null"]
    assert doc["commands"]["null_server"].startswith("build/cxl-null-server --path ")
    assert " -r 1000 " in doc["commands"]["tcp_p16_small"]
    for key in ("ring_small_get_rps", "ring_null_get_rps", "tcp_p16_small_get_rps"):
        assert doc[key] > 0
    # notification against polling: two servers that say how they wait, every figure there
    n = doc["notify"]
    assert n["notify_info"] == {"notify": "futex", "notify_fallback": ""}
    assert n["poll_info"] == {"notify": "poll", "notify_fallback": "notify off: polling"}
    for key in ("notify_get_rps", "poll_get_rps", "notify_rtt_p50_us", "poll_rtt_p50_us",
                "notify_wake_p50_us", "poll_wake_p50_us", "floor_wake_p50_us",
                "notify_idle_cpu_pct", "poll_idle_cpu_pct", "plain_redis_idle_cpu_pct"):
        assert n[key] is not None, key
    assert n["notify_sleep_wakes"] >= 1 and "cxl-ring-poll" in n["notify_idle_cpu_threads"]
    assert doc["commands"]["wake_latency_notify"].startswith("build/cxl-wake-latency ")
    # the commands name the checkout's files relative to it: no path of this machine's clone
    assert not any(str(REPO) in c for c in doc["commands"].values())
    assert doc["commands"]["ring_pipelined"].startswith("build/cxl-ring-bench ")
    # the application workload through the gateway and over TCP, in the same run
    for name in ("gateway", "tcp"):
        assert doc.get(f"ycsb_{name}_ops_per_s", 0) > 0, doc.get("notes")
        assert doc[f"ycsb_{name}_read_p99_us"] > 0
        assert doc["commands"][f"ycsb_{name}"].startswith("build/cxl-ycsb --port ")
    assert doc["ratio_ycsb_gateway_vs_tcp"] > 0
    # the secdsm runs went through a view with only the bench group's segments
    assert doc["secdsm"]["view"] == ["client-0", "header", "server-0"]
    assert "/view-0 " in doc["commands"]["ring_pipelined_secdsm"]
    assert " groups 4,4" in doc["commands"]["redis_server_secdsm"]
    assert doc["server_name"] in ("redis", "valkey")
    assert doc["server_version"] and doc["server_version"][0].isdigit()
    md = (tmp_path / "latest.md").read_text()
    assert "Notification against polling" in md
    assert "| GET, pipelined |" in md
    assert "| GET pipelined, req/s |" in md and "secdsm/off" in md
    assert "ring, null server" in md and doc["keyspace_bound"] in md
    assert "The application workload (build/cxl-ycsb" in md
    assert f"Server: {doc['server_name']} {doc['server_version']}" in md
    verdict_lines = [ln for ln in out.stdout.splitlines() if ln.startswith(("PASS:", "MISS:"))]
    assert len(verdict_lines) == len(TARGET_NAMES)
    # the fairness cases of a quick run: the attack and a small pipelined load,
    # each a TCP PING latency measured while the load ran
    cases = doc["fairness"]["cases"]
    assert [(c["channels"], c["op"], c["value_size"], c["client"]) for c in cases] == [
        (256, "GET", 1 << 20, "no-read"), (8, "GET", 64, "pipelined")]
    for c in cases:
        # at least 20 PINGs; whether the load kept running and the ring served meanwhile
        # is a measurement (a niced load on a busy CPU serves nothing): reported, and the
        # report flags a case where it did not, never asserted
        assert c["pings"] >= 20 and c["p99_ms"] is not None
        assert isinstance(c["load_ran_throughout"], bool) and c["ring_served_rps"] >= 0
        if not c["load_ran_throughout"]:
            assert "(the load ended or served nothing)" in md
        assert "--no-read" in c["load_command"] or "--pipeline" in c["load_command"]
    assert doc["fairness"]["worst_p99_ms"] == max(c["p99_ms"] for c in cases)
    assert "TCP PING while ring clients saturate" in md
    assert set(Path("/dev/shm").glob("cxlbench-*")) == regions_before   # region removed


# ---- the keyspace rows with fakes: what is measured where, and the ratios ---------------

# req/s each fake run reports, by the runner's name for the run
FAKE_RPS = {
    "ring_pipelined": {"GET": 600_000.0, "SET": 300_000.0},           # 100 000 keys
    "ring_pipelined_secdsm": {"GET": 610_000.0, "SET": 290_000.0},
    "ring_pipelined_small": {"GET": 2_000_000.0, "SET": 500_000.0},   # 1 000 keys
    "ring_pipelined_null": {"GET": 6_000_000.0, "SET": 5_000_000.0},
    "ring_rtt": {"GET": 300_000.0}, "ring_rtt_secdsm": {"GET": 290_000.0},
    "tcp_p16": {"GET": 300_000.0, "SET": 250_000.0},
    "tcp_p16_small": {"GET": 500_000.0, "SET": 400_000.0},
    "tcp_p1": {"GET": 50_000.0, "SET": 50_000.0}, "unix_p16": {"GET": 380_000.0, "SET": 300_000.0},
    "tcp_rtt": {"GET": 30_000.0},
}


class FakeRedis:
    """Stands in for RedisWithRing: records FLUSHALLs, serves nothing."""

    def __init__(self, module, region, **kw) -> None:
        self.region = region
        self.security = kw.get("security", "off")
        self.channels = 8
        self.command = ["redis-server", "--loadmodule", str(module), "path", region]
        self.port, self.unix_socket, self.pid = 1, "/nonexistent.sock", 1
        self.flushes = 0
        self.workdir = Path(kw["tmp"])

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def info(self, section: str) -> dict[str, str]:
        return {"redis_version": "7.0.15"}

    def view(self, group: int) -> str:
        view = self.workdir / f"view-{group}"
        view.mkdir(exist_ok=True)
        for name in ("header", f"client-{group}", f"server-{group}"):
            (view / name).touch()
        return str(view)

    def flushall(self) -> None:
        self.flushes += 1

    def alive(self) -> bool:
        return True


class FakeNull:
    def __init__(self, binary, region, **kw) -> None:
        self.region = region
        self.command = [str(binary), "--path", region]

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def alive(self) -> bool:
        return True


def test_measure_puts_each_keyspace_row_where_it_belongs(tmp_path: Path, monkeypatch) -> None:
    servers: list[FakeRedis] = []
    calls: list[tuple[str, str, int]] = []     # (name, target, keyspace)

    def fake_redis(module, region, **kw):
        servers.append(FakeRedis(module, region, tmp=tmp_path, **kw))
        return servers[-1]

    def fake_ring_bench(bench, path, args, cpu, timeout, commands, name):
        keyspace = int(args[args.index("--keyspace") + 1])
        calls.append((name, path, keyspace))
        if name == "ring_pipelined_small":      # only the small keyspace in the server
            assert servers[0].flushes == sum(c[0] == name for c in calls)
        commands[name] = f"{bench} --path {path} {' '.join(args)}"
        return {op: {"rps": rps, "p50_us": 2.0, "p99_us": 4.0, "avg_us": 3.0}
                for op, rps in FAKE_RPS[name].items()}

    def fake_redis_benchmark(server, target, tests, requests, pipeline, clients, cpu, timeout,
                             commands, name, keyspace=runner.LARGE_KEYSPACE):
        calls.append((name, "tcp", keyspace))
        if name == "tcp_p16_small":
            assert server.flushes >= 1
        commands[name] = f"redis-benchmark -r {keyspace}"
        return {op: {"rps": rps, "p50_latency_ms": 0.02, "p99_latency_ms": 0.05,
                     "avg_latency_ms": 0.03} for op, rps in FAKE_RPS[name].items()}

    monkeypatch.setattr(runner, "RedisWithRing", fake_redis)
    monkeypatch.setattr(runner, "NullServer", FakeNull)
    monkeypatch.setattr(runner, "ring_bench", fake_ring_bench)
    monkeypatch.setattr(runner, "redis_benchmark", fake_redis_benchmark)
    monkeypatch.setattr(runner, "idle_cpu_pct", lambda pid, settle, window: 0.5)
    monkeypatch.setattr(runner, "machine_info", lambda server: {"cpus": 2, "cpu_model": "x"})
    monkeypatch.setattr(runner.shutil, "which", lambda name: f"/usr/bin/{name}")
    for name in ("bench", "module.so", "null"):
        (tmp_path / name).touch()
    a = runner.parse_args(["--out", str(tmp_path), "--no-python", "--no-pin", "--repeat", "3",
                           "--no-notify", "--no-fairness", "--no-gateway",
                           "--bench-bin", str(tmp_path / "bench"),
                           "--module", str(tmp_path / "module.so"),
                           "--null-server-bin", str(tmp_path / "null")])
    res = runner.measure(a)

    # where each row was measured: the null server's region, the keyspace each run asked for
    null_region = next(c[1] for c in calls if c[0] == "ring_pipelined_null")
    assert null_region.endswith("-null") and null_region != servers[0].region
    assert {c[2] for c in calls if c[0] in ("ring_pipelined_small", "tcp_p16_small")} == {1000}
    assert {c[2] for c in calls if c[0] not in ("ring_pipelined_small", "tcp_p16_small")} == \
        {100_000}
    assert sum(c[0] == "ring_pipelined_null" for c in calls) == 3
    assert servers[0].flushes == 3 + 3            # before each small ring run and TCP run
    # the rows
    assert (res["ring_get_rps"], res["ring_small_get_rps"], res["ring_null_get_rps"]) == \
        (600_000.0, 2_000_000.0, 6_000_000.0)
    assert (res["tcp_p16_get_rps"], res["tcp_p16_small_get_rps"]) == (300_000.0, 500_000.0)
    assert res["ring_small_set_rps"] == 500_000.0 and res["ring_null_set_rps"] == 5_000_000.0
    assert res["tcp_p16_small_set_rps"] == 400_000.0
    # the ratios
    assert res["ratio_ring_get_vs_tcp_p16_small"] == 4.0
    assert res["ratio_ring_set_vs_tcp_p16_small"] == 1.25
    assert res["ratio_ring_small_vs_null_get_rps"] == 0.333
    assert res["ratio_ring_vs_null_get_rps"] == 0.1
    assert res["ratio_ring_large_vs_small_get_rps"] == 0.3
    assert res["ratio_tcp_p16_large_vs_small_get_rps"] == 0.6
    assert res["ratio_ring_get_vs_tcp_p16"] == 2.0
    assert "not the transport, bound it" in res["keyspace_bound"]
    t = res["targets"]
    assert set(t) == TARGET_NAMES
    assert t["pipelined_get_ring_vs_tcp_p16_small_keyspace"] == {
        "value": 4.0, "target": ">= 3.0", "result": "PASS"}
    assert t["pipelined_get_ring_small_keyspace_vs_null"] == {
        "value": 0.333, "target": ">= 0.25", "result": "PASS"}
    md = runner.markdown(res)
    assert "| GET | 600,000 | 2,000,000 | 6,000,000 | 300,000 | 500,000 |" in md
    assert "| ring / TCP -P 16, 1,000 keys | 4 | 1.25 |" in md
    assert "| ring, 1,000 keys / null server | 0.333 | 0.1 |" in md
    assert res["keyspace_bound"] in md
    assert "| pipelined_get_ring_small_keyspace_vs_null | 0.333 | >= 0.25 | PASS |" in md


@pytest.mark.parametrize("ring_large, tcp_large, verdict", [
    (600_000.0, 300_000.0, "not the transport, bound it"),   # the ring loses more than TCP
    (600_000.0, 150_000.0, "and TCP as much or more"),       # TCP loses as much or more
    (1_900_000.0, 500_000.0, "costs little on this machine"),
])
def test_keyspace_bound_sentence_follows_the_numbers(ring_large, tcp_large, verdict) -> None:
    res = {"ring_get_rps": ring_large, "ring_small_get_rps": 2_000_000.0,
           "ring_null_get_rps": 6_000_000.0, "tcp_p16_get_rps": tcp_large,
           "tcp_p16_small_get_rps": 500_000.0, "keyspace": 100_000, "keyspace_small": 1_000}
    out = runner.keyspace_ratios(res)
    assert verdict in out["keyspace_bound"]
    assert out["keyspace_bound"].startswith("With 100,000 keys the ring's pipelined GET runs at")


def test_keyspace_targets_not_met_say_miss() -> None:
    res = {"ring_get_rps": 300_000.0, "ring_small_get_rps": 900_000.0,
           "ring_null_get_rps": 6_000_000.0, "tcp_p16_get_rps": 250_000.0,
           "tcp_p16_small_get_rps": 400_000.0}
    res.update(runner.keyspace_ratios(res))
    t = runner.verdicts(res)
    assert t["pipelined_get_ring_vs_tcp_p16_small_keyspace"]["result"] == "MISS"   # 2.25
    assert t["pipelined_get_ring_small_keyspace_vs_null"]["result"] == "MISS"      # 0.15
    missing = runner.keyspace_ratios({})
    assert missing["ratio_ring_small_vs_null_get_rps"] is None
    assert missing["keyspace_bound"] == "not measured"
    assert runner.verdicts(missing)["pipelined_get_ring_small_keyspace_vs_null"]["result"] == \
        "MISS"


def test_gateway_rows_ratios_and_target() -> None:
    """The gateway section: ratios against the TCP rows of the same -P, its target, its table;
    no gateway rows at all when it was not measured."""
    res = {"gateway_p16_get_rps": 600_000.0, "gateway_p16_set_rps": 400_000.0,
           "gateway_p1_get_rps": 40_000.0, "gateway_p1_set_rps": 30_000.0,
           "tcp_p16_get_rps": 1_000_000.0, "tcp_p16_set_rps": 800_000.0,
           "tcp_p1_get_rps": 50_000.0, "tcp_p1_set_rps": 60_000.0}
    res.update(runner.gateway_ratios(res))
    assert (res["ratio_gateway_get_p16_vs_tcp"], res["ratio_gateway_set_p16_vs_tcp"],
            res["ratio_gateway_get_p1_vs_tcp"], res["ratio_gateway_set_p1_vs_tcp"]) == \
        (0.6, 0.5, 0.8, 0.5)
    assert runner.verdicts(res)["gateway_get_p16_vs_tcp"] == {
        "value": 0.6, "target": ">= 0.5", "result": "PASS"}
    rows = runner.gateway_markdown(res)
    assert "| GET -P 16 | 600,000 | 1,000,000 | 0.6 |" in rows
    assert "| SET -P 1 | 30,000 | 60,000 | 0.5 |" in rows
    missing = runner.gateway_ratios({})
    assert missing["ratio_gateway_get_p16_vs_tcp"] is None
    assert runner.verdicts(missing)["gateway_get_p16_vs_tcp"]["result"] == "MISS"
