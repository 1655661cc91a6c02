"""library/cxl_region.py on a real temporary directory: check mode, diff, idempotence."""

import grp
import os
import pwd
import stat
from pathlib import Path

import pytest

from moduleutil import load_library

ME = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP = grp.getgrgid(os.getgid()).gr_name


@pytest.fixture
def region(tmp_path):
    return {"path": str(tmp_path / "cxl-lab-cxl0"), "size_mib": 4, "owner": ME, "group": MY_GROUP}


@pytest.fixture
def module():
    return load_library("cxl_region")


def test_check_mode_then_create_then_no_change(module, run_module, region):
    how, result = run_module(module, region, check_mode=True)
    assert how == "exit" and result["changed"] and result["actions"][0] == "create"
    assert not os.path.exists(region["path"])
    assert result["diff"]["before"]["state"] == "absent"

    how, result = run_module(module, region)
    assert how == "exit" and result["changed"]
    st = os.stat(region["path"])
    assert st.st_size == 4 << 20
    assert stat.S_IMODE(st.st_mode) == 0o600

    for check_mode in (True, False):
        how, result = run_module(module, region, check_mode=check_mode)
        assert how == "exit" and result["changed"] is False and result["actions"] == []
        assert result["diff"]["before"] == result["diff"]["after"]


def test_resize_and_mode(module, run_module, region):
    run_module(module, region)
    how, result = run_module(module, dict(region, size_mib=8, mode="0660"))
    assert result["changed"] and result["actions"] == ["resize", "chmod"]
    assert os.stat(region["path"]).st_size == 8 << 20
    assert stat.S_IMODE(os.stat(region["path"]).st_mode) == 0o660
    assert result["diff"]["before"]["size_bytes"] == 4 << 20
    assert result["diff"]["after"]["size_bytes"] == 8 << 20


def test_prealloc_allocates_once(module, run_module, region):
    how, result = run_module(module, dict(region, prealloc=True))
    assert "prealloc" in result["actions"]
    assert os.stat(region["path"]).st_blocks * 512 >= 4 << 20
    how, result = run_module(module, dict(region, prealloc=True))
    assert result["changed"] is False


def test_remove_twice(module, run_module, region):
    run_module(module, region)
    how, result = run_module(module, dict(region, state="absent"), check_mode=True)
    assert result["changed"] and os.path.exists(region["path"])
    how, result = run_module(module, dict(region, state="absent"))
    assert result["changed"] and not os.path.exists(region["path"])
    how, result = run_module(module, dict(region, state="absent"))
    assert result["changed"] is False


@pytest.mark.parametrize("mode", ["0644", "0666", "0604"])
def test_world_accessible_modes_fail(module, run_module, region, mode):
    how, result = run_module(module, dict(region, mode=mode))
    assert how == "fail" and "0600 or 0660" in result["msg"]
    assert not os.path.exists(region["path"])


def test_size_must_be_power_of_two(module, run_module, region):
    how, result = run_module(module, dict(region, size_mib=3))
    assert how == "fail" and "power of two" in result["msg"]


def test_unknown_owner_says_the_fix(module, run_module, region):
    how, result = run_module(module, dict(region, owner="no-such-qemu-user"))
    assert how == "fail" and "qemu.conf" in result["msg"]


# ---- security: secdsm, a directory of segment files --------------------------------

SEGMENTS = [
    {"name": "header", "size_bytes": 4096},
    {"name": "client-0", "size_bytes": 64 << 10},
    {"name": "server-0", "size_bytes": 64 << 10},
]


@pytest.fixture
def segmented(tmp_path):
    return {
        "path": str(tmp_path / "cxl-lab-cxl0"),
        "security": "secdsm",
        "segments": SEGMENTS,
        "owner": ME,
        "group": MY_GROUP,
    }


def listing(path):
    """{file name: (size, mode)} of a segment directory."""
    return {
        entry.name: (entry.stat().st_size, stat.S_IMODE(entry.stat().st_mode))
        for entry in os.scandir(path)
    }


