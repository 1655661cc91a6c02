"""TCP clients keep their turn while a hostile ring client saturates the server (issue 10,
"The poll loop: fair to TCP clients").

The poll thread serves the rings while it holds Redis's lock; a TCP client needs the main
thread, which needs that lock. Here 256 channels send GETs of a 1 MiB value and never read
a reply: each response ring fills, a reply parks in the server, the channel stalls; the
attacker then drops every channel and claims it again, so the server keeps copying 1 MiB
replies. Meanwhile TCP PINGs go to the same server. Before the driver bounded every hold in
time and let the main thread in between holds, one such PING waited 0.64-3.4 s.

The wait only catches a hang: every PING answered within PING_TIMEOUT_S. How fast they are
answered is bench/fairness.py's business (`make bench`), not a test's.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis
from rawpeer import OP_GET, Region

pytestmark = pytest.mark.timeout(180)

CHANNELS = 256
VALUE = b"v" * (1 << 20)                # 1 MiB: one reply fills half a response ring
GEOMETRY = {"channels": CHANNELS, "req_ring": "2m", "resp_ring": "2m", "max_value": "1m",
            # the attacker sends no heartbeat: no lease may run out during the test
            "client_lease_ms": 60000}
GETS_PER_SESSION = 4                     # one reply in the ring, one parked, two waiting
PINGS = 150
PING_TIMEOUT_S = 2.0
ROUNDS_WANTED = 2                        # attack rounds the PINGs must overlap


class Attacker(threading.Thread):
    """256 channels: claim, send GETs of the 1 MiB key, never read; then all again."""

    def __init__(self, region_path: str) -> None:
        super().__init__(daemon=True)
        self.region = Region(region_path)
        self.chans = [self.region.channel(c) for c in range(CHANNELS)]
        self.stop = threading.Event()
        self.rounds = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                for ch in self.chans:
                    if self.stop.is_set():
                        return
                    if ch.token:
                        ch.release()    # the server drops what waits for this session
                    ch.claim(timeout=30.0)
                    for _ in range(GETS_PER_SESSION):
                        ch.send(OP_GET, [b"big"])
                self.rounds += 1
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def close(self) -> None:
        self.stop.set()
        self.join(60)
        self.region.close()


def test_tcp_ping_answered_while_256_channels_never_read_1mib_replies(ring_servers):
    srv = ring_servers.server(GEOMETRY)
    srv.client().set(b"big", VALUE)
    attacker = Attacker(srv.region)
    attacker.start()
    tcp = redis.Redis(host="127.0.0.1", port=srv.port, socket_timeout=PING_TIMEOUT_S)
    slowest = 0.0
    try:
        deadline = time.monotonic() + 120
        while attacker.rounds < 1 and attacker.error is None:
            assert time.monotonic() < deadline, "the attacker never finished a round"
            time.sleep(0.01)
        pinged = 0
        while pinged < PINGS or attacker.rounds < 1 + ROUNDS_WANTED:
            assert attacker.error is None, f"the attacker failed: {attacker.error!r}"
            assert time.monotonic() < deadline, (
                f"{pinged} PINGs in {attacker.rounds} attack rounds within the test's time")
            t0 = time.monotonic()
            try:
                assert tcp.ping() is True
            except redis.TimeoutError:
                pytest.fail(f"TCP PING {pinged + 1} not answered within {PING_TIMEOUT_S} s "
                            f"while {CHANNELS} channels never read their 1 MiB replies")
            slowest = max(slowest, time.monotonic() - t0)
            pinged += 1
            time.sleep(0.005)
    finally:
        attacker.close()
        tcp.close()
    info = srv.info()
    chans = info["channels"]
    # The attack was real: replies parked for lack of room, sessions came and went.
    assert sum(int(c["resp_full"]) for c in chans) >= CHANNELS
    assert sum(int(c["sessions"]) for c in chans) >= CHANNELS * 2
    print(f"{pinged} PINGs, slowest {slowest * 1000:.1f} ms; longest GIL hold "
          f"{info.get('gil_hold_max_us')} us; handoffs {info.get('gil_handoffs_taken')}/"
          f"{info.get('gil_handoffs')} taken; {attacker.rounds} attack rounds")
