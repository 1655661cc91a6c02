"""Pub/sub over the ring (docs/ring-protocol.md section 15), shaped like redis-py's PubSub.

    with client.pubsub() as p:
        p.subscribe("news")
        p.psubscribe("sport:*")
        for message in p.listen():
            print(message["channel"], message["data"])

A PubSub claims a ring session of its own (a subscribed session receives pushes, which no
other request may be mixed with). Each (un)subscribe request is answered with Redis's
confirmations, which become messages of type "subscribe", "psubscribe"... in order; every
message Redis delivers to the driver's subscription for those names then comes as a push
(status PUSH, id 0) on the session: "message", "pmessage" or "smessage". Messages are dicts
as redis-py makes them: ``{"type", "pattern", "channel", "data"}``.

While it waits, a PubSub blocks the way a session blocks for its responses (section 8): the
server wakes it after a push as after a response. Served on Redis 7 and Valkey; Redis 8
refuses the family, and the error says so.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from . import protocol as P
from .backoff import Backoff
from .channel import Session
from .exceptions import ProtocolError, ResponseError, RingTimeoutError
from .resp import Incomplete, decode_strings, parse_reply

SUBSCRIBE_WORDS = {b"subscribe", b"psubscribe", b"ssubscribe", b"unsubscribe",
                   b"punsubscribe", b"sunsubscribe"}
MESSAGE_WORDS = {b"message", b"pmessage", b"smessage"}


def parse_messages(payload: bytes) -> list[Any]:
    """Every RESP2 reply in a payload (a reply to a subscribe holds one per name)."""
    out, pos = [], 0
    while pos < len(payload):
        try:
            value, pos = parse_reply(payload, pos)
        except Incomplete:
            raise ProtocolError("truncated pub/sub reply") from None
        out.append(value)
    return out


def as_message(value: Any) -> dict:
    """A confirmation or a message array as redis-py's message dict; an error reply raises."""
    if isinstance(value, ResponseError):
        raise value
    if not isinstance(value, list) or not value or not isinstance(value[0], bytes):
        raise ProtocolError(f"not a pub/sub message: {value!r:.80}")
    kind = value[0].lower()
    if kind == b"pmessage" and len(value) == 4:
        return {"type": "pmessage", "pattern": value[1], "channel": value[2], "data": value[3]}
    if (kind in MESSAGE_WORDS or kind in SUBSCRIBE_WORDS) and len(value) == 3:
        return {"type": kind.decode(), "pattern": None, "channel": value[1], "data": value[2]}
    raise ProtocolError(f"not a pub/sub message: {value!r:.80}")


