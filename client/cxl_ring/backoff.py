"""Waiting on the other side of a ring: spin, then yield, then sleep (docs/ring-protocol.md 8).

The one back-off policy of the Python client, the twin of the C side's ``struct cxl_backoff``
(ring/include/cxl_ring/client.h, ring/src/client.c): one *wait* starts at the first poll that
found nothing to do and ends when the caller finds work and calls ``reset()``. Within a wait,
the phases follow the time waited so far:

    0 .. spin                      poll again at once (a reply usually comes within microseconds)
    spin .. spin + yield_for       sched_yield(): gives the CPU (and the GIL) to whoever shares it
    later                          sleep, SLEEP_MIN doubling up to max_sleep

Every caller polls, then on nothing to do::

    now = time.monotonic()
    waited = backoff.wait(now)          # pauses as the phase says, returns the time waited
    if waited > timeout: raise ...      # every wait is bounded by its caller

The unpipelined GET/SET round trip spins inline (channel.Session._complete, _speedups.c) and
only then enters a wait with ``spin=0``: no call on its hot path. The proxy, which must not
block its event loop, asks ``next_pause()`` and awaits the pause itself.
"""

from __future__ import annotations

import os
import time

SPIN_SECONDS = 20e-6       # like the C client's 20 us; ~200 polls of a Python ring loop
YIELD_SECONDS = 0.002      # then sched_yield() this long
SLEEP_MIN, SLEEP_MAX = 50e-6, 1e-3
# sched_yield, not sleep(0): the latter is a timed sleep that costs the timer slack (~50 us);
# yielding lets a server thread that shares our CPU run at once.
sched_yield = getattr(os, "sched_yield", None) or (lambda: time.sleep(0))


class Backoff:
    """One wait's spin / yield / sleep schedule. Not thread-safe: one per waiting loop."""

    __slots__ = ("spin", "yield_for", "max_sleep", "waited", "_start", "_sleep")

    def __init__(self, spin: float = SPIN_SECONDS, yield_for: float = YIELD_SECONDS,
                 max_sleep: float = SLEEP_MAX) -> None:
        self.spin = spin
        self.yield_for = yield_for
        self.max_sleep = max_sleep
        self.waited = 0.0          # how long the current wait had lasted at its last step
        self._start: float | None = None
        self._sleep = 0.0

    def reset(self) -> None:
        """Work was found: the next wait starts over with spinning."""
        self._start = None
        self.waited = 0.0

    @property
    def spinning(self) -> bool:
        """The last step was still in the spin phase."""
        return self.waited < self.spin

    def next_pause(self, now: float) -> float | None:
        """One step at ``now`` (time.monotonic()): None = poll again at once, 0.0 = yield,
        else seconds to sleep. Updates ``waited``."""
        if self._start is None:
            self._start = now
            self._sleep = 0.0
        waited = self.waited = now - self._start
        if waited < self.spin:
            return None
        if waited < self.spin + self.yield_for:
            return 0.0
        self._sleep = min(self._sleep * 2, self.max_sleep) if self._sleep else min(
            SLEEP_MIN, self.max_sleep)
        return self._sleep

    def wait(self, now: float) -> float:
        """One step at ``now``: spin, yield or sleep; returns how long this wait has lasted
        (up to ``now``, before the pause)."""
        pause = self.next_pause(now)
        if pause:
            time.sleep(pause)
        elif pause is not None:
            sched_yield()
        return self.waited
