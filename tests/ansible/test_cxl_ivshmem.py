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
# A secdsm region's segments, each its own device (docs/ring-protocol.md section 2).
HEADER, CLIENT0, SERVER0, CLIENT1 = "0000:00:10.0", "0000:00:11.0", "0000:00:12.0", "0000:00:13.0"
SPAN = 32 << 20
SEGMENT_BARS = {HEADER: 4096, CLIENT0: SPAN, SERVER0: SPAN, CLIENT1: SPAN}
CLIENT_GRANTS = [
    {"name": "header", "pci_address": HEADER, "size_bytes": 4096, "access": "ro"},
    {"name": "client-0", "pci_address": CLIENT0, "size_bytes": SPAN, "access": "rw"},
    {"name": "server-0", "pci_address": SERVER0, "size_bytes": SPAN, "access": "ro"},
]
SECDSM = [{"name": "cxl0", "security": "secdsm", "channel_group": 0, "segments": CLIENT_GRANTS}]


BAR0, BAR2_START = 0xFEBC3000, 0xE0000000


def resource_file(bar2_size):
    """/sys/bus/pci/devices/<address>/resource: BAR0 (registers), BAR1 (none), BAR2."""
    return (
        f"0x{BAR0:016x} 0x{BAR0 + 0xFF:016x} 0x0000000000040200\n"
        "0x0000000000000000 0x0000000000000000 0x0000000000000000\n"
        f"0x{BAR2_START:016x} 0x{BAR2_START + bar2_size - 1:016x} 0x000000000014220c\n"
    )


class FakeKernel:
    """Enough of sysfs for the module: PCI devices, drivers, binding, uio maps. DEVICES maps
    each ivshmem device's address to its BAR2 size; a bound device gets the next uioN."""

    def __init__(self, root, uio_maps_bar2=False, loaded=False, devices=None):
        self.root = str(root)
        self.uio_maps_bar2 = uio_maps_bar2
        self.loaded = loaded
        self.devices = devices or {ADDRESS: BAR2}
        self.uio = {}
        files = {
            "bus/pci/devices/0000:00:02.0/vendor": "0x1af4\n",
            "bus/pci/devices/0000:00:02.0/device": "0x1000\n",
        }
        for address, size in self.devices.items():
            dev = "bus/pci/devices/" + address
            files.update(
                {
                    dev + "/vendor": "0x1af4\n",
                    dev + "/device": "0x1110\n",
                    dev + "/driver_override": "(null)\n",
                    dev + "/resource2": "",
                    dev + "/resource": resource_file(size),
                }
            )
        write_tree(root, files)
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
        uio = self.uio.setdefault(address, f"uio{len(self.uio)}")
        os.makedirs(os.path.join(dev, "uio", uio), exist_ok=True)
        write_tree(self.root, {"../dev/" + uio: ""})
        # uio's map 0: BAR2 itself, or (uio_pci_generic) the register bank, page-rounded.
        addr, size = (BAR2_START, self.devices[address]) if self.uio_maps_bar2 else (BAR0, 0x1000)
        write_tree(self.root, {f"class/uio/{uio}/maps/map0/addr": f"0x{addr:016x}\n",
                               f"class/uio/{uio}/maps/map0/size": f"0x{size:x}\n"})
        self.binds += 1

    def bar2_file(self, address):
        return os.path.join(self.root, "bus/pci/devices", address, "resource2")


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
    assert result["diff"]["before"]["cxl0"]["file_access"].endswith(" 0644")
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


# ---- secdsm: a directory of one symlink per granted segment ------------------------------


def _group():
    return grp.getgrgid(os.getgid()).gr_name


def secdsm_run(module, monkeypatch, run_module, kernel, tmp_path, regions=None, **kwargs):
    return run(module, monkeypatch, run_module, kernel, tmp_path, regions=regions or SECDSM,
               extra={"group": _group(), "mode": "0660"}, **kwargs)


