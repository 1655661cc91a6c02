"""cxl-gateway (gateway/README.md): unmodified Redis clients over TCP, their commands over the
ring, against a real redis-server with build/cxl_ring.so.

What a command did is checked from outside the gateway where it matters: over TCP to the
server itself. Every wait only catches a hang (ringharness.HANG_S and the sockets' timeouts);
nothing here depends on the machine's speed."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
import redis
from cxl_ring import group_segments, make_view
from ringharness import BUILD, DIRECTORY, freeze, wait_for

# As conftest.py names them; not imported from it: with the whole tests/ tree collected,
# the module named conftest is another directory's by the time a test runs.
GATEWAY = BUILD / os.environ.get("CXL_GATEWAY_TEST_BINARY", "cxl-gateway")
GATEWAY_ASAN = BUILD / "cxl-gateway-asan"

pytestmark = pytest.mark.timeout(240)

PASSWORD = "s3cret-of-the-gateway"
APP = ["--user", "app", "on", "nopass", "~app:*", "+get", "+set"]


def _pairs(v) -> dict:
    """HGETALL's reply as a dict: RESP3 replies stay RESP2-shaped (a flat list)."""
    return v if isinstance(v, dict) else dict(zip(v[0::2], v[1::2]))


def _channel_states(srv) -> list[str]:
    return [c["state"] for c in srv.info()["channels"]]


