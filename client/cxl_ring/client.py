"""RingClient and Pipeline: a redis-py shaped client over the cxl_ring shared-memory rings.

Layers (like redis-py's): protocol.py frames bytes, session.py holds a channel (claim, lease,
liveness), channel.py/v2.py move bytes through the rings, resp.py decodes CMD replies, and this
module turns Python arguments into requests and replies into Python values and exceptions.

    with RingClient("/dev/cxl/cxl0") as r:     # a region directory, or one file
        r.set("k", "v", ex=10)
        r.get("k")                       # b"v"
        with r.pipeline() as p:
            for i in range(10_000):
                p.set(f"k{i}", i)
            p.execute()                  # [True, True, ...]

Each thread that uses a client claims its own channel on first use; close() releases them.
"""

from __future__ import annotations

import codecs
import contextlib
import datetime
import threading
from collections.abc import Sequence
from typing import Any, Callable, Optional, Union

from . import protocol as P
from .channel import Session, claim
from .exceptions import (
    CxlRingError,
    DataError,
    LayoutMismatchError,
    OutOfMemoryError,
    ProtocolError,
    RequestTooLargeError,
    ResponseDecodeError,
    ResponseError,
    ServerGoneError,
    UnknownOutcomeError,
    WatchError,
    response_error,
)
from .pubsub import SUBSCRIBE_WORDS, PubSub
from .region import Region
from .resp import decode_one_reply, decode_strings
from .session import SessionLost, check_platform
from .v2 import V2Transport

EncodableT = Union[bytes, bytearray, memoryview, str, int, float]
Callback = Optional[Callable[[Any], Any]]


# ---- Transports ------------------------------------------------------------------------------


class V5Transport:
    """Layout v5: one claimed channel per thread (of the channels this peer may claim);
    requests are (op, args, ttl_ms) tuples."""

    layout = "v5"

    def __init__(self, region: Region, timeout: float) -> None:
        self.region = region
        self.header = region.header()
        self.timeout = timeout
        self.max_value_size = self.header.max_value_size
        self.max_msg_size = self.header.max_msg_size
        self._local = threading.local()
        self._sessions: set[Session] = set()
        self._lock = threading.Lock()
        self._prefer = 0

    def session(self) -> Session:
        s: Session | None = getattr(self._local, "session", None)
        if s is not None and not s.broken:
            return s
        if s is not None:
            self._drop(s)
        with self._lock:
            prefer = self._prefer
            self._prefer += 1
        s = claim(self.region, self.header, self.timeout, prefer % self.header.channel_count)
        with self._lock:
            self._sessions.add(s)
        self._local.session = s
        return s

    def claim_own(self) -> Session:
        """A session of its own (a PubSub's), not a thread's; close() releases it too."""
        s = claim(self.region, self.header, self.timeout)
        with self._lock:
            self._sessions.add(s)
        return s

    def release_own(self, s: Session) -> None:
        with self._lock:
            self._sessions.discard(s)
        s.release()

    def _drop(self, s: Session) -> None:
        s.release()
        with self._lock:
            self._sessions.discard(s)
        self._local.session = None

    def _encode(self, requests: Sequence[tuple[int, tuple, int]], first_id: int) -> list[bytes]:
        max_value, max_msg = self.max_value_size, self.max_msg_size
        msgs = []
        rid = first_id
        encode_get, encode_set, encode_request = P.encode_get, P.encode_set, P.encode_request
        for op, args, ttl in requests:
            if op == 1:  # OP_GET, the hot path
                if len(args[0]) > max_value:
                    raise RequestTooLargeError(
                        f"argument of {len(args[0])} bytes > max_value_size {max_value}")
                msgs.append(encode_get(args[0], rid))
                rid += 1
                continue
            if len(args) > P.MAX_ARGS:
                raise RequestTooLargeError(f"{len(args)} arguments > {P.MAX_ARGS} per request")
            for a in args:
                if len(a) > max_value:
                    raise RequestTooLargeError(
                        f"argument of {len(a)} bytes > max_value_size {max_value}"
                    )
            if op == P.OP_SET:
                m = encode_set(args[0], args[1], rid, ttl)
            else:
                m = encode_request(op, args, rid, ttl)
            if len(m) > max_msg:
                raise RequestTooLargeError(f"request of {len(m)} bytes > max_msg_size {max_msg}")
            msgs.append(m)
            rid += 1
        return msgs

    def execute(self, requests: Sequence[tuple[int, tuple, int]],
                timeout: float | None = None) -> list[P.Response]:
        """Send requests on this thread's channel and collect their responses; a wait
        without progress may last timeout (default: self.timeout)."""
        for attempt in (0, 1):
            s = self.session()
            msgs = self._encode(requests, s.next_id)
            try:
                s.check_ready()
            except SessionLost:
                self._drop(s)
                if attempt:
                    raise
                continue
            except ServerGoneError:
                self._drop(s)
                raise
            first = s.next_id
            s.next_id += len(msgs)
            try:
                return s.transact(msgs, first, timeout or self.timeout)
            except CxlRingError:
                if s.broken:
                    self._drop(s)
                raise
        raise AssertionError("unreachable")

    def get(self, key: bytes) -> tuple[int, bytes]:
        """GET on this thread's channel: (status, payload). The unpipelined fast path."""
        s: Session | None = getattr(self._local, "session", None)
        if s is None or s.broken:
            s = self.session()
        try:
            r = s.get(key, self.timeout)
        except SessionLost:
            self._drop(s)
            r = None
        except CxlRingError:
            if s.broken:
                self._drop(s)
            raise
        if r is None:
            status, _id, payload = self.execute([(P.OP_GET, (key,), 0)])[0]
            return status, payload
        return r

    def set(self, key: bytes, value: bytes, ttl_ms: int = 0) -> tuple[int, bytes]:
        """SET on this thread's channel: (status, payload). The unpipelined fast path."""
        s: Session | None = getattr(self._local, "session", None)
        if s is None or s.broken:
            s = self.session()
        try:
            r = s.set(key, value, ttl_ms, self.timeout)
        except SessionLost:
            self._drop(s)
            r = None
        except CxlRingError:
            if s.broken:
                self._drop(s)
            raise
        if r is None:
            status, _id, payload = self.execute([(P.OP_SET, (key, value), ttl_ms)])[0]
            return status, payload
        return r

    def call(self, op: int, args: tuple, ttl: int, timeout: float | None = None) -> P.Response:
        """One request, one response (timeout: see execute; GET and SET use self.timeout)."""
        if timeout is not None:
            return self.execute([(op, args, ttl)], timeout)[0]
        if op == P.OP_GET:
            status, payload = self.get(args[0])
        elif op == P.OP_SET:
            status, payload = self.set(args[0], args[1], ttl)
        else:
            return self.execute([(op, args, ttl)])[0]
        return P.Response(status, 0, payload)

    def discard_session(self) -> None:
        """Stop using this thread's session (the server broke the protocol on it)."""
        s = getattr(self._local, "session", None)
        if s is not None:
            self._drop(s)

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = list(self._sessions), set()
        for s in sessions:
            s.release()


