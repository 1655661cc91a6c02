"""build/cxl-ycsb (bench/c/ycsb/ycsb.c): a YCSB-like read/update workload over RESP, the one
playbooks/bench.yml runs through the gateway and over TCP between the VMs (docs/benchmarks.md,
"An application's workload").

Against a real redis-server on loopback: the load writes every record, the run's counts add up,
the mix and the zipfian skew are what was asked, AUTH works and a wrong password is a clear
error. Against hostile servers on loopback (a socket that answers garbage, closes, or never
answers): exit 1 with a message, never a hang or a crash. Bad arguments: exit 2 with the fix.
No assertion depends on speed; every run is small and bounded by a timeout."""

from __future__ import annotations

import collections
import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from benchutil import REPO, built

pytestmark = pytest.mark.timeout(120)

YCSB = REPO / "build" / "cxl-ycsb"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@pytest.fixture(scope="module")
def ycsb_bin() -> Path:
    return built(YCSB)


def ycsb(binary: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """One plain redis-server on a free loopback port, no persistence."""

    def __init__(self, workdir: Path, *conf: str):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir), *conf],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1):
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("redis-server did not start")
            time.sleep(0.05)

    def cli(self, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path) -> Iterator[Redis]:
    r = Redis(tmp_path)
    yield r
    r.stop()


# ---- against a real redis-server -------------------------------------------------------------


def test_load_then_run_reports_every_operation(ycsb_bin, redis_server):
    out = ycsb(ycsb_bin, "--port", str(redis_server.port), "--records", "500", "--ops", "3000",
               "--connections", "8", "--label", "t")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["tool"] == "cxl-ycsb" and rep["label"] == "t"
    assert rep["target"] == f"127.0.0.1:{redis_server.port}"
    w = rep["workload"]
    assert (w["name"], w["read_proportion"], w["distribution"], w["value_size"]) == \
        ("a", 0.5, "zipfian", 1024)
    assert rep["load"]["records"] == 500
    run, lat = rep["run"], rep["latency"]
    assert run["ops"] == 3000 and not run["truncated"]
    assert run["errors"] == 0 and run["misses"] == 0
    assert lat["read"]["count"] + lat["update"]["count"] == lat["all"]["count"] == 3000
    assert 1000 < lat["read"]["count"] < 2000            # 50 % reads, 3000 draws
    for kind in ("read", "update", "all"):
        s = lat[kind]
        assert 0 < s["p50_us"] <= s["p90_us"] <= s["p99_us"] <= s["p999_us"] <= s["max_us"]
    assert redis_server.cli("DBSIZE") == "500"            # every record, and nothing else
    assert redis_server.cli("STRLEN", "user0") == "1024"
    assert redis_server.cli("STRLEN", "user499") == "1024"


def test_workload_c_only_reads_and_updates_change_values(ycsb_bin, redis_server):
    port = str(redis_server.port)
    assert ycsb(ycsb_bin, "--port", port, "--records", "50", "--ops", "10").returncode == 0
    before = {k: redis_server.cli("GET", f"user{k}") for k in range(50)}
    out = ycsb(ycsb_bin, "--port", port, "--records", "50", "--ops", "500", "--workload", "c",
               "--no-load")
    rep = json.loads(out.stdout)
    assert rep["load"] is None and rep["latency"]["update"]["count"] == 0
    assert rep["latency"]["read"]["count"] == 500 and rep["run"]["misses"] == 0
    assert {k: redis_server.cli("GET", f"user{k}") for k in range(50)} == before
    out = ycsb(ycsb_bin, "--port", port, "--records", "50", "--ops", "500",
               "--read-proportion", "0", "--no-load")
    assert json.loads(out.stdout)["latency"]["update"]["count"] == 500
    assert {k: redis_server.cli("GET", f"user{k}") for k in range(50)} != before


def test_key_prefix(ycsb_bin, redis_server):
    out = ycsb(ycsb_bin, "--port", str(redis_server.port), "--records", "30", "--ops", "60",
               "--key-prefix", "app:k")
    assert out.returncode == 0 and json.loads(out.stdout)["key_prefix"] == "app:k"
    assert redis_server.cli("DBSIZE") == "30" and redis_server.cli("STRLEN", "app:k29") == "1024"


def test_reads_of_absent_keys_are_counted_as_misses(ycsb_bin, redis_server):
    out = ycsb(ycsb_bin, "--port", str(redis_server.port), "--records", "100", "--ops", "200",
               "--workload", "c", "--no-load")
    rep = json.loads(out.stdout)
    assert out.returncode == 0 and rep["run"]["misses"] == 200 and rep["run"]["errors"] == 0