def test_secdsm_plan_then_create_then_no_change(module, run_module, segmented):
    how, result = run_module(module, segmented, check_mode=True)
    assert how == "exit" and result["changed"]
    assert result["actions"] == [
        "mkdir", "chown directory", "chmod directory",
        "create header", "chown header", "chmod header",
        "create client-0", "chown client-0", "chmod client-0",
        "create server-0", "chown server-0", "chmod server-0",
    ]
    assert not os.path.exists(segmented["path"])
    assert result["diff"]["before"] == {"path": segmented["path"], "state": "absent"}
    assert set(result["diff"]["after"]["segments"]) == {"header", "client-0", "server-0"}

    how, result = run_module(module, segmented)
    assert how == "exit" and result["changed"]
    assert stat.S_IMODE(os.stat(segmented["path"]).st_mode) == 0o750
    assert listing(segmented["path"]) == {
        "header": (4096, 0o600), "client-0": (64 << 10, 0o600), "server-0": (64 << 10, 0o600)
    }
    assert result["size_bytes"] == 4096 + (128 << 10)

    for check_mode in (True, False):
        how, result = run_module(module, segmented, check_mode=check_mode)
        assert how == "exit" and result["changed"] is False and result["actions"] == []
        assert result["diff"]["before"] == result["diff"]["after"]


def test_secdsm_new_layout_resizes_adds_and_prunes(module, run_module, segmented):
    run_module(module, segmented)
    (Path(segmented["path"]) / "client-0").write_bytes(b"x" * 10)  # a stale size
    layout = [
        {"name": "header", "size_bytes": 4096},
        {"name": "client-0", "size_bytes": 128 << 10},
        {"name": "server-0", "size_bytes": 64 << 10},
        {"name": "client-1", "size_bytes": 64 << 10},
    ]
    run_module(module, dict(segmented, segments=layout))
    layout = [layout[0], layout[3]]
    how, result = run_module(module, dict(segmented, segments=layout, mode="0660"), check_mode=True)
    assert result["actions"] == [
        "chmod header", "chmod client-1", "remove client-0", "remove server-0"
    ]
    how, result = run_module(module, dict(segmented, segments=layout, mode="0660"))
    assert how == "exit" and result["changed"]
    assert listing(segmented["path"]) == {"header": (4096, 0o660), "client-1": (64 << 10, 0o660)}


def test_secdsm_resize_of_a_segment(module, run_module, segmented):
    run_module(module, segmented)
    layout = [dict(s, size_bytes=256 << 10) if s["name"] == "server-0" else s for s in SEGMENTS]
    how, result = run_module(module, dict(segmented, segments=layout))
    assert result["actions"] == ["resize server-0"]
    assert listing(segmented["path"])["server-0"] == (256 << 10, 0o600)
    assert result["diff"]["before"]["segments"]["server-0"]["size_bytes"] == 64 << 10


def test_secdsm_prealloc_allocates_each_segment_once(module, run_module, segmented):
    how, result = run_module(module, dict(segmented, prealloc=True))
    assert {"prealloc header", "prealloc client-0", "prealloc server-0"} <= set(result["actions"])
    for entry in os.scandir(segmented["path"]):
        assert entry.stat().st_blocks * 512 >= entry.stat().st_size
    how, result = run_module(module, dict(segmented, prealloc=True))
    assert result["changed"] is False


def test_security_change_replaces_the_other_form(module, run_module, segmented, region):
    region = dict(region, path=segmented["path"])
    run_module(module, region)
    assert os.path.isfile(segmented["path"])
    how, result = run_module(module, segmented)
    assert result["actions"][:2] == ["replace", "mkdir"]
    assert os.path.isdir(segmented["path"])
    how, result = run_module(module, region)
    assert result["actions"][:2] == ["replace", "create"]
    assert os.path.isfile(segmented["path"]) and os.path.getsize(segmented["path"]) == 4 << 20


def test_secdsm_absent_removes_the_directory(module, run_module, segmented):
    run_module(module, segmented)
    how, result = run_module(module, {"path": segmented["path"], "state": "absent"}, True)
    assert result["actions"] == ["remove"] and os.path.isdir(segmented["path"])
    how, result = run_module(module, {"path": segmented["path"], "state": "absent"})
    assert result["changed"] and not os.path.exists(segmented["path"])
    how, result = run_module(module, {"path": segmented["path"], "state": "absent"})
    assert result["changed"] is False


@pytest.mark.parametrize(
    "change,message",
    [
        ({"segments": [{"name": "header", "size_bytes": 5000}]}, "not a power of two >= 4096"),
        ({"segments": [{"name": "../x", "size_bytes": 4096}]}, "unique file name"),
        ({"segments": SEGMENTS[:1] * 2}, "unique file name"),
        ({"segments": []}, "needs segments"),
        ({"size_mib": 4}, "size_mib is for security=off"),
        ({"security": "off", "size_mib": 4}, "segments are for security=secdsm"),
        ({"mode": "0644"}, "0600 or 0660"),
    ],
)
def test_secdsm_wrong_arguments_say_the_fix(module, run_module, segmented, change, message):
    how, result = run_module(module, dict(segmented, **change))
    assert how == "fail" and message in result["msg"], result["msg"]
    assert not os.path.exists(segmented["path"])
