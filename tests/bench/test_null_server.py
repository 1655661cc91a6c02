"""build/cxl-null-server (bench/c/null/null_server.c): a layout 5 server with no keyspace, for
the transport's own limit in `make bench`. It must be a correct protocol peer: real clients
(the Python ring client, the C bench client) get GET's fixed value and SET's OK; malformed
requests get the protocol's error status, unframed streams quarantine the channel
(docs/ring-protocol.md section 6), and nothing a client writes crashes it. The hostile tests
run the ASan+UBSan build; no test here looks at speed."""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from benchutil import REPO, built, run_bench, runner, shm_name

sys.path.insert(0, str(REPO / "tests" / "ring"))

from rawpeer import (  # noqa: E402
    CHAN_ACTIVE,
    CHAN_QUARANTINED,
    OP_DEL,
    OP_GET,
    OP_PING,
    OP_SET,
    SERVER_RUNNING,
    SERVER_STOPPED,
    ST_BAD_REQUEST,
    ST_OK,
    ST_PROTOCOL_ERROR,
    ST_TOO_LARGE,
    ST_UNKNOWN_OP,
    Region,
    encode_request,
)

pytestmark = pytest.mark.timeout(120)

NULL = REPO / "build" / "cxl-null-server"
NULL_ASAN = REPO / "build" / "cxl-null-server-asan"
VALUE_SIZE = 100
MAX_VALUE = 131072
MAX_MSG = MAX_VALUE + 65536
SMALL = ["--req-ring", "256k", "--resp-ring", "256k", "--max-value", str(MAX_VALUE),
         "--client-lease-ms", "5000"]


def start(binary: Path, *, channels: int = 4, args: list[str] | None = None,
          region: str | None = None) -> runner.NullServer:
    return runner.NullServer(binary, region or shm_name(), channels=channels,
                             value_size=VALUE_SIZE, args=SMALL + list(args or [])).start()


def stop_cleanly(srv: runner.NullServer) -> str:
    """SIGTERM: exit 0 (ASan and LeakSanitizer found nothing), the last line its summary."""
    log = srv.stop()
    assert srv.returncode == 0, log[-4000:]
    assert "AddressSanitizer" not in log and "runtime error" not in log, log[-4000:]
    return log


def summary(log: str) -> dict[str, int]:
    """The counters of the line `cxl-null-server: stopped: requests N ok N ...`."""
    line = next(ln for ln in log.splitlines() if ": stopped: " in ln)
    words = line.split(": stopped: ", 1)[1].split()
    return {words[i]: int(words[i + 1]) for i in range(0, len(words), 2)}


@pytest.fixture
def null_server() -> Iterator[runner.NullServer]:
    """The ASan+UBSan null server: 4 channels of 256 KiB rings, GET answering 100 bytes."""
    srv = start(built(NULL_ASAN))
    try:
        yield srv
    finally:
        if srv.alive():
            stop_cleanly(srv)
        else:
            srv.stop()


# ---- real clients -----------------------------------------------------------------

def test_python_ring_client_gets_the_value_size_and_sets(null_server) -> None:
    from cxl_ring import RingClient

    r = RingClient(null_server.region, timeout=5)
    try:
        assert r.get("any key") == b"x" * VALUE_SIZE
        assert r.get(b"another") == b"x" * VALUE_SIZE
        assert r.set("k", "v") is True
        assert r.delete("k") == 0              # no keyspace: nothing to remove
        assert r.ping() is True
        pipe = r.pipeline()
        for i in range(500):
            pipe.set(f"k{i}", b"v" * 64)
            pipe.get(f"k{i}")
        out = pipe.execute()
        assert out == [True, b"x" * VALUE_SIZE] * 500
    finally:
        r.close()
    log = stop_cleanly(null_server)
    counts = summary(log)
    assert counts["requests"] == counts["ok"] == 2 + 1 + 1 + 1 + 1000
    assert counts["quarantines"] == 0 and counts["sessions"] >= 1


