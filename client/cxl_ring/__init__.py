"""cxl_ring: a redis-py shaped client for the cxl_ring Redis driver over shared memory.

    import cxl_ring
    with cxl_ring.RingClient("/dev/cxl/cxl0") as r:     # a region directory (Sec-DSM)
        r.set("greeting", "hello")                        # or one file: /dev/shm/cxl0
        r.get("greeting")

Layers: protocol (wire format and layout, no I/O), region (mapping one file or a directory of
segment files, checked access), session (claim, lease, liveness),
channel (the rings: framing, publish, consume), backoff (every wait), client (RingClient,
Pipeline), resp (RESP2), proxy (RESP server), cli (``cxl-ring``); every error is a
CxlRingError (exceptions).
Pure standard library; an optional C core of the unpipelined GET/SET round trip
(_speedups.c) is used when it was built and CXL_RING_PURE is unset (``SPEEDUPS``).
"""

from . import protocol
from ._atomic import CAS_BACKEND
from .channel import SPEEDUPS, Session, claim
from .client import Pipeline, RingClient
from .exceptions import (
    AuthenticationError,
    CxlRingError,
    DataError,
    LayoutMismatchError,
    NoChannelError,
    NoPermissionError,
    NotFormattedError,
    OutOfMemoryError,
    ProtocolError,
    RegionError,
    RequestTooLargeError,
    ResponseDecodeError,
    ResponseError,
    RingTimeoutError,
    SegmentAccessError,
    ServerGoneError,
    UnknownOutcomeError,
    WatchError,
)
from .pubsub import PubSub
from .region import Region, group_segments, make_view, remove_view

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "CAS_BACKEND",
    "CxlRingError",
    "DataError",
    "LayoutMismatchError",
    "NoChannelError",
    "NoPermissionError",
    "NotFormattedError",
    "OutOfMemoryError",
    "Pipeline",
    "ProtocolError",
    "PubSub",
    "Region",
    "RegionError",
    "RequestTooLargeError",
    "ResponseDecodeError",
    "ResponseError",
    "RingClient",
    "RingTimeoutError",
    "SPEEDUPS",
    "SegmentAccessError",
    "ServerGoneError",
    "Session",
    "UnknownOutcomeError",
    "WatchError",
    "claim",
    "group_segments",
    "make_view",
    "protocol",
    "remove_view",
]