def _recv_all(s: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything until the peer closes (the socket's timeout catches a hang)."""
    out = b""
    while len(out) < limit:
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk
    raise AssertionError(f"more than {limit} bytes and no close: {out[:200]!r}")


def _recv_exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise AssertionError(f"closed after {len(out)} of {n} bytes: {out[-200:]!r}")
        out += chunk
    return out


# ---- redis-py --------------------------------------------------------------------------


def test_redis_py_resp2(server, gateways):
    gw = gateways(server.region)
    r = gw.client()
    assert r.ping() is True
    assert r.set("k", "v") is True and r.get("k") == b"v"
    assert r.get("missing") is None
    assert r.delete("k", "missing") == 1
    assert r.incr("n") == 1 and r.incr("n", 5) == 6
    assert r.set("t", "1", ex=100) and 0 < r.ttl("t") <= 100
    assert r.set("p", "1", px=100000) and 0 < r.pttl("p") <= 100000
    assert r.expire("n", 50) is True and 0 < r.ttl("n") <= 50
    assert r.hset("h", mapping={"a": "1", "b": "2"}) == 2
    assert r.hgetall("h") == {b"a": b"1", b"b": b"2"}
    assert r.mget("n", "missing", "t") == [b"6", None, b"1"]
    assert r.echo("hi") == b"hi"
    with pytest.raises(redis.ResponseError, match="invalid expire time"):
        r.set("x", "1", ex=0)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        r.get("h")                                  # a fast op's ERR status
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        r.incr("h")                                 # a CMD's error reply
    with pytest.raises(redis.ResponseError, match="pub/sub needs one"):
        r.execute_command("SUBSCRIBE", "c")         # every channel shared: no own session
    # Local answers: SELECT 0 (on a shared session), CLIENT SETNAME/GETNAME, HELLO 2.
    assert r.execute_command("SELECT", "0") is True
    assert r.client_getname() is None
    assert r.client_setname("me") is True and r.client_getname() == "me"
    other = gw.client()                             # the same shared session, its own name
    assert other.client_getname() is None
    with pytest.raises(redis.ResponseError, match="cannot contain spaces"):
        other.client_setname("a b")
    assert other.execute_command("HELLO", "2", "SETNAME", "you")[:2] == [b"server", b"redis"]
    assert other.client_getname() == "you" and r.client_getname() == "me"
    other.close()
    assert r.execute_command("HELLO", "2")[:2] == [b"server", b"redis"]
    with pytest.raises(redis.ResponseError, match="NOPROTO"):
        r.execute_command("HELLO", "4")

    # 10 000 commands in one pipeline, answered in order (ring ops, CMDs and local replies).
    p = r.pipeline(transaction=False)
    expect = []
    for i in range(10_000):
        k = f"pk:{i % 97}"
        if i % 5 == 0:
            p.set(k, i)
            expect.append(True)
        elif i % 5 == 1:
            p.get(k)
            expect.append(None)                     # checked below against a model
        elif i % 5 == 2:
            p.incr("ctr")
            expect.append(("incr",))
        elif i % 5 == 3:
            p.execute_command("SELECT", "0")
            expect.append(True)
        else:
            p.strlen(k)
            expect.append(("strlen", k))
    got = p.execute()
    assert len(got) == 10_000
    model: dict[str, bytes] = {}
    ctr = 0
    for i, (g, e) in enumerate(zip(got, expect)):
        k = f"pk:{i % 97}"
        if i % 5 == 0:
            model[k] = str(i).encode()
            assert g is True
        elif i % 5 == 1:
            assert g == model.get(k), i
        elif i % 5 == 2:
            ctr += 1
            assert g == ctr, i
        elif i % 5 == 3:
            assert g is True
        else:
            assert g == len(model.get(e[1], b"")), i
    tcp = server.client()
    assert int(tcp.get("ctr")) == 2000
    assert tcp.hgetall("h") == {b"a": b"1", b"b": b"2"}

    s = gw.client(decode_responses=True)
    assert s.set("u", "é") and s.get("u") == "é" and s.mget("u", "missing") == ["é", None]


def test_redis_py_resp3(server, gateways):
    gw = gateways(server.region)
    r = gw.client(protocol=3, decode_responses=True)
    assert r.ping() is True
    assert r.set("k", "v") and r.get("k") == "v" and r.get("missing") is None
    assert r.delete("k") == 1 and r.incr("n") == 1
    assert r.set("t", "x", ex=100) and r.expire("n", 100) and 0 < r.ttl("n") <= 100
    assert r.hset("h", mapping={"a": "1", "b": "2"}) == 2
    assert _pairs(r.hgetall("h")) == {"a": "1", "b": "2"}
    assert r.mget("n", "t", "missing") == ["1", "x", None]
    p = r.pipeline(transaction=False)
    for _ in range(10_000):
        p.incr("seq")
    assert p.execute() == list(range(1, 10_001))
    hello = r.execute_command("HELLO", "3")
    assert hello["proto"] == 3 and hello["server"] == "redis"


def test_quit_closes_after_the_replies_owed(server, gateways):
    gw = gateways(server.region)
    with gw.sock() as s:
        s.sendall(b"SET q 1\r\nGET q\r\nQUIT\r\nGET q\r\n")
        assert _recv_all(s) == b"+OK\r\n$1\r\n1\r\n+OK\r\n"


# ---- redis-cli and redis-benchmark -------------------------------------------------------


@pytest.mark.skipif(not shutil.which("redis-cli"), reason="redis-cli is not installed")
def test_redis_cli(server, gateways):
    gw = gateways(server.region)
    cli = ["redis-cli", "-h", "127.0.0.1", "-p", str(gw.port)]
    out = subprocess.run([*cli, "SET", "cli", "one"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "OK", out
    out = subprocess.run([*cli, "GET", "cli"], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "one"
    # A batch on stdin, one command per line.
    batch = "".join(f"RPUSH list {i}\n" for i in range(200)) + "LLEN list\nGET cli\n"
    out = subprocess.run(cli, input=batch, capture_output=True, text=True, timeout=60)
    lines = out.stdout.split()
    assert out.returncode == 0 and lines[:3] == ["1", "2", "3"] and lines[-2:] == ["200", "one"]
    # --pipe: the whole batch written at once, as RESP.
    proto = "".join(f"*3\r\n$4\r\nSADD\r\n$3\r\nset\r\n${len(str(i))}\r\n{i}\r\n"
                    for i in range(1000))
    out = subprocess.run([*cli, "--pipe"], input=proto, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "errors: 0, replies: 1000" in out.stdout, out
    assert server.client().scard("set") == 1000


@pytest.mark.skipif(not shutil.which("redis-benchmark"), reason="redis-benchmark missing")
def test_redis_benchmark_completes(server, gateways):
    gw = gateways(server.region)
    out = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(gw.port), "-n",
                          "20000", "-P", "16", "-c", "20", "-t", "get,set", "-r", "1000",
                          "-e", "--csv"], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out
    assert "Error from server" not in out.stdout
    tests = {line.split(",")[0].strip('"') for line in out.stdout.splitlines()[1:]}
    assert {"SET", "GET"} <= tests, out.stdout
    assert gw.alive()
    assert 0 < server.client().dbsize() <= 1000



def test_the_ycsb_like_workload_through_the_gateway(server, gateways):
    """build/cxl-ycsb (the application workload playbooks/bench.yml runs): its 1 KiB SETs and
    GETs of zipfian keys from 16 connections through the gateway, none refused, every record in
    the server behind the ring."""
    ycsb = BUILD / "cxl-ycsb"
    if not ycsb.exists():
        pytest.skip(f"{ycsb} is not built (make build)")
    gw = gateways(server.region)
    out = subprocess.run([str(ycsb), "--port", str(gw.port), "--records", "300", "--ops", "3000",
                          "--connections", "16", "--timeout-s", "60"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["run"]["ops"] == 3000 and rep["run"]["errors"] == 0
    assert rep["run"]["misses"] == 0
    c = server.client()
    assert c.dbsize() == 300 and c.strlen("user0") == c.strlen("user299") == 1024
    assert gw.alive()

# ---- many connections ----------------------------------------------------------------------


def test_connections_interleave_pipelines_in_order(server, gateways):
    """4 connections, each 2000 INCRs on its own key in pipelines of varying size, at the
    same time: each sees its own replies, in order; the values are checked over TCP."""
    gw = gateways(server.region, channels=2)      # connections share sessions
    errors: list[str] = []

    def worker(n: int) -> None:
        try:
            r = gw.client()
            rnd = random.Random(n)
            done = 0
            while done < 2000:
                size = min(rnd.randint(1, 300), 2000 - done)
                p = r.pipeline(transaction=False)
                for _ in range(size):
                    p.incr(f"ctr:{n}")
                    p.echo(f"{n}:{done}")
                got = p.execute()
                for j in range(size):
                    if got[2 * j] != done + j + 1 or got[2 * j + 1] != f"{n}:{done}".encode():
                        errors.append(f"conn {n}: reply {j} of a batch from {done}: "
                                      f"{got[2 * j]!r} {got[2 * j + 1]!r}")
                        return
                done += size
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"conn {n}: {e!r}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert not errors, errors[:5]
    tcp = server.client()
    assert [int(tcp.get(f"ctr:{n}")) for n in range(4)] == [2000] * 4


def test_slow_reader_is_paused_and_gets_everything(server, gateways):
    """Replies bigger than the output limit for a connection that does not read for a while:
    the gateway stops reading it, then serves it all, in order, as it drains."""
    gw = gateways(server.region)
    value = bytes(range(256)) * 2048                # 512 KiB
    assert server.client().set("big", value)
    n = 200                                         # 100 MiB of replies
    with gw.sock() as s:
        s.sendall(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n" * n + b"PING\r\n")
        time.sleep(0.5)                             # let the output pile up
        reply = b"$%d\r\n" % len(value) + value + b"\r\n"
        for _ in range(n):
            assert _recv_exact(s, len(reply)) == reply
        assert _recv_exact(s, 7) == b"+PONG\r\n"
    assert gw.client().ping()


def test_max_clients(server, gateways):
    gw = gateways(server.region, args=["--max-clients", "2"])
    a, b = gw.client(), gw.client()
    assert a.ping() and b.ping()
    with gw.sock() as s:    # sends nothing: a close with unread input would be a reset
        assert _recv_all(s) == b"-ERR max number of clients reached\r\n"
    a.close()
    wait_for(lambda: _pings(gw), "a connection to be let in again")


def _pings(gw) -> bool:
    try:
        return gw.client().ping()
    except redis.exceptions.RedisError:
        return False


# ---- hostile input (ASan+UBSan build) ------------------------------------------------------


MALFORMED = [
    # (bytes sent, the reply expected before the close)
    (b"*1\r\n+PING\r\n", b"-ERR Protocol error: expected '$', got '+'\r\n"),
    (b"*\xff\xfe\x00garbage\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    (b"*-5\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    (b"*100000\r\n", b"-ERR Protocol error: invalid multibulk length (more than 1024 "
     b"arguments)\r\n"),
    (b"*2\r\n$3\r\nGET\r\n$-7\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*2\r\n$3\r\nGET\r\n$99999999\r\n", b"-ERR Protocol error: invalid bulk length "
     b"99999999 (over the ring's max_value_size 1048576)\r\n"),
    (b"*1\r\n$4\r\nPINGxx", b"-ERR Protocol error: bulk argument not terminated by CRLF\r\n"),
    (b"*1\r\n$" + b"9" * 40, b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"X" * 70000, b"-ERR Protocol error: too big inline request\r\n"),
    # the replies owed before the bad frame come first
    (b"PING\r\n*1\r\n$4\r\nPING\r\n*x\r\n",
     b"+PONG\r\n+PONG\r\n-ERR Protocol error: invalid multibulk length\r\n"),
]


def test_malformed_input_closes_only_that_connection(server, gateways):
    gw = gateways(server.region, binary=GATEWAY_ASAN)
    other = gw.client()
    assert other.set("kept", "1")
    for sent, expected in MALFORMED:
        with gw.sock() as s:
            s.sendall(sent)
            assert _recv_all(s) == expected, sent[:40]
        assert other.get("kept") == b"1"            # the gateway serves the others

    # A truncated frame, then close: nothing of it runs.
    with gw.sock() as s:
        s.sendall(b"*3\r\n$3\r\nSET\r\n$5\r\ntrunc\r\n$5\r\nval")
    with gw.sock() as s:
        s.sendall(b"*3\r\n$3\r\nSET\r\n$5\r\ntrunc\r\n")
        s.shutdown(socket.SHUT_WR)
        assert _recv_all(s) == b""

    # Random bytes, bounded: each connection closes its sending side; whatever the gateway
    # answered, it closes too, and stays up.
    rnd = random.Random(12)
    alphabet = b"*$:+-\r\n0123456789-GETSPINabc \x00\xff"
    for _ in range(150):
        junk = bytes(rnd.choice(alphabet) for _ in range(rnd.randint(1, 200)))
        with gw.sock() as s:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            _recv_all(s)
    assert other.get("kept") == b"1" and other.ping()
    assert server.client().get("trunc") is None
    assert gw.alive()
    assert gw.stop() == 0
    err = gw.stderr_text()
    assert "AddressSanitizer" not in err and "runtime error" not in err, err[-3000:]


# ---- ACL: a session of its own per authenticated connection ------------------------------


def test_auth_gives_a_connection_its_own_session(ring_servers, gateways):
    """Group 1 has no ACL user and "default" needs a password (docs/ring-protocol.md section
    12): through the gateway every connection gets NOAUTH until it authenticates; AUTH gives
    that connection a session of its own, the others keep theirs."""
    srv = ring_servers.server({"req_ring": "256k", "resp_ring": "256k", "max_value": 65536,
                               "groups": "2,4", "acl_users": "app,-"},
                              region=ring_servers.region(DIRECTORY), conf=APP)
    srv.client().config_set("requirepass", PASSWORD)
    srv.password = PASSWORD                         # the harness's own connections
    tcp = srv.client()
    tcp.set("app:kept", "1")
    view = ring_servers.keep(f"{srv.region[:-2]}.g1")
    make_view(srv.region, view, group_segments(1))
    gw = gateways(view, channels=1)                 # one shared session, 3 channels free

    a, b = gw.client(), gw.client()
    for r in (a, b):
        with pytest.raises(redis.AuthenticationError, match="Authentication required"):
            r.get("app:kept")
    assert a.execute_command("AUTH", PASSWORD) is True
    assert a.set("k", "v") and a.get("k") == b"v" and a.dbsize() == 2
    with pytest.raises(redis.AuthenticationError, match="Authentication required"):
        b.get("k")                                  # b still has no user

    c = gw.client()
    assert c.execute_command("AUTH", "app", "x") is True     # app is nopass
    assert c.get("app:kept") == b"1"
    with pytest.raises(redis.exceptions.NoPermissionError):
        c.flushall()
    assert tcp.dbsize() == 2                        # the FLUSHALL did not run

    with pytest.raises(redis.AuthenticationError):
        b.execute_command("AUTH", "wrong")          # WRONGPASS: b keeps the shared session
    with pytest.raises(redis.AuthenticationError, match="Authentication required"):
        b.get("k")

    # HELLO 3 AUTH (redis-py protocol=3 with a password) takes the third free channel.
    d = gw.client(protocol=3, password=PASSWORD, decode_responses=True)
    assert d.get("k") == "v"
    e = gw.client()
    with pytest.raises(redis.ResponseError, match="no free ring channel"):
        e.execute_command("AUTH", PASSWORD)
    group1 = [ch["channel"] for ch in srv.info()["channels"] if ch["group"] == 1]
    assert all(_channel_states(srv)[ch] != "free" for ch in group1)

    a.close()                                       # releases its channel
    wait_for(lambda: _auth_ok(e), "a channel freed by a closed connection")
    assert e.get("k") == b"v"
    for r in (c, d, e):
        r.close()

    # AUTH in the middle of a pipeline: the replies before it come from the shared session
    # (NOAUTH), the commands after it run as the new user, all in order.
    wait_for(lambda: sum(_channel_states(srv)[ch] == "free" for ch in group1) == 3,
             "the own sessions' channels to be released")
    with gw.sock() as s:
        s.sendall(b"GET k\r\nAUTH " + PASSWORD.encode() + b"\r\nSET k w\r\nGET k\r\nQUIT\r\n")
        assert _recv_all(s) == (b"-NOAUTH Authentication required.\r\n+OK\r\n+OK\r\n"
                                b"$1\r\nw\r\n+OK\r\n")
    # A connection that closes while its AUTH is in flight: its channel is released too.
    for _ in range(3):
        with gw.sock() as s:
            s.sendall(b"AUTH " + PASSWORD.encode() + b"\r\n")
    wait_for(lambda: sum(_channel_states(srv)[ch] == "free" for ch in group1) == 3,
             "the own sessions' channels to be released")
    assert gw.alive()


def _auth_ok(r) -> bool:
    try:
        return r.execute_command("AUTH", PASSWORD) is True
    except redis.ResponseError as e:
        assert "no free ring channel" in str(e)
        return False


# ---- the server dies or restarts; the gateway stops ----------------------------------------


def test_server_restart_fails_in_flight_requests_then_serves_again(server, gateways):
    gw = gateways(server.region, args=["--timeout-ms", "20000"])
    r = gw.client()
    assert r.set("before", "1")
    with gw.sock() as s:
        try:
            freeze(server.pid)                      # requests now stay in flight
            s.sendall(b"SET inflight 1\r\nGET before\r\nPING\r\n")
            time.sleep(0.2)
            server.stop(signal.SIGKILL)
        except BaseException:
            server.proc.send_signal(signal.SIGCONT)
            raise
        replies = b""
        while replies.count(b"\r\n") < 3:
            chunk = s.recv(4096)
            assert chunk, replies
            replies += chunk
    lines = replies.split(b"\r\n")[:3]
    assert all(line.startswith(b"-ERR cxl_ring: ") and b"outcome unknown" in line
               for line in lines), replies
    server.start()                                  # the same region: reused, new epoch
    wait_for(lambda: _pings(gw), "the gateway to serve again")
    assert r.set("after", "2") and r.get("after") == b"2"      # the old connection too
    assert server.client().get("after") == b"2"
    assert gw.alive()


def test_graceful_restart_and_an_authenticated_connection(server, gateways):
    """A server stopped cleanly (STOPPED in its header): commands meanwhile get an error at
    once, the gateway maps the region again once it is back; a connection that had its own
    session (AUTH) is told it lost it and closed, not switched to another user."""
    gw = gateways(server.region, channels=2)
    authed, plain = gw.client(), gw.client()
    assert authed.execute_command("AUTH", "default", "any") is True   # default is nopass
    assert authed.set("a", "1") and plain.set("p", "1")
    assert server.stop(signal.SIGTERM) == 0
    with pytest.raises(redis.ResponseError, match="cxl_ring"):
        plain.get("p")
    server.start()
    wait_for(lambda: _pings(gw), "the gateway to serve again")
    assert plain.set("p", "2") and plain.get("p") == b"2"
    with gw.sock() as s:                            # the same, on the wire
        s.sendall(b"AUTH default any\r\nGET p\r\n")
        assert _recv_exact(s, 12) == b"+OK\r\n$1\r\n2\r\n"
    with pytest.raises(redis.ResponseError, match="authenticated session was lost"):
        authed.get("a")                             # its user went with its session
    assert gw.alive() and plain.ping()


def test_sigterm_exits_zero_and_frees_every_channel(server, gateways):
    gw = gateways(server.region)
    assert gw.client().ping()
    assert _channel_states(server) != ["free"] * 4            # every channel claimed
    assert "4 shared ring sessions" in gw.stderr_text()
    assert gw.stop(signal.SIGTERM) == 0
    wait_for(lambda: _channel_states(server) == ["free"] * 4, "the channels to be free")


def test_usage_errors(server):

    out = subprocess.run([str(GATEWAY), "--path", server.region], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 1 and "--listen" in out.stderr
    out = subprocess.run([str(GATEWAY), "--path", "/dev/shm/cxl-gateway-no-such-region",
                          "--listen", "127.0.0.1:1"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2 and re.search(r"cannot|No such", out.stderr), out.stderr


# ---- a connection's own session: SELECT, MULTI/EXEC, WATCH (ring-protocol.md section 13) ------


def test_transactions_and_select_get_a_session_of_their_own(server, gateways):
    """MULTI, WATCH or SELECT n gives the connection a session of its own (the driver keeps
    them per session): its transaction never queues another connection's commands, and its
    database is its own."""
    gw = gateways(server.region, channels=1)
    a, b = gw.client(), gw.client()
    assert a.set("shared", "1") and b.get("shared") == b"1"     # both on the shared session
    p = a.pipeline(transaction=True)                            # MULTI ... EXEC
    p.incr("n").incr("n").get("n")
    assert p.execute() == [1, 2, b"2"]
    a.execute_command("MULTI")
    a.execute_command("INCR", "n")
    assert b.incr("n") == 3                                     # b is not queued behind a's MULTI
    assert a.execute_command("EXEC") == [4]
    # WATCH: another client's write makes EXEC run nothing
    with a.pipeline(transaction=True) as w:
        w.watch("n")
        b.incr("n")
        w.multi()
        w.set("n", "mine")
        with pytest.raises(redis.WatchError):
            w.execute()
    assert server.client().get("n") == b"5"
    # SELECT 2 on a connection of its own: the database is that connection's
    c = gw.client()
    assert c.execute_command("SELECT", "2") is True
    assert c.set("k", "in 2") and c.get("k") == b"in 2"
    assert server.client(db=2).get("k") == b"in 2" and server.client().get("k") is None
    assert b.get("k") is None                                   # b stays in database 0


def test_a_transaction_needs_a_free_channel(server, gateways):
    """Every channel shared: MULTI says it needs a channel of its own, and nothing else
    changes for that connection."""
    gw = gateways(server.region)                                # all 4 channels shared
    r = gw.client()
    with pytest.raises(redis.ResponseError, match="no free ring channel"):
        r.execute_command("MULTI")
    assert r.set("after", "1") and server.client().get("after") == b"1"


# ---- blocking commands: a connection's own session blocks, not the others (section 14) ------


def test_blpop_blocks_only_its_connection(server, gateways):
    """redis-py's BLPOP through the gateway (default --timeout-ms 5000, less than the block):
    the connection gets a session of its own and waits there; the other connections, on the
    shared session, go on; a push over TCP answers it; a timeout answers nil."""
    gw = gateways(server.region, channels=1)
    waiter, other = gw.client(), gw.client()
    waiter.connection_pool.connection_kwargs["socket_timeout"] = 60
    assert waiter.ping() and other.ping()
    out = {}
    t = threading.Thread(target=lambda: out.update(v=waiter.blpop(["jobs"], timeout=0)),
                         daemon=True)
    t.start()
    wait_for(lambda: int(server.info()["blocked_sessions"]) == 1, "the BLPOP to block")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 6:                   # past the gateway's --timeout-ms
        assert other.set("k", "v") and other.get("k") == b"v"
        time.sleep(0.2)
    assert "v" not in out
    server.client().rpush("jobs", "job-1")
    t.join(60)
    assert out["v"] == (b"jobs", b"job-1")
    assert waiter.brpop(["none"], timeout=0.3) is None
    assert waiter.blmove("none", "dst", 0.3) is None
    server.client().zadd("z", {"m": 2})
    assert waiter.bzpopmin(["z"], timeout=0) == (b"z", b"m", 2.0)
    assert not waiter.xread({"s": "$"}, block=300)       # nil at its timeout
    t = threading.Thread(target=lambda: out.update(x=waiter.xread({"s": "$"}, block=0)),
                         daemon=True)
    t.start()
    wait_for(lambda: int(server.info()["blocked_sessions"]) == 1, "XREAD BLOCK to block")
    eid = server.client().xadd("s", {"f": "v"})
    t.join(60)
    assert out["x"] == [[b"s", [(eid, {b"f": b"v"})]]]
    assert gw.alive() and int(server.info()["blocked_sessions"]) == 0
    # WAIT (no replica here): 0 at once for none, 0 at its timeout for one, while the other
    # connection goes on
    assert waiter.wait(0, 0) == 0
    t = threading.Thread(target=lambda: out.update(w=waiter.wait(1, 1500)), daemon=True)
    t.start()
    wait_for(lambda: int(server.info()["blocked_sessions"]) == 1, "WAIT to block")
    assert other.set("k2", "v2") and other.get("k2") == b"v2"
    t.join(60)
    assert out["w"] == 0 and int(server.info()["blocked_sessions"]) == 0
