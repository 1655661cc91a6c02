"""The doorbell notification path (notify_kind 2, docs/ring-protocol.md section 8), on one host.

Between VMs a client rings the server's ivshmem doorbell through its VM's uio_cxl_doorbell
device (/dev/cxl/doorbell); here a FIFO stands in for that device on both sides: the driver
sleeps in poll() on it (`doorbell <fifo>`, its peer id from `doorbell_peer`, since a FIFO has no
directory), and clients write their 4-byte rings into it. `test_remote_region yes` (a test-only
module argument) makes `notify auto` take the /dev/shm region for another machine's memory, as a
uio region in a VM is, so the automatic choice of the doorbell is what runs.

The sleeping servers use `sleep_max_ms 60000`: a request whose client did not ring would wait a
minute, so a request answered within the hang bound was answered because of its ring. No
assertion depends on how fast anything is; the waits are bounds that catch hangs.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import pytest
from cxl_ring import RingClient
from ringharness import FORMS, REPO, ServerFailed, wait_for

pytestmark = pytest.mark.timeout(300)

BENCH = REPO / "build" / "cxl-ring-bench"
STRESS = REPO / "build" / "notify-stress"
PEER = 5
GEOMETRY = {"channels": 4, "req_ring": "256k", "resp_ring": "256k", "max_value": 65536}


@pytest.fixture
def fifo(tmp_path):
    """A FIFO standing in for the uio doorbell device; removed after the test."""
    path = tmp_path / "doorbell"
    os.mkfifo(path, 0o600)
    try:
        yield str(path)
    finally:
        path.unlink(missing_ok=True)


def bell_server(ring_servers, fifo, **extra):
    args = {**GEOMETRY, "test_remote_region": "yes", "doorbell": fifo, "doorbell_peer": PEER,
            "sleep_max_ms": 60000, **extra}
    return ring_servers.server(args)


def header_u32(region: str, offset: int) -> int:
    path = os.path.join(region, "header") if os.path.isdir(region) else region
    with open(path, "rb") as f:
        f.seek(offset)
        return int.from_bytes(f.read(4), "little")


def quiet(srv) -> bool:
    """Asleep: server_sleeping set in the header and the sleep count standing still."""
    a = int(srv.info()["sleeps"])
    time.sleep(0.05)
    return int(srv.info()["sleeps"]) == a and header_u32(srv.region, 152) == 1


def wakes(srv) -> int:
    return int(srv.info()["sleep_wakes"])


@pytest.mark.parametrize("ring_servers", FORMS, indirect=True)
def test_idle_server_sleeps_on_the_doorbell_and_clients_ring_it(ring_servers, fifo):
    """notify auto on a region that is not host memory, with a doorbell: the server says
    doorbell in CXLRING.INFO and in the header (kind 2, its peer id, vector 0), sleeps, and the
    Python client (C core and pure, the doorbell given and from CXL_RING_DOORBELL) and the C
    library (bench) each wake it by a ring."""
    srv = bell_server(ring_servers, fifo)
    info = srv.info()
    assert (info["notify"], info["notify_fallback"]) == ("doorbell", ""), info
    assert info["doorbell"] == fifo and int(info["doorbell_peer"]) == PEER, info
    assert info["doorbell_peer_from"] == "doorbell_peer argument", info
    assert "not a uio_cxl_doorbell device" in srv.log_text()
    assert [header_u32(srv.region, o) for o in (156, 160, 164)] == [2, PEER, 0]

    wait_for(lambda: quiet(srv), "the idle server to sleep")
    with RingClient(srv.region, timeout=20, doorbell=fifo) as c:   # the claim rings, then SET
        c.set(b"k", b"v")
        woken = wakes(srv)
        assert woken >= 1
        for _ in range(3):  # let it fall asleep again, then a GET rings it
            wait_for(lambda: quiet(srv), "the server to sleep again")
            assert c.get(b"k") == b"v"
        assert c.region.doorbell.rings >= 4 and c.region.doorbell.missed == 0
    assert wakes(srv) > woken
    assert int(srv.info()["doorbell_rings"]) >= 4

    # The pure-Python path, its doorbell from the environment (another process).
    before = wakes(srv)
    wait_for(lambda: quiet(srv), "the server to sleep")
    code = ("import sys; from cxl_ring import RingClient, channel\n"
            "assert not channel.SPEEDUPS\n"
            "with RingClient(sys.argv[1], timeout=20) as c:\n"
            "    assert c.get(b'k') == b'v'\n"
            "    assert c.region.doorbell.rings >= 1, c.region.doorbell.why\n")
    env = {**os.environ, "CXL_RING_PURE": "1", "CXL_RING_DOORBELL": fifo}
    done = subprocess.run([sys.executable, "-c", code, srv.region], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert wakes(srv) > before

    if BENCH.exists():
        before = wakes(srv)
        wait_for(lambda: quiet(srv), "the server to sleep")
        done = subprocess.run(
            [str(BENCH), "--path", srv.region, "--doorbell", fifo, "--bench", "200",
             "--op", "set,get", "--keyspace", "50", "--timeout", "30", "--quiet"],
            capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert wakes(srv) > before


def test_a_client_without_a_doorbell_is_answered_after_the_timeout(ring_servers, fifo,
                                                                    tmp_path):
    """A client that cannot ring (no doorbell, or one that does not open) does not notify: its
    request waits for the server's sleep_max_ms, and is answered then; its doorbell counts the
    missed notifications and says why."""
    srv = bell_server(ring_servers, fifo, sleep_max_ms=1500, client_lease_ms=60000)
    for doorbell, why in (("", "disabled"), (str(tmp_path / "absent"), "cannot open")):
        wait_for(lambda: quiet(srv), "the idle server to sleep")
        woken, rings = wakes(srv), int(srv.info()["doorbell_rings"])
        with RingClient(srv.region, timeout=20, doorbell=doorbell) as c:
            c.set(b"k", b"v")
            assert c.get(b"k") == b"v"
            assert c.region.doorbell.rings == 0 and c.region.doorbell.missed >= 1
            assert why in c.region.doorbell.why, c.region.doorbell.why
        # Nobody rang: every sleep of the server ended by its timeout.
        assert wakes(srv) == woken and int(srv.info()["doorbell_rings"]) == rings


def test_stop_and_reset_wake_a_server_asleep_on_the_doorbell(ring_servers, fifo):
    """CXLRING.RESET and the shutdown kick the poll thread out of poll() at once (its
    eventfd), not after sleep_max_ms (60 s): the reset answers OK before its 2 s timeout and
    the server stops cleanly within the harness's 15 s."""
    srv = bell_server(ring_servers, fifo)
    wait_for(lambda: quiet(srv), "the idle server to sleep")
    assert srv.client().execute_command("CXLRING.RESET", 0) == b"OK"
    wait_for(lambda: quiet(srv), "the server to sleep again")
    assert srv.stop() == 0


