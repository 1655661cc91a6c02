"""Access control (docs/ring-protocol.md section 12): a ring session runs as a Redis ACL user,
and Redis checks each of its requests as it checks a TCP client's.

Each server here has two channel groups: group 0 is given the user "app" (acl_users app,-),
group 1 none. A client is put in a group by a view of the region (the group's segments only),
as a guest granted those devices would be. What a refused request did not do is checked from
outside the ring: over TCP, with Redis's own ACL LOG and keys."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cxl_ring import (
    AuthenticationError,
    NoPermissionError,
    ResponseError,
    RingClient,
    group_segments,
    make_view,
)
from ringharness import DIRECTORY, REPO, ServerFailed, free_port, wait_for

pytestmark = pytest.mark.timeout(120)

SMALL = {"req_ring": "256k", "resp_ring": "256k", "max_value": 65536}
APP = ["--user", "app", "on", "nopass", "~app:*", "+get", "+set", "+del", "+ping", "+echo",
       "+strlen"]
PASSWORD = "s3cret-of-the-lab"


def _server(ring_servers, requirepass: bool = True, **args):
    srv = ring_servers.server({**SMALL, "groups": "2,2", "acl_users": "app,-", **args},
                              region=ring_servers.region(DIRECTORY), conf=APP)
    if requirepass:
        srv.client().config_set("requirepass", PASSWORD)
        srv.password = PASSWORD         # the harness's own TCP connections
    return srv


def _client(ring_servers, srv, group: int) -> RingClient:
    view = ring_servers.keep(f"{srv.region[:-2]}.g{group}")
    make_view(srv.region, view, group_segments(group))
    return RingClient(view, timeout=20)


def _log(srv) -> list[dict]:
    """Redis's ACL LOG, newest first: {field: bytes value}."""
    def val(v):
        return v.encode() if isinstance(v, str) else v
    return [{k.decode() if isinstance(k, bytes) else k: val(v) for k, v in e.items()}
            for e in srv.client().acl_log()]


def test_requirepass_refuses_a_session_without_credentials(ring_servers):
    """Group 1 has no user and "default" needs a password: every request is NOAUTH, and
    the data is untouched (seen over TCP)."""
    srv = _server(ring_servers)
    tcp = srv.client()
    tcp.set("victim", "kept")
    with _client(ring_servers, srv, 1) as c:
        for call in (lambda: c.get(b"victim"), lambda: c.set(b"victim", b"overwritten"),
                     lambda: c.delete(b"victim"), lambda: c.execute_command("FLUSHALL"),
                     lambda: c.execute_command("KEYS", "*"),
                     lambda: c.execute_command("CONFIG", "SET", "requirepass", "")):
            with pytest.raises(AuthenticationError, match="^NOAUTH"):
                call()
        assert c.ping()                 # the transport's own PING is no Redis command
    assert tcp.get("victim") == b"kept" and tcp.dbsize() == 1
    assert tcp.config_get("requirepass")["requirepass"] == PASSWORD
    assert int(srv.info()["acl_denied"]) == 6


def test_auth_through_the_ring_is_checked_by_redis(ring_servers):
    """CMD AUTH: a wrong password is WRONGPASS and an ACL LOG entry; the right one gives the
    session its user, for this session only."""
    srv = _server(ring_servers)
    with _client(ring_servers, srv, 1) as c:
        with pytest.raises(AuthenticationError, match="^WRONGPASS"):
            c.execute_command("AUTH", "guess")
        assert [e["reason"] for e in _log(srv)] == [b"auth"]
        with pytest.raises(AuthenticationError, match="^NOAUTH"):
            c.get(b"k")
        assert c.execute_command("AUTH", PASSWORD) == b"OK"
        assert c.set(b"k", b"v") and c.get(b"k") == b"v"
        assert c.execute_command("DBSIZE") == 1
        c.release_session()             # a new session starts without a user again
        with pytest.raises(AuthenticationError, match="^NOAUTH"):
            c.get(b"k")
        assert c.execute_command("AUTH", "app", "any") == b"OK"   # app is nopass
        with pytest.raises(NoPermissionError):
            c.get(b"k")


def test_a_group_user_gets_what_its_acl_allows(ring_servers):
    """Group 0 runs as app (~app:* and a few commands): its keys and commands run, the rest
    is NOPERM through every op, logged by Redis under app, and nothing changed."""
    srv = _server(ring_servers)
    tcp = srv.client()
    tcp.set("other", "kept")
    with _client(ring_servers, srv, 0) as c:
        assert c.set(b"app:1", b"v") and c.get(b"app:1") == b"v"
        assert c.execute_command("STRLEN", "app:1") == 1
        assert c.execute_command("ECHO", "hi") == b"hi"
        assert c.delete(b"app:1") == 1
        refused = {
            "GET other": lambda: c.get(b"other"),
            "SET other": lambda: c.set(b"other", b"x"),
            "DEL other": lambda: c.delete(b"other"),
            "CMD STRLEN other": lambda: c.execute_command("STRLEN", "other"),
            "CMD FLUSHALL": lambda: c.execute_command("FLUSHALL"),
            "CMD KEYS": lambda: c.execute_command("KEYS", "*"),
        }
        for what, call in refused.items():
            with pytest.raises(NoPermissionError, match="^NOPERM") as e:
                call()
            assert isinstance(e.value, ResponseError), what
    assert tcp.get("other") == b"kept" and tcp.dbsize() == 1
    log = _log(srv)
    assert {(e["reason"], e["object"]) for e in log} >= {
        (b"key", b"other"), (b"command", b"flushall"), (b"command", b"keys")}
    # The fast ops' entries name the session's user (Redis 7.0 names the CMD's own client).
    assert (b"app", b"other") in {(e["username"], e["object"]) for e in log}
    assert int(srv.info()["acl_denied"]) == len(refused)


