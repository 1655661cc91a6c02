"""The server rings its blocked clients' doorbells (N3/N4 with notify_kind doorbell,
docs/ring-protocol.md section 8), on one host.

Between VMs each VM has its own doorbell device, and the hypervisor's doorbell server carries a
ring written on one VM's device (``peer << 16 | vector``) to that peer's device. Here a terminal
in raw mode stands in for each VM's device: the driver and the client open their own terminal
(``/dev/pts/N``) as they would open ``/dev/cxl/doorbell``, and `Router` plays the doorbell
server between the terminals' other ends, counting every ring it carries. A terminal has no
directory, so the peer ids come from the driver's ``doorbell_peer`` argument and the client's
``CXL_RING_DOORBELL_PEER``.

A blocked client here waits up to `LONG_BLOCK` seconds on its doorbell before it looks again
(the library's own bound is 50 ms), and the server up to a minute: an answer that came within
the hang bound came through a ring. No assertion depends on how fast anything is.
"""

from __future__ import annotations

import os
import random
import select
import struct
import subprocess
import sys
import threading
import time
import tty

import pytest
from cxl_ring import RingClient
from ringharness import FORMS

pytestmark = pytest.mark.timeout(300)

SERVER_PEER, CLIENT_PEER, OTHER_PEER = 5, 7, 9
LONG_BLOCK = 60.0
GEOMETRY = {"channels": 4, "req_ring": "256k", "resp_ring": "256k", "max_value": 65536}


class Router:
    """Terminals standing in for the doorbell devices of peers, and the doorbell server
    between them. ``path(peer)`` is that peer's device; ``carried[(src, dst)]`` counts rings;
    a ring to a peer without a terminal is dropped and counted in ``dropped``."""

    def __init__(self, peers) -> None:
        self.ends: dict[int, tuple[int, int, str]] = {}
        for peer in peers:
            master, slave = os.openpty()
            tty.setraw(slave)
            os.set_blocking(master, False)
            self.ends[peer] = (master, slave, os.ttyname(slave))
        self.carried: dict[tuple[int, int], int] = {}
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def path(self, peer: int) -> str:
        return self.ends[peer][2]

    def rings(self, src: int, dst: int) -> int:
        return self.carried.get((src, dst), 0)

    def _run(self) -> None:
        by_fd = {m: peer for peer, (m, _s, _p) in self.ends.items()}
        pending = {m: b"" for m in by_fd}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(by_fd), [], [], 0.05)
            for m in ready:
                try:
                    pending[m] += os.read(m, 4096)
                except BlockingIOError:
                    continue
                buf = pending[m]
                while len(buf) >= 4:
                    (value,), buf = struct.unpack("<I", buf[:4]), buf[4:]
                    self._carry(by_fd[m], value >> 16)
                pending[m] = buf

    def _carry(self, src: int, dst: int) -> None:
        end = self.ends.get(dst)
        if end is None:
            self.dropped += 1
            return
        self.carried[(src, dst)] = self.rings(src, dst) + 1
        os.write(end[0], struct.pack("<I", 1))     # what uio's read would say: a count

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for master, slave, _p in self.ends.values():
            os.close(master)
            os.close(slave)


@pytest.fixture
def router():
    r = Router([SERVER_PEER, CLIENT_PEER, OTHER_PEER])
    try:
        yield r
    finally:
        r.close()


def bell_server(ring_servers, router, **extra):
    args = {**GEOMETRY, "test_remote_region": "yes", "doorbell": router.path(SERVER_PEER),
            "doorbell_peer": SERVER_PEER, "sleep_max_ms": 60000, **extra}
    return ring_servers.server(args)


def client_rings(srv) -> int:
    return int(srv.info()["client_rings"])


def pusher(srv, key: str, delays: list[float]) -> threading.Thread:
    """Over TCP: after each delay, one RPUSH of ``key``."""
    def run() -> None:
        tcp = srv.tcp_client()
        for i, d in enumerate(delays):
            time.sleep(d)
            tcp.rpush(key, str(i))
        tcp.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("ring_servers", FORMS, indirect=True)