def test_notify_doorbell_is_explicit(ring_servers, fifo):
    """notify doorbell uses the doorbell on any region, host memory too."""
    srv = ring_servers.server({**GEOMETRY, "notify": "doorbell", "doorbell": fifo,
                               "sleep_max_ms": 60000})
    info = srv.info()
    assert (info["notify"], int(info["doorbell_peer"])) == ("doorbell", 0), info
    wait_for(lambda: quiet(srv), "the idle server to sleep")
    with RingClient(srv.region, timeout=20, doorbell=fifo) as c:
        c.set(b"a", b"1")
    assert wakes(srv) >= 1


@pytest.mark.parametrize(
    "args, message",
    [
        ({"notify": "doorbell"},
         "notify doorbell needs a doorbell: add the argument `doorbell /dev/cxl/doorbell`"),
        ({"notify": "doorbell", "doorbell": "/nonexistent/doorbell"},
         "notify doorbell: cannot open the doorbell /nonexistent/doorbell"),
        ({"notify": "doorbell", "doorbell": "REGULAR"},
         "is not a device (uio) or a FIFO"),
        ({"notify": "futex", "test_remote_region": "yes"},
         "notify futex: test_remote_region"),
    ],
)
def test_a_doorbell_that_cannot_work_is_refused(ring_servers, tmp_path, args, message):
    """notify doorbell without a working doorbell is a configuration error naming the fix."""
    if args.get("doorbell") == "REGULAR":
        regular = tmp_path / "regular"
        regular.write_bytes(b"\0" * 4096)
        args = {**args, "doorbell": str(regular)}
    srv = ring_servers.server({**GEOMETRY, **args}, start=False)
    with pytest.raises(ServerFailed):
        srv.start()
    assert message in srv.log_text(), srv.log_text()[-2000:]


