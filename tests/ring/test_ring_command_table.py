"""Every command of the server's own table, sent through the ring as a CMD, against the ASan+UBSan
build: no command kills the server (issue 8).

A CMD runs on the driver's poll thread through RedisModule_Call, on a client that has no
connection and must not block. What cannot run like that (COMMAND INFO flags `noscript`, module
commands flagged `blocking`, and the driver's short deny list) gets an error reply that says
why; everything else runs. The test asks the server for its table (COMMAND for names, arity,
flags and key positions, COMMAND DOCS for each command's group, subcommands of containers
such as CLIENT, CONFIG, OBJECT, XINFO and CXLRING included), builds simple arguments (keys of
the right type exist), sends each command once and checks after each one that the server is
alive and answers over TCP; at the end that the sanitizers stayed silent. A failure names the
command that was sent last.
"""

from __future__ import annotations

import pytest
import redis
import ringharness
from rawpeer import ST_OK, ST_TOO_LARGE, Region
from ringharness import MODULE, MODULE_ASAN

pytestmark = pytest.mark.timeout(300)    # a hang bound only; the run takes a few seconds

GEOMETRY = {"channels": 2, "req_ring": "256k", "resp_ring": "256k", "max_value": 65536}
MAX_COMMANDS = 1000                      # Redis 7 has ~350 leaves, Valkey/Redis 8 ~450
HANG_S = 30.0                            # per command: only a hang gets this far
REFUSED = b"cannot run from the ring"
# driver/exec.c DENIED: what flags cannot say. The pub/sub family (ring-protocol.md 15) is
# served by the driver (pubsub.c) on Redis 7 and Valkey, and refused on Redis 8.
DENIED_BY_NAME = {"migrate"}
PUBSUB = {"subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe",
          "sunsubscribe"}


def pubsub_served(srv) -> bool:
    info = srv.client().info("server")
    return (info.get("server_name", "redis") == "valkey"
            or int(str(info["redis_version"]).split(".")[0]) < 8)

# One key per data type, named after the COMMAND DOCS group that works on it.
KEYS = {"string": b"ct:string", "bitmap": b"ct:string", "hyperloglog": b"ct:hll",
        "list": b"ct:list", "hash": b"ct:hash", "set": b"ct:set", "sorted-set": b"ct:zset",
        "geo": b"ct:geo", "stream": b"ct:stream"}


def _asan_server(ring_servers):
    """The ASan build; the plain one for a server that cannot run it (Valkey: no sanitizer
    then, but every other check holds)."""
    module = MODULE if getattr(ringharness, "NO_ASAN", "") else MODULE_ASAN
    if not module.exists():
        pytest.skip(f"{module} is not built (make build)")
    return ring_servers.server(GEOMETRY, module=module)


def _raw(srv) -> redis.Redis:
    """A TCP client that returns replies as they are (no redis-py parsing of COMMAND)."""
    c = srv.tcp_client()
    c.response_callbacks.clear()
    return c