def test_a_blocked_client_is_woken_by_the_servers_ring(ring_servers, router, monkeypatch):
    """A client blocked in BLPOP publishes its doorbell and sleeps on it; the RPUSH over TCP
    lets the server answer, and the server rings that client's doorbell, not another's: the
    router carried it to the client's peer, CXLRING.INFO counts it on the client's channel."""
    srv = bell_server(ring_servers, router)
    assert srv.info()["notify"] == "doorbell"
    monkeypatch.setenv("CXL_RING_DOORBELL_PEER", str(CLIENT_PEER))
    monkeypatch.setattr("cxl_ring.channel.BLOCK_SECONDS", LONG_BLOCK)
    with RingClient(srv.region, timeout=30, doorbell=router.path(CLIENT_PEER)) as c:
        c.set(b"warm", b"up")
        before = client_rings(srv)
        t = pusher(srv, "jobs", [0.3])
        assert c.execute_command("BLPOP", "jobs", "0") == [b"jobs", b"0"]
        t.join(10)
        chan, _token = c.session_info()
        assert int(srv.info(chan)["client_rings"]) >= 1
    assert client_rings(srv) > before
    assert router.rings(SERVER_PEER, CLIENT_PEER) >= 1
    assert router.rings(SERVER_PEER, OTHER_PEER) == 0 and router.dropped == 0
    assert int(srv.info()["client_ring_errors"]) == 0


@pytest.mark.parametrize("ring_servers", FORMS[:1], indirect=True)
@pytest.mark.parametrize("pure", [False, True], ids=["c-core", "pure"])
def test_no_wake_up_of_a_blocked_client_is_lost(ring_servers, router, pure):
    """1000 BLPOPs, each answered by an RPUSH after a random pause (0 to 5 ms, so the client
    blocks in some and not in others), the server also sleeping between them: every one is
    answered, none waited for the client's 60 s block (a lost ring would), and the server
    rang the client many times."""
    srv = bell_server(ring_servers, router)
    n = 1000
    rng = random.Random(7)
    code = (
        "import sys, time\n"
        "from cxl_ring import RingClient, channel\n"
        f"channel.BLOCK_SECONDS = {LONG_BLOCK}\n"
        "with RingClient(sys.argv[1], timeout=30, doorbell=sys.argv[2]) as c:\n"
        f"    for i in range({n}):\n"
        "        t = time.monotonic()\n"
        "        got = c.execute_command('BLPOP', 'q', '0')\n"
        "        assert got == [b'q', str(i).encode()], (i, got)\n"
        f"        assert time.monotonic() - t < {LONG_BLOCK / 2}, ('stuck', i)\n"
        "    print('answered', i + 1)\n")
    env = {**os.environ, "CXL_RING_DOORBELL_PEER": str(CLIENT_PEER)}
    if pure:
        env["CXL_RING_PURE"] = "1"
    before = client_rings(srv)
    client = subprocess.Popen([sys.executable, "-c", code, srv.region,
                               router.path(CLIENT_PEER)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t = pusher(srv, "q", [rng.uniform(0, 0.005) for _ in range(n)])
        out, err = client.communicate(timeout=240)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    t.join(10)
    assert client.returncode == 0, out + err
    assert f"answered {n}" in out
    rang = client_rings(srv) - before
    assert rang >= 10, rang
    assert router.rings(SERVER_PEER, CLIENT_PEER) == rang
    assert int(srv.info()["client_ring_errors"]) == 0


@pytest.mark.parametrize("ring_servers", FORMS[:1], indirect=True)
def test_a_hostile_resp_doorbell_rings_nobody_it_may_not(ring_servers, router):
    """A client section that says a peer id above 0xffff, or no SET bit, makes the server ring
    nobody; the client is answered anyway (it backs off: its doorbell, a terminal without
    a directory and no CXL_RING_DOORBELL_PEER, rings the server but cannot be waited on)."""
    srv = bell_server(ring_servers, router)
    with RingClient(srv.region, timeout=30, doorbell=router.path(OTHER_PEER)) as c:
        c.set(b"warm", b"up")
        chan, _token = c.session_info()
        session = c._transport._local.session
        for word in ((1 << 32) | (1 << 33) | (CLIENT_PEER << 16), CLIENT_PEER << 16):
            session.u64[session.resp_doorbell_i] = word
            session.u32[session.resp_sleeping_i32] = 1   # as if it slept on that doorbell
            try:
                t = pusher(srv, "h", [0.2])
                assert c.execute_command("BLPOP", "h", "0") == [b"h", b"0"]
                t.join(10)
            finally:
                session.u32[session.resp_sleeping_i32] = 0
        assert int(srv.info(chan)["client_rings"]) == 0
        assert c.region.doorbell.listener() is None
        assert "no directory" in c.region.doorbell.wait_why
    assert router.rings(SERVER_PEER, CLIENT_PEER) == 0 and router.dropped == 0
    assert router.rings(OTHER_PEER, SERVER_PEER) >= 1      # its rings to the server went
