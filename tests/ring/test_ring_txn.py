"""What a session holds as a Redis connection would (docs/ring-protocol.md section 13): its
database (SELECT), MULTI/EXEC/DISCARD and WATCH/UNWATCH, against a real redis-server. What a
transaction did or did not do is checked over TCP."""

from __future__ import annotations

import threading

import pytest
from cxl_ring import NoPermissionError, ResponseError, RingClient, WatchError
from ringharness import DIRECTORY, SMALL

pytestmark = pytest.mark.timeout(120)

def test_select_gives_the_session_its_database(srv, ring):
    assert ring.execute_command("SELECT", "3") == b"OK"
    assert ring.set(b"k", b"in db 3") and ring.execute_command("SET", "c", "cmd in 3") == b"OK"
    assert ring.get(b"k") == b"in db 3"
    assert srv.client(db=3).get("k") == b"in db 3" and srv.client(db=3).get("c") == b"cmd in 3"
    assert srv.client().get("k") is None
    with pytest.raises(ResponseError, match="DB index is out of range"):
        ring.execute_command("SELECT", "4096")
    with pytest.raises(ResponseError, match="not an integer"):
        ring.execute_command("SELECT", "x")
    assert ring.get(b"k") == b"in db 3"         # a refused SELECT changes nothing
    ring.release_session()                      # a new session starts in db 0
    assert ring.get(b"k") is None


def test_sessions_keep_their_own_database(srv):
    """Two sessions, two databases, one poll thread serving both in turn."""
    with RingClient(srv.region, timeout=20) as a, RingClient(srv.region, timeout=20) as b:
        a.execute_command("SELECT", "1")
        b.execute_command("SELECT", "2")
        for i in range(200):
            a.set(b"n", b"a%d" % i)
            b.set(b"n", b"b%d" % i)
        assert (a.get(b"n"), b.get(b"n")) == (b"a199", b"b199")
    assert (srv.client(db=1).get("n"), srv.client(db=2).get("n")) == (b"a199", b"b199")
    assert srv.client().get("n") is None


def test_multi_exec_runs_the_queue_and_answers_each_reply(srv, ring):
    assert ring.execute_command("MULTI") == b"OK"
    assert ring.execute_command("INCR", "n") == b"QUEUED"
    assert ring.execute_command("INCRBY", "n", "10") == b"QUEUED"
    assert ring.execute_command("GET", "n") == b"QUEUED"
    assert srv.client().get("n") is None        # nothing ran yet
    assert ring.execute_command("EXEC") == [1, 11, b"11"]
    assert srv.client().get("n") == b"11"


def test_errors_while_queuing_abort_the_transaction(srv, ring):
    ring.execute_command("MULTI")
    ring.execute_command("SET", "x", "1")
    with pytest.raises(ResponseError, match="unknown command"):
        ring.execute_command("NOSUCHCOMMAND")
    with pytest.raises(ResponseError, match="cannot run from the ring"):
        ring.execute_command("MONITOR")
    with pytest.raises(ResponseError, match="EXECABORT"):
        ring.execute_command("EXEC")
    assert srv.client().get("x") is None
    # a fast op has no QUEUED reply: refused inside MULTI, and the transaction aborts
    ring.execute_command("MULTI")
    with pytest.raises(ResponseError, match="as CMD"):
        ring.get(b"x")
    with pytest.raises(ResponseError, match="EXECABORT"):
        ring.execute_command("EXEC")
    # a runtime error is one reply of the array, the rest runs
    ring.execute_command("SET", "s", "text")
    ring.execute_command("MULTI")
    ring.execute_command("INCR", "s")
    ring.execute_command("SET", "y", "2")
    out = ring.execute_command("EXEC")
    assert isinstance(out[0], ResponseError) and out[1] == b"OK"
    assert srv.client().get("y") == b"2"


def test_misplaced_transaction_commands(ring):
    for argv, said in (([b"EXEC"], "EXEC without MULTI"), ([b"DISCARD"], "DISCARD without MULTI")):
        with pytest.raises(ResponseError, match=said):
            ring.execute_command(*argv)
    ring.execute_command("MULTI")
    with pytest.raises(ResponseError, match="can not be nested"):
        ring.execute_command("MULTI")
    with pytest.raises(ResponseError, match="WATCH inside MULTI"):
        ring.execute_command("WATCH", "k")
    assert ring.execute_command("DISCARD") == b"OK"


def test_discard_drops_the_queue(srv, ring):
    ring.execute_command("MULTI")
    ring.execute_command("SET", "d", "1")
    assert ring.execute_command("DISCARD") == b"OK"
    assert srv.client().get("d") is None


@pytest.mark.parametrize("change", ["set", "expire", "del", "flushall", "flushdb"])
def test_a_watched_key_changed_by_another_client_aborts_exec(srv, ring, change):
    tcp = srv.client()
    tcp.set("w", "before")
    assert ring.execute_command("WATCH", "w") == b"OK"
    if change == "set":
        tcp.set("w", "other")
    elif change == "expire":
        tcp.expire("w", 1000)
    elif change == "del":
        tcp.delete("w")
    else:
        getattr(tcp, change)()
    ring.execute_command("MULTI")
    ring.execute_command("SET", "w", "mine")
    assert ring.execute_command("EXEC") is None  # nil: nothing ran
    assert tcp.get("w") != b"mine"