def test_auto_falls_back_to_polling_and_says_why(ring_servers, tmp_path):
    """notify auto where the region is not host memory: a doorbell that does not open, or none,
    means back-off polling, and notify_fallback says why; clients are served all the same."""
    absent = str(tmp_path / "absent")
    for extra, why in (
        ({"doorbell": absent},
         f"test_remote_region: the region counts as another machine's memory; cannot open the "
         f"doorbell {absent}: No such file or directory: polling"),
        ({}, "test_remote_region: the region counts as another machine's memory: polling"),
    ):
        srv = ring_servers.server({**GEOMETRY, "test_remote_region": "yes", **extra})
        info = srv.info()
        assert (info["notify"], info["notify_fallback"]) == ("poll", why), info
        assert int(info["doorbell_peer"]) == -1 and info["doorbell"] == "", info
        assert header_u32(srv.region, 156) == 0
        with RingClient(srv.region, timeout=20, doorbell="") as c:
            c.set(b"k", b"v")
            assert c.get(b"k") == b"v"
        assert int(srv.info()["sleeps"]) == 0
        srv.stop()


def test_no_wake_up_is_lost_over_the_doorbell_library(tmp_path):
    """The library's N2 with notify_kind doorbell (cxl_doorbell_ring on a FIFO) against the
    driver's N1 and poll() in two processes, random pauses on both sides: 20 000 sleeps each
    ended by a ring, every request answered, every ring the header's value."""
    if not STRESS.exists():
        pytest.skip(f"{STRESS} is not built (make build)")
    done = subprocess.run([str(STRESS), "--doorbell", "--cycles", "20000", "--seconds", "240",
                           "--wait-ms", "5000"], capture_output=True, text=True, timeout=280)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "timeouts_with_work=0" in out and "missed=0" in out and "bad_rings=0" in out, out


def test_no_wake_up_is_lost_over_the_doorbell_with_the_real_server(ring_servers, fifo):
    """The real driver asleep on the FIFO and the Python client ringing it: requests with
    random pauses between them (none, or long enough for the server to fall asleep), until
    20 000 of the server's sleeps were ended by a ring; every answer is the right one. A lost
    ring leaves a request waiting 60 s (sleep_max_ms), beyond the client's 30 s timeout."""
    srv = bell_server(ring_servers, fifo, spin_us=0)
    rnd = random.Random(1)
    start = wakes(srv)
    deadline = time.monotonic() + 240    # a hang bound, far above what the cycles take
    with RingClient(srv.region, timeout=30, doorbell=fifo) as c:
        i = 0
        while wakes(srv) - start < 20000:
            for _ in range(50):
                pause = rnd.random()
                if pause > 0.2:
                    time.sleep(pause * 0.0008)
                key = b"k%d" % ((i // 2) % 64)
                if i % 2:
                    assert c.get(key) == b"%d" % (i - 1), i
                else:
                    c.set(key, b"%d" % i)
                i += 1
            assert time.monotonic() < deadline, (i, srv.info())
        assert c.region.doorbell.missed == 0
