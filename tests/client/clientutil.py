"""Helpers shared by the client tests (importable by name; conftest.py is not)."""

from __future__ import annotations

import itertools
import json
import os
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "build" / "cxl_ring.so"
VECTORS_DIR = REPO / "tests" / "vectors"
# The shared protocol vectors (tests/vectors/messages.json; its "_format" key explains them).
VECTORS = json.loads((VECTORS_DIR / "messages.json").read_text())
_names = itertools.count()


def shm_name() -> str:
    return f"/dev/shm/cxltest-{os.getpid()}-{next(_names)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