# ---- Replies ---------------------------------------------------------------------------------


def _error_for(status: int, payload: bytes) -> CxlRingError:
    text = payload.decode("utf-8", "replace")
    if status == P.ST_ERR:
        return response_error(text)
    if status == P.ST_OOM:
        return OutOfMemoryError(text)
    if status == P.ST_TOO_LARGE:
        return RequestTooLargeError(f"server: {text}")
    name = P.STATUS_NAMES.get(status, str(status))
    return ProtocolError(f"server answered {name}: {text}")


def _decode_reply(op: int, r: P.Response, decode: str | None, errors: str) -> Any:
    """A value, or an exception instance for an error reply (the caller raises or collects)."""
    status, payload = r.status, r.payload
    if status == P.ST_OK:
        if op == P.OP_GET:
            if not decode:
                return payload
            try:
                return payload.decode(decode, errors)
            except UnicodeDecodeError as e:
                return ResponseDecodeError.from_unicode_error(e)
        if op == P.OP_CMD:
            try:
                value = decode_one_reply(payload)
            except ProtocolError as e:
                return e
            if isinstance(value, ResponseError) or not decode:
                return value
            try:
                return decode_strings(value, decode, errors)
            except UnicodeDecodeError as e:
                return ResponseDecodeError.from_unicode_error(e)
        if op == P.OP_DEL:
            if len(payload) != P.DEL_COUNT.size:
                return ProtocolError(f"DEL reply of {len(payload)} bytes, expected 8")
            return P.DEL_COUNT.unpack(payload)[0]
        return True  # SET, PING
    if status == P.ST_NOT_FOUND:
        if op == P.OP_GET:
            return None
        return ProtocolError(f"NOT_FOUND in reply to {P.OP_NAMES.get(op, op)}")
    return _error_for(status, payload)