def test_secdsm_region_is_a_directory_of_granted_segments(module, monkeypatch, run_module,
                                                          tmp_path):
    kernel = FakeKernel(tmp_path / "sys", devices=SEGMENT_BARS)
    how, result = secdsm_run(module, monkeypatch, run_module, kernel, tmp_path)
    assert how == "exit" and result["changed"], result
    region_dir = tmp_path / "dev/cxl/cxl0"
    assert region_dir.is_dir() and not region_dir.is_symlink()
    assert sorted(os.listdir(region_dir)) == ["client-0", "header", "server-0"]
    for name, address in (("header", HEADER), ("client-0", CLIENT0), ("server-0", SERVER0)):
        assert os.readlink(region_dir / name) == f"/sys/bus/pci/devices/{address}/resource2"
    described = json.loads((tmp_path / "etc/cxl-lab/regions.json").read_text())["cxl0"]
    assert described["security"] == "secdsm" and described["channel_group"] == 0
    assert described["path"] == str(region_dir) and described["group"] == _group()
    segments = described["segments"]
    assert [(s["name"], s["access"], s["mode"], s["size_bytes"]) for s in segments] == [
        ("header", "ro", "0440", 4096),
        ("client-0", "rw", "0660", SPAN),
        ("server-0", "ro", "0440", SPAN),
    ]
    # The device of client-1 (another group's) is in the guest but not granted: left alone.
    assert kernel.binds == 3 and CLIENT1 not in kernel.uio
    assert not os.path.exists(os.path.join(kernel.root, "bus/pci/devices", CLIENT1, "driver"))
    rules = (tmp_path / "etc/udev/rules.d/70-cxl-lab.rules").read_text()
    header_bar2 = f"/sys/bus/pci/devices/{HEADER}/resource2"
    assert f'RUN+="/bin/ln -sfn {header_bar2} {region_dir}/header"' in rules
    assert f'RUN+="/bin/chmod 0440 /sys/bus/pci/devices/{HEADER}/resource2"' in rules
    assert f'RUN+="/bin/chmod 0660 /sys/bus/pci/devices/{CLIENT0}/resource2"' in rules
    assert f'KERNEL=="{CLIENT1}"' not in rules
    for check_mode in (True, False):
        how, result = secdsm_run(module, monkeypatch, run_module, kernel, tmp_path,
                                 check_mode=check_mode)
        assert result["changed"] is False and result["actions"] == [], result["actions"]


def test_read_only_segment_has_no_write_bits(module, monkeypatch, run_module, tmp_path):
    kernel = FakeKernel(tmp_path / "sys", devices=SEGMENT_BARS)
    for address in (HEADER, CLIENT0, SERVER0):
        os.chmod(kernel.bar2_file(address), 0o600)
    how, result = secdsm_run(module, monkeypatch, run_module, kernel, tmp_path)
    assert how == "exit", result
    assert _access(kernel.bar2_file(HEADER)) == (os.getgid(), 0o440)
    assert _access(kernel.bar2_file(SERVER0)) == (os.getgid(), 0o440)
    assert _access(kernel.bar2_file(CLIENT0)) == (os.getgid(), 0o660)
    if os.geteuid() != 0:  # root passes any mode; a service user does not
        with pytest.raises(PermissionError):
            os.open(tmp_path / "dev/cxl/cxl0/server-0", os.O_RDWR)
        os.close(os.open(tmp_path / "dev/cxl/cxl0/server-0", os.O_RDONLY))
        os.close(os.open(tmp_path / "dev/cxl/cxl0/client-0", os.O_RDWR))


def test_read_only_uio_segment_rule_sets_the_read_only_mode(module, monkeypatch, run_module,
                                                            tmp_path):
    kernel = FakeKernel(tmp_path / "sys", uio_maps_bar2=True, loaded=True, devices=SEGMENT_BARS)
    how, result = secdsm_run(module, monkeypatch, run_module, kernel, tmp_path)
    assert how == "exit", result
    header = result["regions"]["cxl0"]["segments"][0]
    assert header["map"] == "uio" and header["mode"] == "0440"
    uio = kernel.uio[HEADER]
    assert os.readlink(tmp_path / "dev/cxl/cxl0/header") == f"/dev/{uio}"
    assert _access(tmp_path / "dev" / uio)[1] == 0o440
    rules = (tmp_path / "etc/udev/rules.d/70-cxl-lab.rules").read_text()
    assert (f'KERNELS=="{HEADER}", SYMLINK+="{tmp_path}/dev/cxl/cxl0/header", '
            f'GROUP="{_group()}", MODE="0440"') in rules


