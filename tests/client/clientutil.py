"""Helpers shared by the client tests (importable by name; conftest.py is not)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cxl_ring
from cxl_ring import protocol as P
from fakeserver import FakeServer

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


@contextlib.contextmanager
def malformed_response_pending(shm_path: str, case: dict):
    """(client, fake): a RingClient whose next request (id ``expect_id``) the FakeServer will
    answer with the vector ``case``'s malformed response bytes instead of the real one."""
    fake = FakeServer(shm_path, max_value=64, max_msg=256, ring_size=4096).start()
    try:
        with cxl_ring.RingClient(shm_path, timeout=10) as r:
            r.ping()
            index, _ = r.session_info()
            r._transport.session().next_id = case["expect_id"]
            fake.forge_reply(index, bytes.fromhex(case["hex"]))
            yield r, fake
    finally:
        fake.close()


def check_oversized_raw_request(path: str, max_value: int, channel: int, timeout: float) -> None:
    """A SET one byte over ``max_value``, sent raw, answers TOO_LARGE and the PING behind it OK."""
    with cxl_ring.Region(path) as region:
        s = cxl_ring.claim(region, region.header(), channel)
        try:
            over = P.encode_request(P.OP_SET, [b"k", b"v" * (max_value + 1)], s.next_id)
            s.send_raw(over + P.encode_request(P.OP_PING, [], s.next_id + 1))
            r1, r2 = s.receive(2, timeout)
            assert (r1.status, r1.id) == (P.ST_TOO_LARGE, s.next_id)
            assert (r2.status, r2.id) == (P.ST_OK, s.next_id + 1)
        finally:
            s.release()


# ---- Sec-DSM: what this process has mapped, and a peer without DAC override ------------------


def maps_access(start: int, end: int) -> set[str]:
    """The permissions (e.g. 'r--s', 'rw-s', '---p') of every mapping of this process that
    overlaps the addresses [start, end), read from /proc/self/maps."""
    out = set()
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo < end and hi > start:
                out.add(fields[1])
    return out


def segment_access(region: cxl_ring.Region, name: str) -> set[str]:
    """maps_access over the bytes a segment of ``region`` uses."""
    seg = region.header().segment(name)
    return maps_access(region.base + seg.offset, region.base + seg.offset + seg.size)


def drop_dac_override() -> None:
    """preexec_fn: the child, even as root, obeys file modes (CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH leave its bounding set, so an exec'd root process lacks them)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):                                # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:         # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_obeying_file_modes(code: str, timeout: float = 60) -> dict:
    """Run ``code`` (Python; it prints one JSON object last) in a child that cannot open a
    file its mode forbids, even as root; return that object."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / "client"), str(Path(__file__).resolve().parent)])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=timeout, env=env,
                       preexec_fn=drop_dac_override if os.geteuid() == 0 else None)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---- the RESP proxy in a child process -------------------------------------------------------


class Proxy:
    """``cxl-ring proxy --path REGION`` in a child process, on a free local port."""

    def __init__(self, region: str) -> None:
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO / "client")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cxl_ring.cli", "proxy", "--path", region,
             "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"proxy did not start: {self.proc.stdout.read()}") from None
                time.sleep(0.05)

    def client(self, **kw):
        import redis

        return redis.Redis(port=self.port, socket_timeout=10, **kw)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
