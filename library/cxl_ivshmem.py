#!/usr/bin/python
# Copyright: CXL-DSM Lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""In a guest: bind the lab's ivshmem devices to uio and publish /dev/cxl/<region>."""

DOCUMENTATION = r"""
---
module: cxl_ivshmem
short_description: Bind the CXL lab's ivshmem devices to uio and give each region a stable path
description:
  - For each region, checks that the guest has an ivshmem-plain device (PCI C(1af4:1110)) at the
    region's PCI address, binds it to O(driver) (C(uio_pci_generic)) through C(driver_override),
    and publishes C(<link_dir>/<region>), a symlink that maps the whole region at offset 0.
  - The symlink points to the uio device when its map 0 is BAR2 (the shared memory); when uio only
    exposes BAR0 (the 256-byte register bank, as C(uio_pci_generic) does), it points to the BAR2
    file in sysfs, C(/sys/bus/pci/devices/<address>/resource2), which maps the region directly.
  - Later roles use C(/dev/cxl/<region>) and never a PCI address.
  - The file behind each path (the uio device or the sysfs BAR2 file) gets O(group) and O(mode),
    so that services may map the region as a dedicated user in that group rather than as root.
  - The binding and the paths survive reboots through O(udev_rules) and O(modules_load); everything
    is written by this one module so that a guest under TCG pays for one Python start, not five.
version_added: "1.0.0"
author: CXL-DSM Lab contributors
options:
  regions:
    description: The regions this guest maps.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Region name; the path is C(<link_dir>/<name>).
        type: str
        required: true
      pci_address:
        description: Guest PCI address of the region's ivshmem-plain device.
        type: str
        required: true
      size_bytes:
        description: Expected BAR2 size; a mismatch fails.
        type: int
  driver:
    description: The uio driver to bind.
    type: str
    default: uio_pci_generic
  link_dir:
    description: Directory of the stable per-region paths.
    type: path
    default: /dev/cxl
  group:
    description:
      - Group of the file that maps each region (C(/dev/uioN) or the sysfs C(resource2)); it must
        exist. Its members may map the region with O(mode).
    type: str
    default: root
  mode:
    description:
      - Octal mode of that file. Never world-accessible: the region is the lab's shared memory.
    type: str
    default: "0600"
  udev_rules:
    description:
      - File of udev rules that redo the binding and the paths at every boot; empty to skip.
    type: path
    default: /etc/udev/rules.d/70-cxl-lab.rules
  modules_load:
    description: modules-load.d file that loads O(driver) at boot; empty to skip.
    type: path
    default: /etc/modules-load.d/cxl-lab.conf
  regions_json:
    description:
      - JSON description of the regions (the RV(regions) result) for later programs; empty to skip.
    type: path
    default: /etc/cxl-lab/regions.json
  sys_root:
    description: Where sysfs is mounted (tests point it at a fake tree).
    type: path
    default: /sys
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - Needs root in the guest.
  - The kernel recreates the sysfs BAR2 file with mode 0600 root when the device is re-added; the
    udev rules set O(group) and O(mode) again when the driver binds.
"""

EXAMPLES = r"""
- name: Bind the regions and publish /dev/cxl/<region>
  cxl_ivshmem:
    regions:
      - name: cxl0
        pci_address: "0000:00:10.0"
        size_bytes: 268435456
"""

RETURN = r"""
regions:
  description: Per region, where it is and how it is mapped.
  returned: always
  type: dict
  sample:
    cxl0:
      path: /dev/cxl/cxl0
      target: /sys/bus/pci/devices/0000:00:10.0/resource2
      map: resource2
      pci_address: "0000:00:10.0"
      uio: uio0
      size_bytes: 268435456
      group: cxl
      mode: "0660"
ansible_facts:
  description: The same, as the fact C(cxl_regions).
  returned: always
  type: dict
"""

import grp
import json
import os
import stat

from ansible.module_utils.basic import AnsibleModule

IVSHMEM_VENDOR = "0x1af4"
IVSHMEM_DEVICE = "0x1110"


