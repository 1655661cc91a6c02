"""RingClient against the in-process fake server: API, pipelines, limits, threads, liveness,
hostile responses. The same behaviours are checked against the real driver in
test_real_server.py."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import cxl_ring
import pytest
from clientutil import REPO, VECTORS, check_oversized_raw_request, malformed_response_pending
from cxl_ring import protocol as P
from cxl_ring.exceptions import (
    LayoutMismatchError,
    NoChannelError,
    ProtocolError,
    RegionError,
    RequestTooLargeError,
    ResponseError,
    RingTimeoutError,
    ServerGoneError,
    UnknownOutcomeError,
)
from cxl_ring.region import dax_geometry
from fakeserver import FakeServer

pytestmark = pytest.mark.timeout(60)


# Timeouts in these tests only catch hangs (HANG s): no assertion depends on the speed of the
# machine. A test that needs a wait to expire lowers r.timeout while the fake server is paused.
HANG = 20


@pytest.fixture
def client(fake):
    with cxl_ring.RingClient(fake.path, timeout=HANG) as r:
        yield r


def claim_token(fake: FakeServer, channel: int) -> int:
    return fake.u64[fake.header.client_section(channel) // 8]


# ---- API -------------------------------------------------------------------------------------


def test_basic_api(client):
    assert client.ping() is True
    assert client.set("k", "v") is True
    assert client.get("k") == b"v"
    assert client.get(b"missing") is None
    assert client.set("n", 42) is True and client.get("n") == b"42"
    assert client.set("f", 1.5) is True and client.get("f") == b"1.5"
    assert client.exists("k", "n", "nope") == 2
    assert client.delete("k", "nope") == 1
    assert client.exists("k") == 0
    assert client.execute_command("ECHO", "hi") == b"hi"
    assert client.execute_command("LRANGE", "l", 0, -1) == [b"a", b"b"]
    assert client.execute_command("INCR", "c") == 1


def test_set_options(client, fake):
    assert client.set("t", "1", ex=10) is True
    assert client.set("t", "1", px=1500) is True
    assert client.set("t", "2", nx=True) is None
    assert client.set("t", "3", xx=True) is True
    assert client.set("t", "4", get=True) == b"3"
    with pytest.raises(cxl_ring.DataError):
        client.set("t", "1", ex=0)
    with pytest.raises(cxl_ring.DataError):
        client.set("t", True)
    for bad in ({"ex": "10"}, {"px": 1 << 64}, {"ex": float("inf")}, {"px": float("nan")},
                {"ex": -1}, {"px": True}, {"ex": 1, "px": 1}):
        with pytest.raises(cxl_ring.DataError):
            client.set("t", "1", **bad)
    assert client.set("t", "1", ex=0.5) is True and client.set("t", "1", px=1.5) is True
    with pytest.raises(cxl_ring.DataError):
        client.set("t", "1", px=0.4)                  # rounds to no TTL at all


def test_error_reply_raises(client):
    client.set("s", "x")
    with pytest.raises(ResponseError, match="not an integer"):
        client.execute_command("INCR", "s")
    with pytest.raises(ResponseError, match="unknown command"):
        client.execute_command("NOPE")


def test_decode_responses(fake):
    with cxl_ring.RingClient(fake.path, decode_responses=True) as r:
        r.set("k", "välue")
        assert r.get("k") == "välue"
        assert r.execute_command("LRANGE", "l", 0, -1) == ["a", "b"]
        p = r.pipeline()
        assert p.get("k").get("zz").execute() == ["välue", None]


def test_close_releases_channel(fake):
    r = cxl_ring.RingClient(fake.path)
    r.ping()
    index, token = r.session_info()
    assert claim_token(fake, index) == token
    r.close()
    assert claim_token(fake, index) == 0
    deadline = time.monotonic() + HANG
    while fake.u64[fake.header.server_section(index) // 8] != 0:
        assert time.monotonic() < deadline, "server never saw the release"
        time.sleep(0.01)
    r.close()  # idempotent


def test_pipeline_10000(client):
    p = client.pipeline()
    for i in range(10_000):
        p.set(f"key:{i}", f"value:{i}")
    assert p.execute() == [True] * 10_000
    for i in range(10_000):
        p.get(f"key:{i}")
    got = p.execute()
    assert got[0] == b"value:0" and got[-1] == b"value:9999" and len(got) == 10_000


def test_pipeline_larger_than_rings(client, fake):
    """More bytes than the rings hold (64 KiB each): the client streams."""
    value = b"x" * 4000
    p = client.pipeline()
    for i in range(200):
        p.set(f"big:{i}", value)
        p.get(f"big:{i}")
    out = p.execute()
    assert out[1::2] == [value] * 200


def test_pipeline_errors(client):
    client.set("s", "x")
    p = client.pipeline()
    p.set("a", 1).execute_command("INCR", "s").get("a")
    with pytest.raises(ResponseError, match="Command # 2"):
        p.execute()
    p.set("a", 1).execute_command("INCR", "s").get("a")
    out = p.execute(raise_on_error=False)
    assert out[0] is True and isinstance(out[1], ResponseError) and out[2] == b"1"


def test_values_up_to_max(client, fake):
    top = b"m" * fake.max_value
    assert client.set("max", top) is True
    assert client.get("max") == top
    with pytest.raises(RequestTooLargeError):
        client.set("over", top + b"!")
    with pytest.raises(RequestTooLargeError):
        client.get(b"k" * (fake.max_value + 1))
    assert client.get("max") == top  # the client is still usable


def test_server_too_large_status(fake):
    """A request over the server's limits (sent raw) gets TOO_LARGE and is skipped."""
    check_oversized_raw_request(fake.path, fake.max_value, channel=2, timeout=HANG)


