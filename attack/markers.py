"""Distinctive values the attacker writes, and the honest client's secret canaries.

Markers: every forged write carries a value derived from the run's nonce, the mode and the
attack, so that the host can look for exactly those bytes in the segment files without
talking to the attacker (a digest of a whole file would not do: other peers keep writing).
The nonce is not a secret; it only makes a run's markers its own.

Canaries: the honest client's keys and values are derived from a *secret* seed that only the
honest client and the report writer know. Whatever canary the attacker's loot holds, it read
from the honest client's traffic: it cannot have made it up.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass


def derive(secret: str, label: str, n: int) -> bytes:
    out = b""
    i = 0
    while len(out) < n:
        out += hmac.new(secret.encode(), f"{label}/{i}".encode(), hashlib.sha256).digest()
        i += 1
    return out[:n]


def _nonzero(b: bytes) -> bytes:
    # A marker must not be a value a peer writes anyway (0, small counters): force high bits.
    return bytes([b[0] | 0x80]) + b[1:-1] + bytes([b[-1] | 0x80])


@dataclass(frozen=True)
class Marker:
    """One forged value: found anywhere in the region's files (segment None), or at a field."""

    attack: str
    name: str
    value: bytes
    segment: str | None = None  # field probes: segment name and offset inside it
    offset: int | None = None


class Markers:
    """The markers of one mode of a run."""

    def __init__(self, nonce: str, mode: str) -> None:
        self.nonce, self.mode = nonce, mode

    def raw(self, label: str, n: int = 8) -> bytes:
        return _nonzero(derive(self.nonce, f"{self.mode}/{label}", n))

    def u64(self, label: str) -> int:
        return int.from_bytes(self.raw(label, 8), "little")

    def u32(self, label: str) -> int:
        return int.from_bytes(self.raw(label, 4), "little")

    def text(self, label: str) -> bytes:
        return f"{label}:{self.raw(label, 8).hex()}".encode()

    def inject_key(self) -> bytes:
        return b"attack-inject-" + self.raw("inject-key", 8).hex().encode()

    def all(self) -> list[Marker]:
        """Everything the write attacks of this mode may write, for the host's check."""
        return [
            Marker("inject", "request key", self.inject_key()),
            Marker("forge", "forged response", self.text("forged")),
            Marker("header", "server_epoch", self.raw("epoch"), "header", 128),
            Marker("header", "server_heartbeat", self.raw("heartbeat"), "header", 136),
            Marker("header", "server_state", self.raw("state", 4), "header", 144),
            Marker("claim", "claim_token", self.raw("claim-token")),
            Marker("own-server", "ack_token", self.raw("own-ack")),
            Marker("own-server", "response data", self.text("own-response")),
        ]


# ---- canaries --------------------------------------------------------------------------------

CANARY_KEY = re.compile(rb"canary:(\d{1,9}):([0-9a-f]{16})")
CANARY_VALUE = re.compile(rb"cv:(\d{1,9}):([0-9a-f]{16,})")


def canary(seed: str, i: int, value_size: int = 64) -> tuple[bytes, bytes]:
    """(key, value) of canary i: prefixes make them easy to find, the MAC impossible to fake."""
    key = f"canary:{i}:".encode() + derive(seed, f"k{i}", 8).hex().encode()
    head = f"cv:{i}:".encode()
    body = derive(seed, f"v{i}", max(8, (value_size - len(head) + 1) // 2)).hex().encode()
    return key, (head + body)[: max(value_size, len(head) + 16)]


def score(loot: bytes, seed: str, count: int, value_size: int = 64) -> dict:
    """Canary keys and values of the honest client found in loot (only true ones count)."""
    keys: set[int] = set()
    values: set[int] = set()
    nbytes = 0
    for m in CANARY_KEY.finditer(loot):
        i = int(m.group(1))
        if i < count and i not in keys and canary(seed, i, value_size)[0] == m.group(0):
            keys.add(i)
            nbytes += len(m.group(0))
    for m in CANARY_VALUE.finditer(loot):
        i = int(m.group(1))
        if i >= count or i in values:
            continue
        value = canary(seed, i, value_size)[1]
        if m.group(0).startswith(value):
            values.add(i)
            nbytes += len(value)
    return {"keys": len(keys), "values": len(values), "bytes": nbytes}