def test_read_only_whole_region_has_no_write_bits(module, monkeypatch, run_module, tmp_path):
    kernel = FakeKernel(tmp_path / "sys")
    regions = [{"name": "cxl1", "pci_address": ADDRESS, "size_bytes": BAR2, "access": "ro"}]
    how, result = secdsm_run(module, monkeypatch, run_module, kernel, tmp_path, regions=regions)
    assert how == "exit", result
    assert result["regions"]["cxl1"]["security"] == "off"
    assert result["regions"]["cxl1"]["mode"] == "0440"
    assert _access(kernel.bar2_file(ADDRESS))[1] == 0o440


def test_segments_no_longer_granted_are_unpublished(module, monkeypatch, run_module, tmp_path):
    kernel = FakeKernel(tmp_path / "sys", devices=SEGMENT_BARS)
    region_dir = tmp_path / "dev/cxl/cxl0"
    region_dir.mkdir(parents=True)
    os.symlink(f"/sys/bus/pci/devices/{CLIENT1}/resource2", region_dir / "client-1")
    os.symlink("/dev/uio9", region_dir / "server-1")
    how, result = secdsm_run(module, monkeypatch, run_module, kernel, tmp_path, check_mode=True)
    assert f"remove {region_dir}/client-1" in result["actions"]
    assert os.path.lexists(region_dir / "client-1")  # check mode changes nothing
    how, result = secdsm_run(module, monkeypatch, run_module, kernel, tmp_path)
    assert how == "exit", result
    assert sorted(os.listdir(region_dir)) == ["client-0", "header", "server-0"]
    assert result["diff"]["before"]["cxl0"]["entries"] == ["client-1", "server-1"]
    assert result["diff"]["after"]["cxl0"]["entries"] == ["client-0", "header", "server-0"]


def test_symlink_becomes_directory_and_back(module, monkeypatch, run_module, tmp_path):
    kernel = FakeKernel(tmp_path / "sys", devices=SEGMENT_BARS)
    path = tmp_path / "dev/cxl/cxl0"
    off = [{"name": "cxl0", "pci_address": HEADER, "size_bytes": 4096}]
    how, result = secdsm_run(module, monkeypatch, run_module, kernel, tmp_path, regions=off)
    assert how == "exit" and path.is_symlink(), result
    # Check mode predicts the switch and leaves the symlink.
    how, result = secdsm_run(module, monkeypatch, run_module, kernel, tmp_path, check_mode=True)
    actions = [a for a in result["actions"] if not a.startswith("bind ")]  # client-0, server-0
    assert actions[:3] == [f"remove {path}", f"mkdir {path}", f"link {path}/header -> "
                           f"/sys/bus/pci/devices/{HEADER}/resource2"]
    assert result["diff"]["before"]["cxl0"]["kind"] == "symlink"
    assert result["diff"]["after"]["cxl0"]["kind"] == "directory"
    assert path.is_symlink()
    how, result = secdsm_run(module, monkeypatch, run_module, kernel, tmp_path)
    assert how == "exit" and path.is_dir() and not path.is_symlink(), result
    assert sorted(os.listdir(path)) == ["client-0", "header", "server-0"]
    how, result = secdsm_run(module, monkeypatch, run_module, kernel, tmp_path, regions=off)
    assert how == "exit", result
    assert result["actions"][0] == f"remove {path}"
    assert path.is_symlink()
    assert os.readlink(path) == f"/sys/bus/pci/devices/{HEADER}/resource2"
    assert _access(kernel.bar2_file(HEADER))[1] == 0o660  # whole region, rw again


