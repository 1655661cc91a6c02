"""Ring writes are real writes: they reach the AOF and replicas, and maxmemory refuses them."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from rawpeer import ST_OK, ST_OOM
from ringharness import wait_for

pytestmark = pytest.mark.timeout(90)

SMALL = {"channels": 2, "req_ring": "256k", "resp_ring": "256k", "max_value": 65536}



def aof_bytes(workdir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in workdir.rglob("*.aof*") if p.is_file())


def test_ring_writes_reach_the_aof(ring_servers, peer):
    srv = ring_servers.server(SMALL, conf=["--appendonly", "yes", "--appendfsync", "always"])
    ch = peer(srv)
    assert ch.set(b"aof-key", b"aof-value") == (ST_OK, b"")
    assert ch.set(b"aof-ttl", b"v", ttl_ms=600000) == (ST_OK, b"")
    assert ch.cmd(b"HSET", b"aof-hash", b"f", b"v")[0] == ST_OK
    assert ch.delete(b"aof-key")[0] == ST_OK
    # Each write reaches the AOF when its GIL hold ends; wait for all of them.
    wait_for(lambda: all(w in aof_bytes(srv.workdir)
                         for w in (b"aof-value", b"PXAT", b"aof-hash", b"DEL")), "the AOF",
             timeout=10)
    # and a restart from that AOF has the ring's data
    srv.stop()
    srv.start()
    c = srv.client()
    assert c.get("aof-ttl") == b"v" and 0 < c.pttl("aof-ttl") <= 600000
    assert c.hget("aof-hash", "f") == b"v" and c.exists("aof-key") == 0


def test_replica_sees_ring_writes(ring_servers, peer):
    primary = ring_servers.server(SMALL)
    replica = ring_servers.server(SMALL, conf=["--replicaof", "127.0.0.1", str(primary.port)])
    rc = replica.client()
    wait_for(lambda: rc.info("replication")["master_link_status"] == "up", "the link", timeout=60)
    ch = peer(primary)
    assert ch.set(b"repl-key", b"repl-value") == (ST_OK, b"")
    assert ch.cmd(b"INCRBY", b"repl-n", b"5") == (ST_OK, b":5\r\n")
    wait_for(lambda: rc.get("repl-key") == b"repl-value" and rc.get("repl-n") == b"5",
             "the replica")
    status, payload = ch.delete(b"repl-key")
    assert status == ST_OK and struct.unpack("<Q", payload) == (1,)
    wait_for(lambda: rc.exists("repl-key") == 0, "the replicated DEL")
    # the replica's own ring refuses writes, as its TCP port does
    rch = peer(replica)
    status, payload = rch.set(b"x", b"y")
    assert status != ST_OK and b"READONLY" in payload
    assert rch.get(b"repl-n") == (ST_OK, b"5")


def test_maxmemory_gives_oom(ring_servers, peer):
    srv = ring_servers.server(SMALL)
    ch = peer(srv)
    assert ch.set(b"before", b"1") == (ST_OK, b"")
    c = srv.client()
    c.config_set("maxmemory", 1)                         # everything is over the limit
    try:
        status, payload = ch.set(b"k", b"v" * 1000)
        assert status == ST_OOM and b"OOM" in payload
        status, payload = ch.cmd(b"SET", b"k", b"v")
        assert status == ST_OOM and b"OOM" in payload
        assert ch.get(b"before") == (ST_OK, b"1")         # reads still work
        assert ch.delete(b"before")[0] == ST_OK           # and so do deletes
        assert srv.info(0)["oom"] == 2
    finally:
        c.config_set("maxmemory", 0)
    assert ch.set(b"k", b"v") == (ST_OK, b"")
