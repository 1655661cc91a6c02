"""library/cxl_region.py on a real temporary directory: check mode, diff, idempotence."""

import grp
import os
import pwd
import stat

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