def _set_callback(value: Any) -> Any:
    return value if value is None else (value in (b"OK", "OK") or value)


def _ttl_ms(value: Any, ms_per_unit: int, name: str) -> int:
    """ex (seconds) or px (milliseconds): an int, a float or a timedelta -> a TTL in ms that
    fits the ring's u64 and Redis' signed 64-bit expiry."""
    if isinstance(value, datetime.timedelta):
        ms = value.total_seconds() * 1000
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        ms = value * ms_per_unit
    else:
        raise DataError(f"{name} must be an int, a float or a datetime.timedelta, "
                        f"not {type(value).__name__}")
    if not 1 <= ms < 1 << 62:         # also NaN and infinity
        raise DataError(f"{name} must be a duration of 1 ms to 2**62 ms, not {value!r}")
    return int(ms)


# ---- Commands shared by the client and the pipeline ------------------------------------------


class _Commands:
    encoding = "utf-8"

    def _request(self, op: int, args: tuple, ttl: int, callback: Callback) -> Any:
        raise NotImplementedError

    def _enc(self, value: EncodableT) -> bytes:
        t = type(value)
        if t is bytes:
            return value  # type: ignore[return-value]
        if t is str:
            try:
                return value.encode(self.encoding)  # type: ignore[union-attr]
            except UnicodeEncodeError as e:
                raise DataError(f"cannot encode {value!r} as {self.encoding}: {e.reason}") from None
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise DataError(
                f"invalid input of type {type(value).__name__!r}: convert to bytes, str or a number"
            )
        return repr(value).encode()

    def get(self, name: EncodableT) -> Any:
        """GET name: the value (bytes, or str with decode_responses) or None."""
        return self._request(P.OP_GET, (name if type(name) is bytes else self._enc(name),), 0,
                             None)

    def set(
        self,
        name: EncodableT,
        value: EncodableT,
        ex: Union[int, datetime.timedelta, None] = None,
        px: Union[int, datetime.timedelta, None] = None,
        nx: bool = False,
        xx: bool = False,
        keepttl: bool = False,
        get: bool = False,
    ) -> Any:
        """SET name value [EX s | PX ms] [NX|XX] [KEEPTTL] [GET]; True on success.

        Plain SET and SET with EX/PX are native ring requests; the other options go as CMD.
        """
        key = name if type(name) is bytes else self._enc(name)
        val = value if type(value) is bytes else self._enc(value)
        if ex is None and px is None and not (nx or xx or keepttl or get):
            return self._request(P.OP_SET, (key, val), 0, None)
        ttl_ms = 0
        if ex is not None and px is not None:
            raise DataError("``ex`` and ``px`` are mutually exclusive")
        if ex is not None:
            ttl_ms = _ttl_ms(ex, 1000, "ex")
        elif px is not None:
            ttl_ms = _ttl_ms(px, 1, "px")
        if nx or xx or keepttl or get:
            argv = [b"SET", key, val]
            if ttl_ms:
                argv += [b"PX", str(ttl_ms).encode()]
            argv += [flag for on, flag in ((nx, b"NX"), (xx, b"XX"), (keepttl, b"KEEPTTL"),
                                           (get, b"GET")) if on]
            return self._request(P.OP_CMD, tuple(argv), 0, None if get else _set_callback)
        return self._request(P.OP_SET, (key, val), ttl_ms, None)

    def delete(self, *names: EncodableT) -> Any:
        """DEL name...: the number of keys removed."""
        if not names:
            raise DataError("delete() needs at least one key")
        return self._request(P.OP_DEL, tuple(self._enc(n) for n in names), 0, None)

    def exists(self, *names: EncodableT) -> Any:
        """EXISTS name...: how many of the keys exist."""
        return self._request(P.OP_CMD, (b"EXISTS",) + tuple(self._enc(n) for n in names), 0,
                             None)

    def ping(self) -> Any:
        """PING over the ring: True."""
        return self._request(P.OP_PING, (), 0, None)

    def execute_command(self, *args: EncodableT) -> Any:
        """Any Redis command as argv, sent as CMD; the decoded RESP2 reply."""
        if not args:
            raise DataError("execute_command() needs a command")
        argv = tuple(self._enc(a) for a in args)
        if argv[0].lower() in SUBSCRIBE_WORDS:
            # Pushes would follow on this thread's session, between other commands' replies.
            raise DataError(f"{argv[0].decode('utf-8', 'replace').upper()} needs a session of "
                            f"its own: use RingClient.pubsub() (docs/ring-protocol.md 15)")
        return self._request(P.OP_CMD, argv, 0, None)


