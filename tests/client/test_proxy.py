"""The RESP proxy (``cxl-ring proxy``) driven by unmodified clients: redis-py, redis-cli and
redis-benchmark, against the real driver (and the fake server for the protocol-level cases)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time

import pytest
from clientutil import Proxy

redis = pytest.importorskip("redis")
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["fake", "real"])
def proxy(request, tmp_path):
    if request.param == "fake":
        server = request.getfixturevalue("fake")
    else:
        server = request.getfixturevalue("real_server")
    p = Proxy(server.path)
    yield p
    p.stop()


@pytest.fixture
def real_proxy(real_server):
    p = Proxy(real_server.path)
    yield p
    p.stop()


def test_redis_py_commands(proxy):
    r = proxy.client()
    assert r.ping() is True
    assert r.set("k", "v") is True and r.get("k") == b"v"
    assert r.get("missing") is None
    assert r.set("t", "1", ex=100) is True
    assert r.set("t", "1", px=5000) is True
    assert r.exists("k", "nope") == 1
    assert r.delete("k", "nope") == 1
    assert r.incr("n") == 1
    with pytest.raises(redis.ResponseError):
        r.execute_command("NOSUCHCOMMAND")
    rd = proxy.client(decode_responses=True)
    rd.set("s", "välue")
    assert rd.get("s") == "välue"
    r2 = proxy.client(protocol=2)             # RESP2 explicitly (redis-py 8 defaults to 3)
    assert r2.set("k2", "v") is True and r2.get("k2") == b"v"


def test_redis_py_pipeline_10000(proxy):
    r = proxy.client()
    p = r.pipeline(transaction=False)
    for i in range(10_000):
        p.set(f"p:{i}", i)
    assert p.execute() == [True] * 10_000
    for i in range(10_000):
        p.get(f"p:{i}")
    assert p.execute() == [str(i).encode() for i in range(10_000)]


def test_many_concurrent_connections(proxy):
    errors = []

    def work(t: int) -> None:
        try:
            r = proxy.client()
            for i in range(100):
                r.set(f"c{t}:{i}", f"{t}-{i}")
                assert r.get(f"c{t}:{i}") == f"{t}-{i}".encode()
            r.close()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]


def _raw(port: int, data: bytes, expect_close: bool) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + 15      # only reached when the proxy hangs
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                return out + b"<closed>"
            out += chunk
            if not expect_close and out.count(b"\r\n") >= 3:
                break
        return out


@pytest.mark.parametrize("garbage", [b"*1\r\n$x\r\n", b"*1\r\n+PING\r\n", b"*abc\r\n",
                                     b"*1\r\n$4\r\nPINGxx"])
def test_malformed_resp_closes_only_that_connection(proxy, garbage):
    out = _raw(proxy.port, b"*1\r\n$4\r\nPING\r\n" + garbage, expect_close=True)
    assert out.startswith(b"+PONG\r\n-ERR Protocol error"), out
    assert out.endswith(b"<closed>")
    assert proxy.alive()
    assert proxy.client().ping() is True


def test_inline_and_local_commands(proxy):
    out = _raw(proxy.port, b"PING\r\nSELECT 0\r\nGET nokey\r\n", expect_close=False)
    assert out == b"+PONG\r\n+OK\r\n$-1\r\n"
    assert _raw(proxy.port, b"QUIT\r\nPING\r\n", expect_close=True) == b"+OK\r\n<closed>"
    # Pushes would land on the session every connection shares: refused here, never sent.
    out = _raw(proxy.port, b"SUBSCRIBE c\r\nPING\r\n", expect_close=False)
    assert out.startswith(b"-ERR the cxl_ring proxy does not forward SUBSCRIBE")
    assert out.endswith(b"\r\n+PONG\r\n")


@pytest.mark.skipif(not shutil.which("redis-cli"), reason="redis-cli not installed")
def test_redis_cli(real_proxy):
    def cli(*args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(real_proxy.port), *args],
                              capture_output=True, text=True, timeout=20).stdout.strip()

    assert cli("SET", "greeting", "hello") == "OK"
    assert cli("GET", "greeting") == "hello"
    assert cli("RPUSH", "l", "a", "b") == "2"
    assert cli("LRANGE", "l", "0", "-1") == "a\nb"
    assert "WRONGTYPE" in cli("GET", "l")
    assert cli("DEL", "greeting", "l") == "2"
    piped = subprocess.run(["redis-cli", "-p", str(real_proxy.port)], input="SET a 1\nGET a\n",
                           capture_output=True, text=True, timeout=20).stdout.split()
    assert piped == ["OK", "1"]


@pytest.mark.skipif(not shutil.which("redis-benchmark"), reason="redis-benchmark not installed")
def test_redis_benchmark(real_proxy):
    out = subprocess.run(
        ["redis-benchmark", "-p", str(real_proxy.port), "-t", "set,get", "-n", "20000",
         "-P", "16", "-c", "20", "-q"],
        capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    rates = dict(re.findall(r"(SET|GET): ([\d.]+) requests per second", out.stdout))
    assert set(rates) == {"SET", "GET"}, out.stdout
    assert all(float(v) > 0 for v in rates.values())
    assert real_proxy.alive()


def test_unsolicited_response_fails_that_command_only(fake):
    """A response in the proxy's ring while nothing is in flight is refused (the command that
    would have taken it gets an error and is not sent); the proxy claims again and goes on."""
    from cxl_ring import protocol as P

    p = Proxy(fake.path)
    try:
        r = p.client()
        assert r.set("k", "v") is True
        (channel,) = [c for c in range(fake.channels)
                      if fake.u64[fake.header.server_section(c) // 8] != 0]
        fake.inject_response(channel, P.encode_response(P.ST_OK, 0, b"forged"))
        executed = fake.executed
        with pytest.raises(redis.ResponseError, match="unsolicited"):
            r.get("k")
        assert fake.executed == executed
        assert r.get("k") == b"v" and p.alive()
    finally:
        p.stop()
