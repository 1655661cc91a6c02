"""cxl-ring-bench without a server: flags, --help, and clear errors for regions that are
missing, unformatted, of another layout, or too small. Every error is one line on stderr
and a documented non-zero exit code."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from benchutil import run_bench

pytestmark = pytest.mark.timeout(60)

POC_FLAGS = ["--path", "--map-size", "--bench", "--threads", "--pipeline", "--max-inflight",
             "--latency", "--cost", "--csv", "--label"]
OUR_FLAGS = ["--op", "--layout", "--timeout", "--value-size", "--keyspace", "--json",
             "--duration", "--get-ratio"]


def write_region(path: str, head: bytes, size: int = 1 << 20) -> None:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)


def test_help_lists_poc_flags_and_exit_codes(bench_bin: Path) -> None:
    out = run_bench("--help")
    assert out.returncode == 0
    for flag in POC_FLAGS + OUR_FLAGS:
        assert flag in out.stdout, flag
    assert "Exit codes" in out.stdout


def test_version(bench_bin: Path) -> None:
    out = run_bench("--version")
    assert out.returncode == 0
    assert out.stdout.startswith("cxl-ring-bench ")


@pytest.mark.parametrize("args, message", [
    ([], "--path REGION is required"),
    (["--path", "/x", "--bench", "0"], "--bench wants an integer"),
    (["--path", "/x", "--layout", "v5"], "--layout wants v4 or v2"),
    (["--path", "/x", "--op", "del"], "unknown operation 'del'"),
    (["--path", "/x", "--threads", "1000"], "--threads wants an integer"),
    (["--path", "/x", "--get-ratio", "2"], "--get-ratio wants a number"),
    (["--path", "/x", "--no-such-flag"], "unknown option"),
    (["--path", "/x", "stray"], "unexpected argument 'stray'"),
])
def test_bad_flags_exit_1(bench_bin: Path, args: list[str], message: str) -> None:
    out = run_bench(*args)
    assert out.returncode == 1, out
    assert message in out.stderr


def test_missing_region_exit_2(bench_bin: Path, shm_path: str) -> None:
    out = run_bench("--path", shm_path)
    assert out.returncode == 2
    assert f"cannot open region {shm_path}: No such file or directory" in out.stderr


def test_unformatted_region_exit_2(bench_bin: Path, shm_path: str) -> None:
    write_region(shm_path, b"")
    for layout in ("v4", "v3", "v2"):
        out = run_bench("--path", shm_path, "--layout", layout)
        assert out.returncode == 2, out
        assert "not formatted" in out.stderr
        assert "server" in out.stderr


def test_unknown_magic_exit_3(bench_bin: Path, shm_path: str) -> None:
    write_region(shm_path, b"GARBAGE!" + b"\x01" * 100)
    out = run_bench("--path", shm_path)
    assert out.returncode == 3
    assert "unknown magic" in out.stderr


def test_v2_region_with_v4_client_says_layout_v2(bench_bin: Path, shm_path: str) -> None:
    write_region(shm_path, b"CXLSHM1\0" + struct.pack("<II", 2, 4))
    out = run_bench("--path", shm_path)
    assert out.returncode == 3
    assert "layout v2" in out.stderr


def test_v4_region_with_v2_client_says_layout_v4(bench_bin: Path, shm_path: str) -> None:
    write_region(shm_path, b"CXLDSMR\0" + struct.pack("<II", 4, 4096))
    out = run_bench("--path", shm_path, "--layout", "v2")
    assert out.returncode == 3
    assert "layout v4" in out.stderr and "without --layout v2" in out.stderr


def test_other_layout_version_exit_3(bench_bin: Path, shm_path: str) -> None:
    write_region(shm_path, b"CXLDSMR\0" + struct.pack("<II", 3, 4096))   # before sessions bound ids
    out = run_bench("--path", shm_path)
    assert out.returncode == 3
    assert "layout version 3" in out.stderr


def test_map_size_larger_than_region_exit_2(bench_bin: Path, shm_path: str) -> None:
    write_region(shm_path, b"", size=1 << 16)
    out = run_bench("--path", shm_path, "--map-size", str(1 << 30))
    assert out.returncode == 2
    assert "smaller than map size" in out.stderr


def test_error_is_also_in_json(bench_bin: Path, shm_path: str, tmp_path: Path) -> None:
    import json

    out = run_bench("--path", shm_path, "--json", str(tmp_path / "r.json"))
    assert out.returncode == 2
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["outcome"] == "error"
    assert "cannot open region" in doc["message"]
    assert doc["results"] == []