def test_an_untouched_watch_lets_exec_run_and_unwatch_forgets(srv, ring):
    tcp = srv.client()
    ring.execute_command("WATCH", "w", "w2")
    tcp.set("unrelated", "1")
    srv.client(db=1).set("w", "same name, other db")
    ring.execute_command("MULTI")
    ring.execute_command("SET", "w", "mine")
    assert ring.execute_command("EXEC") == [b"OK"]
    ring.execute_command("WATCH", "w")
    ring.execute_command("UNWATCH")
    tcp.set("w", "other")
    ring.execute_command("MULTI")
    ring.execute_command("SET", "w", "again")
    assert ring.execute_command("EXEC") == [b"OK"]
    assert tcp.get("w") == b"again"


def test_a_session_that_ends_forgets_its_transaction(srv, ring):
    ring.execute_command("WATCH", "w")
    ring.execute_command("MULTI")
    ring.execute_command("SET", "q", "queued")
    ring.release_session()
    srv.client().set("w", "changed")           # no watcher is left to abort
    with pytest.raises(ResponseError, match="EXEC without MULTI"):
        ring.execute_command("EXEC")
    assert srv.client().get("q") is None


def test_exec_is_isolated_from_tcp_readers(srv, ring):
    """Each transaction bumps a and b; a TCP reader never sees them differ."""
    tcp = srv.client()
    tcp.mset({"a": 0, "b": 0})
    stop = threading.Event()
    seen: list[tuple] = []

    def read():
        r = srv.client()
        while not stop.is_set():
            seen.append(tuple(r.mget("a", "b")))

    t = threading.Thread(target=read)
    t.start()
    try:
        for _ in range(300):
            p = ring.pipeline(transaction=True)
            p.execute_command("INCR", "a").execute_command("INCR", "b")
            a, b = p.execute()
            assert a == b
    finally:
        stop.set()
        t.join(30)
    assert seen and all(a == b for a, b in seen), [s for s in seen if s[0] != s[1]][:5]
    assert tcp.mget("a", "b") == [b"300", b"300"]


def test_transaction_pipeline_of_the_python_client(srv, ring):
    p = ring.pipeline(transaction=True)
    p.set("t1", "v").get("t1").delete("t1").execute_command("INCR", "t2").get("missing")
    assert p.execute() == [True, b"v", 1, 1, None]
    ring.execute_command("WATCH", "t2")
    srv.client().incr("t2")
    p = ring.pipeline(transaction=True)
    p.execute_command("INCR", "t2")
    with pytest.raises(WatchError):
        p.execute()
    assert srv.client().get("t2") == b"2"


@pytest.mark.parametrize("ring_servers", [DIRECTORY], indirect=True)
def test_acl_holds_inside_transactions(ring_servers):
    """MULTI is checked against the session's user, and each queued command when it runs."""
    from cxl_ring import group_segments, make_view

    args = {k: v for k, v in SMALL.items() if k != "channels"}
    srv = ring_servers.server({**args, "groups": "2,2", "acl_users": "app,tx"},
                              region=ring_servers.region(DIRECTORY),
                              conf=["--user", "app", "on", "nopass", "~*", "+get", "+set",
                                    "--user", "tx", "on", "nopass", "~app:*", "+@transaction",
                                    "+set", "+get"])
    views = []
    for g in (0, 1):
        view = ring_servers.keep(f"{srv.region[:-2]}.g{g}")
        make_view(srv.region, view, group_segments(g))
        views.append(view)
    with RingClient(views[0], timeout=20) as app, RingClient(views[1], timeout=20) as tx:
        with pytest.raises(NoPermissionError, match="'multi'"):
            app.execute_command("MULTI")
        assert tx.execute_command("MULTI") == b"OK"
        tx.execute_command("SET", "app:1", "ok")
        tx.execute_command("SET", "other", "no")
        out = tx.execute_command("EXEC")
        assert out[0] == b"OK" and isinstance(out[1], ResponseError) and "NOPERM" in str(out[1])
    assert srv.client().get("app:1") == b"ok" and srv.client().get("other") is None


def test_client_setname_getname_and_id_are_the_sessions(srv, ring):
    """CLIENT SETNAME/GETNAME/ID as on a connection: per session, a new session starts with no
    name and a new id; the other CLIENT subcommands stay refused."""
    assert ring.execute_command("CLIENT", "GETNAME") is None
    assert ring.execute_command("CLIENT", "SETNAME", "worker-1") == b"OK"
    assert ring.execute_command("client", "getname") == b"worker-1"
    cid = ring.execute_command("CLIENT", "ID")
    assert isinstance(cid, int) and cid > 0
    with pytest.raises(ResponseError, match="cannot contain spaces"):
        ring.execute_command("CLIENT", "SETNAME", "a b")
    with pytest.raises(ResponseError, match="wrong number of arguments"):
        ring.execute_command("CLIENT", "SETNAME")
    with pytest.raises(ResponseError, match="cannot run from the ring"):
        ring.execute_command("CLIENT", "LIST")
    assert ring.execute_command("CLIENT", "GETNAME") == b"worker-1"
    other = {}

    def elsewhere() -> None:                    # another thread: another session
        other["name"] = ring.execute_command("CLIENT", "GETNAME")
        other["id"] = ring.execute_command("CLIENT", "ID")

    t = threading.Thread(target=elsewhere)
    t.start()
    t.join(60)
    assert other["name"] is None and other["id"] != cid
    ring.release_session()
    assert ring.execute_command("CLIENT", "GETNAME") is None
    assert ring.execute_command("CLIENT", "ID") not in (cid, other["id"])
