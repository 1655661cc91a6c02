"""build/cxl-chase (bench/c/chase/chase.c): idle load latency by pointer chasing, on private
anonymous memory or on a file mapped MAP_SHARED (docs/benchmarks.md, "Pointer chase (far-memory
latency)"). The JSON's shape, positive figures from both sources, a chain that visits every
line exactly once (--verify, and a chain broken on purpose that --verify rejects), and every bad
input refused with exit 2 and a message. No assertion depends on speed: the machine is shared;
runs are small and bounded only by a timeout."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from benchutil import REPO, built, shm_name

pytestmark = pytest.mark.timeout(120)

CHASE = REPO / "build" / "cxl-chase"
MIB = 1 << 20
SMALL = ["--size", "8m", "--samples", "5", "--loads-per-sample", "20000"]
STATS = ("min", "p50", "p90", "p99", "max", "mean")


@pytest.fixture(scope="module")
def chase_bin() -> Path:
    """build/cxl-chase, built with the Makefile's own rule if it is missing."""
    return built(CHASE)


def chase(binary: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def shm_file() -> Iterator[str]:
    """A fresh 8 MiB /dev/shm file; removed afterwards."""
    path = shm_name()
    with open(path, "wb") as f:
        f.truncate(8 * MIB)
    yield path
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    assert not os.path.exists(path)


def check_result(doc: dict, source: str, size: int) -> None:
    assert doc["source"] == source
    assert doc["size_bytes"] == size
    assert doc["stride"] == 64
    assert doc["lines"] == size // 64
    assert doc["hugepages"] in (True, False, "fallback")
    assert doc["llc_bytes"] is None or doc["llc_bytes"] > 0
    assert doc["samples"] == 5
    assert doc["loads_per_sample"] == 20000
    assert doc["total_loads"] == 5 * 20000
    ns = doc["ns_per_load"]
    assert set(ns) == set(STATS)
    assert all(isinstance(ns[k], (int, float)) and ns[k] > 0 for k in STATS)
    assert ns["min"] <= ns["p50"] <= ns["p90"] <= ns["p99"] <= ns["max"]
    assert ns["min"] <= ns["mean"] <= ns["max"]
    assert isinstance(doc["notes"], list) and isinstance(doc["warnings"], list)


def test_anon_json(chase_bin: Path) -> None:
    out = chase(chase_bin, "--anon", *SMALL)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    check_result(doc, "anon", 8 * MIB)
    assert doc["path"] is None
    assert doc["hugepages"] is False
    assert doc["block_bytes"] == 2 * MIB
    # 8 MiB is below 4x any LLC this suite runs on when one is known: the warning is there.
    if doc["llc_bytes"] and doc["llc_bytes"] * 4 > 8 * MIB:
        assert any("cache" in w for w in doc["warnings"])
        assert "warning" in out.stderr


def test_shm_file_json(chase_bin: Path, shm_file: str) -> None:
    out = chase(chase_bin, "--path", shm_file, *SMALL[2:])      # size: the file's
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    check_result(doc, "path", 8 * MIB)
    assert doc["path"] == shm_file


def test_offset_stays_inside(chase_bin: Path, shm_file: str) -> None:
    """--offset 4m --size 2m: the chain is written there and nowhere else."""
    marker = b"\xa5" * (8 * MIB)
    with open(shm_file, "r+b") as f:
        f.write(marker)
    out = chase(chase_bin, "--path", shm_file, "--offset", "4m", "--size", "2m",
                "--samples", "2", "--loads-per-sample", "1000")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["offset"] == 4 * MIB
    data = Path(shm_file).read_bytes()
    assert data[:4 * MIB] == marker[:4 * MIB]
    assert data[6 * MIB:] == marker[6 * MIB:]
    assert data[4 * MIB:6 * MIB] != marker[:2 * MIB]


def test_text_and_options(chase_bin: Path) -> None:
    out = chase(chase_bin, "--anon", *SMALL, "--text", "--cpu", "0", "--block", "full",
                "--stride", "128", "--hugepages")
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert "\n" not in line and line.startswith("cxl-chase: anon")
    assert "ns/load" in line and "stride 128" in line
    if "fallback" in line:      # no reserved huge pages: said so
        assert "MADV_HUGEPAGE" in out.stderr


@pytest.mark.parametrize("extra", [[], ["--block", "4096"], ["--block", "full"],
                                   ["--stride", "256", "--seed", "7"],
                                   ["--size", "5000", "--block", "4096"]])
def test_verify_every_line_once(chase_bin: Path, extra: list[str]) -> None:
    out = chase(chase_bin, "--anon", "--size", "8m", "--verify", *extra)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["verify"] is True
    assert doc["steps"] == doc["lines"] == doc["size_bytes"] // doc["stride"]


def test_verify_on_a_file(chase_bin: Path, shm_file: str) -> None:
    out = chase(chase_bin, "--path", shm_file, "--verify")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["steps"] == 8 * MIB // 64


@pytest.mark.parametrize("line", ["0", "12345"])
def test_verify_rejects_a_broken_chain(chase_bin: Path, line: str) -> None:
    out = chase(chase_bin, "--anon", "--size", "1m", "--verify", "--break-chain-for-test", line)
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    assert doc["verify"] is False and doc["steps"] < doc["lines"]
    assert "broken" in out.stderr


def test_seed_decides_the_chain(chase_bin: Path, shm_file: str) -> None:
    def chain(seed: str) -> bytes:
        out = chase(chase_bin, "--path", shm_file, "--size", "64k", "--verify", "--seed", seed)
        assert out.returncode == 0, out.stderr
        return Path(shm_file).read_bytes()[:64 * 1024]

    def offsets(raw: bytes) -> list[int]:
        ptrs = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 64)]
        base = min(ptrs)
        return [p - base for p in ptrs]

    # The mapping moves between runs; the chain, as offsets, does not.
    assert offsets(chain("3")) == offsets(chain("3"))
    assert offsets(chain("3")) != offsets(chain("4"))