def test_auth_and_a_refused_password(ycsb_bin, tmp_path):
    r = Redis(tmp_path, "--requirepass", "s3cret")
    try:
        port = str(r.port)
        out = ycsb(ycsb_bin, "--port", port, "--records", "20", "--ops", "100",
                   "--password", "s3cret")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["run"]["errors"] == 0
        out = ycsb(ycsb_bin, "--port", port, "--records", "20", "--ops", "100",
                   "--password", "wrong")
        assert out.returncode == 1 and "AUTH refused" in out.stderr
        out = ycsb(ycsb_bin, "--port", port, "--records", "20", "--ops", "100")
        assert out.returncode == 1 and "NOAUTH" in out.stderr     # the load's first error
    finally:
        r.stop()


def test_error_replies_are_counted_not_fatal(ycsb_bin, tmp_path):
    """A user that may read but not write: every update gets NOPERM, counted with the first
    error's text; the reads go on."""
    r = Redis(tmp_path, "--user", "default", "on", "nopass", "~*", "&*", "+@all", "-set")
    try:
        port = str(r.port)
        out = ycsb(ycsb_bin, "--port", port, "--records", "20", "--ops", "400", "--no-load")
        assert out.returncode == 0, out.stderr
        rep = json.loads(out.stdout)
        assert rep["run"]["errors"] == rep["latency"]["update"]["count"] > 0
        assert rep["latency"]["update"]["errors"] == rep["run"]["errors"]
        assert "NOPERM" in rep["run"]["first_error"]
    finally:
        r.stop()


def test_text_and_json_file(ycsb_bin, redis_server, tmp_path):
    dest = tmp_path / "out.json"
    out = ycsb(ycsb_bin, "--port", str(redis_server.port), "--records", "20", "--ops", "50",
               "--json", str(dest), "--text")
    assert out.returncode == 0 and out.stdout == ""
    text = dest.read_text()
    assert "50 ops" in text and "read" in text and "update" in text


def test_max_seconds_truncates_a_long_run(ycsb_bin, redis_server):
    out = ycsb(ycsb_bin, "--port", str(redis_server.port), "--records", "20",
               "--ops", "10000000", "--max-seconds", "0.3", "--connections", "2")
    rep = json.loads(out.stdout)
    assert out.returncode == 0 and rep["run"]["truncated"]
    assert 0 < rep["run"]["ops"] < 10000000


# ---- the key distributions (no server) --------------------------------------------------------


def sample(binary: Path, *args: str) -> list[int]:
    out = ycsb(binary, "--sample-keys", "20000", "--records", "1000", *args)
    assert out.returncode == 0, out.stderr
    return [int(x) for x in out.stdout.split()]


def test_zipfian_keys_are_skewed_scrambled_and_seeded(ycsb_bin):
    keys = sample(ycsb_bin)
    assert len(keys) == 20000 and all(0 <= k < 1000 for k in keys)
    counts = collections.Counter(keys).most_common()
    # theta 0.99 over 1000 keys: the hottest key takes ~13 % of the draws (uniform: 0.1 %),
    # the 10 hottest about 40 %.
    assert counts[0][1] > 20000 * 0.05
    assert sum(c for _, c in counts[:10]) > 20000 * 0.2
    assert counts[0][0] != 0 or counts[1][0] != 1      # scrambled: not the lowest numbers
    assert sample(ycsb_bin) == keys                      # the same seed, the same keys
    assert sample(ycsb_bin, "--seed", "2") != keys


def test_uniform_keys_are_flat(ycsb_bin):
    counts = collections.Counter(sample(ycsb_bin, "--distribution", "uniform"))
    assert len(counts) > 990 and max(counts.values()) < 20000 * 0.005


# ---- hostile or absent servers ---------------------------------------------------------------


