"""Every error the ring client raises derives from CxlRingError.

    CxlRingError
    +-- RegionError                 the region cannot be opened or mapped (wrong path, size)
    |   +-- NotFormattedError       all zeros: no server has formatted the region yet
    |   +-- LayoutMismatchError     not a cxl_ring region, or another layout version
    +-- ServerGoneError             no server: stopped, not running, heartbeat stands still
    |   +-- UnknownOutcomeError     requests were in flight when the server died or restarted
    +-- NoChannelError              every channel of the region is taken
    +-- RingTimeoutError            a bounded wait expired (also a builtin TimeoutError)
    +-- RequestTooLargeError        a request or reply exceeds max_value_size / max_msg_size
    +-- ProtocolError               the other side broke the protocol (corrupt response
    |                               section, torn or partial message, quarantined channel)
    +-- ResponseError               Redis refused the command (ERR, WRONGTYPE, ...)
        +-- OutOfMemoryError        maxmemory reached (status OOM)

The names follow redis-py (``ResponseError``, ``OutOfMemoryError``) so that code written for
redis-py reads the same; ServerGoneError is also a builtin ConnectionError.
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
