"""Sessions cannot leak into each other (docs/ring-protocol.md 3.1 and 4.3).

A stale writer is a peer whose session the server retired (CXLRING.RESET or lease reclaim) and
that then writes requests at its old ring position while the next owner of the channel runs its
own. Whatever the interleaving, nothing it sends is executed (checked from outside, over TCP:
its keys are absent, its FLUSHALL did not run), the next owner's requests return the next
owner's values or an error it sees, never silence, and the server counts what it refused.

The next owner of a channel finds both rings' data areas all zeros when its claim is
acknowledged: the previous session's client zeroed its answered requests, the server its
responses.

Every test runs on the plain and the ASan build of the module (hostile input).
"""

from __future__ import annotations

import pytest
from rawpeer import (
    CHAN_ACTIVE,
    CHAN_QUARANTINED,
    OP_CMD,
    OP_GET,
    OP_SET,
    ST_NOT_FOUND,
    ST_OK,
    ST_PROTOCOL_ERROR,
    Channel,
    Region,
)
from ringharness import wait_for

pytestmark = pytest.mark.timeout(120)

GEOMETRY = {"channels": 2, "req_ring": "256k", "resp_ring": "256k", "max_value": 65536,
            "client_lease_ms": 1000}
HANG = 30          # every wait below only catches a hang
SECRET = b"previous-session-secret:"


@pytest.fixture
def srv(ring_servers, module_path):
    server = ring_servers.server(GEOMETRY, module=module_path)
    yield server
    log = server.stderr_text()
    assert "AddressSanitizer" not in log and "runtime error" not in log, log[-4000:]


@pytest.fixture
def region(srv):
    r = Region(srv.region)
    yield r
    r.close()


def retire(srv, ch: Channel, how: str) -> None:
    """End ch's session from the server's side, as an operator or the lease would."""
    if how == "reset":
        assert srv.client().execute_command("CXLRING.RESET", ch.chan)
    else:
        ch.stop_heartbeat()                   # the peer stalls past its lease
    wait_for(lambda: ch.ack_token != ch.token, "retirement of the stale session")


def stale_peer(srv, region: Region, how: str) -> Channel:
    """A peer that used channel 0, then had its session retired; it keeps its private state."""
    old = region.channel(0)
    old.claim()
    old.start_heartbeat()
    assert old.set(b"old-key", SECRET + b"1") == (ST_OK, b"")
    retire(srv, old, how)
    old.stop_heartbeat()
    return old


def stale_write(old: Channel) -> None:
    """The stale peer writes at its old position and publishes its head, as before its stall."""
    old.send(OP_SET, [b"stale-key", b"from the dead"])
    old.send(OP_CMD, [b"FLUSHALL"])


def nothing_of_the_stale_peer_ran(srv) -> None:
    tcp = srv.client()
    assert tcp.exists("stale-key") == 0, "a request of a retired session was executed"
    assert tcp.get("sentinel") == b"kept", "a FLUSHALL of a retired session ran"


def new_owner(region: Region) -> Channel:
    ch = region.channel(0)                    # its own private state: a different process
    ch.claim()
    ch.start_heartbeat()
    return ch


@pytest.mark.parametrize("how", ["reset", "lease"])
def test_stale_write_at_the_new_sessions_position_is_never_executed(srv, region, how):
    """The new owner has claimed but not written yet: the stale request is the next message
    the server reads. It carries the old generation, so it is refused, counted, and the
    channel is quarantined with a PROTOCOL_ERROR the new owner sees (nothing silent)."""
    srv.client().set("sentinel", "kept")
    old = stale_peer(srv, region, how)
    ch = new_owner(region)
    assert ch.gen != old.gen and ch.req_head == old.req_head
    stale_write(old)
    status, rid, why = ch.recv(timeout=HANG)
    assert (status, rid) == (ST_PROTOCOL_ERROR, 0) and b"earlier session" in why, why
    wait_for(lambda: ch.state == CHAN_QUARANTINED, "quarantine")
    nothing_of_the_stale_peer_ran(srv)
    assert srv.info(0)["stale_requests"] == 1
    # the new owner claims again and its requests run in its own session
    ch.stop_heartbeat()
    ch.claim()
    ch.start_heartbeat()
    assert ch.state == CHAN_ACTIVE
    assert ch.set(b"mine", b"new owner's value") == (ST_OK, b"")
    assert ch.get(b"mine") == (ST_OK, b"new owner's value")
    assert ch.get(b"stale-key") == (ST_NOT_FOUND, b"")
    nothing_of_the_stale_peer_ran(srv)
    ch.release()