def test_default_size_run(chase_bin: Path) -> None:
    """The default 256 MiB working set, few samples: a few seconds at most here."""
    out = chase(chase_bin, "--anon", "--samples", "3", "--loads-per-sample", "20000",
                timeout=90)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["size_bytes"] == 256 * MIB
    assert doc["ns_per_load"]["p50"] > 0


BAD = [
    (["--anon", "--size", "0"], "page"),
    (["--anon", "--size", "100"], "page"),
    (["--anon", "--size", "4095"], "page"),
    (["--anon", "--stride", "48"], "power of two"),
    (["--anon", "--stride", "4"], "power of two"),
    (["--anon", "--stride", "0"], "power of two"),
    (["--anon", "--size", "8m", "--stride", "16m"], "larger than the working set"),
    (["--anon", "--block", "3000"], "--block"),
    (["--anon", "--samples", "0"], "--samples"),
    (["--anon", "--loads-per-sample", "0"], "--loads-per-sample"),
    (["--anon", "--size", "abc"], "--size"),
    (["--anon", "--size", "-5"], "--size"),
    (["--anon", "--size", "99999999999999999999"], "out of range"),
    (["--anon", "--size", "8q"], "suffix"),
    (["--anon", "--size"], "needs a value"),
    (["--anon", "--cpu", "100000"], "CPU"),
    (["--anon", "--offset", "4096"], "--offset is for --path"),
    (["--anon", "--bogus"], "unknown option"),
    ([], "--anon"),
    (["--anon", "--path", "/dev/null"], "exactly one"),
    (["--path", "/nonexistent/chase"], "cannot open"),
    (["--path", "/dev/shm"], "/dev/shm"),
    (["--path", "/dev/null"], "--size"),                 # a char device: no size
]


@pytest.mark.parametrize(("args", "words"), BAD, ids=[" ".join(a) or "nothing" for a, _ in BAD])
def test_bad_input(chase_bin: Path, args: list[str], words: str) -> None:
    out = chase(chase_bin, *args, timeout=30)
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert out.stdout == ""
    assert words in out.stderr
    assert out.stderr.startswith("cxl-chase: ")


@pytest.mark.parametrize(("args", "words"), [
    (["--offset", "4m", "--size", "8m"], "beyond the end"),
    (["--offset", "8m"], "not inside"),
    (["--offset", "9m"], "not inside"),
    (["--offset", "32"], "multiple of --stride"),
    (["--size", "16m"], "beyond the end"),
    (["--size", "0"], "page"),
    (["--hugepages"], "--hugepages is for --anon"),
])
def test_bad_file_input(chase_bin: Path, shm_file: str, args: list[str], words: str) -> None:
    before = Path(shm_file).read_bytes()
    out = chase(chase_bin, "--path", shm_file, *args, timeout=30)
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert words in out.stderr
    assert Path(shm_file).read_bytes() == before        # refused before writing anything


def test_empty_file(chase_bin: Path) -> None:
    path = shm_name()
    Path(path).touch()
    try:
        out = chase(chase_bin, "--path", path, timeout=30)
        assert out.returncode == 2
        assert "size 0" in out.stderr
        out = chase(chase_bin, "--path", path, "--size", "1m", timeout=30)
        assert out.returncode == 2
        assert "size 0" in out.stderr and "truncate" in out.stderr
    finally:
        os.unlink(path)


def test_unwritable_file(chase_bin: Path) -> None:
    """A file this user may only read (a sysfs attribute: read-only even for root)."""
    path = "/sys/devices/system/cpu/cpu0/cache/index0/size"
    if not os.path.exists(path):
        pytest.skip(f"{path} does not exist here")
    out = chase(chase_bin, "--path", path, timeout=30)
    assert out.returncode == 2
    assert "read-write" in out.stderr and "writ" in out.stderr.split("read-write", 1)[1]


def test_help(chase_bin: Path) -> None:
    out = chase(chase_bin, "--help", timeout=30)
    assert out.returncode == 0
    for flag in ("--anon", "--hugepages", "--path", "--offset", "--size", "--stride", "--block",
                 "--seed", "--samples", "--loads-per-sample", "--cpu", "--text", "--verify"):
        assert flag in out.stdout
