"""library/cxl_ivshmem.py against a fake guest kernel (sysfs tree + bind behaviour)."""

import grp
import json
import os
import stat

import pytest
from ansible.module_utils import basic

from moduleutil import load_library, write_tree

ADDRESS = "0000:00:10.0"
BAR2 = 256 << 20


class FakeKernel:
    """Enough of sysfs for the module: PCI devices, drivers, binding, uio maps."""

    def __init__(self, root, uio_maps_bar2=False, loaded=False):
        self.root = str(root)
        self.uio_maps_bar2 = uio_maps_bar2
        self.loaded = loaded
        dev = "bus/pci/devices/" + ADDRESS
        write_tree(
            root,
            {
                dev + "/vendor": "0x1af4\n",
                dev + "/device": "0x1110\n",
                dev + "/driver_override": "(null)\n",
                dev + "/resource2": "",
                dev + "/resource": "0x00000000febc3000 0x00000000febc30ff 0x0000000000040200\n"
                "0x0000000000000000 0x0000000000000000 0x0000000000000000\n"
                "0x00000000e0000000 0x00000000efffffff 0x000000000014220c\n",
                "bus/pci/devices/0000:00:02.0/vendor": "0x1af4\n",
                "bus/pci/devices/0000:00:02.0/device": "0x1000\n",
            },
        )
        if loaded:
            self.load()
        self.binds = 0

    def load(self):
        os.makedirs(os.path.join(self.root, "bus/pci/drivers/uio_pci_generic"), exist_ok=True)
        self.loaded = True

    def driver_probe(self, address):
        dev = os.path.join(self.root, "bus/pci/devices", address)
        with open(os.path.join(dev, "driver_override")) as handle:
            override = handle.read().strip()
        if override != "uio_pci_generic" or not self.loaded:
            return
        link = os.path.join(dev, "driver")
        if not os.path.islink(link):
            os.symlink(os.path.join(self.root, "bus/pci/drivers/uio_pci_generic"), link)
        os.makedirs(os.path.join(dev, "uio/uio0"), exist_ok=True)
        write_tree(self.root, {"../dev/uio0": ""})
        size = "0x%x" % (BAR2 if self.uio_maps_bar2 else 0x1000)
        write_tree(self.root, {"class/uio/uio0/maps/map0/size": size + "\n"})
        self.binds += 1


@pytest.fixture
def module():
    return load_library("cxl_ivshmem")


def run(module, monkeypatch, run_module, kernel, tmp_path, check_mode=False, regions=None,
        extra=None):
    class FakeSysfs(module.Sysfs):
        dev_root = os.path.join(kernel.root, "../dev")

        def load_driver(self, driver):
            kernel.load()

        def write(self, value, *parts):
            if parts[-1].endswith("drivers_probe"):
                kernel.driver_probe(value)
            else:
                super().write(value, *parts)

    def main():
        m = basic.AnsibleModule(argument_spec=module.ARGUMENT_SPEC, supports_check_mode=True)
        m.exit_json(**module.core(m, FakeSysfs(m.params["sys_root"], m)))

    # The group is the test user's own, which a non-root user may give (the default, root,
    # only root may).
    args = {"group": grp.getgrgid(os.getgid()).gr_name, **(extra or {}),
        "regions": regions or [{"name": "cxl0", "pci_address": ADDRESS, "size_bytes": BAR2}],
        "link_dir": str(tmp_path / "dev/cxl"),
        "sys_root": kernel.root,
        "udev_rules": str(tmp_path / "etc/udev/rules.d/70-cxl-lab.rules"),
        "modules_load": str(tmp_path / "etc/modules-load.d/cxl-lab.conf"),
        "regions_json": str(tmp_path / "etc/cxl-lab/regions.json"),
    }
    return run_module(module, args, check_mode=check_mode, main=main)


def test_check_mode_binds_nothing(module, monkeypatch, run_module, tmp_path):
    kernel = FakeKernel(tmp_path / "sys")
    how, result = run(module, monkeypatch, run_module, kernel, tmp_path, check_mode=True)
    assert how == "exit" and result["changed"]
    assert result["actions"][0] == "modprobe uio_pci_generic"
    assert kernel.binds == 0 and not os.path.exists(tmp_path / "dev/cxl")
    assert not os.path.exists(tmp_path / "etc")