def test_acl_changes_apply_to_the_next_request(ring_servers):
    """ACL SETUSER takes effect from the session's next request; ACL DELUSER leaves the
    session without a user."""
    srv = _server(ring_servers)
    tcp = srv.client()
    with _client(ring_servers, srv, 0) as c:
        with pytest.raises(NoPermissionError):
            c.execute_command("DBSIZE")
        tcp.execute_command("ACL", "SETUSER", "app", "+dbsize")
        assert c.execute_command("DBSIZE") == 0
        tcp.execute_command("ACL", "SETUSER", "app", "-get")
        with pytest.raises(NoPermissionError, match="'get' command"):
            c.get(b"app:1")
        tcp.execute_command("ACL", "DELUSER", "app")
        with pytest.raises(AuthenticationError, match="^NOAUTH"):
            c.execute_command("DBSIZE")
        with pytest.raises(AuthenticationError, match="^NOAUTH"):
            c.execute_command("DBSIZE")


def test_without_a_password_sessions_run_as_default(ring_servers):
    """No requirepass: a session of a group without a user runs as "default", as a TCP
    client does, with default's own ACL."""
    srv = _server(ring_servers, requirepass=False)
    tcp = srv.client()
    with _client(ring_servers, srv, 1) as c:
        assert c.set(b"k", b"v") and c.execute_command("DBSIZE") == 1
        tcp.execute_command("ACL", "SETUSER", "default", "-flushall")
        with pytest.raises(NoPermissionError):
            c.execute_command("FLUSHALL")
        tcp.execute_command("ACL", "SETUSER", "default", "off")
        c.release_session()             # off: a new session has no user, as TCP has none
        with pytest.raises(AuthenticationError, match="^NOAUTH"):
            c.get(b"k")
    assert tcp.dbsize() == 1


@pytest.mark.parametrize("value, said", [
    ("app,-,extra", "acl_users names 3 users but the region has 2 channel groups"),
    ("app,,x", "bad value 'app,,x' for argument 'acl_users'"),
    ("x" * 200, "a user name longer than 127 bytes"),
])
def test_bad_acl_users_are_refused_by_name(ring_servers, value, said):
    srv = ring_servers.server({**SMALL, "groups": "2,2", "acl_users": value}, start=False)
    with pytest.raises(ServerFailed):
        srv.start()
    assert said in srv.log_text()


def test_layout_v2_clients_are_checked_too(ring_servers):
    """Layout v2 has no groups: its clients are one session, "default" or none."""
    srv = ring_servers.server({"layout": "v2", "v2_rings": 1, "v2_slots": 64})
    srv.client().config_set("requirepass", PASSWORD)
    srv.password = PASSWORD
    with RingClient(srv.region, timeout=20, layout="v2") as c, pytest.raises(ResponseError):
        c.set(b"k", b"v")
    assert srv.client().dbsize() == 0
    assert int(srv.info()["acl_denied"]) >= 1


def test_the_proxy_does_not_forward_auth(ring_servers):
    """The proxy's connections share its ring session: AUTH would switch them all, so it
    is refused, and every connection keeps the channel's user (here app)."""
    import redis

    srv = _server(ring_servers)
    view = ring_servers.keep(f"{srv.region[:-2]}.g0")
    make_view(srv.region, view, group_segments(0))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxl_ring.cli", "proxy", "--path", view,
         "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO / "client")})
    try:
        r = redis.Redis(port=port, socket_timeout=20, protocol=2)
        wait_for(lambda: _answers(r), "the proxy to listen", 30)
        assert r.set("app:1", "v") and r.get("app:1") == b"v"
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.flushall()
        with pytest.raises(redis.exceptions.ResponseError, match="does not forward AUTH"):
            r.execute_command("AUTH", PASSWORD)
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.execute_command("KEYS", "*")   # still app: the AUTH changed nothing
    finally:
        proc.terminate()
        proc.wait(20)
    assert srv.client().dbsize() == 1


def _answers(r) -> bool:
    import redis

    try:
        return r.ping()
    except redis.exceptions.ConnectionError:
        return False


def test_the_proxy_refuses_what_its_shared_session_would_keep(ring_servers):
    """MULTI, WATCH... are a ring session's (section 13); the proxy's connections share one
    session, so one client's MULTI would queue the others' commands: refused, and another
    connection's SET runs at once."""
    import redis

    srv = ring_servers.server({**SMALL, "groups": "2,2"}, region=ring_servers.region(DIRECTORY))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxl_ring.cli", "proxy", "--path", srv.region,
         "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO / "client")})
    try:
        a = redis.Redis(port=port, socket_timeout=20, protocol=2)
        b = redis.Redis(port=port, socket_timeout=20, protocol=2)
        wait_for(lambda: _answers(a), "the proxy to listen", 30)
        for argv in (["MULTI"], ["WATCH", "k"], ["EXEC"], ["DISCARD"], ["UNWATCH"],
                     ["BLPOP", "q", "0"], ["bzmpop", "0", "1", "z", "MIN"]):
            with pytest.raises(redis.exceptions.ResponseError, match="does not forward"):
                a.execute_command(*argv)
        assert b.set("k", "now") and srv.client().get("k") == b"now"
    finally:
        proc.terminate()
        proc.wait(20)
