"""Every error the ring client raises derives from CxlRingError.

    CxlRingError
    +-- RegionError                 the region cannot be opened or mapped (wrong path, size)
    |   +-- NotFormattedError       all zeros: no server has formatted the region yet
    |   +-- LayoutMismatchError     not a cxl_ring region, another layout version, or a
    |   |                           header or segment table that breaks the layout rules
    |   +-- SegmentAccessError      a segment this peer needs is not mapped here, or not
    |                               writable (Sec-DSM grants: absent or read-only)
    +-- ServerGoneError             no server: stopped, not running, heartbeat stands still
    |   +-- UnknownOutcomeError     requests were in flight when the server died or restarted
    +-- NoChannelError              every channel of the region is taken
    +-- RingTimeoutError            a bounded wait expired (also a builtin TimeoutError)
    +-- RequestTooLargeError        a request or reply exceeds max_value_size / max_msg_size
    +-- ProtocolError               the other side broke the protocol (corrupt response
    |                               section, torn or partial message, quarantined channel,
    |                               a response with no request in flight)
    +-- ResponseError               Redis refused the command (ERR, WRONGTYPE, ...)
    |   +-- OutOfMemoryError        maxmemory reached (status OOM)
    |   +-- AuthenticationError     the session has no user (NOAUTH) or AUTH failed
    |   |                           (WRONGPASS)
    |   +-- NoPermissionError       the session's ACL user may not run the command or
    |                               touch the key (NOPERM)
    +-- WatchError                  a key WATCHed before a transaction changed: EXEC ran
    |                               nothing
    +-- DataError                   an argument cannot be encoded (not bytes, str or a
    |                               number; a str the client's ``encoding`` cannot encode)
    +-- ResponseDecodeError         decode_responses=True and a reply is not valid text in
                                    the client's ``encoding`` (with encoding_errors="strict")

The names follow redis-py (``ResponseError``, ``OutOfMemoryError``, ``AuthenticationError``,
``NoPermissionError``, ``DataError``) so that
code written for redis-py reads the same. Some are also the builtin that fits, so that generic
handlers keep working: ServerGoneError is a ConnectionError, RingTimeoutError a TimeoutError,
RequestTooLargeError a ValueError, DataError a TypeError, ResponseDecodeError a
UnicodeDecodeError. Nothing else escapes the client; a bad constructor argument (``layout``,
``encoding``) is a ValueError, as in any Python API.

After a ResponseDecodeError the session goes on: the reply was received whole, only its
conversion to str failed. In a pipeline it is returned in place like an error reply (with
``raise_on_error=False``) or raised after every reply arrived.
"""

from __future__ import annotations

from typing import Any


class CxlRingError(Exception):
    """Root of every error raised by cxl_ring."""


class RegionError(CxlRingError):
    """The region cannot be opened or mapped."""


class NotFormattedError(RegionError):
    """The region is all zeros: no server has formatted it (yet)."""


class LayoutMismatchError(RegionError):
    """The region is not a cxl_ring region of a layout this client speaks."""


class SegmentAccessError(RegionError):
    """A segment is not mapped in this peer (its file is absent: not granted), or is mapped
    read-only where a write was needed. Raised before the access, never a fault."""


class ServerGoneError(CxlRingError, ConnectionError):
    """No live server behind the region."""


class UnknownOutcomeError(ServerGoneError):
    """Requests were in flight when the server died or restarted: they may or may not have run.

    ``results`` holds the replies that did arrive before the failure (in request order),
    ``pending`` the number of requests after them whose outcome is unknown, and ``unsent`` the
    number after those that never reached the ring (certainly not executed).
    """

    def __init__(self, message: str, results: list[Any] | None = None, pending: int = 0,
                 unsent: int = 0) -> None:
        super().__init__(message)
        self.results = results if results is not None else []
        self.pending = pending
        self.unsent = unsent


class NoChannelError(CxlRingError):
    """No free channel in the region."""


class RingTimeoutError(CxlRingError, TimeoutError):
    """A bounded wait expired."""


class RequestTooLargeError(CxlRingError, ValueError):
    """A request, an argument or a reply exceeds the region's limits."""


class ProtocolError(CxlRingError):
    """The other side broke the protocol."""


class ResponseError(CxlRingError):
    """Redis answered with an error reply."""


class OutOfMemoryError(ResponseError):
    """Redis refused a write: maxmemory reached."""


class AuthenticationError(ResponseError):
    """NOAUTH: the session runs as no ACL user (docs/ring-protocol.md section 12); or
    WRONGPASS: AUTH was refused."""


class NoPermissionError(ResponseError):
    """NOPERM: the session's ACL user may not run this command or use this key."""


class WatchError(CxlRingError):
    """A WATCHed key changed before EXEC: the transaction ran nothing (redis-py's
    WatchError)."""


def response_error(text: str) -> ResponseError:
    """The ResponseError subclass for an error reply's text, by its first word as redis-py
    picks them."""
    word = text.split(" ", 1)[0]
    if word == "NOPERM":
        return NoPermissionError(text)
    if word in ("NOAUTH", "WRONGPASS"):
        return AuthenticationError(text)
    return ResponseError(text)


class DataError(CxlRingError, TypeError):
    """An argument cannot be encoded (redis-py's DataError)."""


class ResponseDecodeError(CxlRingError, UnicodeDecodeError):
    """decode_responses=True: a reply is not valid in the client's encoding.

    Carries UnicodeDecodeError's fields (``encoding``, ``object``: the reply bytes, ``start``,
    ``end``, ``reason``)."""

    def __init__(self, encoding: str, obj: bytes, start: int, end: int, reason: str) -> None:
        UnicodeDecodeError.__init__(self, encoding, obj, start, end, reason)

    @classmethod
    def from_unicode_error(cls, e: UnicodeDecodeError) -> ResponseDecodeError:
        return cls(e.encoding, e.object, e.start, e.end, e.reason)

    def __str__(self) -> str:
        if len(self.args) == 1:        # a message set later (Pipeline.execute numbers it)
            return str(self.args[0])
        return f"reply is not valid {self.encoding}: {UnicodeDecodeError.__str__(self)}"