def test_binds_falls_back_to_resource2_and_is_idempotent(module, monkeypatch, run_module, tmp_path):
    kernel = FakeKernel(tmp_path / "sys")
    how, result = run(module, monkeypatch, run_module, kernel, tmp_path)
    assert how == "exit" and result["changed"], result
    region = result["regions"]["cxl0"]
    # uio_pci_generic exposes only BAR0 (4 KiB): the path is the BAR2 file in sysfs.
    assert region["map"] == "resource2" and region["uio"] == "uio0"
    assert os.readlink(tmp_path / "dev/cxl/cxl0") == f"/sys/bus/pci/devices/{ADDRESS}/resource2"
    assert result["ansible_facts"]["cxl_regions"]["cxl0"]["size_bytes"] == BAR2
    rules = (tmp_path / "etc/udev/rules.d/70-cxl-lab.rules").read_text()
    assert 'ATTR{driver_override}="uio_pci_generic"' in rules and "resource2" in rules
    assert (
        json.loads((tmp_path / "etc/cxl-lab/regions.json").read_text())["cxl0"]["map"]
        == "resource2"
    )
    for check_mode in (True, False):
        how, result = run(module, monkeypatch, run_module, kernel, tmp_path, check_mode=check_mode)
        assert result["changed"] is False and result["actions"] == []
    assert kernel.binds == 1


def test_uio_map_of_bar2_is_used(module, monkeypatch, run_module, tmp_path):
    kernel = FakeKernel(tmp_path / "sys", uio_maps_bar2=True, loaded=True)
    how, result = run(module, monkeypatch, run_module, kernel, tmp_path)
    assert result["regions"]["cxl0"]["map"] == "uio"
    assert os.readlink(tmp_path / "dev/cxl/cxl0") == "/dev/uio0"
    assert "modprobe uio_pci_generic" not in result["actions"]


def test_missing_device_names_the_ones_present(module, monkeypatch, run_module, tmp_path):
    kernel = FakeKernel(tmp_path / "sys")
    how, result = run(
        module,
        monkeypatch,
        run_module,
        kernel,
        tmp_path,
        regions=[{"name": "cxl1", "pci_address": "0000:00:11.0"}],
    )
    assert how == "fail" and ADDRESS in result["msg"] and "cxl1" in result["msg"]


def test_size_mismatch_says_restart(module, monkeypatch, run_module, tmp_path):
    kernel = FakeKernel(tmp_path / "sys")
    how, result = run(
        module,
        monkeypatch,
        run_module,
        kernel,
        tmp_path,
        regions=[{"name": "cxl0", "pci_address": ADDRESS, "size_bytes": BAR2 * 2}],
    )
    assert how == "fail" and "restart the VM" in result["msg"]


def _access(path):
    info = os.stat(path)
    return info.st_gid, stat.S_IMODE(info.st_mode)


def test_region_file_gets_group_and_mode_then_no_change(module, monkeypatch, run_module, tmp_path):
    kernel = FakeKernel(tmp_path / "sys")
    bar2_file = tmp_path / "sys/bus/pci/devices" / ADDRESS / "resource2"
    os.chmod(bar2_file, 0o644)
    group = grp.getgrgid(os.getgid()).gr_name
    extra = {"group": group, "mode": "0660"}
    how, result = run(module, monkeypatch, run_module, kernel, tmp_path, extra=extra)
    assert how == "exit", result
    assert f"chgrp {group} and chmod 0660 {bar2_file}" in result["actions"]
    assert _access(bar2_file) == (os.getgid(), 0o660)
    assert result["regions"]["cxl0"]["group"] == group
    assert result["diff"]["before"]["cxl0"]["access"].endswith(" 0644")
    rules = (tmp_path / "etc/udev/rules.d/70-cxl-lab.rules").read_text()
    assert (
        f'ACTION=="bind", KERNEL=="{ADDRESS}"' in rules
        and f"RUN+=\"/bin/chgrp {group} /sys/bus/pci/devices/{ADDRESS}/resource2\"" in rules
        and f"RUN+=\"/bin/chmod 0660 /sys/bus/pci/devices/{ADDRESS}/resource2\"" in rules
    )
    how, result = run(module, monkeypatch, run_module, kernel, tmp_path, extra=extra)
    assert result["changed"] is False and result["actions"] == []
    # Check mode reports a drift and leaves the file alone.
    os.chmod(bar2_file, 0o600)
    how, result = run(module, monkeypatch, run_module, kernel, tmp_path, check_mode=True,
                      extra=extra)
    assert result["changed"] and _access(bar2_file)[1] == 0o600