def test_c_bench_runs_pipelined_against_it(tmp_path: Path) -> None:
    srv = start(built(NULL))
    try:
        out = run_bench("--path", srv.region, "--op", "set,get", "--bench", "20000",
                        "--pipeline", "--max-inflight", "256", "--threads", "2",
                        "--value-size", str(VALUE_SIZE), "--keyspace", "1000",
                        "--json", str(tmp_path / "r.json"))
        assert out.returncode == 0, out.stderr
        doc = json.loads((tmp_path / "r.json").read_text())
        ops = {r["op"]: r for r in doc["results"]}
        for op in ("SET", "GET"):
            assert ops[op]["requests"] == 20000 and ops[op]["errors"] == 0
        assert ops["GET"]["get_misses"] == 0
    finally:
        log = stop_cleanly(srv)
    counts = summary(log)
    # 1000 prefill SETs, then each phase; two threads, two sessions, both released
    assert counts["requests"] == counts["ok"] == 1000 + 2 * 20000
    assert counts["sessions"] == counts["releases"] == 2


def test_a_cmd_is_answered_with_an_error_line(null_server) -> None:
    region = Region(null_server.region)
    ch = region.channel(0)
    try:
        ch.claim()
        status, payload = ch.cmd(b"GET", b"k")
        assert status == ST_OK and payload.startswith(b"-ERR ") and payload.endswith(b"\r\n")
        status, payload = ch.delete(b"a", b"b")
        assert (status, payload) == (ST_OK, struct.pack("<Q", 0))
    finally:
        ch.release()
        region.close()


# ---- hostile input (ASan+UBSan build) ------------------------------------------------

class Rig:
    """A well-behaved peer on channel 0 and a hostile one on channel 1."""

    def __init__(self, srv: runner.NullServer) -> None:
        self.srv = srv
        self.region = Region(srv.region)
        self.good = self.region.channel(0)
        self.good.claim()
        self.good.start_heartbeat()
        self.bad = self.region.channel(1)
        self.bad.claim()
        self.bad.start_heartbeat()

    def good_still_works(self) -> None:
        assert self.good.set(b"k", b"v" * 10) == (ST_OK, b"")
        assert self.good.get(b"k") == (ST_OK, b"x" * VALUE_SIZE)
        assert self.srv.alive()

    def reclaim_bad(self) -> None:
        """A new token starts a quarantined channel afresh (section 6)."""
        self.bad.stop_heartbeat()
        self.bad.claim()
        self.bad.start_heartbeat()
        assert self.bad.state == CHAN_ACTIVE and self.bad.last_error == 0
        assert self.bad.ping() == (ST_OK, b"")

    def close(self) -> None:
        self.good.release()
        self.bad.release()
        self.region.close()


@pytest.fixture
def rig(null_server) -> Iterator[Rig]:
    r = Rig(null_server)
    yield r
    r.close()


def expect_error(ch, msg: bytes, status: int, req_id: int) -> bytes:
    ch.push_raw(ch.stamp(msg))
    got_status, got_id, payload = ch.recv()
    assert (got_status, got_id) == (status, ch.tag(req_id)), payload
    assert payload, "an error status carries a reason"
    assert ch.state == CHAN_ACTIVE and ch.last_error == status
    return payload


def expect_quarantine(rig: Rig, why_word: str | None = None, response: bool = True) -> None:
    ch = rig.bad
    if response:
        status, rid, payload = ch.recv()
        assert (status, rid) == (ST_PROTOCOL_ERROR, 0)
        if why_word:
            assert why_word in payload.decode()
    deadline = time.monotonic() + 30                # a hang bound
    while ch.state != CHAN_QUARANTINED and time.monotonic() < deadline:
        time.sleep(0.005)
    assert ch.state == CHAN_QUARANTINED and ch.last_error == ST_PROTOCOL_ERROR
    rig.good_still_works()


