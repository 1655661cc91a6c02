"""Long-lived sessions across a server restart (docs/ring-protocol.md sections 5 and 7) and
``cxl-ring bench`` giving its channels back between phases, against the real driver.

- An idle session (nothing in flight) whose server restarted claims a channel again and sends
  the request on the new session: no error, from RingClient (pure and C paths) and from the
  proxy, also when another client took the old channel in between (its req_tail then lies
  far beyond the stale session's cached req_head).
- A request in flight when the server restarts fails with UnknownOutcomeError (the client
  then goes on, on a new session).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import cxl_ring
import pytest
from clientutil import REPO, free_port
from cxl_ring import bench
from cxl_ring import protocol as P
from cxl_ring.exceptions import UnknownOutcomeError

pytestmark = pytest.mark.timeout(120)



def restart(server, how: str) -> None:
    """A clean stop (or kill -9), then a new redis-server on the same region."""
    if how == "kill":
        server.restart()
        return
    with open(server.path, "rb") as f:
        server.last_epoch = int.from_bytes(f.read(136)[128:136], "little")
    server.stop()
    server.port = free_port()
    server.sock = str(server.tmp / f"redis-{server.port}.sock")
    server.start()


def busy_other_client(path: str, n: int = 2000) -> None:
    """Another client claims (most likely) channel 0 and pushes its req_tail far ahead."""
    with cxl_ring.RingClient(path, timeout=5) as other, other.pipeline() as p:
        for i in range(n):
            p.set(f"other{i}", "y" * 100)
        assert all(v is True for v in p.execute())


def wait_request_in_ring(path: str, timeout: float = 20.0) -> None:
    """Until some channel's request ring holds a request the server has not taken."""
    deadline = time.monotonic() + timeout
    with cxl_ring.Region(path) as region:
        h = region.header()
        while not any(region.u64[(h.client_section(c) + P.OFF_REQ_HEAD) // 8]
                      != region.u64[(h.server_section(c) + P.OFF_REQ_TAIL) // 8]
                      for c in range(h.channel_count)):
            assert time.monotonic() < deadline, "no request ever reached a ring"
            time.sleep(0.005)


def channel_words(path: str) -> list[tuple[int, int, int]]:
    """(claim_token, ack_token, chan_state) of every channel."""
    with cxl_ring.Region(path) as region:
        h = region.header()
        out = []
        for c in range(h.channel_count):
            cs, ss = h.client_section(c), h.server_section(c)
            out.append((region.u64[cs // 8], region.u64[ss // 8],
                        region.u32[(ss + P.OFF_CHAN_STATE) // 4]))
        return out


def wait_all_free(path: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        words = channel_words(path)
        if all(claim == 0 and ack == 0 and state == P.CHAN_FREE
               for claim, ack, state in words):
            return
        assert time.monotonic() < deadline, f"channels still held: {words}"
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_idle_client_survives_restart(real_server, impl, how):
    with cxl_ring.RingClient(real_server.path, timeout=5) as r:
        assert r.set("k", "before") is True
        first_token = r.session_info()[1]
        restart(real_server, how)
        busy_other_client(real_server.path)     # reuses the retired channel's ring
        assert r.get("k") is None               # no persistence: the key is gone, no error
        assert r.set("k", "after") is True
        assert r.get("k") == b"after"
        assert r.session_info()[1] != first_token
        assert type(r._transport.session()).__name__ == (
            "FastSession" if impl == "c" else "Session")
        restart(real_server, how)
        assert r.execute_command("PING") == b"PONG"   # the general (CMD) path too
        restart(real_server, how)
        assert r.pipeline().set("p", 1).get("p").execute() == [True, b"1"]


def test_in_flight_request_at_restart_is_unknown_outcome(real_server, impl):
    tcp = real_server.redis()
    with cxl_ring.RingClient(real_server.path, timeout=10) as r:
        assert r.set("k", "v") is True
        index, _ = r.session_info()
        ss = r.region.header().server_section(index)
        cs = r.region.header().client_section(index)
        tcp.execute_command("CLIENT", "PAUSE", "20000", "WRITE")  # the SET stays in the ring
        u64 = r.region.u64
        failed: list[BaseException] = []

        def restart_once_in_flight() -> None:
            try:
                deadline = time.monotonic() + 10
                while u64[(cs + P.OFF_REQ_HEAD) // 8] == u64[(ss + P.OFF_REQ_TAIL) // 8]:
                    assert time.monotonic() < deadline, "the SET never reached the ring"
                    time.sleep(0.001)
                time.sleep(0.05)
            except BaseException as e:  # noqa: BLE001 - reported below
                failed.append(e)
            finally:
                restart(real_server, "kill")

        t = threading.Thread(target=restart_once_in_flight)
        t.start()
        try:
            with pytest.raises(UnknownOutcomeError):
                r.set("k", "lost?")                # on this thread's channel, paused
        finally:
            t.join(30)
        assert not failed, failed
        assert r.set("k", "again") is True     # a new session, no error
        assert r.get("k") == b"again"


@pytest.fixture
def proxy_on(real_server):
    from test_proxy import Proxy

    p = Proxy(real_server.path)
    yield p
    p.stop()


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_proxy_idle_session_survives_restart(real_server, proxy_on, how):
    pytest.importorskip("redis")
    rc = proxy_on.client()
    assert rc.set("k", "before") is True
    for round_ in range(2):
        restart(real_server, how)
        if round_:                              # the proxy's old channel moves on without it
            busy_other_client(real_server.path)
        assert rc.get("k") is None
        assert rc.set("k", f"after{round_}") is True
        assert rc.get("k") == f"after{round_}".encode()
        assert rc.execute_command("ECHO", "x") == b"x"
    assert proxy_on.alive()


def test_proxy_in_flight_at_restart_fails_then_recovers(real_server, proxy_on):
    redis = pytest.importorskip("redis")
    rc = proxy_on.client()
    assert rc.set("k", "v") is True
    real_server.redis().execute_command("CLIENT", "PAUSE", "20000", "WRITE")
    out: list[object] = []

    def blocked_set() -> None:
        try:
            out.append(rc.set("k", "lost?"))
        except redis.ResponseError as e:
            out.append(e)

    t = threading.Thread(target=blocked_set)
    t.start()
    wait_request_in_ring(real_server.path)      # the SET is in the ring, paused
    restart(real_server, "kill")
    t.join(30)
    assert len(out) == 1 and isinstance(out[0], redis.ResponseError), out
    assert "outcome unknown" in str(out[0]) or "restarted" in str(out[0]), out[0]
    rc2 = proxy_on.client()
    assert rc2.set("k", "again") is True
    assert rc2.get("k") == b"again"


# ---- cxl-ring bench: channels go back when a phase ends ----------------------------------------


def test_bench_phases_fit_in_threads_channels(real_server_factory):
    server = real_server_factory(channels=4)
    env = {**os.environ, "PYTHONPATH": str(REPO / "client")}
    env.pop("CXL_RING_PATH", None)
    r = subprocess.run([sys.executable, "-m", "cxl_ring.cli", "bench", "--path", server.path,
                        "--bench", "2000", "--op", "set,get", "--threads", "4",
                        "--keyspace", "1000"],
                       capture_output=True, text=True, timeout=90, env=env)
    assert r.returncode == 0, r.stderr
    assert "set" in r.stdout and "get" in r.stdout
    wait_all_free(server.path)


def test_bench_phase_releases_its_sessions(real_server_factory, impl):
    server = real_server_factory(channels=4)
    cfg = bench.BenchConfig(path=server.path, ops=("set", "get"), requests=800, threads=4,
                            keyspace=100, timeout=5)
    keys = bench._keys(cfg.keyspace)
    with cxl_ring.RingClient(server.path, timeout=5) as client:
        for op in cfg.ops:
            if op == "get":
                bench.prefill(client, cfg, keys)
                assert not client._transport._sessions
            res = bench.run_phase(client, cfg, op, keys)
            assert res.requests == 800 and res.errors == 0
            assert not client._transport._sessions   # every worker gave its channel back
            wait_all_free(server.path)