def test_uio_node_rule_sets_group_and_mode(module, monkeypatch, run_module, tmp_path):
    kernel = FakeKernel(tmp_path / "sys", uio_maps_bar2=True, loaded=True)
    group = grp.getgrgid(os.getgid()).gr_name
    how, result = run(module, monkeypatch, run_module, kernel, tmp_path,
                      extra={"group": group, "mode": "0660"})
    assert how == "exit", result
    assert _access(tmp_path / "dev/uio0")[1] == 0o660
    rules = (tmp_path / "etc/udev/rules.d/70-cxl-lab.rules").read_text()
    assert f'GROUP="{group}", MODE="0660"' in rules


@pytest.mark.parametrize("mode", ["0666", "0644", "4660", "rw"])
def test_mode_open_to_others_is_refused(module, monkeypatch, run_module, tmp_path, mode):
    kernel = FakeKernel(tmp_path / "sys")
    how, result = run(module, monkeypatch, run_module, kernel, tmp_path, extra={"mode": mode})
    assert how == "fail" and mode in result["msg"] and kernel.binds == 0


def test_unknown_group_says_create_it(module, monkeypatch, run_module, tmp_path):
    kernel = FakeKernel(tmp_path / "sys")
    how, result = run(module, monkeypatch, run_module, kernel, tmp_path,
                      extra={"group": "no-such-cxl-group"})
    assert how == "fail" and "no-such-cxl-group does not exist" in result["msg"]
    assert kernel.binds == 0


# ---- the plan alone: pure functions of the observed and the desired state ----------------

PARAMS = {
    "regions": [{"name": "cxl0", "pci_address": ADDRESS, "size_bytes": BAR2}],
    "driver": "uio_pci_generic",
    "link_dir": "/dev/cxl",
    "group": "cxl",
    "mode": "0660",
    "udev_rules": "",
    "modules_load": "/etc/modules-load.d/cxl-lab.conf",
    "regions_json": "",
}
SYSFS_BAR2 = f"/sys/bus/pci/devices/{ADDRESS}/resource2"


def observed(driver=None, target=None, access="root 0600", loaded=False):
    return {
        "driver_loaded": loaded,
        "regions": {
            "cxl0": {
                "name": "cxl0", "pci_address": ADDRESS, "driver": driver,
                "driver_override": driver, "path": "/dev/cxl/cxl0", "target": target,
                "access": access, "map": "resource2", "map_target": SYSFS_BAR2,
                "map_file": SYSFS_BAR2, "uio": "uio0" if driver else None, "size_bytes": BAR2,
            }
        },
    }


def test_plan_binds_an_unbound_guest(module):
    assert module.plan_binding(observed(), "uio_pci_generic") == [
        ("modprobe", "uio_pci_generic"),
        ("bind", "cxl0", ADDRESS, "uio_pci_generic"),
    ]


def test_plan_publishes_path_access_and_files(module):
    now = observed(driver="uio_pci_generic", loaded=True)
    desired = module.desired_state(PARAMS, now)
    actions = module.plan_publish(now, desired, {})
    assert [module.describe(a) for a in actions] == [
        f"link /dev/cxl/cxl0 -> {SYSFS_BAR2}",
        f"chgrp cxl and chmod 0660 {SYSFS_BAR2}",
        "write /etc/modules-load.d/cxl-lab.conf",
    ]


def test_plan_of_a_converged_guest_is_empty(module):
    now = observed(driver="uio_pci_generic", target=SYSFS_BAR2, access="cxl 0660", loaded=True)
    desired = module.desired_state(PARAMS, now)
    files = {"/etc/modules-load.d/cxl-lab.conf": "uio_pci_generic\n"}
    assert module.plan_binding(now, "uio_pci_generic") == []
    assert module.plan_publish(now, desired, files) == []