@pytest.mark.parametrize("msg, status", [
    (encode_request(99, [b"x"], req_id=7), ST_UNKNOWN_OP),
    (encode_request(OP_GET, [b"a", b"b"], req_id=7), ST_BAD_REQUEST),     # wrong argc
    (encode_request(OP_SET, [b"a"], req_id=7), ST_BAD_REQUEST),
    (encode_request(OP_PING, [b"a"], req_id=7), ST_BAD_REQUEST),
    (encode_request(OP_DEL, [], req_id=7), ST_BAD_REQUEST),
    (encode_request(OP_GET, [b"a"], req_id=7, flags=0x80), ST_BAD_REQUEST),
    (encode_request(OP_GET, [b"abc"], req_id=7, argc=2), ST_BAD_REQUEST),  # argc lies
    (encode_request(OP_SET, [b"k", b"v" * (MAX_VALUE + 1)], req_id=7), ST_TOO_LARGE),
], ids=["unknown-op", "get-argc", "set-argc", "ping-argc", "del-argc", "flags",
        "argc-past-end", "value-too-large"])
def test_malformed_request_gets_an_error_status(rig, msg, status) -> None:
    expect_error(rig.bad, msg, status, 7)
    assert rig.bad.ping() == (ST_OK, b"")             # the channel goes on
    rig.good_still_works()


def test_message_over_max_msg_size_is_skipped_with_too_large(rig) -> None:
    ch = rig.bad
    msg = bytearray(encode_request(OP_SET, [b"k", b"v" * (MAX_MSG + 8)], req_id=9))
    expect_error(ch, bytes(msg), ST_TOO_LARGE, 9)
    assert ch.ping() == (ST_OK, b"")


@pytest.mark.parametrize("case", ["short-len", "past-head", "stale-generation"])
def test_unframed_stream_quarantines_the_channel(rig, case) -> None:
    ch = rig.bad
    assert ch.ping() == (ST_OK, b"")
    if case == "short-len":
        ch.push_raw(struct.pack("<IBBHQ", 8, OP_PING, 0, 0, ch.tag(1)))
        expect_quarantine(rig, "shorter")
    elif case == "past-head":
        msg = encode_request(OP_GET, [b"k"], req_id=ch.tag(1))
        ch.push_raw(msg[:16], advance=16)           # a header whose len runs past the head
        expect_quarantine(rig, "past")
    else:
        # a request of another session (docs/ring-protocol.md 4.3): never executed
        ch.push_raw(encode_request(OP_SET, [b"k", b"v"], req_id=((ch.gen + 5) << 32) | 1))
        expect_quarantine(rig, "earlier session")
    rig.reclaim_bad()
    rig.good_still_works()


def test_impossible_indexes_quarantine_the_channel(rig) -> None:
    ch = rig.bad
    ch.publish_head(ch.req_head + rig.region.req_ring_size + 8)     # more than the ring
    expect_quarantine(rig, "exceeds")
    rig.reclaim_bad()
    ch.send(OP_PING)
    ch.recv()
    ch.publish_head(ch.req_head - 8)                                # head moved backwards
    expect_quarantine(rig, "backwards")
    rig.reclaim_bad()
    # a resp_tail outside [resp_head - size, resp_head]: quarantine, no response
    ch.r.put_u64(ch.c + 128, ch.resp_tail + (1 << 40))
    for i in range(4000):                         # until the server needs room and checks
        if ch.state == CHAN_QUARANTINED:
            break
        ch.send(OP_GET, [b"k%d" % i])
        time.sleep(0.001 if i % 64 == 0 else 0)
    deadline = time.monotonic() + 30
    while ch.state != CHAN_QUARANTINED and time.monotonic() < deadline:
        time.sleep(0.005)
    assert ch.state == CHAN_QUARANTINED and ch.last_error == ST_PROTOCOL_ERROR
    rig.reclaim_bad()
    rig.good_still_works()