class Sysfs:
    """The few sysfs operations the module needs; tests replace it with a fake kernel."""

    dev_root = "/dev"

    def __init__(self, root, module):
        self.root = root
        self.module = module

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def read(self, *parts):
        try:
            with open(self.path(*parts)) as handle:
                return handle.read().strip()
        except OSError:
            return None

    def write(self, value, *parts):
        with open(self.path(*parts), "w") as handle:
            handle.write(value)

    def device(self, address):
        return self.path("bus/pci/devices", address)

    def driver_of(self, address):
        link = os.path.join(self.device(address), "driver")
        return os.path.basename(os.readlink(link)) if os.path.islink(link) else None

    def driver_loaded(self, driver):
        return os.path.isdir(self.path("bus/pci/drivers", driver))

    def load_driver(self, driver):
        modprobe = self.module.get_bin_path("modprobe", required=True)
        rc, out, err = self.module.run_command([modprobe, driver])
        if rc != 0:
            self.module.fail_json(msg=f"modprobe {driver} failed: {err or out}")

    def bind(self, address, driver):
        current = self.driver_of(address)
        self.write(driver, "bus/pci/devices", address, "driver_override")
        if current and current != driver:
            self.write(address, "bus/pci/drivers", current, "unbind")
        self.write(address, "bus/pci/drivers_probe")

    def uio_of(self, address):
        try:
            names = sorted(os.listdir(os.path.join(self.device(address), "uio")))
        except OSError:
            return None
        return names[0] if names else None

    def map_file(self, kind, address, uio):
        """The file that maps the region here: the uio device node or the sysfs BAR2 file."""
        if kind == "uio":
            return os.path.join(self.dev_root, uio)
        return self.path("bus/pci/devices", address, "resource2")

    def uio_maps(self, uio):
        """[(index, size)] of /sys/class/uio/<uio>/maps."""
        base = self.path("class/uio", uio, "maps")
        try:
            entries = sorted(os.listdir(base))
        except OSError:
            return []
        maps = []
        for entry in entries:
            if entry.startswith("map"):
                size = self.read("class/uio", uio, "maps", entry, "size")
                maps.append((int(entry[3:]), int(size, 16) if size else 0))
        return maps

    def bar_size(self, address, bar):
        lines = (self.read("bus/pci/devices", address, "resource") or "").splitlines()
        if len(lines) <= bar:
            return 0
        start, end = (int(x, 16) for x in lines[bar].split()[:2])
        return end - start + 1 if end else 0

    def ivshmem_addresses(self):
        found = []
        try:
            names = sorted(os.listdir(self.path("bus/pci/devices")))
        except OSError:
            return found
        for name in names:
            if (
                self.read("bus/pci/devices", name, "vendor") == IVSHMEM_VENDOR
                and self.read("bus/pci/devices", name, "device") == IVSHMEM_DEVICE
            ):
                found.append(name)
        return found


def region_state(sysfs, region, driver, link_dir):
    address = region["pci_address"]
    link = os.path.join(link_dir, region["name"])
    return {
        "name": region["name"],
        "pci_address": address,
        "driver": sysfs.driver_of(address),
        "driver_override": sysfs.read("bus/pci/devices", address, "driver_override"),
        "path": link,
        "target": os.readlink(link) if os.path.islink(link) else None,
    }


def file_access(path):
    """(group name or gid, "0ooo") of path, or (None, None) when it is missing."""
    try:
        info = os.stat(path)
    except OSError:
        return None, None
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    return group, "%04o" % stat.S_IMODE(info.st_mode)


def parse_mode(module, text):
    try:
        mode = int(str(text), 8)
    except ValueError:
        module.fail_json(msg=f"mode {text!r} is not an octal mode such as 0660")
    if mode & 0o007 or mode & ~0o770:
        module.fail_json(
            msg=f"mode {text!r} would let others than the owner and the group reach the shared "
            "region (or set special bits): use 0600 or 0660"
        )
    return mode


