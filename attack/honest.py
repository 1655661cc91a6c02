"""The honest client: a bounded load of canary SETs and GETs with the project's ring client.

It stops after `count` canaries or `seconds`, whichever comes first, and reports its
throughput and every error it saw: a client exception (server gone, protocol error, lost
session, timeout...) or a GET that returned anything but the value it set. After an error it
goes on (the client claims a fresh channel by itself), so one attack phase gives one count.
"""

from __future__ import annotations

import contextlib
import time

from .markers import canary


def run(
    path: str, seed: str, count: int, seconds: float, value_size: int = 64, timeout: float = 2.0
) -> dict:
    from cxl_ring import RingClient
    from cxl_ring.exceptions import CxlRingError

    errors: dict[str, int] = {}
    ops = 0
    i = 0
    client = None
    start = time.monotonic()
    end = start + seconds
    first = None  # throughput counts from the first answer: mapping and claiming are not load

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    try:
        while i < count and time.monotonic() < end:
            key, value = canary(seed, i, value_size)
            i += 1
            try:
                if client is None:
                    client = RingClient(path, timeout=timeout)
                client.set(key, value)
                ops += 1
                if first is None:
                    first = time.monotonic()
                got = client.get(key)
                if got != value:
                    error("wrong value")
                else:
                    ops += 1
            except CxlRingError as e:
                error(type(e).__name__)
                if client is not None:
                    with contextlib.suppress(Exception):  # a broken client is dropped
                        client.close()
                    client = None
                time.sleep(0.05)
    finally:
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                error("close")
    now = time.monotonic()
    elapsed = now - start
    steady = now - first if first is not None else 0.0
    return {
        "canaries": i,
        "ops": ops,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "seconds": round(elapsed, 3),
        "ops_per_s": round((ops - 1) / steady, 1) if steady > 0 else 0.0,
        "value_size": value_size,
    }