# Blocking commands (docs/ring-protocol.md section 14): the server answers when a value comes or
# the command's own timeout passes, so the client waits that long and its own timeout more
# (0: for ever). Where each one's timeout argument is: last, or first after the name.
BLOCKING_TIMEOUT_AT = {b"blpop": -1, b"brpop": -1, b"bzpopmin": -1, b"bzpopmax": -1,
                       b"brpoplpush": -1, b"blmove": -1, b"blmpop": 1, b"bzmpop": 1}
FOREVER = 1e9       # seconds: "no timeout" for a wait that counts from its last progress


def blocking_wait(args: tuple, timeout: float) -> float | None:
    """How long to wait for a blocking command's reply; None for any other command (or one
    whose timeout the server will refuse: the error comes at once)."""
    name = bytes(args[0]).lower() if args else b""
    if name in (b"xread", b"xreadgroup"):            # BLOCK milliseconds, before STREAMS
        words = [bytes(a).upper() for a in args]
        block = words.index(b"BLOCK") if b"BLOCK" in words else 0
        streams = words.index(b"STREAMS") if b"STREAMS" in words else len(words)
        if not block or block > streams or block + 1 >= len(args):
            return None
        try:
            seconds = int(args[block + 1]) / 1000.0
        except ValueError:
            return None
        return None if seconds < 0 else FOREVER if seconds == 0 else seconds + timeout
    if name == b"wait":                              # WAIT numreplicas milliseconds
        try:
            seconds = int(args[2]) / 1000.0 if len(args) == 3 else -1
        except ValueError:
            return None
        return None if seconds < 0 else FOREVER if seconds == 0 else seconds + timeout
    at = BLOCKING_TIMEOUT_AT.get(name)
    if at is None or len(args) < 3:
        return None
    try:
        seconds = float(args[at])
    except ValueError:
        return None
    if not seconds >= 0 or seconds == float("inf"):
        return None
    return FOREVER if seconds == 0 else seconds + timeout


# ---- Client ----------------------------------------------------------------------------------