def test_stale_write_before_the_next_claim_is_skipped(srv, region):
    """Written while the channel is free: the next accept starts past it (req_tail := head)."""
    srv.client().set("sentinel", "kept")
    old = stale_peer(srv, region, "reset")
    stale_write(old)
    ch = new_owner(region)
    assert ch.set(b"mine", b"v") == (ST_OK, b"")
    assert ch.get(b"mine") == (ST_OK, b"v")
    nothing_of_the_stale_peer_ran(srv)
    ch.release()


def test_stale_write_behind_the_new_owner_breaks_the_channel_loudly(srv, region):
    """The new owner has been served already; the stale peer rewrites consumed bytes and
    publishes an older head. The server quarantines (head moved backwards, or the bytes it
    finds are not this session's), so the new owner's next request gets an error, and none of
    the stale bytes ran."""
    srv.client().set("sentinel", "kept")
    old = stale_peer(srv, region, "lease")
    ch = new_owner(region)
    assert ch.set(b"mine", b"before") == (ST_OK, b"")
    assert ch.get(b"mine") == (ST_OK, b"before")
    stale_write(old)
    wait_for(lambda: ch.state == CHAN_QUARANTINED, "quarantine")
    nothing_of_the_stale_peer_ran(srv)
    ch.send(OP_GET, [b"mine"])
    status, rid, _ = ch.recv(timeout=HANG)
    assert (status, rid) == (ST_PROTOCOL_ERROR, 0)
    assert srv.client().get("mine") == b"before"
    ch.release()


# ---- scrubbing: the next owner reads zeros --------------------------------------------------

def ring_bytes(region: Region, chan: int) -> tuple[bytes, bytes]:
    c, s = region.client_off(chan), region.server_off(chan)
    req = bytes(region.mm[c + 4096 : c + 4096 + region.req_ring_size])
    resp = bytes(region.mm[s + 4096 : s + 4096 + region.resp_ring_size])
    return req, resp


def assert_zero(region: Region, chan: int) -> None:
    req, resp = ring_bytes(region, chan)
    assert SECRET not in req and SECRET not in resp
    assert req.count(0) == len(req), f"request ring holds {len(req) - req.count(0)} bytes"
    assert resp.count(0) == len(resp), f"response ring holds {len(resp) - resp.count(0)} bytes"


def one(s, fast, encode, *args):
    """The fast path's answer, or (at a ring wrap, where it declines) the general path's."""
    if fast is not None:
        return fast
    rid = s.next_id
    s.next_id += 1
    r = s.transact([encode(*args, rid)], rid, HANG)[0]
    return r.status, r.payload