def choose_map(sysfs, address, uio, bar2_size):
    """('uio', /dev/uioN) when uio's map 0 is BAR2, else ('resource2', the sysfs BAR2 file)."""
    if uio:
        maps = sysfs.uio_maps(uio)
        if maps and maps[0][0] == 0 and maps[0][1] == bar2_size:
            return "uio", f"/dev/{uio}"
    return "resource2", os.path.join("/sys/bus/pci/devices", address, "resource2")


def udev_rules(results, driver, link_dir, group, mode):
    """udev rules that redo, at boot, what the module did: bind, publish the path, give it
    its group and mode. The sysfs BAR2 file exists for sure only once the driver binds, so
    its group and mode are set on the "bind" event."""
    lines = [
        "# Managed by the CXL lab (library/cxl_ivshmem.py): ivshmem-plain devices (1af4:1110)",
        f"# are bound to {driver} (driver_override: the driver has no ID table) and each",
        f"# region is published as {link_dir}/<region>, group {group}, mode {mode}.",
    ]
    match = (
        f'SUBSYSTEM=="pci", ATTR{{vendor}}=="{IVSHMEM_VENDOR}", ATTR{{device}}=="{IVSHMEM_DEVICE}"'
    )
    for name in sorted(results):
        region = results[name]
        address = region["pci_address"]
        lines.append(
            "# region %s: %d bytes at PCI %s, mapped through %s"
            % (name, region["size_bytes"], address, region["map"])
        )
        lines.append(
            f'ACTION=="add", KERNEL=="{address}", {match}, ATTR{{driver_override}}="{driver}"'
        )
        if region["map"] == "uio":
            lines.append(
                'ACTION=="add", SUBSYSTEM=="uio", KERNELS=="{}", SYMLINK+="{}/{}", '
                'GROUP="{}", MODE="{}"'.format(
                    address,
                    link_dir[len("/dev/") :] if link_dir.startswith("/dev/") else link_dir,
                    name,
                    group,
                    mode,
                )
            )
        else:
            lines.append(
                'ACTION=="add", KERNEL=="{}", {}, RUN+="/bin/mkdir -p {}", '
                'RUN+="/bin/ln -sfn {} {}/{}"'.format(
                    address, match, link_dir, region["target"], link_dir, name
                )
            )
            lines.append(
                'ACTION=="bind", KERNEL=="{}", {}, RUN+="/bin/chgrp {} {}", '
                'RUN+="/bin/chmod {} {}"'.format(
                    address, match, group, region["target"], mode, region["target"]
                )
            )
    return "\n".join(lines) + "\n"


def persist(module, files, actions, before, after):
    """Write each {path: content} that differs; record it in actions and the diff."""
    for path, content in files.items():
        if not path:
            continue
        try:
            with open(path) as handle:
                current = handle.read()
        except OSError:
            current = None
        before["files"][path] = current
        after["files"][path] = content
        if current == content:
            continue
        actions.append(f"write {path}")
        if module.check_mode:
            continue
        directory = os.path.dirname(path)
        if directory and not os.path.isdir(directory):
            os.makedirs(directory, 0o755)
        tmp = path + ".tmp"
        with open(tmp, "w") as handle:
            handle.write(content)
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)