class RingClient(_Commands):
    """A client of the cxl_ring driver through a shared region.

    path: the region: a directory of segment files (Sec-DSM: /dev/cxl/REGION in a guest,
        /dev/shm/LAB-REGION on one host; only the granted segments need be there), or one file
        (security off: /dev/shm/NAME, /dev/uioN or /dev/uioN@MAP, or a PCI resourceN file).
    map_size: bytes to map of a region file; default discovered from the file, uio map or BAR
        size (not for a directory: each segment file is mapped whole).
    timeout: seconds any wait may take (claim, ring space, a response); may be changed later
        (``r.timeout = 0.5``), for the calls that follow on every thread.
    decode_responses: return str instead of bytes (``encoding``, ``encoding_errors``); a reply
        that is not valid text raises ResponseDecodeError (with encoding_errors="strict").
    layout: "auto" (from the region's magic), "v5", or "v2" (the PoC layout: GET/SET only, one
        file). Layouts v3 and v4 are no longer spoken (ValueError).
    doorbell: the doorbell device to ring a server that sleeps behind one (between VMs:
        ``notify_kind`` doorbell, docs/ring-protocol.md section 8): None for the default, the
        environment variable CXL_RING_DOORBELL when set, else /dev/cxl/doorbell when it exists;
        "" for none. Opened on the first notification that needs it; without it the client
        does not ring and a sleeping server answers after its sleep_max_ms.
        ``self.region.doorbell`` counts ``rings`` and ``missed`` and says ``why``.

    Raises only CxlRingError and its subclasses (cxl_ring.exceptions), and ValueError for a
    bad constructor argument.
    """

    def __init__(
        self,
        path: str,
        map_size: int | None = None,
        timeout: float = 5.0,
        decode_responses: bool = False,
        layout: str = "auto",
        encoding: str = "utf-8",
        encoding_errors: str = "strict",
        doorbell: str | None = None,
    ) -> None:
        check_platform()
        if layout in ("v3", "v4"):
            raise ValueError(f"layout {layout} is no longer spoken: layout v5 replaced it "
                             f"(run the driver with layout v5, its default, and use 'v5')")
        if layout not in ("auto", "v5", "v2"):
            raise ValueError(f"layout must be 'auto', 'v5' or 'v2', not {layout!r}")
        try:
            codecs.lookup(encoding)
            codecs.lookup_error(encoding_errors)
        except LookupError as e:
            raise ValueError(f"encoding {encoding!r} / encoding_errors {encoding_errors!r}: {e}"
                             ) from None
        self.path = path
        self._timeout = timeout
        self.decode_responses = decode_responses
        self.encoding = encoding
        self.encoding_errors = encoding_errors
        self._decode = encoding if decode_responses else None
        self.region = Region(path, map_size, doorbell=doorbell)
        try:
            found = self.region.layout()
            if layout != "auto" and layout != found:
                raise LayoutMismatchError(f"{path}: region has layout {found}, asked for {layout}")
            self._transport: Union[V5Transport, V2Transport] = (
                V5Transport(self.region, timeout) if found == "v5"
                else V2Transport(self.region, timeout)
            )
        except BaseException:
            self.region.close()
            raise
        self.layout = found

    @property
    def max_value_size(self) -> int:
        return self._transport.max_value_size

    @property
    def timeout(self) -> float:
        """Seconds any wait may take (claim, ring space, a response)."""
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self._timeout = seconds
        if self._transport is not None:
            self._transport.timeout = seconds

    def get(self, name: EncodableT) -> Any:
        """GET name: the value (bytes, or str with decode_responses) or None."""
        # The unpipelined hot path, kept flat: one call into the transport, one into the session.
        status, payload = self._transport.get(name if type(name) is bytes else self._enc(name))
        if status == 0:  # ST_OK
            if not self._decode:
                return payload
            try:
                return payload.decode(self._decode, self.encoding_errors)
            except UnicodeDecodeError as e:
                raise ResponseDecodeError.from_unicode_error(e) from None
        if status == 1:  # ST_NOT_FOUND
            return None
        return self._reply(P.OP_GET, P.Response(status, 0, payload), None)

    def _request(self, op: int, args: tuple, ttl: int, callback: Callback) -> Any:
        if op == P.OP_SET:
            status, payload = self._transport.set(args[0], args[1], ttl)
            if status == 0 and callback is None:
                return True
            r = P.Response(status, 0, payload)
        else:
            wait = blocking_wait(args, self._timeout) if op == P.OP_CMD else None
            r = (self._transport.call(op, args, ttl) if wait is None
                 else self._transport.call(op, args, ttl, wait))
        return self._reply(op, r, callback)

    def _reply(self, op: int, r: P.Response, callback: Callback) -> Any:
        value = _decode_reply(op, r, self._decode, self.encoding_errors)
        if isinstance(value, Exception):
            if isinstance(value, ProtocolError):
                self._transport.discard_session()
            raise value
        return callback(value) if callback else value

    def pubsub(self, ignore_subscribe_messages: bool = False) -> PubSub:
        """A PubSub on a ring session of its own (docs/ring-protocol.md section 15), as
        redis-py's: subscribe(), psubscribe(), ssubscribe(), their unsubscribes,
        get_message(timeout), listen(), close(). Layout v5 only."""
        if not isinstance(self._transport, V5Transport):
            raise LayoutMismatchError("pub/sub needs layout v5 (the PoC's layout v2 has no CMD)")
        return PubSub(self._transport, self._enc, ignore_subscribe_messages,
                      (self.encoding, self.encoding_errors) if self.decode_responses else None)

    def pipeline(self, transaction: bool = False) -> Pipeline:
        """A Pipeline that sends all its commands on this thread's channel in one batch;
        with ``transaction=True`` wrapped in MULTI/EXEC (docs/ring-protocol.md section 13):
        they run together, and a key WATCHed before on this thread that changed makes
        execute() raise WatchError with nothing run."""
        return Transaction(self) if transaction else Pipeline(self)

    def session_info(self) -> tuple[int, int] | None:
        """(channel index, token) of the calling thread's session, or None (v2/no session)."""
        s = getattr(getattr(self._transport, "_local", None), "session", None)
        return (s.index, s.token) if s is not None else None

    def release_session(self) -> None:
        """Release the calling thread's channel now (the next request claims one again).

        A thread that is done with the client (a worker about to exit) should call this:
        its session otherwise stays claimed until close()."""
        if self._transport is not None:
            self._transport.discard_session()

    def close(self) -> None:
        """Release every channel this client claimed and unmap the region."""
        if self._transport is None:
            return
        self._transport.close()
        self._transport = None  # type: ignore[assignment]
        self.region.close()

    def __enter__(self) -> RingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()

    def __repr__(self) -> str:
        return f"<RingClient {self.path} layout={getattr(self, 'layout', '?')}>"


