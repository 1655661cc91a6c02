"""The injected far-memory delay (docs/ring-protocol.md 2.4): the driver's `access_delay_ns`
is published in the header at every start; the server spins it per batch of requests it reads,
each client per batch of responses. A spin lasts at least its length on any machine, so a round
trip alone in flight takes at least two delays: the lower bounds below hold however slow or
loaded the machine is, and no upper bound is asserted.
"""

from __future__ import annotations

import csv
import struct
import subprocess
import time

import pytest
from ringharness import REPO, ServerFailed

pytestmark = pytest.mark.timeout(120)

SMALL = {"channels": 4, "req_ring": "256k", "resp_ring": "256k", "max_value": 65536}
DELAY_NS = 200_000          # 0.2 ms: far above a round trip's own cost, so the bound is clear
BENCH = REPO / "build" / "cxl-ring-bench"


def header_delay(path: str) -> int:
    with open(path, "rb") as f:
        f.seek(88)
        return struct.unpack("<I", f.read(4))[0]


def test_the_server_publishes_its_delay_and_a_restart_changes_it(ring_servers):
    srv = ring_servers.server({**SMALL, "access_delay_ns": DELAY_NS})
    assert srv.info()["access_delay_ns"] == DELAY_NS
    assert header_delay(srv.region) == DELAY_NS
    srv.stop()
    # Not geometry: the same region, started again with another delay, is reused.
    again = ring_servers.server({**SMALL, "access_delay_ns": 0}, region=srv.region)
    assert again.info()["formatted"] == 0
    assert header_delay(srv.region) == 0


def test_a_delay_out_of_range_is_refused_with_its_limits(ring_servers):
    srv = ring_servers.server({**SMALL, "access_delay_ns": 1_000_001}, start=False)
    with pytest.raises(ServerFailed):
        srv.start()
    assert "access_delay_ns" in srv.log_text()


@pytest.mark.parametrize("impl", ["pure", "c"])
def test_the_python_client_pays_the_delay_on_every_round_trip(ring_servers, impl):
    from cxl_ring import channel as chmod
    from cxl_ring import protocol as P
    from cxl_ring.region import Region

    if impl == "c" and not chmod.SPEEDUPS:
        pytest.skip("the C core (_speedups) is not built or is stale")
    cls = chmod.Session if impl == "pure" else chmod.FastSession
    srv = ring_servers.server({**SMALL, "access_delay_ns": DELAY_NS})
    region = Region(srv.region)
    try:
        session = chmod.claim_channel(region, region.header(), 30.0, 0, cls)
        try:
            assert session.delay_ns == DELAY_NS
            fastest = None
            for i in range(20):
                start = time.perf_counter_ns()
                reply = session.set(b"k%d" % i, b"v", 0, 30.0)   # the fast path applies
                took = time.perf_counter_ns() - start
                assert reply is not None and reply[0] == P.ST_OK
                fastest = took if fastest is None else min(fastest, took)
            # The server's read of the request and ours of the response: two spins at least.
            assert fastest >= 2 * DELAY_NS, f"fastest round trip {fastest} ns"
        finally:
            session.release()
    finally:
        region.close()
    assert srv.client().get("k19") == b"v"


def test_the_c_client_pays_the_delay_on_every_round_trip(ring_servers, tmp_path):
    if not BENCH.exists():
        pytest.skip("build/cxl-ring-bench is not built (make native)")
    srv = ring_servers.server({**SMALL, "access_delay_ns": DELAY_NS})
    out = tmp_path / "delay.csv"
    run = subprocess.run([str(BENCH), "--path", srv.region, "--bench", "50", "--op", "set",
                          "--quiet", "--label", "delay", "--csv", str(out)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    (row,) = list(csv.DictReader(out.open()))
    assert int(row["requests"]) == 50
    # avg_us is the exact mean (sum / count), not a histogram bucket.
    assert float(row["avg_us"]) * 1000 >= 2 * DELAY_NS, row


def test_a_hostile_delay_in_the_header_is_clamped(ring_servers):
    """Security off: any peer may write the header. A client reads at most 1 ms per batch."""
    from cxl_ring import protocol as P

    words = [0] * 64
    words[P.OFF_ACCESS_DELAY // 4] = 0xFFFFFFFF
    assert P.header_access_delay(words) == P.MAX_ACCESS_DELAY_NS
    words[P.OFF_ACCESS_DELAY // 4] = 1234
    assert P.header_access_delay(words) == 1234