class PubSub:
    """A subscribed ring session (``RingClient.pubsub()``).

    ignore_subscribe_messages: leave the confirmations out of get_message() and listen().
    """

    def __init__(self, transport, encode, ignore_subscribe_messages: bool = False,
                 decode: tuple[str, str] | None = None) -> None:
        self._transport = transport
        self._enc = encode
        self._decode = decode                # the client's (encoding, errors) with
        self.ignore_subscribe_messages = ignore_subscribe_messages  # decode_responses
        self._session: Session | None = None
        self._queue: deque[dict] = deque()
        self.channels: set[bytes] = set()
        self.patterns: set[bytes] = set()
        self.shard_channels: set[bytes] = set()

    # -- the session

    def _claim(self) -> Session:
        s = self._session
        if s is not None and not s.broken and s.u64 is not None:
            return s
        if s is not None:
            self.close()                     # broken, or released by RingClient.close()
        s = self._transport.claim_own()
        s.subscribed = True                  # before anything is sent: pushes may follow
        self._session = s
        return s

    @property
    def subscribed(self) -> bool:
        """Subscribed to a channel, a pattern or a shard channel."""
        return bool(self.channels or self.patterns or self.shard_channels)

    def close(self) -> None:
        """Release the session: the server ends its subscriptions (section 15)."""
        s, self._session = self._session, None
        self.channels.clear()
        self.patterns.clear()
        self.shard_channels.clear()
        if s is not None:
            self._transport.release_own(s)

    def __enter__(self) -> PubSub:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests

    def _command(self, name: bytes, names: tuple) -> None:
        """Send one (un)subscribe request and queue its confirmations after the pushes that
        came before its answer, in ring order."""
        s = self._claim()
        args = (name, *(self._enc(n) for n in names))
        s.check_ready()
        s.check_idle()                       # pushes already there come first
        self._take_pushes(s)
        rid = s.next_id
        s.next_id = rid + 1
        s.send_raw(P.encode_request(P.OP_CMD, args, rid))
        backoff = Backoff()
        timeout = self._transport.timeout
        refused = None
        answered = False
        while not answered:
            got = s._read(1, inline=True)
            for r in got:                    # in ring order: pushes before and after it
                if r.status == P.ST_PUSH:
                    self._queue_payload(r.payload)
                elif r.id != rid:
                    s.broken = True
                    raise ProtocolError(f"channel {s.index}: response id {r.id}, expected {rid}")
                else:
                    answered = True
                    refused = self._queue_answer(name, r)
            if got:
                backoff.reset()
                continue
            now = time.monotonic()
            s.check_alive(now, 1)
            if s._pause(backoff, now) > timeout:
                s.broken = True
                raise RingTimeoutError(f"no answer to {name.decode()} for {timeout:g} s on "
                                       f"channel {s.index} (outcome unknown)")
        if refused is not None:
            raise refused                    # NOPERM, Redis 8's refusal...: nothing subscribed

    def _queue_answer(self, name: bytes, r: P.Response) -> ResponseError | None:
        """Queue the confirmations of an answer; the error it carries instead, if any."""
        if r.status != P.ST_OK:
            return ResponseError(f"{name.decode()}: server answered "
                                 f"{P.STATUS_NAMES.get(r.status, r.status)}: "
                                 f"{r.payload.decode('utf-8', 'replace')}")
        values = parse_messages(r.payload)
        if len(values) == 1 and isinstance(values[0], ResponseError):
            return values[0]
        for v in values:
            self._queue_message(as_message(v))
        return None

    def subscribe(self, *channels) -> None:
        self._command(b"SUBSCRIBE", channels)

    def psubscribe(self, *patterns) -> None:
        self._command(b"PSUBSCRIBE", patterns)

    def ssubscribe(self, *channels) -> None:
        self._command(b"SSUBSCRIBE", channels)

    def unsubscribe(self, *channels) -> None:
        self._command(b"UNSUBSCRIBE", channels)

    def punsubscribe(self, *patterns) -> None:
        self._command(b"PUNSUBSCRIBE", patterns)

    def sunsubscribe(self, *channels) -> None:
        self._command(b"SUNSUBSCRIBE", channels)

    # -- messages

    def _queue_message(self, m: dict) -> None:
        kind, name = m["type"], m["channel"]
        if self._decode:                     # decode_responses: names and data as str
            m = {k: decode_strings(v, *self._decode) if isinstance(v, bytes) else v
                 for k, v in m.items()}
        book = {"subscribe": self.channels, "unsubscribe": self.channels,
                "psubscribe": self.patterns, "punsubscribe": self.patterns,
                "ssubscribe": self.shard_channels,
                "sunsubscribe": self.shard_channels}.get(kind)
        if book is not None and name is not None:
            (book.discard if kind.endswith("unsubscribe") else book.add)(name)
        self._queue.append(m)

    def _queue_payload(self, payload: bytes) -> None:
        values = parse_messages(payload)
        if len(values) == 1 and isinstance(values[0], ResponseError):
            # The server lost its own subscription (section 15): ours are gone with it.
            self.channels.clear()
            self.patterns.clear()
            self.shard_channels.clear()
            self._queue.append({"type": "error", "pattern": None, "channel": None,
                                "data": values[0]})
            return
        for v in values:
            self._queue_message(as_message(v))

    def _take_pushes(self, s: Session) -> None:
        if s.pushes:
            pushes, s.pushes = s.pushes, []
            for payload in pushes:
                self._queue_payload(payload)

    def _next(self, ignore: bool) -> dict | None:
        while self._queue:
            m = self._queue.popleft()
            if m["type"] == "error":
                raise m["data"]
            if ignore and m["type"] in ("subscribe", "psubscribe", "ssubscribe", "unsubscribe",
                                        "punsubscribe", "sunsubscribe"):
                continue
            return m
        return None

    def get_message(self, timeout: float = 0.0,
                    ignore_subscribe_messages: bool | None = None) -> dict | None:
        """The next message, waiting up to ``timeout`` seconds for one; None when none came.
        A lost subscription (the server's connection to Redis closed) raises ResponseError."""
        ignore = (self.ignore_subscribe_messages if ignore_subscribe_messages is None
                  else ignore_subscribe_messages)
        m = self._next(ignore)
        if m is not None or self._session is None:
            return m
        s = self._session
        deadline = time.monotonic() + timeout
        backoff = Backoff()
        while True:
            s.check_idle()                   # a subscribed session: takes the pushes
            self._take_pushes(s)
            m = self._next(ignore)
            if m is not None:
                return m
            now = time.monotonic()
            if now >= deadline:
                return None
            s.check_alive(now, 0)
            s._pause(backoff, now)

    def listen(self) -> Iterator[dict]:
        """Messages as they come, while subscribed (the confirmations included, unless
        ignore_subscribe_messages)."""
        while self.subscribed or self._queue:
            m = self.get_message(timeout=1.0)
            if m is not None:
                yield m
