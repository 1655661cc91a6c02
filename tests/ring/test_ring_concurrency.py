"""Every channel at once, from several processes: each sees its own answers, in order,
and the keyspace holds everything they wrote."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from ringharness import REPO

pytestmark = pytest.mark.timeout(180)

WORKER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {here!r})
    from rawpeer import Region, OP_SET, OP_GET, ST_OK
    region = Region({path!r})
    chans = [region.channel(c) for c in {chans!r}]
    for ch in chans:
        ch.claim()
        ch.start_heartbeat()
    for rnd in range({rounds}):
        for ch in chans:                       # a pipelined burst on every channel
            ids = [ch.send(OP_SET, [b"c%d:%d" % (ch.chan, rnd * 50 + i),
                                    b"%d-%d" % (ch.chan, i) * 20]) for i in range(50)]
            for rid in ids:
                status, got, _ = ch.recv(timeout=20)
                assert (status, got) == (ST_OK, rid), (status, got, rid)
        for ch in chans:
            for i in range(0, 50, 7):
                status, value = ch.request(OP_GET, [b"c%d:%d" % (ch.chan, rnd * 50 + i)])
                assert (status, value) == (ST_OK, b"%d-%d" % (ch.chan, i) * 20)
    for ch in chans:
        ch.release()
    print("ok", flush=True)
""")


def test_all_channels_from_several_processes(ring_servers):
    srv = ring_servers.server({"channels": 8, "req_ring": "256k", "resp_ring": "256k",
                               "max_value": 65536, "batch": 64})
    rounds = 10
    procs = [subprocess.Popen([sys.executable, "-c", WORKER.format(
        here=str(REPO / "tests" / "ring"), path=srv.region, chans=[2 * p, 2 * p + 1],
        rounds=rounds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for p in range(4)]
    try:
        for p in procs:
            out, err = p.communicate(timeout=150)
            assert p.returncode == 0 and out.strip() == "ok", err[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    assert srv.client().dbsize() == 8 * rounds * 50
    info = srv.info()
    assert all(c["requests"] >= rounds * 58 and c["errors"] == 0 for c in info["channels"])