@pytest.mark.parametrize("how", ["release", "reset", "lease"])
@pytest.mark.parametrize("impl", ["pure", "c"])
def test_next_owner_reads_only_zeros(srv, region, impl, how):
    """The client library (pure Python or its C core) as the previous owner: pipelined and
    single requests, values wrapping the rings, then the session ends; the next owner's rings
    hold no byte of it."""
    from cxl_ring import channel as chmod
    from cxl_ring import protocol as P
    from cxl_ring import session as sess
    from cxl_ring.region import Region as ClientRegion

    if impl == "c" and not chmod.SPEEDUPS:
        pytest.skip("the C core (_speedups) is not built or is stale")
    cls = chmod.Session if impl == "pure" else chmod.FastSession
    creg = ClientRegion(srv.region)
    try:
        header = creg.header()
        s = sess.claim_channel(creg, header, HANG, 0, cls)
        try:
            assert s.index == 0
            for i in range(100):                              # wraps the 256 KiB rings
                value = SECRET + bytes([i]) * 3000
                assert one(s, s.set(b"k%d" % i, value, 0, HANG), P.encode_set,
                           b"k%d" % i, value) == (ST_OK, b"")
                assert one(s, s.get(b"k%d" % i, HANG), P.encode_get,
                           b"k%d" % i) == (ST_OK, value)
            msgs = [P.encode_get(b"k%d" % i, s.next_id + i) for i in range(10)]
            first = s.next_id
            s.next_id += len(msgs)
            got = s.transact(msgs, first, HANG)
            assert [r.status for r in got] == [ST_OK] * 10
        finally:
            if how == "release":
                s.release()
            elif how == "reset":
                assert srv.client().execute_command("CXLRING.RESET", 0)
                wait_for(lambda: region.channel(0).ack_token == 0, "reset")
                sess.LEASE_KEEPER.discard(s)
                s.release_views()
            else:
                sess.LEASE_KEEPER.discard(s)              # the owner stalls past its lease
                wait_for(lambda: region.channel(0).ack_token == 0, "lease reclaim")
                s.release_views()
    finally:
        creg.close()
    ch = new_owner(region)
    assert_zero(region, 0)
    ch.release()


def test_bench_client_leaves_zeros(srv, region):
    """The C client library (build/cxl-ring-bench, pipelined) leaves zeroed request rings."""
    import subprocess

    from ringharness import REPO

    bench = REPO / "build" / "cxl-ring-bench"
    if not bench.exists():
        pytest.skip("build/cxl-ring-bench is not built (make native)")
    out = subprocess.run([str(bench), "--path", srv.region, "--bench", "3000", "--threads", "2",
                          "--pipeline", "--max-inflight", "64", "--value-size", "2000"],
                         capture_output=True, text=True, timeout=HANG * 4)
    assert out.returncode == 0, out.stderr
    for chan in (0, 1):
        wait_for(lambda chan=chan: region.channel(chan).ack_token == 0, "release")
        ch = region.channel(chan)
        ch.claim()
        assert_zero(region, chan)
        ch.release()


@pytest.mark.parametrize("impl", ["pure", "c"])
def test_client_library_as_next_owner_never_gets_a_stale_answer(srv, region, impl):
    """The next owner is the client library (pure Python or its C core): the stale peer's
    write breaks its session loudly (ProtocolError, nothing silent), and on its new session its
    GETs return its own values while nothing the stale peer sent ran."""
    from cxl_ring import channel as chmod
    from cxl_ring import protocol as P
    from cxl_ring import session as sess
    from cxl_ring.exceptions import ProtocolError
    from cxl_ring.region import Region as ClientRegion

    if impl == "c" and not chmod.SPEEDUPS:
        pytest.skip("the C core (_speedups) is not built or is stale")
    cls = chmod.Session if impl == "pure" else chmod.FastSession
    srv.client().set("sentinel", "kept")
    old = stale_peer(srv, region, "reset")
    creg = ClientRegion(srv.region)
    try:
        header = creg.header()
        s = sess.claim_channel(creg, header, HANG, 0, cls)
        try:
            assert s.index == 0 and s.gen != old.gen and P.id_gen(s.next_id) == s.gen
            stale_write(old)
            wait_for(lambda: region.channel(0).state == CHAN_QUARANTINED, "quarantine")
            with pytest.raises(ProtocolError):
                s.get(b"mine", HANG)
        finally:
            s.release()
        s = sess.claim_channel(creg, header, HANG, 0, cls)
        try:
            assert s.set(b"mine", b"next owner", 0, HANG) == (ST_OK, b"")
            assert s.get(b"mine", HANG) == (ST_OK, b"next owner")
            assert s.get(b"stale-key", HANG) == (ST_NOT_FOUND, b"")
        finally:
            s.release()
    finally:
        creg.close()
    nothing_of_the_stale_peer_ran(srv)
    assert srv.info(0)["stale_requests"] == 1
