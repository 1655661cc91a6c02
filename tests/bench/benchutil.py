"""Helpers shared by the cxl-ring-bench tests (imported by conftest.py and the tests)."""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "build" / "cxl-ring-bench"
MODULE = REPO / "build" / "cxl_ring.so"
RUNNER = REPO / "bench" / "run.py"

_names = itertools.count()


def load_runner():
    """bench/run.py as a module (for RedisWithRing, the server the runner uses too)."""
    spec = importlib.util.spec_from_file_location("bench_run", RUNNER)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


runner = load_runner()


def shm_name() -> str:
    return f"/dev/shm/cxltest-bench-{os.getpid()}-{next(_names)}"


def run_bench(*args: str, timeout: float = 30, cwd: Path | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BENCH), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)
