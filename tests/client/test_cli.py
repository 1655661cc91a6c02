"""``cxl-ring`` CLI: commands, one-line errors and exit codes (on the fake and the real server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from clientutil import REPO

pytestmark = pytest.mark.timeout(120)


def cxl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "client")}
    env.pop("CXL_RING_PATH", None)
    return subprocess.run([sys.executable, "-m", "cxl_ring.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_commands_on_fake(fake):
    p = fake.path
    assert cxl("set", "--path", p, "k", "hello").stdout.strip() == "OK"
    assert cxl("get", "--path", p, "k").stdout.strip() == "hello"
    assert cxl("--path", p, "get", "nope").stdout.strip() == "(nil)"
    assert cxl("del", "--path", p, "k", "nope").stdout.strip() == "(integer) 1"
    assert cxl("cmd", "--path", p, "ECHO", "x").stdout.strip() == "x"
    r = cxl("cmd", "--path", p, "BOGUS")
    assert r.returncode == 6 and r.stderr.startswith("(error) ERR unknown command")
    info = json.loads(cxl("info", "--path", p, "--json").stdout)
    assert info["server"]["state"] == "RUNNING" and info["server"]["heartbeat_moving"] is True
    assert len(info["channels"]) == fake.channels
    text = cxl("info", "--path", p)
    assert text.returncode == 0 and "RUNNING" in text.stdout


def test_errors_and_exit_codes(fake, shm_path, tmp_path):
    missing = cxl("get", "--path", "/dev/shm/cxltest-nope", "k")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    zero = tmp_path / "zero"
    zero.write_bytes(bytes(1 << 16))
    assert cxl("get", "--path", str(zero), "k").returncode == 2
    junk = tmp_path / "junk"
    junk.write_bytes(b"NOTARING" * 8192)
    r = cxl("get", "--path", str(junk), "k")
    assert r.returncode == 3 and "not a cxl_ring region" in r.stderr
    assert cxl("get", "k").returncode == 1                      # no --path
    assert cxl("frobnicate").returncode == 1
    fake.stop()
    r = cxl("get", "--path", fake.path, "k")
    assert r.returncode == 4 and "STOPP" in r.stderr
    assert cxl("info", "--path", fake.path, "--no-wait").returncode == 4


def test_bench_writes_json_and_csv(real_server, tmp_path):
    out, csv = tmp_path / "b.json", tmp_path / "b.csv"
    r = cxl("bench", "--path", real_server.path, "--bench", "5000", "--pipeline",
            "--max-inflight", "256", "--op", "set,get,mix", "--json", str(out), "--csv", str(csv))
    assert r.returncode == 0, r.stderr
    assert "req/s" in r.stdout
    doc = json.loads(out.read_text())
    assert [ph["op"] for ph in doc["phases"]] == ["set", "get", "mix"]
    assert all(ph["requests"] == 5000 and ph["errors"] == 0 for ph in doc["phases"])
    assert csv.read_text().splitlines()[0].startswith("label,op,threads,rings,requests")
    r = cxl("bench", "--path", real_server.path, "--bench", "2000", "--op", "get",
            "--threads", "2")
    assert r.returncode == 0, r.stderr


def test_help():
    r = cxl("--help")
    assert r.returncode == 0
    for word in ("info", "get", "set", "del", "cmd", "bench", "proxy", "exit codes"):
        assert word in r.stdout