def core(module, sysfs):
    params = module.params
    driver = params["driver"]
    link_dir = params["link_dir"]
    mode = parse_mode(module, params["mode"])
    mode_text = "%04o" % mode
    try:
        gid = grp.getgrnam(params["group"]).gr_gid
    except KeyError:
        module.fail_json(
            msg="group {} does not exist in this guest: create it first (the lab_guest role "
            "does), or use group root".format(params["group"])
        )
    present = sysfs.ivshmem_addresses()
    for region in params["regions"]:
        address = region["pci_address"]
        if address not in present:
            module.fail_json(
                msg="region {}: no ivshmem device (1af4:1110) at {}; this guest has them at {}. "
                "Is the VM's domain XML up to date (re-run the vms role)?".format(
                    region["name"], address, ", ".join(present) or "no address"
                )
            )
        size = sysfs.bar_size(address, 2)
        if region.get("size_bytes") and size != region["size_bytes"]:
            module.fail_json(
                msg="region %s: the device at %s has a %d-byte BAR2, the lab describes %d bytes: "
                "restart the VM so that QEMU maps the resized region"
                % (region["name"], address, size, region["size_bytes"])
            )

    before = {r["name"]: region_state(sysfs, r, driver, link_dir) for r in params["regions"]}
    actions = []
    if not sysfs.driver_loaded(driver):
        actions.append(f"modprobe {driver}")
        if not module.check_mode:
            sysfs.load_driver(driver)
    results = {}
    for region in params["regions"]:
        name, address = region["name"], region["pci_address"]
        if before[name]["driver"] != driver or before[name]["driver_override"] != driver:
            actions.append(f"bind {address} to {driver}")
            if not module.check_mode:
                sysfs.bind(address, driver)
                if sysfs.driver_of(address) != driver:
                    module.fail_json(
                        msg=f"region {name}: {address} did not bind to {driver} "
                        f"(driver now: {sysfs.driver_of(address)}); see dmesg"
                    )
        uio = sysfs.uio_of(address)
        bar2 = sysfs.bar_size(address, 2)
        kind, target = choose_map(sysfs, address, uio, bar2)
        link = os.path.join(link_dir, name)
        if before[name]["target"] != target:
            actions.append(f"link {link} -> {target}")
            if not module.check_mode:
                if not os.path.isdir(link_dir):
                    os.makedirs(link_dir, 0o755)
                tmp = link + ".tmp"
                if os.path.lexists(tmp):
                    os.unlink(tmp)
                os.symlink(target, tmp)
                os.rename(tmp, link)
        map_file = sysfs.map_file(kind, address, uio)
        group_now, mode_now = file_access(map_file)
        before[name]["access"] = f"{group_now} {mode_now}"
        if (group_now, mode_now) != (params["group"], mode_text):
            actions.append(f"chgrp {params['group']} and chmod {mode_text} {map_file}")
            if not module.check_mode:
                try:
                    os.chown(map_file, -1, gid)
                    os.chmod(map_file, mode)
                except OSError as exc:
                    module.fail_json(msg=f"region {name}: cannot set the group and mode of "
                                     f"{map_file}: {exc}")
        results[name] = {
            "path": link,
            "target": target,
            "map": kind,
            "pci_address": address,
            "uio": uio,
            "size_bytes": bar2,
            "group": params["group"],
            "mode": mode_text,
        }
    after = {}
    for name, result in results.items():
        state = dict(before[name])
        state.update({"driver": driver, "driver_override": driver, "target": result["target"],
                      "access": f"{params['group']} {mode_text}"})
        after[name] = state
    before["files"], after["files"] = {}, {}
    persist(
        module,
        {
            params["modules_load"]: f"{driver}\n",
            params["udev_rules"]: udev_rules(results, driver, link_dir, params["group"], mode_text),
            params["regions_json"]: json.dumps(results, indent=2, sort_keys=True) + "\n",
        },
        actions,
        before,
        after,
    )
    return {
        "changed": bool(actions),
        "actions": actions,
        "regions": results,
        "ansible_facts": {"cxl_regions": results},
        "diff": {"before": before, "after": after},
    }


ARGUMENT_SPEC = dict(
    regions=dict(
        type="list",
        elements="dict",
        required=True,
        options=dict(
            name=dict(type="str", required=True),
            pci_address=dict(type="str", required=True),
            size_bytes=dict(type="int"),
        ),
    ),
    driver=dict(type="str", default="uio_pci_generic"),
    link_dir=dict(type="path", default="/dev/cxl"),
    group=dict(type="str", default="root"),
    mode=dict(type="str", default="0600"),
    udev_rules=dict(type="path", default="/etc/udev/rules.d/70-cxl-lab.rules"),
    modules_load=dict(type="path", default="/etc/modules-load.d/cxl-lab.conf"),
    regions_json=dict(type="path", default="/etc/cxl-lab/regions.json"),
    sys_root=dict(type="path", default="/sys"),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module.exit_json(**core(module, Sysfs(module.params["sys_root"], module)))


if __name__ == "__main__":
    main()
