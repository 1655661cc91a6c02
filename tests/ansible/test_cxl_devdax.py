"""library/cxl_devdax.py against a fake guest: a sysfs tree with NVDIMM regions and
device-DAX devices, and a fake ndctl that makes the device appear as the kernel would."""

import grp
import os
import stat

import pytest
from ansible.module_utils import basic

from moduleutil import load_library, make_runner, write_tree

cxl_devdax = load_library("cxl_devdax")
SIZE = 130 << 20
REGION = {"name": "cxl2", "guest_node": 1, "size_bytes": SIZE, "channel_group": 0}


class FakeGuest:
    """NVDIMM region0 in node NODE with namespace0.0; dax0.0 exists when DAX is true. The
    fake ndctl logs its calls; enable-namespace makes dax0.0 appear when the file already
    holds an info block (INFO_BLOCK), create-namespace always does."""

    def __init__(self, tmp_path, node=1, dax=False, info_block=False, dax_size=SIZE):
        self.sys = tmp_path / "sys"
        self.dev = tmp_path / "dev"
        self.node, self.dax_size, self.info_block = node, dax_size, info_block
        self.calls = []
        write_tree(self.sys, {
            "bus/nd/devices/region0/numa_node": "0\n",
            "bus/nd/devices/region0/target_node": f"{node}\n",
            "bus/nd/devices/region0/size": f"{SIZE + (2 << 20)}\n",
            "bus/nd/devices/region0/align": "0x1000000\n",
            "bus/nd/devices/region0/namespace0.0/mode": "raw\n",
            "bus/dax/devices/.keep": "",
        })
        self.dev.mkdir()
        if dax:
            self.make_dax()

    def make_dax(self):
        write_tree(self.sys, {
            "bus/dax/devices/dax0.0/target_node": f"{self.node}\n",
            "bus/dax/devices/dax0.0/numa_node": "0\n",
            "bus/dax/devices/dax0.0/size": f"{self.dax_size}\n",
            "bus/dax/devices/dax0.0/align": f"{2 << 20}\n",
        })
        (self.dev / "dax0.0").write_bytes(b"")
        os.chmod(self.dev / "dax0.0", 0o600)

    def ndctl(self, args, **_):
        self.calls.append(args[1:])
        if args[1] == "enable-namespace" and self.info_block:
            self.make_dax()
        if args[1] == "create-namespace":
            self.info_block = True
            self.make_dax()
        return 0, "", ""


@pytest.fixture
def run(monkeypatch, tmp_path):
    module_run = make_runner(monkeypatch)

    def runner(guest, check_mode=False, **params):
        params = {
            "regions": [REGION], "sys_root": str(guest.sys),
            "link_dir": str(tmp_path / "cxl"), "udev_rules": str(tmp_path / "70-cxl-devdax.rules"),
            "group": grp.getgrgid(os.getgid()).gr_name, "mode": "0660", **params,
        }
        monkeypatch.setattr(basic.AnsibleModule, "run_command", lambda self, a, **k: guest.ndctl(a))
        monkeypatch.setattr(basic.AnsibleModule, "get_bin_path",
                            lambda self, name, required=False: "/usr/bin/ndctl")
        monkeypatch.setattr(cxl_devdax, "DEV_ROOT", str(guest.dev))  # the fake /dev/daxN.M
        how, result = module_run(cxl_devdax, params, check_mode=check_mode)
        result["failed"] = how == "fail"
        return result
    return runner


def test_first_guest_formats_the_raw_namespace_with_map_mem(run, tmp_path):
    guest = FakeGuest(tmp_path)
    result = run(guest)
    assert result["changed"]
    assert guest.calls == [
        ["disable-namespace", "namespace0.0"],
        ["enable-namespace", "namespace0.0"],
        ["disable-region", "region0"],
        ["enable-region", "region0"],
        ["create-namespace", "--force", "--reconfig=namespace0.0", "--mode=devdax",
         "--map=mem", "--align=2M"],
    ]
    assert (guest.sys / "bus/nd/devices/region0/align").read_text() == str(2 << 20)
    cxl2 = result["regions"]["cxl2"]
    assert (cxl2["how"], cxl2["target"], cxl2["size_bytes"], cxl2["guest_node"]) == (
        "formatted", str(guest.dev / "dax0.0"), SIZE, 1)
    link = tmp_path / "cxl" / "cxl2"
    assert os.readlink(link) == str(guest.dev / "dax0.0")
    assert stat.S_IMODE(os.stat(guest.dev / "dax0.0").st_mode) == 0o660
    rules = (tmp_path / "70-cxl-devdax.rules").read_text()
    assert 'SUBSYSTEM=="dax", ATTR{target_node}=="1"' in rules
    assert 'SYMLINK+="' in rules and 'MODE="0660"' in rules


def test_a_later_guest_only_reprobes_and_a_second_run_changes_nothing(run, tmp_path):
    guest = FakeGuest(tmp_path, info_block=True)
    result = run(guest)
    assert result["regions"]["cxl2"]["how"] == "re-probed"
    assert [c[0] for c in guest.calls] == ["disable-namespace", "enable-namespace"]
    guest.calls.clear()
    again = run(guest)
    assert not again["changed"], again["actions"]
    assert again["regions"]["cxl2"]["how"] == "found"
    assert guest.calls == []


def test_check_mode_changes_nothing(run, tmp_path):
    guest = FakeGuest(tmp_path)
    result = run(guest, check_mode=True)
    assert result["changed"]
    assert guest.calls == []
    assert not (tmp_path / "cxl").exists()


def test_a_wrong_size_fails_with_both_sizes(run, tmp_path):
    guest = FakeGuest(tmp_path, dax=True, dax_size=SIZE - (2 << 20))
    result = run(guest)
    assert result["failed"]
    assert f"is {SIZE - (2 << 20)} bytes, the lab describes {SIZE}" in result["msg"]


def test_no_nvdimm_in_the_node_says_so(run, tmp_path):
    guest = FakeGuest(tmp_path, node=3)
    result = run(guest)
    assert result["failed"]
    assert "no NVDIMM in guest NUMA node 1" in result["msg"]
    assert "region0" in result["msg"]


def test_a_world_readable_mode_is_refused(run, tmp_path):
    result = run(FakeGuest(tmp_path), mode="0664")
    assert result["failed"] and "use 0600 or 0660" in result["msg"]
