"""Notification instead of polling (docs/ring-protocol.md section 8): a server that sleeps in
the kernel until a client wakes it, and no wake-up lost.

The sleeping servers here are started with `sleep_max_ms 60000`: a request whose client did not
wake the server would wait a minute, so a request answered within the hang bound was answered
because of its notification (and `sleep_wakes` counts it). No assertion depends on how fast;
how fast is `make bench`'s (wake-up latency, idle CPU)."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest
from cxl_ring import RingClient
from ringharness import FORMS, REPO, wait_for

pytestmark = pytest.mark.timeout(300)

STRESS = REPO / "build" / "notify-stress"
BENCH = REPO / "build" / "cxl-ring-bench"
SLEEPY = {"channels": 4, "req_ring": "256k", "resp_ring": "256k", "max_value": 65536,
          "sleep_max_ms": 60000}


def _stress(*args: str) -> dict:
    if not STRESS.exists():
        pytest.skip(f"{STRESS} is not built (make build)")
    done = subprocess.run([str(STRESS), *args], capture_output=True, text=True, timeout=280)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", out)}


def test_no_wake_up_is_lost_in_100000_cycles():
    """The library's N2 against the driver's N1, two processes, random pauses on both sides:
    100 000 sleeps each ended by a notification, every request answered, no wait that ended by
    its timeout while a request waited."""
    r = _stress("--cycles", "100000", "--seconds", "240", "--wait-ms", "5000")
    assert r["cycles"] >= 100000 and r["timeouts_with_work"] == 0, r
    assert r["requests"] >= r["cycles"], r


def test_no_wake_up_is_lost_with_one_word():
    """The path for kernels without futex_waitv: one group, FUTEX_WAIT on its word alone."""
    r = _stress("--single", "--cycles", "20000", "--seconds", "120", "--wait-ms", "5000")
    assert r["cycles"] >= 20000 and r["timeouts_with_work"] == 0, r


def _asleep(srv) -> bool:
    info = srv.info()
    return int(info["sleeps"]) > 0 and int(info["sleep_wakes"]) == 0


@pytest.mark.parametrize("ring_servers", FORMS, indirect=True)
def test_sleeping_server_is_woken_by_each_client(ring_servers):
    """Files of this host: the server says futex, sleeps, and the Python client (pure and C
    core), the C library (bench) and a raw peer's claim and request each wake it."""
    srv = ring_servers.server(SLEEPY)
    info = srv.info()
    assert (info["notify"], info["notify_fallback"]) == ("futex", ""), info
    wait_for(lambda: _asleep(srv), "the idle server to sleep", 20)
    with RingClient(srv.region, timeout=20) as c:  # the claim wakes it, then the SET
        c.set(b"k", b"v")
        woken = int(srv.info()["sleep_wakes"])
        assert woken >= 1
        for _ in range(3):  # let it fall asleep again, then a GET wakes it
            wait_for(lambda: _quiet(srv), "the server to sleep again", 20)
            assert c.get(b"k") == b"v"
    assert int(srv.info()["sleep_wakes"]) > woken
    if BENCH.exists():
        before = int(srv.info()["sleep_wakes"])
        wait_for(lambda: _quiet(srv), "the server to sleep", 20)
        done = subprocess.run(
            [str(BENCH), "--path", srv.region, "--bench", "200", "--op", "set,get",
             "--keyspace", "50", "--timeout", "30", "--quiet"],
            capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert int(srv.info()["sleep_wakes"]) > before


def test_raw_peer_claim_and_request_wake_the_server(ring_servers):
    """A peer that writes the ring by hand (tests/ring/rawpeer.py) notifies as the library
    does: with sleep_max_ms at a minute, its claim and request are answered within the hang
    bound, and each counted as a wake."""
    from rawpeer import OP_SET, ST_OK, Region

    # No lease expiry while the raw peer (which keeps no heartbeat) waits.
    srv = ring_servers.server({**SLEEPY, "client_lease_ms": 120000})
    wait_for(lambda: _asleep(srv), "the idle server to sleep", 20)
    r = Region(srv.region)
    try:
        ch = r.channel(0)
        ch.claim(timeout=20)  # a sleep that timed out would end after 60 s
        assert int(srv.info()["sleep_wakes"]) >= 1
        wait_for(lambda: _quiet(srv), "the server to sleep again", 20)
        woken = int(srv.info()["sleep_wakes"])
        assert ch.request(OP_SET, [b"a", b"1"], timeout=20)[0] == ST_OK
        assert int(srv.info()["sleep_wakes"]) > woken
    finally:
        r.close()


def test_raw_peer_request_without_notifying_waits_for_the_timeout(ring_servers):
    """The same request published without notifying is answered only when the server's sleep
    ends by its timeout: no wake is counted for it."""
    from rawpeer import OP_SET, ST_OK, Region, align8, encode_request

    srv = ring_servers.server({**SLEEPY, "sleep_max_ms": 1000, "client_lease_ms": 120000})
    r = Region(srv.region)
    try:
        ch = r.channel(0)
        ch.claim(timeout=20)
        wait_for(lambda: _quiet(srv), "the server to sleep again", 20)
        woken = int(srv.info()["sleep_wakes"])
        msg = encode_request(OP_SET, [b"b", b"2"], ch.tag(ch.next_id))
        ch.next_id += 1
        ch.write_req_bytes(ch.req_head, msg)
        ch.req_head += align8(len(msg))
        ch.publish_head(ch.req_head, notify=False)
        assert ch.recv(timeout=20)[0] == ST_OK
        assert int(srv.info()["sleep_wakes"]) == woken
    finally:
        r.close()


def _quiet(srv) -> bool:
    """Asleep: server_sleeping set in the header and the sleep count standing still."""
    a = int(srv.info()["sleeps"])
    time.sleep(0.05)
    return int(srv.info()["sleeps"]) == a and _sleeping_flag(srv.region)


def _sleeping_flag(region: str) -> bool:
    path = os.path.join(region, "header") if os.path.isdir(region) else region
    with open(path, "rb") as f:
        f.seek(152)
        return int.from_bytes(f.read(4), "little") == 1


@pytest.mark.parametrize(
    "args, why",
    [
        ({"notify": "off"}, "notify off: polling"),
        ({"layout": "v2"}, "layout v2 has no notification fields: polling"),
    ],
)
def test_without_notification_the_server_polls_and_says_why(ring_servers, args, why):
    """No notification path: back-off polling as before, named in CXLRING.INFO; clients are
    served all the same."""
    srv = ring_servers.server({"channels": 4, "req_ring": "256k", "resp_ring": "256k",
                               "max_value": 65536, **args})
    info = srv.info()
    assert (info["notify"], info["notify_fallback"]) == ("poll", why), info
    time.sleep(0.3)
    assert int(srv.info()["sleeps"]) == 0
    if args.get("layout") != "v2":
        with RingClient(srv.region, timeout=20) as c:
            c.set(b"k", b"v")
            assert c.get(b"k") == b"v"


def test_client_blocks_for_its_response_and_is_woken(ring_servers):
    """A Python client waiting for a response it cannot have yet (Redis's main thread is busy
    with DEBUG SLEEP over TCP) blocks on resp_wake with resp_sleeping set (seen from outside,
    in the region file), and the server's N4 wakes it with the answer."""
    import threading

    srv = ring_servers.server(SLEEPY)
    with RingClient(srv.region, timeout=20) as c:
        c.set(b"k", b"v")
        sleeper = threading.Thread(
            target=lambda: srv.client().execute_command("DEBUG", "SLEEP", "3"))
        sleeper.start()
        try:
            wait_for(lambda: tcp_busy(srv), "the main thread to be busy", 10)
            got: list = []
            getter = threading.Thread(target=lambda: got.append(c.get(b"k")))
            getter.start()
            # The getter thread claims a channel of its own: any channel's flag will do.
            wait_for(lambda: _resp_sleeping(srv.region), "the client to block", 10)
            getter.join(20)
            assert got == [b"v"]
        finally:
            sleeper.join(20)
    assert not _resp_sleeping(srv.region)


def tcp_busy(srv) -> bool:
    """Redis's main thread does not answer a PING within 0.2 s (it is inside DEBUG SLEEP)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        s.connect(srv.sock)
        s.sendall(b"PING\r\n")
        try:
            s.recv(16)
        except TimeoutError:
            return True
    time.sleep(0.05)
    return False


def _resp_sleeping(region: str) -> bool:
    """resp_sleeping (client section offset 20) of any channel, read from the region file."""
    from rawpeer import Region

    r = Region(region)
    try:
        return any(r.u32(r.client_off(c) + 20) == 1 for c in range(r.channel_count))
    finally:
        r.close()


@pytest.mark.parametrize("kind", ["futex", "doorbell"])
def test_a_server_asleep_before_it_says_running_is_woken(ring_servers, tmp_path, kind):
    """On a loaded machine the poll thread may fall asleep before the region says RUNNING
    (`test_start_delay_ms`, a test-only argument, makes it likely here). It set
    server_sleeping itself, and the start must not clear it behind its back: the flag reads 1
    while it sleeps, and a client's first claim and request wake it. (A clean-clone CI once
    waited sleep_max_ms for such a claim: the start cleared the flag, so no client rang.)"""
    args = {**SLEEPY, "test_start_delay_ms": 1000}
    doorbell = None
    if kind == "doorbell":
        doorbell = str(tmp_path / "doorbell")
        os.mkfifo(doorbell, 0o600)
        args.update(test_remote_region="yes", doorbell=doorbell, doorbell_peer=5)
    srv = ring_servers.server(args)
    assert srv.info()["notify"] == kind
    header = os.path.join(srv.region, "header") if os.path.isdir(srv.region) else srv.region

    def flag() -> int:
        with open(header, "rb") as f:
            f.seek(152)                          # server_sleeping
            return int.from_bytes(f.read(4), "little")

    wait_for(lambda: int(srv.info()["sleeps"]) >= 1 and flag() == 1,
             "the server asleep with server_sleeping set", timeout=20)
    wakes = int(srv.info()["sleep_wakes"])
    with RingClient(srv.region, timeout=30, doorbell=doorbell) as c:
        c.set(b"k", b"v")
        assert c.get(b"k") == b"v"
    assert int(srv.info()["sleep_wakes"]) > wakes