class Pipeline(_Commands):
    """Queues commands and sends them together on one channel (redis-py's non-transactional
    pipeline). execute() returns one result per command in order."""

    def __init__(self, client: RingClient) -> None:
        self.client = client
        self.encoding = client.encoding
        self._queue: list[tuple[int, tuple, int]] = []
        self._callbacks: list[Callback] = []

    def _request(self, op: int, args: tuple, ttl: int, callback: Callback) -> Pipeline:
        self._queue.append((op, args, ttl))
        self._callbacks.append(callback)
        return self

    def __len__(self) -> int:
        return len(self._queue)

    def reset(self) -> None:
        self._queue = []
        self._callbacks = []

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send every queued command; results in order. With raise_on_error (the default) the
        first error reply is raised after all replies arrived, else errors are returned in
        place. If the server died or restarted mid-way, UnknownOutcomeError.results holds the
        results that did arrive."""
        queue, callbacks = self._queue, self._callbacks
        self.reset()
        if not queue:
            return []
        client = self.client
        decode, errors = client._decode, client.encoding_errors
        try:
            replies = client._transport.execute(queue)
        except UnknownOutcomeError as e:
            e.results = self._convert(queue, callbacks, e.results, decode, errors)
            raise
        results = self._convert(queue, callbacks, replies, decode, errors)
        if any(isinstance(v, ProtocolError) for v in results):
            client._transport.discard_session()
        if raise_on_error:
            for i, v in enumerate(results):
                if isinstance(v, Exception):
                    v.args = (f"Command # {i + 1} in pipeline caused error: {v}",)
                    raise v
        return results

    @staticmethod
    def _convert(queue: list, callbacks: list, replies: list, decode: str | None,
                 errors: str) -> list[Any]:
        out = []
        for (op, _args, _ttl), cb, r in zip(queue, callbacks, replies):
            if r.status == P.ST_OK and op == P.OP_SET:
                out.append(True)
                continue
            if op == P.OP_GET and not decode:
                if r.status == P.ST_OK:
                    out.append(r.payload)
                    continue
                if r.status == P.ST_NOT_FOUND:
                    out.append(None)
                    continue
            v = _decode_reply(op, r, decode, errors)
            out.append(cb(v) if cb and not isinstance(v, Exception) else v)
        return out

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reset()


def _as_command(op: int, args: tuple, ttl: int) -> tuple:
    """A fast op written as the Redis command it is (MULTI queues only CMDs)."""
    if op == P.OP_GET:
        return (b"GET", *args)
    if op == P.OP_SET:
        return (b"SET", *args, *((b"PX", str(ttl).encode()) if ttl else ()))
    if op == P.OP_DEL:
        return (b"DEL", *args)
    if op == P.OP_PING:
        return (b"PING",)
    return args


class Transaction(Pipeline):
    """redis-py's transactional pipeline: MULTI, the queued commands as CMDs, EXEC, on the
    calling thread's channel. execute() returns EXEC's replies, one per command."""

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        queue, callbacks = self._queue, self._callbacks
        self.reset()
        if not queue:
            return []
        client = self.client
        decode, errors = client._decode, client.encoding_errors
        wrapped = [(P.OP_CMD, (b"MULTI",), 0)]
        wrapped += [(P.OP_CMD, _as_command(op, args, ttl), 0) for op, args, ttl in queue]
        wrapped.append((P.OP_CMD, (b"EXEC",), 0))
        replies = client._transport.execute(wrapped)
        answers = [_decode_reply(P.OP_CMD, r, decode, errors) for r in replies]
        for v in answers[:-1]:          # MULTI's +OK and each +QUEUED, or why not queued
            if isinstance(v, Exception):
                if not isinstance(answers[-1], Exception):
                    client._transport.execute([(P.OP_CMD, (b"DISCARD",), 0)])
                raise v
        result = answers[-1]
        if isinstance(result, Exception):
            raise result
        if result is None:
            raise WatchError("a watched key changed: the transaction ran nothing")
        out = []
        for (op, _args, _ttl), cb, v in zip(queue, callbacks, result):
            if not isinstance(v, Exception):
                if op == P.OP_SET:
                    v = v in (b"OK", "OK") if v is not None else None
                elif cb:
                    v = cb(v)
            out.append(v)
        if raise_on_error:
            for i, v in enumerate(out):
                if isinstance(v, Exception):
                    v.args = (f"Command # {i + 1} in transaction caused error: {v}",)
                    raise v
        return out
