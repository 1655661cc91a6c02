"""cxl-ring-bench without a server: flags, --help, and clear errors for regions that are
missing, unformatted, of another layout, or too small, and for directory regions (security
secdsm) without a header, with a segment table that is not the layout's, or without a
channel this process may write. Every error is one line on stderr and a documented non-zero
exit code."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from benchutil import BENCH, SEGMENT, header, run_bench, write_region_dir

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
    (["--path", "/x", "--layout", "v6"], "--layout wants v5 or v2"),
    (["--path", "/x", "--layout", "v4"], "--layout v4 is no longer spoken"),
    (["--path", "/x", "--layout", "v3"], "use --layout v5"),
    (["--path", "/x", "--op", "del"], "unknown operation 'del'"),
    (["--path", "/x", "--threads", "1000"], "--threads wants an integer"),
    (["--path", "/x", "--get-ratio", "2"], "--get-ratio wants a number"),
    (["--path", "/x", "--no-such-flag"], "unknown option"),
    (["--path", "/x", "stray"], "unexpected argument 'stray'"),
    (["--path", "/x", "--no-read"], "--no-read runs by time: give --duration"),
])
def test_bad_flags_exit_1(bench_bin: Path, args: list[str], message: str) -> None:
    out = run_bench(*args)
    assert out.returncode == 1, out
    assert message in out.stderr


def test_missing_region_exit_2(bench_bin: Path, shm_path: str) -> None:
    out = run_bench("--path", shm_path)
    assert out.returncode == 2
    assert f"cannot open region {shm_path}: No such file or directory" in out.stderr


def test_a_char_device_that_is_no_region_exit_2(bench_bin: Path) -> None:
    """/dev/null is a character device, but neither uio nor device DAX: the C library says
    which kinds it maps."""
    out = run_bench("--path", "/dev/null")
    assert out.returncode == 2, out
    assert "/dev/null is neither a file, a uio device nor a device-DAX device" in out.stderr


def test_unformatted_region_exit_2(bench_bin: Path, shm_path: str) -> None:
    write_region(shm_path, b"")
    for layout in ("v5", "v2"):
        out = run_bench("--path", shm_path, "--layout", layout)
        assert out.returncode == 2, out
        assert "not formatted" in out.stderr
        assert "server" in out.stderr


def test_unknown_magic_exit_3(bench_bin: Path, shm_path: str) -> None:
    write_region(shm_path, b"GARBAGE!" + b"\x01" * 100)
    out = run_bench("--path", shm_path)
    assert out.returncode == 3
    assert "unknown magic" in out.stderr


def test_v2_region_with_v5_client_says_layout_v2(bench_bin: Path, shm_path: str) -> None:
    write_region(shm_path, b"CXLSHM1\0" + struct.pack("<II", 2, 4))
    out = run_bench("--path", shm_path)
    assert out.returncode == 3
    assert "layout v2" in out.stderr


def test_v5_region_with_v2_client_says_layout_v5(bench_bin: Path, shm_path: str) -> None:
    write_region(shm_path, b"CXLDSMR\0" + struct.pack("<II", 5, 4096))
    out = run_bench("--path", shm_path, "--layout", "v2")
    assert out.returncode == 3
    assert "layout v5" in out.stderr and "without --layout v2" in out.stderr


def test_other_layout_version_exit_3(bench_bin: Path, shm_path: str) -> None:
    write_region(shm_path, b"CXLDSMR\0" + struct.pack("<II", 4, 4096))   # layout 4, replaced
    out = run_bench("--path", shm_path)
    assert out.returncode == 3
    assert "layout version 4" in out.stderr


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


# ---- Directory regions (security secdsm) ------------------------------------------------

def test_directory_without_header_exit_2(bench_bin: Path, shm_path: str) -> None:
    write_region_dir(shm_path, (2, 2), only=["client-0", "server-0"])
    out = run_bench("--path", shm_path)
    assert out.returncode == 2, out
    assert f"{shm_path}/header" in out.stderr and "header segment readable" in out.stderr


def test_directory_with_a_wrong_segment_table_is_a_layout_mismatch(bench_bin: Path,
                                                                   shm_path: str) -> None:
    good = header((2, 2))
    # entry fields: 0 offset, 1 size, 2 span, 3 kind, 4 reserved, 5 group, 6 first, 7 count
    for k, field, value in ((2, 0, 4096 * 3),      # server-0 moved onto client-0's span
                            (3, 5, 0),             # client-1 said to be group 0's
                            (4, 7, 1),             # server-1's channel count != client-1's
                            (4, 6, 0),             # server-1's first channel != client-1's
                            (1, 3, 3),             # client-0 said to be a server segment
                            (1, 4, 7)):            # a reserved byte set
        head = bytearray(good)
        entry = list(SEGMENT.unpack_from(head, 256 + 32 * k))
        entry[field] = value
        SEGMENT.pack_into(head, 256 + 32 * k, *entry)
        write_region_dir(shm_path, (2, 2), head=bytes(head))
        out = run_bench("--path", shm_path, "--bench", "10")
        assert out.returncode == 3, out
        assert "layout mismatch" in out.stderr and f"segment table entry {k}" in out.stderr, \
            out.stderr
        shutil.rmtree(shm_path)


def test_directory_segment_smaller_than_the_layout_exit_2(bench_bin: Path,
                                                          shm_path: str) -> None:
    write_region_dir(shm_path, (2, 2))
    os.truncate(os.path.join(shm_path, "client-1"), 4096)
    out = run_bench("--path", shm_path, "--bench", "10")
    assert out.returncode == 2, out
    assert "client-1 is 4096 bytes" in out.stderr and "needs at least" in out.stderr


def test_view_without_a_writable_client_segment_exit_2(bench_bin: Path, shm_path: str) -> None:
    """A view with the header and server-0 only (client-0 not granted): nothing to claim."""
    write_region_dir(shm_path, (2, 2), only=["header", "server-0"])
    out = run_bench("--path", shm_path, "--bench", "10")
    assert out.returncode == 2, out
    assert "no channel can be claimed" in out.stderr and "client-<g> read-write" in out.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv to run the bench as another user")
def test_read_only_client_segment_is_mapped_but_not_claimed(bench_bin: Path,
                                                             shm_path: str) -> None:
    """client-0 readable but not writable for this user: opened read-only, no channel."""
    write_region_dir(shm_path, (2, 2), only=["header", "client-0", "server-0"])
    os.chmod(shm_path, 0o755)
    for name in os.listdir(shm_path):
        os.chmod(os.path.join(shm_path, name), 0o644)
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          str(BENCH), "--path", shm_path, "--bench", "10"],
                         capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode == 2, out
    assert "no channel can be claimed" in out.stderr