def _text(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _pairs(x):
    """A map reply, whether it came as a RESP3 map or a RESP2 flat array."""
    return x.items() if isinstance(x, dict) else zip(x[0::2], x[1::2])


def _docs_groups(raw_docs) -> dict[str, str]:
    """COMMAND DOCS (name -> {field: value}) -> {"client|list": "connection"}."""
    groups = {}
    for name, fields in _pairs(raw_docs):
        doc = {_text(k): v for k, v in _pairs(fields)}
        full = _text(name).lower()
        groups[full] = _text(doc.get("group", "generic"))
        if doc.get("subcommands"):
            groups.update(_docs_groups(doc["subcommands"]))
    return groups


def command_table(srv) -> list[dict]:
    """Every leaf of COMMAND: a command, or a container's subcommand."""
    raw = _raw(srv)
    groups = _docs_groups(raw.execute_command("COMMAND", "DOCS"))
    leaves = []

    def walk(entries):
        for e in entries:
            full = _text(e[0]).lower()
            subs = e[9] if len(e) > 9 else []
            if subs:
                walk(subs)
                continue
            leaves.append({"name": full, "arity": int(e[1]),
                           "flags": {_text(f).lower() for f in e[2]},
                           "first": int(e[3]), "last": int(e[4]), "step": int(e[5]),
                           "group": groups.get(full, "generic")})

    walk(raw.execute_command("COMMAND"))
    return sorted(leaves, key=lambda c: c["name"])


def build_argvs(cmd: dict) -> list[list[bytes]]:
    """One argv for a fixed arity; the fewest arguments and one more for a variable one (module
    commands say -1 and count their own arguments: CXLRING.RESET 1)."""
    words = max(1, cmd["name"].count("|") + 1)
    n = max(abs(cmd["arity"]), words)
    return [build_argv(cmd, n)] + ([build_argv(cmd, n + 1)] if cmd["arity"] < 0 else [])


def build_argv(cmd: dict, n: int) -> list[bytes]:
    """The words of the name, then "1" up to n words; keys where the legacy key range says
    (first, last, step), of the type the command's group works on."""
    words = [w.encode() for w in cmd["name"].split("|")]
    argv = words + [b"1"] * (n - len(words))
    first, last, step = cmd["first"], cmd["last"], cmd["step"]
    if first > 0 and step > 0:
        end = last if last >= 0 else n + last
        for i in range(first, min(end, n - 1) + 1, step):
            argv[i] = KEYS.get(cmd["group"], b"ct:string")
    return argv


# Connection commands the driver answers itself for the session: AUTH (handed to Redis),
# SELECT, MULTI/EXEC/DISCARD, WATCH/UNWATCH; after each the walk puts the session back. And the
# blocking list and sorted-set commands, which block the session (the walk's timeout is 1 s),
# and CLIENT SETNAME/GETNAME/ID, kept per session.
DRIVER_ANSWERS = {"auth", "select", "multi", "exec", "discard", "watch", "unwatch",
                  "blpop", "brpop", "brpoplpush", "blmove", "blmpop", "bzpopmin", "bzpopmax",
                  "bzmpop", "wait", "client|setname", "client|getname", "client|id"}


def expect_refused(cmd: dict, pubsub: bool = True) -> bool:
    flags = cmd["flags"]
    if cmd["name"] in DRIVER_ANSWERS or (pubsub and cmd["name"] in PUBSUB):
        return False    # noscript, but the driver answers it (ring-protocol.md 12 to 15)
    return ("noscript" in flags or ("module" in flags and "blocking" in flags)
            or cmd["name"] in DENIED_BY_NAME or cmd["name"] in PUBSUB)


def make_keys(srv) -> None:
    p = srv.tcp_client().pipeline(transaction=False)
    p.delete(*set(KEYS.values()))
    p.set("ct:string", "1")
    p.rpush("ct:list", "1", "2", "3")
    p.hset("ct:hash", "1", "1")
    p.sadd("ct:set", "1", "2")
    p.zadd("ct:zset", {"1": 1})
    p.geoadd("ct:geo", (13.361389, 38.115556, "1"))
    p.xadd("ct:stream", {"1": "1"}, id="1-1")
    p.xgroup_create("ct:stream", "1", id="0")
    p.pfadd("ct:hll", "1")
    p.execute()


class Checked:
    """A claimed channel and the checks run after every command."""

    def __init__(self, srv):
        self.srv = srv
        self.region = Region(srv.region)
        self.ch = self.region.channel(0)
        self.ch.claim()
        self.ch.start_heartbeat()
        self.tcp = srv.tcp_client()
        self.sent: list[list[bytes]] = []

    def where(self) -> str:
        return (f"after CMD {self.sent[-1]!r} ({len(self.sent)} sent; previous "
                f"{self.sent[-2:-1]!r})\n--- stderr\n{self.srv.stderr_text()[-3000:]}"
                f"\n--- log\n{self.srv.log_text()[-1500:]}")

    def cmd(self, argv: list[bytes]) -> tuple[int, bytes]:
        self.sent.append(argv)
        try:
            status, payload = self.ch.request(4, argv, timeout=HANG_S)
        except Exception as e:   # noqa: BLE001 - reported with the command that caused it
            pytest.fail(f"no answer ({e!r}); server alive: {self.srv.alive()}; {self.where()}")
        assert self.srv.alive(), f"redis-server died {self.where()}"
        try:
            assert self.tcp.ping()
        except redis.RedisError as e:
            pytest.fail(f"TCP PING failed ({e!r}) {self.where()}")
        return status, payload

    def sanitizers_silent(self) -> None:
        log = self.srv.stderr_text()
        assert "AddressSanitizer" not in log and "runtime error" not in log, \
            f"sanitizer report; commands sent: {len(self.sent)}, last {self.sent[-1:]!r}\n" \
            + log[-5000:]

    def close(self) -> None:
        self.ch.release()
        self.region.close()


def test_every_command_of_the_table_through_cmd(ring_servers):
    srv = _asan_server(ring_servers)
    table = command_table(srv)
    names = {c["name"] for c in table}
    # the containers and our own commands are in the walk
    assert {"client|list", "config|get", "object|encoding", "xinfo|stream",
            "cxlring.info", "cxlring.reset", "debug", "shutdown"} <= names, sorted(names)
    assert len(table) <= MAX_COMMANDS, f"{len(table)} commands: raise MAX_COMMANDS knowingly"
    make_keys(srv)
    run = Checked(srv)
    wrong = []
    pubsub = pubsub_served(srv)
    try:
        for cmd in table:
            for argv in build_argvs(cmd):
                status, payload = run.cmd(argv)
                refused = (status == ST_OK and payload.startswith(b"-ERR '")
                           and REFUSED in payload)
                if (expect_refused(cmd, pubsub) != refused or
                        status not in (ST_OK, ST_TOO_LARGE)):
                    wrong.append((argv, sorted(cmd["flags"]), status, payload[:120]))
                if cmd["name"] in DRIVER_ANSWERS | PUBSUB:
                    # back to db 0, nothing queued, watched or subscribed
                    for reset in ([b"DISCARD"], [b"UNWATCH"], [b"SELECT", b"0"],
                                  [b"UNSUBSCRIBE"], [b"PUNSUBSCRIBE"], [b"SUNSUBSCRIBE"]):
                        run.cmd(reset)
                if "write" in cmd["flags"]:
                    make_keys(srv)       # FLUSHALL, RENAME, DEL...: keys of each type again
        run.sanitizers_silent()
        assert not wrong, "refused or not as the flags say:\n" + "\n".join(map(repr, wrong))
        # the server and the ring still work
        assert run.ch.set(b"after", b"all") == (ST_OK, b"")
        assert srv.client().get("after") == b"all"
    finally:
        run.close()


# Commands that cannot run from the ring, each the way an attacker would send it. Refused on
# every server: the module's own blocking command, what needs a connection or the event loop.
ALWAYS_REFUSED = [
    [b"CXLRING.RESET", b"1"],             # issue 8: this one aborted redis-server
    [b"cXlRinG.ReSeT", b"0"],
    [b"MONITOR"],
    [b"CLIENT", b"PAUSE", b"100000"], [b"CLIENT", b"KILL", b"ID", b"1"],
    [b"CLIENT", b"REPLY", b"OFF"],
    [b"DEBUG", b"SLEEP", b"0"], [b"DEBUG", b"SEGFAULT"],
    [b"SHUTDOWN", b"NOSAVE"], [b"SAVE"], [b"FAILOVER"], [b"REPLICAOF", b"127.0.0.1", b"1"],
    [b"CONFIG", b"SET", b"maxmemory", b"1"], [b"MODULE", b"UNLOAD", b"cxl_ring"],
    [b"EVAL", b"return redis.call('ping')", b"0"], [b"FUNCTION", b"FLUSH"],
    [b"ACL", b"SETUSER", b"x"],
]
# Not refused although flagged noscript (Redis 7): BLPOP and kin block the session
# (ring-protocol.md section 14), here until their 0.2 s timeout; WAIT too
# (tests/ring/test_ring_wait.py).
AS_FLAGGED = [
    [b"BLPOP", b"k", b"0.2"], [b"BRPOPLPUSH", b"a", b"b", b"0.2"], [b"BZPOPMIN", b"z", b"0.2"],
]


def flags_of(srv, argv: list[bytes]) -> dict:
    """The COMMAND INFO entry that judges argv (a container's subcommand), as in the table."""
    raw = _raw(srv)
    name = _text(argv[0]).lower()
    (entry,) = raw.execute_command("COMMAND", "INFO", name)
    if len(entry) > 9 and entry[9]:
        name = f"{name}|{_text(argv[1]).lower()}"
        (entry,) = raw.execute_command("COMMAND", "INFO", name)
    return {"name": name, "flags": {_text(f).lower() for f in entry[2]}}


def test_commands_that_cannot_run_from_the_ring_are_refused(ring_servers):
    srv = _asan_server(ring_servers)
    run = Checked(srv)
    try:
        migrate = [b"MIGRATE", b"127.0.0.1", str(srv.port).encode(), b"k", b"0", b"100000"]
        for argv in ALWAYS_REFUSED + AS_FLAGGED + [migrate]:
            status, payload = run.cmd(argv)
            refused = status == ST_OK and payload.startswith(b"-ERR '") and REFUSED in payload
            if argv in AS_FLAGGED:
                assert refused == expect_refused(flags_of(srv, argv)), (argv, payload)
                assert status == ST_OK, (argv, payload)
                continue
            assert refused, (argv, payload)
            assert payload.endswith(b"\r\n") and payload.count(b"\r\n") == 1, (argv, payload)
        # nothing happened: no pause, no config change, the module still loaded
        assert srv.client().config_get("maxmemory")["maxmemory"] == "0"
        assert b"cxl_ring" in repr(srv.client().module_list()).encode()
        # the blocking list commands block the session until their timeout, then answer nil
        assert run.cmd([b"BLMPOP", b"0.2", b"1", b"empty", b"LEFT"]) == (ST_OK, b"*-1\r\n")
        # CXLRING.INFO is harmless from the ring; CXLRING.RESET still works over a connection
        status, payload = run.cmd([b"CXLRING.INFO", b"1"])
        assert status == ST_OK and payload.startswith(b"*"), payload
        assert srv.client().execute_command("CXLRING.RESET", 1) in (b"OK", "OK", True)
        assert run.ch.ping() == (ST_OK, b"")
        run.sanitizers_silent()
    finally:
        run.close()


def test_refusal_text_is_one_safe_line(ring_servers):
    """The refused name comes from the client: control bytes never reach the reply line."""
    srv = ring_servers.server(GEOMETRY)
    run = Checked(srv)
    try:
        status, payload = run.cmd([b"CLIENT", b"PAUSE\r\n+OK"])
        # not a subcommand: Redis answers unknown subcommand, as over TCP
        assert status == ST_OK and payload.startswith(b"-ERR"), payload
        assert payload.count(b"\r\n") == 1, payload
        status, payload = run.cmd([b"CLIENT", b"x" * 80])         # too long to be checked
        assert status == ST_OK and REFUSED in payload and payload.count(b"\r\n") == 1, payload
    finally:
        run.close()


def test_without_command_info_every_cmd_is_refused(ring_servers):
    """COMMAND renamed away: the flags cannot be read, so CMD fails closed (GET/SET still work)."""
    srv = ring_servers.server(GEOMETRY, conf=["--rename-command", "COMMAND", ""])
    run = Checked(srv)
    try:
        for argv in ([b"GET", b"k"], [b"CXLRING.RESET", b"1"], [b"CLIENT", b"LIST"]):
            status, payload = run.cmd(argv)
            assert status == ST_OK and REFUSED in payload and b"checked" in payload, payload
        assert run.ch.set(b"k", b"v") == (ST_OK, b"")
        assert run.ch.get(b"k") == (ST_OK, b"v")
    finally:
        run.close()