def test_threads_use_separate_channels(fake):
    with cxl_ring.RingClient(fake.path) as r:
        seen, errors = [], []

        def work(t):
            try:
                for i in range(300):
                    r.set(f"t{t}:{i}", i)
                    assert r.get(f"t{t}:{i}") == str(i).encode()
                seen.append(r.session_info()[0])
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
        assert sorted(seen) == [0, 1, 2, 3]


def test_no_free_channel(fake):
    clients = [cxl_ring.RingClient(fake.path, timeout=HANG) for _ in range(5)]
    try:
        for c in clients[:4]:
            c.ping()
        clients[4].timeout = 0.3
        t = time.monotonic()
        with pytest.raises(NoChannelError, match="waited 0.3 s"):
            clients[4].ping()
        assert time.monotonic() - t >= 0.3      # it waited for a channel before giving up
    finally:
        for c in clients:
            c.close()


# ---- liveness ---------------------------------------------------------------------------------


def test_restart_mid_pipeline_unknown_outcome_then_reconnect(client, fake):
    client.ping()
    index, _ = client.session_info()
    cs = fake.header.client_section(index)
    req_head = fake.u64[(cs + P.OFF_REQ_HEAD) // 8]
    fake.paused.set()
    p = client.pipeline()
    for i in range(1000):
        p.set(f"r{i}", i)

    def restart_once_in_flight():
        deadline = time.monotonic() + HANG
        while fake.u64[(cs + P.OFF_REQ_HEAD) // 8] == req_head:   # the batch is in the ring
            if time.monotonic() > deadline:
                break                        # p.execute() then fails the test by itself
            time.sleep(0.001)
        fake.restart()
        fake.paused.clear()

    restarter = threading.Thread(target=restart_once_in_flight)
    restarter.start()
    try:
        with pytest.raises(UnknownOutcomeError) as e:
            p.execute()
    finally:
        restarter.join(HANG)
    result = {"error": e.value}
    assert isinstance(result.get("error"), UnknownOutcomeError), result
    assert result["error"].pending + result["error"].unsent == 1000
    assert client.set("after", "restart") is True          # a fresh session
    assert client.get("after") == b"restart"


def test_killed_server_in_flight_then_gone(client, fake):
    """The heartbeat stops: the request in flight fails as unknown outcome, found by the
    heartbeat check (section 7), not by the request timeout (HANG s, far longer)."""
    client.ping()
    fake.kill()
    with pytest.raises(UnknownOutcomeError, match="heartbeat stood still"):
        client.set("k", "v")
    with pytest.raises(ServerGoneError):
        client.get("k")


def test_stopped_server(fake):
    fake.stop()
    with pytest.raises(ServerGoneError, match="STOPP"):
        cxl_ring.RingClient(fake.path).ping()


def test_timeout_then_recovery(fake):
    with cxl_ring.RingClient(fake.path, timeout=HANG) as r:
        r.ping()
        fake.paused.set()
        r.timeout = 0.3
        with pytest.raises(RingTimeoutError):
            r.get("k")
        r.timeout = HANG
        fake.paused.clear()
        assert r.set("k", "v") is True and r.get("k") == b"v"


def test_dead_process_channel_is_reclaimed(fake):
    code = (f"import os, cxl_ring; r = cxl_ring.RingClient({fake.path!r}); r.ping(); "
            "print(r.session_info()[0], flush=True); os._exit(0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, env={**os.environ, "PYTHONPATH": str(REPO / "client")})
    channel = int(out.stdout)
    ss = fake.header.server_section(channel)
    deadline = time.monotonic() + HANG
    while fake.u64[(ss + 8) // 8] != claim_token(fake, channel):
        assert time.monotonic() < deadline, "server never reclaimed the dead client's channel"
        time.sleep(0.02)
    assert fake.u32[(ss + 16) // 4] == P.CHAN_FREE


# ---- hostile server ----------------------------------------------------------------------------


def _call_for(r: cxl_ring.RingClient, op: str):
    return {"GET": lambda: r.get("k"), "SET": lambda: r.set("k", "v"),
            "DEL": lambda: r.delete("k"), "CMD": lambda: r.execute_command("ECHO", "x"),
            "PING": r.ping}[op]


@pytest.mark.parametrize("case", VECTORS["malformed_responses"], ids=lambda c: c["name"])
def test_malformed_responses_raise(case, shm_path):
    with malformed_response_pending(shm_path, case) as (r, _fake):
        with pytest.raises(ProtocolError):     # at once: a RingTimeoutError is no ProtocolError
            _call_for(r, case["for_op"])()
        assert r.ping() is True               # recovers on a fresh session


@pytest.mark.parametrize("head_delta", [1 << 40, -8, 4097])
def test_corrupt_response_index(client, fake, head_delta):
    client.ping()
    index, _ = client.session_info()
    fake.paused.set()
    time.sleep(0.01)
    ss = fake.header.server_section(index)
    fake.set_resp_head(index, fake.u64[(ss + 128) // 8] + head_delta)
    with pytest.raises(ProtocolError):
        client.get("k")


def test_garbage_response_bytes_fuzz(shm_path):
    """Random bytes published as the reply to a request in flight: always a value or an
    immediate error, never a wait for the timeout (a RingTimeoutError fails the test)."""
    import random

    rnd = random.Random(1234)
    fake = FakeServer(shm_path, max_value=64, max_msg=256, ring_size=4096).start()
    try:
        with cxl_ring.RingClient(shm_path, timeout=HANG) as r:
            for _ in range(150):
                assert r.ping() is True           # a working session after every garbage reply
                index, _ = r.session_info()
                raw = bytes(rnd.randrange(256) for _ in range(rnd.choice((8, 16, 24, 40))))
                if rnd.random() < 0.5:  # plausible header, random rest
                    raw = P.MSG_HEADER.pack(len(raw), rnd.randrange(10), 0, 0,
                                            r._transport.session().next_id) + raw[16:]
                fake.forge_reply(index, raw)
                try:
                    r.get("k")
                except RingTimeoutError:
                    raise
                except cxl_ring.CxlRingError:
                    pass
    finally:
        fake.close()


def test_torn_request_quarantines_channel(fake):
    """A partial message (len past the published bytes) quarantines only that channel."""
    with cxl_ring.Region(fake.path) as region, cxl_ring.RingClient(fake.path) as other:
        other.ping()
        s = cxl_ring.claim(region, region.header(), 2)
        try:
            msg = P.encode_get(b"key", 5)
            s.send_raw(msg[:12])                   # torn: half a header published
            s.send_raw(b"\0" * 4)                  # now 16 bytes: len field says 31
            with pytest.raises(ProtocolError, match="quarantined"):
                s.receive(1, HANG)
        finally:
            s.release()
        assert other.ping() is True


# ---- region errors and layout v2 --------------------------------------------------------------


def test_wrong_path():
    with pytest.raises(RegionError, match="no such region"):
        cxl_ring.RingClient("/dev/shm/cxltest-does-not-exist")


def test_dax_geometry_reads_sysfs(tmp_path):
    """A device-DAX device's size and alignment come from its sysfs node (fstat says 0);
    another character device is not one; a kernel without `align` means 2 MiB."""
    rdev = os.makedev(252, 0)
    node = tmp_path / "dev/char/252:0"
    node.mkdir(parents=True)
    (tmp_path / "bus/dax").mkdir(parents=True)
    (node / "subsystem").symlink_to(tmp_path / "bus/dax")
    (node / "size").write_text("136314880\n")
    assert dax_geometry(rdev, str(tmp_path)) == (136314880, 2 << 20)
    (node / "align").write_text("1073741824\n")
    assert dax_geometry(rdev, str(tmp_path)) == (136314880, 1 << 30)
    assert dax_geometry(os.makedev(1, 3), str(tmp_path)) is None  # /dev/null: no sysfs node here
    other = tmp_path / "dev/char/1:3"
    other.mkdir(parents=True)
    (tmp_path / "class/mem").mkdir(parents=True)
    (other / "subsystem").symlink_to(tmp_path / "class/mem")
    assert dax_geometry(os.makedev(1, 3), str(tmp_path)) is None


def test_a_char_device_that_is_no_region_is_refused():
    with pytest.raises(RegionError):
        cxl_ring.RingClient("/dev/null")


def test_unformatted_region(shm_path):
    with open(shm_path, "wb") as f:
        f.truncate(1 << 20)
    with pytest.raises(cxl_ring.NotFormattedError, match="not formatted"):
        cxl_ring.RingClient(shm_path)


def test_layout_v2(shm_path):
    fake = FakeServer(shm_path, channels=2, layout="v2").start()
    try:
        with pytest.raises(LayoutMismatchError):
            cxl_ring.RingClient(shm_path, layout="v5")
        for old in ("v3", "v4"):                            # layout 5 replaced them
            with pytest.raises(ValueError, match=f"layout {old} is no longer spoken"):
                cxl_ring.RingClient(shm_path, layout=old)
        with cxl_ring.RingClient(shm_path) as r:
            assert r.layout == "v2"
            assert r.set("k", "v") is True and r.get("k") == b"v" and r.get("no") is None
            p = r.pipeline()
            for i in range(100):            # more than the 8 slots: streams
                p.set(f"k{i}", i)
                p.get(f"k{i}")
            out = p.execute()
            assert out[-1] == b"99" and out[0] is True
            with pytest.raises(RequestTooLargeError):
                r.set("k", b"x" * 5000)
            with pytest.raises(cxl_ring.CxlRingError, match="only GET and SET"):
                r.delete("k")
    finally:
        fake.close()


# ---- claim backends ---------------------------------------------------------------------------


def test_cas_backends_self_test():
    from cxl_ring import _atomic

    assert _atomic.cas64 is not None, _atomic.CAS_BACKEND
    stub = _atomic._machine_code()
    if stub is not None:                       # W^X policies may forbid it: then skipped
        assert _atomic._self_test(stub)


def test_claim_without_cas_falls_back_to_write_and_verify(fake, monkeypatch):
    from cxl_ring import _atomic

    monkeypatch.setattr(_atomic, "cas64", None)
    with cxl_ring.RingClient(fake.path) as a, cxl_ring.RingClient(fake.path) as b:
        assert a.ping() and b.ping()
        assert a.session_info()[0] != b.session_info()[0]
