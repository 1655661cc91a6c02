"""WAIT on a ring session (docs/ring-protocol.md section 14): it blocks the session, never the
server, until enough replicas acknowledged the session's writes, or its timeout; it answers
the count, as Redis does. Against a real redis-server and a real replica of it (a second
redis-server on loopback); what the replica holds is read from the replica itself. No
assertion depends on speed: a timeout must not fire early, and waits are bounded only to
catch a hang."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest
import redis
from cxl_ring import ResponseError, RingClient
from ringharness import REDIS_SERVER, SMALL, free_port, wait_for

pytestmark = pytest.mark.timeout(180)


def online_replicas(srv) -> int:
    info = srv.tcp_client().info("replication")
    return sum(1 for k, v in info.items()
               if k.startswith(("slave", "replica")) and isinstance(v, dict)
               and v.get("state") == "online")


@pytest.fixture
def srv(ring_servers):
    return ring_servers.server({**SMALL, "sleep_max_ms": 50})


@pytest.fixture
def replica(srv, tmp_path):
    """A redis-server replicating srv, online; stopped after the test."""
    port = free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path), "--replicaof", "127.0.0.1",
         str(srv.port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: online_replicas(srv) == 1, "the replica to be online")
        yield redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_wait_without_replicas_answers_zero(srv):
    with RingClient(srv.region, timeout=20) as ring:
        assert ring.execute_command("WAIT", "0", "0") == 0
        start = time.monotonic()
        assert ring.execute_command("WAIT", "1", "300") == 0     # its timeout, then the count
        assert time.monotonic() - start >= 0.3
        assert int(srv.info()["blocked_sessions"]) == 0


def test_wait_checks_its_arguments_as_redis_does(srv):
    with RingClient(srv.region, timeout=20) as ring:
        for args, text in ((("x", "0"), "not an integer"), (("1", "-1"), "negative"),
                           (("1", "0.5"), "not an integer"), (("1",), "wrong number")):
            with pytest.raises(ResponseError, match=text):
                ring.execute_command("WAIT", *args)
        assert ring.ping()


def test_wait_counts_a_replica_that_has_the_sessions_writes(srv, replica):
    """SET then WAIT in one pipeline, five times: WAIT answers 1, and the replica, read at
    once, already holds the key (WAIT counted no replica that lacked the write)."""
    with RingClient(srv.region, timeout=20) as ring:
        for i in range(5):
            p = ring.pipeline()
            p.execute_command("SET", f"w{i}", f"v{i}")
            p.execute_command("WAIT", "1", "0")
            assert p.execute() == [b"OK", 1]
            assert replica.get(f"w{i}") == f"v{i}".encode()
        # Two wanted, one there: each WAIT ends at its timeout with the count, 0 or 1 (the
        # offset it waits for may be past the replica's last ack, sent once a second), and
        # the replica is counted within a few of them.
        answers = []
        while 1 not in answers and len(answers) < 20:
            start = time.monotonic()
            answers.append(ring.execute_command("WAIT", "2", "500"))
            assert time.monotonic() - start >= 0.5
        assert set(answers) <= {0, 1} and answers[-1] == 1, answers


def test_a_blocked_wait_holds_its_session_only(srv):
    """WAIT 1 4000 with no replica blocks its session: another session and TCP go on
    meanwhile; then it answers 0."""
    with RingClient(srv.region, timeout=20) as other, \
            RingClient(srv.region, timeout=20) as waiter:
        got: list = []
        t = threading.Thread(target=lambda: got.append(waiter.execute_command("WAIT", "1",
                                                                              "4000")),
                             daemon=True)
        t.start()
        wait_for(lambda: int(srv.info()["blocked_sessions"]) == 1, "WAIT to block")
        other.set("k", "v")
        assert other.get("k") == b"v" and srv.tcp_client().get("k") == b"v"
        t.join(60)
        assert got == [0]
        assert int(srv.info()["blocked_sessions"]) == 0