@contextlib.contextmanager
def fake_server(answer: bytes | None, close: bool = False) -> Iterator[int]:
    """A loopback server that reads requests and answers each read with `answer` (None: never
    answers), or closes the connection at once."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    lsock.settimeout(0.2)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                c, _ = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if close:
                c.close()
                continue
            conns.append(c)
            threading.Thread(target=talk, args=(c,), daemon=True).start()

    def talk(c: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set() and c.recv(65536):
                if answer is not None:
                    c.sendall(answer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield lsock.getsockname()[1]
    finally:
        stop.set()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        lsock.close()
        t.join(10)


@pytest.mark.parametrize("garbage, message", [
    (b"*1\r\n$1\r\nx\r\n", "a reply of a type"),
    (b"$abc\r\n", "bulk length"),
    (b"+OK\n", "CRLF"),
    (b"$3\r\nabcXY", "bulk string not ended"),
    (b"+" + b"x" * 70000, "longer than 64 KiB"),
])
def test_a_server_that_breaks_the_protocol_is_a_clear_error(ycsb_bin, garbage, message):
    with fake_server(garbage) as port:
        out = ycsb(ycsb_bin, "--port", str(port), "--records", "10", "--ops", "10",
                   "--timeout-s", "5")
    assert out.returncode == 1 and "protocol error" in out.stderr and message in out.stderr


def test_extra_replies_are_a_protocol_error(ycsb_bin):
    with fake_server(b"+OK\r\n+OK\r\n") as port:
        out = ycsb(ycsb_bin, "--port", str(port), "--records", "1", "--ops", "10",
                   "--connections", "1", "--timeout-s", "5")
    assert out.returncode == 1 and "a reply to no request" in out.stderr


def test_a_closed_connection_and_a_silent_server(ycsb_bin):
    with fake_server(None, close=True) as port:
        out = ycsb(ycsb_bin, "--port", str(port), "--records", "10", "--ops", "10")
    assert out.returncode == 1 and "closed the connection" in out.stderr
    with fake_server(None) as port:
        out = ycsb(ycsb_bin, "--port", str(port), "--records", "10", "--ops", "10",
                   "--timeout-s", "0.5")
    assert out.returncode == 1 and "stopped answering" in out.stderr


def test_nothing_listening(ycsb_bin):
    out = ycsb(ycsb_bin, "--port", str(free_port()), "--ops", "1")
    assert out.returncode == 1 and "cannot connect to 127.0.0.1:" in out.stderr
    out = ycsb(ycsb_bin, "--host", "no-such-host.invalid", "--ops", "1")
    assert out.returncode == 1 and "cannot resolve" in out.stderr


@pytest.mark.parametrize("args, message", [
    (["--ops", "0"], "--ops 0: expected a whole number"),
    (["--ops", "20000000"], "--ops 20000000"),
    (["--records", "-5"], "--records -5"),
    (["--value-size", "8"], "--value-size 8"),
    (["--connections", "x"], "--connections x"),
    (["--read-proportion", "1.5"], "--read-proportion 1.5"),
    (["--zipf-theta", "1"], "--zipf-theta 1"),
    (["--workload", "d"], "expected a (50 % reads)"),
    (["--workload", "b", "--read-proportion", "0.3"], "give one of them"),
    (["--distribution", "latest"], "expected zipfian or uniform"),
    (["--user", "u"], "needs --password"),
    (["--key-prefix", ""], "--key-prefix : expected 1 to 32 bytes"),
    (["--bogus", "1"], "unknown option"),
    (["--ops"], "missing value"),
])
def test_bad_arguments_exit_2_naming_the_fix(ycsb_bin, args, message):
    out = ycsb(ycsb_bin, *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert out.stdout == ""


# ---- the lab report reads what the tool writes ------------------------------------------------


def test_lab_report_tabulates_the_tools_json(ycsb_bin, redis_server, tmp_path, lab_report):
    """bench/lab_report.py on a results folder as playbooks/bench.yml fetches it: the tool's own
    JSON (both labels the playbook gives), one CSV row, and a ycsb file that is not JSON."""

    vm = tmp_path / "results" / "vm2"
    vm.mkdir(parents=True)
    for label in ("gateway", "tcp"):
        out = ycsb(ycsb_bin, "--port", str(redis_server.port), "--records", "100", "--ops",
                   "500", "--label", label, "--json", str(vm / f"ycsb_{label}.json"))
        assert out.returncode == 0, out.stderr
    (vm / "ycsb_broken.json").write_text("{not json")
    (vm / "tcp_vm_P1__d64__t1.csv").write_text(
        '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
        '"p99_latency_ms","max_latency_ms"\n"GET","2500.00","0.400","0.100","0.300","0.600",'
        '"0.800","2.0"\n')
    assert lab_report.main([str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## An application's workload (YCSB-like)" in report
    assert "| through the native gateway (the ring) | 500 |" in report
    assert "| over TCP to the server VM | 500 |" in report
    assert "Throughput, gateway / TCP: " in report
    assert "vm2/ycsb_broken.json: unreadable" in report
