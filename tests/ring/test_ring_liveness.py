"""Liveness (docs/ring-protocol.md sections 5 and 7): epochs, heartbeats, restarts,
clean shutdown and lease reclaim of a killed client.

No assertion here depends on the speed of the machine: an idle server's CPU use is a benchmark
(`make bench`, `server_idle_cpu_pct` in bench/results/latest.json), and every time bound only
catches a hang."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import redis
from rawpeer import (
    CHAN_ACTIVE,
    CHAN_FREE,
    OP_SET,
    SERVER_RUNNING,
    SERVER_STOPPED,
    ST_NOT_FOUND,
    ST_OK,
    ST_UNKNOWN_OUTCOME,
    Region,
)
from ringharness import FORMS, REPO, wait_for

# Liveness lives in the header and the server sections: the same in both region forms.
pytestmark = [pytest.mark.timeout(90),
              pytest.mark.parametrize("ring_servers", FORMS, indirect=True)]

SMALL = {"channels": 4, "req_ring": "256k", "resp_ring": "256k", "max_value": 65536}


def main_thread_busy(srv) -> bool:
    """True when Redis's main thread does not answer a TCP PING (it is inside DEBUG SLEEP)."""
    try:
        redis.Redis(unix_socket_path=srv.sock, socket_timeout=0.2).ping()
    except redis.exceptions.TimeoutError:
        return True
    time.sleep(0.05)
    return False


def test_epoch_and_heartbeat(ring_servers):
    srv = ring_servers.server(SMALL)
    region = Region(srv.region)
    try:
        assert region.server_state == SERVER_RUNNING
        assert region.epoch != 0
        assert region.server_pid == srv.pid
        hb = region.heartbeat
        wait_for(lambda: region.heartbeat >= hb + 3, "three heartbeats")
    finally:
        region.close()


def test_heartbeat_ticks_while_main_thread_busy(ring_servers):
    srv = ring_servers.server(SMALL)
    region = Region(srv.region)
    ch = region.channel(0)
    ch.claim()
    ch.start_heartbeat()
    try:
        busy = threading.Thread(target=lambda: srv.client().execute_command("DEBUG", "SLEEP",
                                                                            "8"))
        hb = region.heartbeat
        busy.start()
        wait_for(lambda: main_thread_busy(srv), "the main thread to start sleeping")
        rid = ch.send(OP_SET, [b"during-sleep", b"1"])   # waits for the GIL, not lost
        wait_for(lambda: region.heartbeat >= hb + 5, "five heartbeats", timeout=7)
        # The main thread is still asleep: the heartbeat moved while Redis was busy.
        assert busy.is_alive(), "DEBUG SLEEP ended before five heartbeats: inconclusive"
        busy.join(30)
        status, got, _ = ch.recv(timeout=10)
        assert (status, got) == (ST_OK, rid)
        assert srv.client().get("during-sleep") == b"1"
    finally:
        ch.release()
        region.close()


def test_clean_shutdown_marks_stopped(ring_servers):
    srv = ring_servers.server(SMALL)
    region = Region(srv.region)
    try:
        assert srv.stop(signal.SIGTERM) == 0
        assert region.server_state == SERVER_STOPPED
    finally:
        region.close()


def test_module_unload_marks_stopped_and_reload_reuses(ring_servers):
    srv = ring_servers.server(SMALL)
    region = Region(srv.region)
    try:
        epoch = region.epoch
        c = srv.client()
        deadline = time.monotonic() + 10
        while True:                      # a queued event-loop callback defers the unload
            try:
                c.execute_command("MODULE", "UNLOAD", "cxl_ring")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert region.server_state == SERVER_STOPPED
        args = ["path", srv.region] + [str(x) for kv in SMALL.items() for x in kv]
        c.execute_command("MODULE", "LOAD", str(srv.module), *args)
        assert region.server_state == SERVER_RUNNING
        assert region.epoch not in (0, epoch)
        assert "reused" in srv.log_text()
    finally:
        region.close()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_restart_gives_new_epoch_and_unknown_outcome(ring_servers, how):
    srv = ring_servers.server(SMALL)
    region = Region(srv.region)
    ch = region.channel(1)
    try:
        ch.claim()
        ch.start_heartbeat()
        assert ch.set(b"before", b"1") == (ST_OK, b"")
        old_epoch, old_token = region.epoch, ch.token
        srv.stop(how)
        ch.send(OP_SET, [b"in-flight", b"x"])            # nobody is serving it
        srv.start()                                      # same region: reused
        status, _, _ = ch.recv(timeout=10)
        assert status == ST_UNKNOWN_OUTCOME              # a verdict, never a hang
        assert region.epoch not in (0, old_epoch)
        assert ch.ack_token != old_token and ch.dead_token == old_token
        ch.stop_heartbeat()
        ch.claim()                                       # claim again, go on
        ch.start_heartbeat()
        assert ch.get(b"before")[0] in (ST_OK, ST_NOT_FOUND)   # no persistence configured
        assert ch.ping() == (ST_OK, b"")
    finally:
        ch.release()
        region.close()


CLIENT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {here!r})
    from rawpeer import Region
    region = Region({path!r})
    ch = region.channel(2)
    ch.claim()
    ch.start_heartbeat()
    assert ch.ping()[0] == 0
    print(ch.token, flush=True)
    time.sleep(60)
""")


def test_killed_client_channel_is_reclaimed(ring_servers):
    # A lease long enough that a loaded machine never starves the live client's heartbeat.
    srv = ring_servers.server({**SMALL, "client_lease_ms": 1500})
    code = CLIENT.format(here=str(REPO / "tests" / "ring"), path=srv.region)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    region = Region(srv.region)
    try:
        token = int(proc.stdout.readline())
        ch = region.channel(2)
        assert ch.state == CHAN_ACTIVE and ch.ack_token == token
        time.sleep(0.6)                                  # heartbeating: still held
        assert ch.state == CHAN_ACTIVE
        proc.kill()
        proc.wait(10)
        wait_for(lambda: ch.state == CHAN_FREE and ch.dead_token == token, "reclaim")
        assert srv.info(2)["reclaims"] == 1
        ch.claim()                                       # free for the next client
        assert ch.ping() == (ST_OK, b"")
        ch.release()
        wait_for(lambda: ch.state == CHAN_FREE and ch.ack_token == 0, "release")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        region.close()