def test_random_bytes_never_crash_it(rig) -> None:
    """Random well-framed and ill-framed messages; reclaim after every quarantine."""
    ch = rig.bad
    rnd = random.Random(10)
    statuses = set()
    for i in range(300):
        if rnd.random() < 0.6:
            op = rnd.choice([0, 1, 2, 3, 4, 5, 6, 200])
            args = [rnd.randbytes(rnd.randrange(0, 40)) for _ in range(rnd.randrange(0, 4))]
            msg = encode_request(op, args, req_id=ch.tag(i), flags=rnd.choice([0, 0, 0, 1, 2]),
                                 ttl_ms=rnd.randrange(0, 3), argc=rnd.choice([None, None, 7]))
        else:
            msg = rnd.randbytes(rnd.randrange(1, 200))
        ch.push_raw(msg)
        try:
            status, _, _ = ch.recv(timeout=2)
            statuses.add(status)
        except Exception:  # noqa: BLE001 - silence is fine for garbage; check the channel
            pass
        if ch.state == CHAN_QUARANTINED or ch.ack_token != ch.token:
            rig.reclaim_bad()
    rig.good_still_works()
    assert {ST_OK, ST_PROTOCOL_ERROR} <= statuses
    assert statuses & {ST_BAD_REQUEST, ST_UNKNOWN_OP}


# ---- sessions, liveness, the region ------------------------------------------------------

def test_a_silent_client_is_reclaimed_and_a_new_one_served(null_server) -> None:
    region = Region(null_server.region)
    try:
        ch = region.channel(2)
        ch.claim()                               # and no heartbeat from here on
        deadline = time.monotonic() + 30
        while ch.ack_token == ch.token and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ch.ack_token == 0 and ch.dead_token == ch.token
        ch.claim()                               # a new token: a new session
        assert ch.get(b"k") == (ST_OK, b"x" * VALUE_SIZE)
        ch.release()
    finally:
        region.close()
    assert summary(stop_cleanly(null_server))["reclaims"] == 1


def test_sigterm_stops_and_the_header_says_so() -> None:
    srv = start(built(NULL))
    try:
        region = Region(srv.region)
        assert region.server_state == SERVER_RUNNING and region.epoch != 0
        assert region.server_pid == srv.proc.pid
        beat = region.heartbeat
        time.sleep(0.3)
        assert region.heartbeat > beat           # the heartbeat thread runs
        srv.proc.send_signal(signal.SIGINT)
        srv.proc.wait(timeout=10)
        assert srv.proc.returncode == 0
        assert region.server_state == SERVER_STOPPED
        region.close()
    finally:
        srv.stop()


def test_a_region_of_another_layout_or_server_is_refused() -> None:
    region = shm_name()
    first = start(built(NULL), region=region)
    try:
        # a second server on a live region: refused, the first keeps serving
        second = subprocess.run([str(NULL), "--path", region, "--channels", "4", *SMALL],
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == 2 and "another server" in second.stderr
        assert first.alive()
        first.proc.send_signal(signal.SIGTERM)
        first.proc.wait(timeout=10)
        other = subprocess.run([str(NULL), "--path", region, "--channels", "2", *SMALL],
                               capture_output=True, text=True, timeout=30)
        assert other.returncode == 2
        assert "channels 4 (configured 2)" in other.stderr
    finally:
        first.stop()
    assert not os.path.exists(region)


@pytest.mark.parametrize("args, says", [
    ([], "--path is required"),
    (["--path", "/dev/shm/x", "--channels", "0x"], "--channels"),
    (["--path", "/dev/shm/x", "--groups", "2,,2"], "--groups"),
    (["--path", "/dev/shm/x", "--format", "sometimes"], "--format"),
    (["--path", "/dev/shm/x", "--batch", "0"], "--batch"),
    (["--path", "/dev/shm/x", "extra"], "unexpected argument"),
])
def test_usage_errors_exit_1(args, says) -> None:
    out = subprocess.run([str(built(NULL)), *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and says in out.stderr


def test_value_size_over_max_value_is_refused() -> None:
    region = shm_name()
    try:
        out = subprocess.run([str(built(NULL)), "--path", region, *SMALL, "--value-size",
                              str(MAX_VALUE + 1)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 1 and "exceeds max_value" in out.stderr
    finally:
        if os.path.exists(region):
            os.unlink(region)


def test_help() -> None:
    out = subprocess.run([str(built(NULL)), "--help"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0 and "--value-size" in out.stdout and "--path" in out.stdout
