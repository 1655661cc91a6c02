"""Blocking commands on a ring session (docs/ring-protocol.md section 14): BLPOP and its kin
block the session that sent them, never the server, and answer as Redis would: a value as soon
as one comes (from a TCP client or another ring session), the command's nil at its timeout, an
error at once. Against a real redis-server; what was popped is checked over TCP. No assertion
depends on speed: a timeout must not fire early, and waits are bounded only to catch a hang."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from cxl_ring import NoPermissionError, ResponseError, RingClient
from ringharness import SMALL, wait_for

pytestmark = pytest.mark.timeout(180)

def blocked(srv) -> int:
    return int(srv.info()["blocked_sessions"])


class Waiter(threading.Thread):
    """One ring session sending one command in a thread of its own; .result or .error."""

    def __init__(self, region: str, *args, before: tuple = ()):
        super().__init__(daemon=True)
        self.region, self.args, self.before = region, args, before
        self.result = self.error = None
        self.client = RingClient(region, timeout=20)

    def run(self) -> None:
        try:
            for cmd in self.before:             # the thread's session: set up here
                self.client.execute_command(*cmd)
            self.result = self.client.execute_command(*self.args)
        except Exception as e:          # noqa: BLE001 - handed to the test
            self.error = e

    def finish(self):
        self.join(60)
        assert not self.is_alive(), f"{self.args} still blocked"
        self.client.close()
        if self.error:
            raise self.error
        return self.result


def test_a_value_already_there_is_popped_at_once(srv, ring):
    tcp = srv.client()
    tcp.rpush("q", "a", "b", "c")
    assert ring.execute_command("BLPOP", "none", "q", "0") == [b"q", b"a"]
    assert ring.execute_command("BRPOP", "q", "0") == [b"q", b"c"]
    assert ring.execute_command("BRPOPLPUSH", "q", "dst", "0") == b"b"
    assert ring.execute_command("BLMOVE", "dst", "q", "LEFT", "RIGHT", "0") == b"b"
    tcp.rpush("q", "x", "y")
    assert ring.execute_command("BLMPOP", "0", "2", "none", "q", "LEFT", "COUNT", "5") == \
        [b"q", [b"b", b"x", b"y"]]
    tcp.zadd("z", {"m1": 1, "m2": 2, "m3": 3})
    assert ring.execute_command("BZPOPMIN", "z", "0") == [b"z", b"m1", b"1"]
    assert ring.execute_command("BZPOPMAX", "none", "z", "0") == [b"z", b"m3", b"3"]
    assert ring.execute_command("BZMPOP", "0", "1", "z", "MIN") == [b"z", [[b"m2", b"2"]]]
    assert blocked(srv) == 0


def test_same_replies_as_redis_over_tcp(srv, ring):
    """Each command on the same data over TCP and through the ring: the same reply."""
    tcp = srv.client(protocol=2)
    tcp.response_callbacks.clear()                      # Redis's RESP2 replies, as sent
    cases = [("BLPOP", "l", "0"), ("BRPOP", "l", "0"), ("BRPOPLPUSH", "l", "l2", "0"),
             ("BLMOVE", "l", "l2", "RIGHT", "LEFT", "0"), ("BLMPOP", "0", "1", "l", "RIGHT"),
             ("BZPOPMIN", "z", "0"), ("BZPOPMAX", "z", "0"), ("BZMPOP", "0", "1", "z", "MAX",
                                                              "COUNT", "2")]
    for cmd in cases:
        tcp.flushall()
        tcp.rpush("l", "1", "2", "3")
        tcp.zadd("z", {"a": 1.5, "b": 2, "c": 3})
        want = tcp.execute_command(*cmd)
        tcp.flushall()
        tcp.rpush("l", "1", "2", "3")
        tcp.zadd("z", {"a": 1.5, "b": 2, "c": 3})
        assert ring.execute_command(*cmd) == want, cmd


def test_an_empty_list_blocks_until_a_tcp_client_pushes(srv):
    w = Waiter(srv.region, "BLPOP", "jobs", "0")
    w.start()
    wait_for(lambda: blocked(srv) == 1, "the session to block")
    tcp = srv.client()
    assert tcp.ping()                                   # the server is not blocked
    tcp.lpush("jobs", "job-1")
    assert w.finish() == [b"jobs", b"job-1"]
    assert tcp.llen("jobs") == 0 and blocked(srv) == 0


def test_another_ring_session_goes_on_and_its_push_unblocks(srv, ring):
    w = Waiter(srv.region, "BRPOPLPUSH", "src", "dst", "0")
    w.start()
    wait_for(lambda: blocked(srv) == 1, "the session to block")
    for i in range(50):                                 # another session is served meanwhile
        assert ring.set(b"k%d" % i, b"v") and ring.get(b"k%d" % i) == b"v"
    assert ring.execute_command("LPUSH", "src", "item") == 1
    assert w.finish() == b"item"
    assert srv.client().lrange("dst", 0, -1) == [b"item"]


def test_timeout_answers_nil_and_not_before_it(srv, ring):
    for cmd, nil in ((("BLPOP", "none", "0.4"), None), (("BLMOVE", "a", "b", "LEFT", "LEFT",
                                                         "0.4"), None),
                     (("BZMPOP", "0.4", "1", "z", "MIN"), None)):
        t0 = time.monotonic()
        assert ring.execute_command(*cmd) == nil
        assert time.monotonic() - t0 >= 0.4, cmd       # the command's own timeout, at least
    assert blocked(srv) == 0


def test_later_requests_of_the_session_wait_for_the_blocked_one(srv, ring):
    """A pipeline BLPOP then GET: the GET is answered after the BLPOP, as on a connection."""
    ring.set(b"after", b"1")
    pipe = ring.pipeline()
    pipe.execute_command("BLPOP", "q", "0")
    pipe.get(b"after")
    out = {}
    t = threading.Thread(target=lambda: out.update(r=pipe.execute()), daemon=True)
    t.start()
    wait_for(lambda: blocked(srv) == 1, "the session to block")
    assert "r" not in out                               # the GET is not answered either
    srv.client().rpush("q", "v")
    t.join(60)
    assert out["r"] == [[b"q", b"v"], b"1"]


def test_first_blocked_is_served_first(srv):
    first = Waiter(srv.region, "BLPOP", "q", "0")
    first.start()
    wait_for(lambda: blocked(srv) == 1, "the first session to block")
    second = Waiter(srv.region, "BLPOP", "q", "0")
    second.start()
    wait_for(lambda: blocked(srv) == 2, "the second session to block")
    tcp = srv.client()
    tcp.rpush("q", "one")
    assert first.finish() == [b"q", b"one"]
    assert second.is_alive() and blocked(srv) == 1
    tcp.rpush("q", "two")
    assert second.finish() == [b"q", b"two"]


def test_a_write_elsewhere_does_not_unblock_and_select_is_kept(srv):
    w = Waiter(srv.region, "BLPOP", "q", "0", before=(("SELECT", "2"),))
    w.start()
    wait_for(lambda: blocked(srv) == 1, "the session to block")
    srv.client().rpush("q", "in db 0")                  # another database: not this one
    srv.client().set("other", "key")
    time.sleep(0.3)
    assert w.is_alive() and blocked(srv) == 1
    srv.client(db=2).rpush("q", "in db 2")
    assert w.finish() == [b"q", b"in db 2"]
    assert srv.client().lrange("q", 0, -1) == [b"in db 0"]


def test_errors_come_at_once(srv, ring):
    tcp = srv.client()
    tcp.set("str", "x")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        ring.execute_command("BLPOP", "str", "0")
    with pytest.raises(ResponseError, match="timeout is negative"):
        ring.execute_command("BLPOP", "q", "-1")
    with pytest.raises(ResponseError, match="timeout is not a float"):
        ring.execute_command("BRPOP", "q", "soon")
    with pytest.raises(ResponseError, match="wrong number of arguments for 'blpop'"):
        ring.execute_command("BLPOP", "q")
    with pytest.raises(ResponseError, match="wrong number of arguments for 'blmove'"):
        ring.execute_command("BLMOVE", "a", "b", "LEFT", "0")
    with pytest.raises(ResponseError, match="syntax error|numkeys"):
        ring.execute_command("BLMPOP", "0", "1", "q", "UP")
    assert blocked(srv) == 0 and ring.get(b"str") == b"x"


def test_acl_is_checked_for_the_blocking_command(ring_servers):
    srv = ring_servers.server({**SMALL, "acl_users": "worker"},
                              conf=["--user", "worker", "on", "nopass", "~jobs*", "&*",
                                    "+@all", "-brpop"])
    with RingClient(srv.region, timeout=20) as r:
        with pytest.raises(NoPermissionError):
            r.execute_command("BRPOP", "jobs", "0")
        with pytest.raises(NoPermissionError):
            r.execute_command("BLPOP", "secret", "0")   # a key the user may not touch
        srv.client().rpush("jobs", "j")
        assert r.execute_command("BLPOP", "jobs", "0") == [b"jobs", b"j"]
    assert blocked(srv) == 0


CHILD = """
import sys
from cxl_ring import RingClient
r = RingClient(sys.argv[1], timeout=20)
print("ready", flush=True)
r.execute_command("BLPOP", "q", "0")
"""


def test_a_client_that_dies_while_blocked_takes_nothing(ring_servers):
    """Its session is reclaimed at its lease; a value pushed after that stays in the list."""
    srv = ring_servers.server({**SMALL, "client_lease_ms": 1500})
    child = subprocess.Popen([sys.executable, "-c", CHILD, srv.region], stdout=subprocess.PIPE,
                             env={**os.environ})
    try:
        assert child.stdout.readline().strip() == b"ready"
        wait_for(lambda: blocked(srv) == 1, "the child's session to block")
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        wait_for(lambda: blocked(srv) == 0, "the dead client's session to be reclaimed")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
    tcp = srv.client()
    tcp.rpush("q", "kept")
    time.sleep(0.3)
    assert tcp.lrange("q", 0, -1) == [b"kept"]


def test_release_while_blocked_forgets_the_request(srv):
    w = Waiter(srv.region, "BLPOP", "q", "0")
    w.start()
    wait_for(lambda: blocked(srv) == 1, "the session to block")
    chans = [c for c in srv.info()["channels"] if int(c["blocked"]) == 1]
    assert len(chans) == 1 and chans[0]["state"] == "active"
    srv.client().execute_command("CXLRING.RESET", str(chans[0]["channel"]))
    wait_for(lambda: blocked(srv) == 0, "the reset to forget the request")
    srv.client().rpush("q", "kept")
    time.sleep(0.3)
    assert srv.client().lrange("q", 0, -1) == [b"kept"]
    w.join(60)                                          # the waiter got an error, not a value
    w.client.close()
    assert w.result is None


def test_many_block_and_wake_cycles_lose_no_value(srv):
    """Two ring sessions pop, one pushes from TCP with random pauses: every value popped
    exactly once, in order. Bounded in count (200) and time."""
    import random

    n = 200
    got: list[bytes] = []
    lock = threading.Lock()

    def consumer(name: str) -> None:
        with RingClient(srv.region, timeout=20) as r:
            while True:
                v = r.execute_command("BLPOP", "q", "5")
                if v is None:
                    return
                with lock:
                    got.append(v[1])
                if v[1] == b"end":
                    return

    threads = [threading.Thread(target=consumer, args=(c,), daemon=True) for c in "ab"]
    for t in threads:
        t.start()
    tcp = srv.client()
    rnd = random.Random(7)
    for i in range(n):
        tcp.rpush("q", b"%d" % i)
        if rnd.random() < 0.3:
            time.sleep(rnd.random() * 0.01)
    tcp.rpush("q", "end", "end")
    for t in threads:
        t.join(120)
        assert not t.is_alive()
    values = [v for v in got if v != b"end"]
    assert sorted(values, key=int) == [b"%d" % i for i in range(n)]
    assert len(values) == len(set(values)) == n


def test_the_client_waits_the_commands_timeout_and_its_own(srv):
    from cxl_ring.client import FOREVER, blocking_wait

    assert blocking_wait((b"BLPOP", b"q", b"2.5"), 5.0) == 7.5
    assert blocking_wait((b"blmpop", b"0", b"1", b"q", b"LEFT"), 5.0) == FOREVER
    assert blocking_wait((b"GET", b"k"), 5.0) is None
    assert blocking_wait((b"WAIT", b"1", b"2500"), 5.0) == 7.5           # milliseconds
    assert blocking_wait((b"wait", b"1", b"0"), 5.0) == FOREVER
    assert blocking_wait((b"WAIT", b"1", b"-1"), 5.0) is None
    assert blocking_wait((b"WAIT", b"1"), 5.0) is None
    for bad in (b"-1", b"x", b"nan", b"inf"):          # the server refuses it at once
        assert blocking_wait((b"BLPOP", b"q", bad), 5.0) is None
    assert blocking_wait((b"BLPOP", b"q"), 5.0) is None
    assert blocking_wait((b"XREAD", b"BLOCK", b"1500", b"STREAMS", b"s", b"$"), 5.0) == 6.5
    assert blocking_wait((b"xreadgroup", b"GROUP", b"g", b"c", b"block", b"0", b"STREAMS",
                          b"s", b">"), 5.0) == FOREVER
    assert blocking_wait((b"XREAD", b"STREAMS", b"s", b"$"), 5.0) is None
    assert blocking_wait((b"XREAD", b"STREAMS", b"block", b"0-0"), 5.0) is None  # a key
    # a 1 s client waits out a 2 s BLPOP and a BLPOP 0 answered after 2 s, no TimeoutError
    with RingClient(srv.region, timeout=1) as r:
        assert r.execute_command("BLPOP", "q", "2") is None
        threading.Timer(2.0, lambda: srv.client().rpush("q", "late")).start()
        assert r.execute_command("BLPOP", "q", "0") == [b"q", b"late"]


# ---- streams: XREAD and XREADGROUP with BLOCK ---------------------------------------------------


def test_xread_block_waits_for_an_entry_added_after_it(srv, ring):
    tcp = srv.client()
    old = tcp.xadd("s", {"f": "old"})
    # "$": only what comes after the call; an entry already there is not read
    w = Waiter(srv.region, "XREAD", "COUNT", "10", "BLOCK", "0", "STREAMS", "s", "$")
    w.start()
    wait_for(lambda: blocked(srv) == 1, "XREAD to block")
    tcp.set("unrelated", "1")                          # a write elsewhere: still blocked
    time.sleep(0.3)
    assert w.is_alive()
    new = tcp.xadd("s", {"f": "new"})
    assert w.finish() == [[b"s", [[new, [b"f", b"new"]]]]]
    # an explicit id is answered at once when there is something after it
    assert ring.execute_command("XREAD", "BLOCK", "5000", "STREAMS", "s", old) == \
        [[b"s", [[new, [b"f", b"new"]]]]]
    # without BLOCK it is a plain CMD; with a timeout and nothing new, nil after it
    assert ring.execute_command("XREAD", "STREAMS", "s", new) is None
    t0 = time.monotonic()
    assert ring.execute_command("XREAD", "BLOCK", "300", "STREAMS", "s", "$") is None
    assert time.monotonic() - t0 >= 0.3
    with pytest.raises(ResponseError, match="timeout is negative"):
        ring.execute_command("XREAD", "BLOCK", "-1", "STREAMS", "s", "$")
    with pytest.raises(ResponseError, match="not an integer"):
        ring.execute_command("XREAD", "BLOCK", "1.5", "STREAMS", "s", "$")
    assert blocked(srv) == 0


def test_xreadgroup_block_gets_new_entries_of_its_group(srv, ring):
    tcp = srv.client()
    tcp.xgroup_create("jobs", "workers", id="$", mkstream=True)
    w = Waiter(srv.region, "XREADGROUP", "GROUP", "workers", "w1", "BLOCK", "0", "STREAMS",
               "jobs", ">")
    w.start()
    wait_for(lambda: blocked(srv) == 1, "XREADGROUP to block")
    eid = tcp.xadd("jobs", {"task": "1"})
    assert w.finish() == [[b"jobs", [[eid, [b"task", b"1"]]]]]
    assert tcp.xpending("jobs", "workers")["pending"] == 1