def test_missing_device_of_a_granted_segment_fails_clearly(module, monkeypatch, run_module,
                                                           tmp_path):
    kernel = FakeKernel(tmp_path / "sys", devices={HEADER: 4096, SERVER0: SPAN})
    how, result = secdsm_run(module, monkeypatch, run_module, kernel, tmp_path)
    assert how == "fail"
    assert result["msg"].startswith(
        f"region cxl0, segment client-0 (granted rw): no ivshmem device (1af4:1110) at {CLIENT0}"
    )
    assert f"{HEADER}, {SERVER0}" in result["msg"] and "re-run the vms role" in result["msg"]
    assert kernel.binds == 0 and not os.path.exists(tmp_path / "dev/cxl")


def test_segment_of_the_wrong_size_says_restart(module, monkeypatch, run_module, tmp_path):
    kernel = FakeKernel(tmp_path / "sys", devices=dict(SEGMENT_BARS, **{CLIENT0: SPAN // 2}))
    how, result = secdsm_run(module, monkeypatch, run_module, kernel, tmp_path)
    assert how == "fail" and "region cxl0, segment client-0" in result["msg"]
    assert "restart the VM" in result["msg"] and kernel.binds == 0


@pytest.mark.parametrize(
    "region, words",
    [
        ({"name": "cxl0", "security": "secdsm", "segments": []}, "lists no segments"),
        ({"name": "cxl0", "security": "secdsm", "pci_address": HEADER,
          "segments": CLIENT_GRANTS}, "drop it, or set security: off"),
        ({"name": "cxl0", "security": "secdsm", "segments": [
            dict(CLIENT_GRANTS[0], name="client-x")]}, "header, client-<g> or server-<g>"),
        ({"name": "cxl0", "security": "secdsm", "segments": [
            CLIENT_GRANTS[0], dict(CLIENT_GRANTS[1], name="header")]}, "given twice"),
        ({"name": "cxl0", "security": "secdsm", "segments": [
            CLIENT_GRANTS[0], dict(CLIENT_GRANTS[1], pci_address=HEADER)]},
         "both name the device"),
        ({"name": "cxl0", "size_bytes": BAR2}, "has no pci_address"),
        ({"name": "cxl0", "pci_address": HEADER, "segments": CLIENT_GRANTS},
         "set security: secdsm"),
        ({"name": "../cxl0", "pci_address": HEADER}, "plain name"),
    ],
)
def test_bad_region_is_refused_before_any_change(module, monkeypatch, run_module, tmp_path,
                                                 region, words):
    kernel = FakeKernel(tmp_path / "sys", devices=SEGMENT_BARS)
    how, result = secdsm_run(module, monkeypatch, run_module, kernel, tmp_path, regions=[region])
    assert how == "fail" and words in result["msg"], result
    assert kernel.binds == 0


def test_channel_groups_fill_in_the_group(module, monkeypatch, run_module, tmp_path):
    kernel = FakeKernel(tmp_path / "sys", devices=SEGMENT_BARS)
    regions = [{"name": "cxl0", "security": "secdsm", "segments": CLIENT_GRANTS},
               {"name": "cxl1", "security": "off", "pci_address": CLIENT1, "size_bytes": SPAN}]
    how, result = run(module, monkeypatch, run_module, kernel, tmp_path, regions=regions,
                      extra={"channel_groups": {"cxl0": 1, "cxl1": None}})
    assert how == "exit", result
    assert result["regions"]["cxl0"]["channel_group"] == 1
    assert result["regions"]["cxl1"]["channel_group"] is None


# ---- the plan alone: pure functions of the observed and the desired state ----------------

PARAMS = {
    "regions": [{"name": "cxl0", "security": "off", "pci_address": ADDRESS, "size_bytes": BAR2,
                 "access": "rw"}],
    "channel_groups": {},
    "driver": "uio_pci_generic",
    "link_dir": "/dev/cxl",
    "group": "cxl",
    "mode": "0660",
    "udev_rules": "",
    "modules_load": "/etc/modules-load.d/cxl-lab.conf",
    "regions_json": "",
}
SYSFS_BAR2 = f"/sys/bus/pci/devices/{ADDRESS}/resource2"


def device_state(key, address, driver, target, access, path):
    bar2 = f"/sys/bus/pci/devices/{address}/resource2"
    return {
        "name": key, "label": "region " + key.replace("/", ", segment "), "pci_address": address,
        "driver": driver, "driver_override": driver, "path": path, "target": target,
        "file_access": access, "map": "resource2", "map_target": bar2, "map_file": bar2,
        "uio": "uio0" if driver else None, "size_bytes": BAR2,
    }


def observed(driver=None, target=None, access="root 0600", loaded=False, kind="missing"):
    return {
        "driver_loaded": loaded,
        "devices": {"cxl0": device_state("cxl0", ADDRESS, driver, target, access, "/dev/cxl/cxl0")},
        "paths": {"cxl0": {"path": "/dev/cxl/cxl0", "security": "off", "kind": kind,
                           "entries": [], "devices": ["cxl0"]}},
    }


def test_plan_binds_an_unbound_guest(module):
    assert module.plan_binding(observed(), "uio_pci_generic") == [
        ("modprobe", "uio_pci_generic"),
        ("bind", "region cxl0", ADDRESS, "uio_pci_generic"),
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
    now = observed(driver="uio_pci_generic", target=SYSFS_BAR2, access="cxl 0660", loaded=True,
                   kind="symlink")
    desired = module.desired_state(PARAMS, now)
    files = {"/etc/modules-load.d/cxl-lab.conf": "uio_pci_generic\n"}
    assert module.plan_binding(now, "uio_pci_generic") == []
    assert module.plan_publish(now, desired, files) == []


def test_plan_replaces_a_directory_by_the_symlink(module):
    now = observed(driver="uio_pci_generic", access="cxl 0660", loaded=True, kind="directory")
    now["paths"]["cxl0"]["entries"] = ["header"]
    desired = module.desired_state(PARAMS, now)
    actions = module.plan_publish(now, desired, {"/etc/modules-load.d/cxl-lab.conf":
                                                 "uio_pci_generic\n"})
    assert [module.describe(a) for a in actions] == [
        "remove /dev/cxl/cxl0",
        f"link /dev/cxl/cxl0 -> {SYSFS_BAR2}",
    ]


def test_plan_replaces_the_symlink_by_a_directory_of_segments(module):
    params = dict(PARAMS, regions=[{"name": "cxl0", "security": "secdsm",
                                    "segments": CLIENT_GRANTS[:2]}])
    header = f"/sys/bus/pci/devices/{HEADER}/resource2"
    client = f"/sys/bus/pci/devices/{CLIENT0}/resource2"
    now = {
        "driver_loaded": True,
        "devices": {
            "cxl0/header": device_state("cxl0/header", HEADER, "uio_pci_generic", None,
                                        "cxl 0440", "/dev/cxl/cxl0/header"),
            "cxl0/client-0": device_state("cxl0/client-0", CLIENT0, "uio_pci_generic", None,
                                          "cxl 0440", "/dev/cxl/cxl0/client-0"),
        },
        "paths": {"cxl0": {"path": "/dev/cxl/cxl0", "security": "secdsm", "kind": "symlink",
                           "entries": [], "devices": ["cxl0/header", "cxl0/client-0"]}},
    }
    desired = module.desired_state(params, now)
    actions = module.plan_publish(now, desired, {"/etc/modules-load.d/cxl-lab.conf":
                                                 "uio_pci_generic\n"})
    assert [module.describe(a) for a in actions] == [
        "remove /dev/cxl/cxl0",
        "mkdir /dev/cxl/cxl0",
        f"link /dev/cxl/cxl0/header -> {header}",
        f"link /dev/cxl/cxl0/client-0 -> {client}",
        f"chgrp cxl and chmod 0660 {client}",
    ]
