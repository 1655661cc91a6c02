#!/usr/bin/python
# Copyright: CXL-DSM Lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""In a guest: bind the lab's ivshmem devices to uio and publish /dev/cxl/<region>."""

DOCUMENTATION = r"""
---
module: cxl_ivshmem
short_description: Bind the CXL lab's ivshmem devices to uio and give each region a stable path
description:
  - Each ivshmem-plain device (PCI C(1af4:1110)) the lab gives this guest is found at its PCI
    address (never by probe order), checked (its BAR2 size) and bound to O(driver)
    (C(uio_pci_generic)) through C(driver_override).
  - A region of O(regions[].security=off) is one device holding the whole region;
    C(<link_dir>/<region>) is a symlink that maps the whole region at offset 0.
  - A region of O(regions[].security=secdsm) is one device per segment the lab granted this
    guest (C(header), C(client-<g>), C(server-<g>); docs/ring-protocol.md section 2);
    C(<link_dir>/<region>/) is a directory holding one symlink per granted segment, which maps
    that segment at offset 0. A segment not granted has no device and no symlink; an entry of
    the directory that names no granted segment is removed.
  - A symlink points to the uio device when its map 0 is BAR2 (the shared memory); when uio only
    exposes BAR0 (the 256-byte register bank, as C(uio_pci_generic) does), it points to the BAR2
    file in sysfs, C(/sys/bus/pci/devices/<address>/resource2), which maps the device directly.
  - Later roles use C(/dev/cxl/<region>) and never a PCI address. When a region changes kind, a
    symlink at C(<link_dir>/<region>) is replaced by the directory, and the other way round.
  - The file behind each symlink (the uio device or the sysfs BAR2 file) gets O(group) and
    O(mode), so that services may map the region as a dedicated user in that group rather than
    as root; a segment (or region) granted C(ro) gets O(mode) without its write bits (C(0660)
    becomes C(0440)), so that no user but root can even open it for writing.
  - The binding and the paths survive reboots through O(udev_rules) and O(modules_load); everything
    is written by this one module so that a guest under TCG pays for one Python start, not five.
version_added: "1.0.0"
author: CXL-DSM Lab contributors
options:
  regions:
    description:
      - The regions this guest maps, as the resolved lab's C(vms[].ivshmem) lists them.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Region name; the path is C(<link_dir>/<name>).
        type: str
        required: true
      security:
        description:
          - C(off) - one device maps the whole region (O(regions[].pci_address)).
          - C(secdsm) - one device per granted segment (O(regions[].segments)).
        type: str
        choices: [secdsm, "off"]
        default: "off"
      pci_address:
        description: Guest PCI address of the region's ivshmem-plain device (security C(off) only).
        type: str
      size_bytes:
        description: Expected BAR2 size (security C(off) only); a mismatch fails.
        type: int
      access:
        description:
          - Access of this guest to the whole region (security C(off) only); C(ro) removes the
            write bits of O(mode).
        type: str
        choices: [rw, ro]
        default: rw
      channel_group:
        description:
          - This guest's channel group in the region (the lab's C(vms[].regions[].group)),
            recorded in O(regions_json); null for a server, or when the lab gives none.
        type: int
      segments:
        description:
          - The segments granted to this guest (security C(secdsm) only), each its own
            ivshmem-plain device. Only these are published.
        type: list
        elements: dict
        suboptions:
          name:
            description: C(header), C(client-<g>) or C(server-<g>); the symlink's name.
            type: str
            required: true
          pci_address:
            description: Guest PCI address of the segment's ivshmem-plain device.
            type: str
            required: true
          size_bytes:
            description: Expected BAR2 size (the segment's span); a mismatch fails.
            type: int
          access:
            description: C(rw), or C(ro) (the file gets O(mode) without its write bits).
            type: str
            choices: [rw, ro]
            required: true
  channel_groups:
    description:
      - The guest's channel group per region name (the lab's C(vms[].regions[].group)), for
        regions that do not set O(regions[].channel_group) (null or empty for none); recorded
        in O(regions_json).
    type: dict
    default: {}
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
      - Group of the file behind each symlink (C(/dev/uioN) or the sysfs C(resource2)); it must
        exist. Its members may map the region with O(mode).
    type: str
    default: root
  mode:
    description:
      - Octal mode of that file for C(rw) access (C(ro) takes away its write bits). Never
        world-accessible, since the region is the lab's shared memory.
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
  - File modes keep the guest's own users apart; what keeps one VM from writing a segment is the
    hypervisor, which maps a segment granted C(ro) read-only (QEMU C(readonly=on)) and does not
    map a segment not granted at all. Root in the guest can change a mode, not the mapping.
"""

EXAMPLES = r"""
- name: Bind the regions and publish /dev/cxl/<region>
  cxl_ivshmem:
    regions:
      - name: cxl0
        security: secdsm
        segments:
          - {name: header, pci_address: "0000:00:10.0", size_bytes: 4096, access: ro}
          - {name: client-0, pci_address: "0000:00:11.0", size_bytes: 33554432, access: rw}
          - {name: server-0, pci_address: "0000:00:12.0", size_bytes: 33554432, access: ro}
      - name: cxl1
        pci_address: "0000:00:13.0"
        size_bytes: 268435456
    channel_groups: {cxl0: 0, cxl1: 0}
    group: cxl
    mode: "0660"
"""

RETURN = r"""
regions:
  description:
    - Per region, where it is and how it is mapped. A C(secdsm) region lists its published
      segments, in the order given, each described like a whole C(off) region.
  returned: always
  type: dict
  sample:
    cxl0:
      path: /dev/cxl/cxl0
      security: secdsm
      channel_group: 0
      group: cxl
      segments:
        - name: header
          path: /dev/cxl/cxl0/header
          target: /sys/bus/pci/devices/0000:00:10.0/resource2
          map: resource2
          pci_address: "0000:00:10.0"
          uio: uio0
          size_bytes: 4096
          access: ro
          mode: "0440"
    cxl1:
      path: /dev/cxl/cxl1
      security: "off"
      channel_group: 0
      target: /sys/bus/pci/devices/0000:00:13.0/resource2
      map: resource2
      pci_address: "0000:00:13.0"
      uio: uio3
      size_bytes: 268435456
      access: rw
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
import re
import shutil
import stat

from ansible.module_utils.basic import AnsibleModule

IVSHMEM_VENDOR = "0x1af4"
IVSHMEM_DEVICE = "0x1110"
# The segment names of layout 5 (docs/ring-protocol.md section 2), decimal group numbers.
SEGMENT_NAME = re.compile(r"^(header|(client|server)-(0|[1-9][0-9]*))$")


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
        """[(index, physical address, size)] of /sys/class/uio/<uio>/maps."""
        base = self.path("class/uio", uio, "maps")
        try:
            entries = sorted(os.listdir(base))
        except OSError:
            return []
        maps = []
        for entry in entries:
            if entry.startswith("map"):
                addr = self.read("class/uio", uio, "maps", entry, "addr")
                size = self.read("class/uio", uio, "maps", entry, "size")
                maps.append(
                    (int(entry[3:]), int(addr, 16) if addr else None, int(size, 16) if size else 0)
                )
        return maps

    def bar(self, address, bar):
        """(start, size) of one BAR of the device; (0, 0) when it has none."""
        lines = (self.read("bus/pci/devices", address, "resource") or "").splitlines()
        if len(lines) <= bar:
            return 0, 0
        start, end = (int(x, 16) for x in lines[bar].split()[:2])
        return (start, end - start + 1) if end else (0, 0)

    def bar_size(self, address, bar):
        return self.bar(address, bar)[1]

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


def modes_by_access(mode_text):
    """{"rw": the mode, "ro": the mode without its write bits}, as "0ooo" texts."""
    mode = int(str(mode_text), 8)
    return {"rw": "%04o" % mode, "ro": "%04o" % (mode & ~0o222)}


def choose_map(sysfs, address, uio):
    """('uio', /dev/uioN) when uio's map 0 is BAR2, else ('resource2', the sysfs BAR2 file).
    Map 0 is BAR2 when it starts where BAR2 does: a size alone could be BAR0's (a 4 KiB header
    segment and a page-rounded register bank look alike)."""
    start, size = sysfs.bar(address, 2)
    if uio and size:
        maps = sysfs.uio_maps(uio)
        if maps and maps[0] == (0, start, size):
            return "uio", f"/dev/{uio}"
    return "resource2", os.path.join("/sys/bus/pci/devices", address, "resource2")


def devices_of(params):
    """Every ivshmem device the module handles, in order: one per region of security off (the
    whole region), one per granted segment of a secdsm region. Each is keyed by <region> or
    <region>/<segment>, which is also its symlink's path under link_dir."""
    devices = []
    for region in params["regions"]:
        name = region["name"]
        if region["security"] == "off":
            devices.append(
                {
                    "key": name,
                    "label": f"region {name}",
                    "pci_address": region["pci_address"],
                    "size_bytes": region.get("size_bytes"),
                    "access": region.get("access") or "rw",
                    "link": os.path.join(params["link_dir"], name),
                }
            )
            continue
        for segment in region["segments"] or []:
            devices.append(
                {
                    "key": f"{name}/{segment['name']}",
                    "label": f"region {name}, segment {segment['name']}",
                    "pci_address": segment["pci_address"],
                    "size_bytes": segment.get("size_bytes"),
                    "access": segment["access"],
                    "link": os.path.join(params["link_dir"], name, segment["name"]),
                }
            )
    return devices


def channel_group_of(params, region):
    """The guest's channel group in REGION: its own channel_group, else channel_groups'."""
    value = region.get("channel_group")
    if value is None:
        value = (params.get("channel_groups") or {}).get(region["name"])
    return None if value in (None, "") else int(value)


def udev_rules(devices, driver, link_dir, group, mode):
    """udev rules that redo, at boot, what the module did: bind, publish the symlink, give the
    file behind it its group and mode. The sysfs BAR2 file exists for sure only once the
    driver binds, so its group and mode are set on the "bind" event."""
    ro_mode = modes_by_access(mode)["ro"]
    lines = [
        "# Managed by the CXL lab (library/cxl_ivshmem.py): ivshmem-plain devices (1af4:1110)",
        f"# are bound to {driver} (driver_override: the driver has no ID table); a region of",
        f"# security off is published as {link_dir}/<region>, a secdsm region as",
        f"# {link_dir}/<region>/<segment> (one per granted segment), group {group},",
        f"# mode {mode} ({ro_mode} where the lab grants read-only access).",
    ]
    match = (
        f'SUBSYSTEM=="pci", ATTR{{vendor}}=="{IVSHMEM_VENDOR}", ATTR{{device}}=="{IVSHMEM_DEVICE}"'
    )
    for key in sorted(devices):
        device = devices[key]
        address, link, file_mode = device["pci_address"], device["path"], device["mode"]
        lines.append(
            "# %s (%s): %d bytes at PCI %s, mapped through %s"
            % (device["label"], device["access"], device["size_bytes"], address, device["map"])
        )
        lines.append(
            f'ACTION=="add", KERNEL=="{address}", {match}, ATTR{{driver_override}}="{driver}"'
        )
        if device["map"] == "uio":
            lines.append(
                'ACTION=="add", SUBSYSTEM=="uio", KERNELS=="{}", SYMLINK+="{}", '
                'GROUP="{}", MODE="{}"'.format(
                    address,
                    link[len("/dev/") :] if link.startswith("/dev/") else link,
                    group,
                    file_mode,
                )
            )
        else:
            lines.append(
                'ACTION=="add", KERNEL=="{}", {}, RUN+="/bin/mkdir -p {}", '
                'RUN+="/bin/ln -sfn {} {}"'.format(
                    address, match, os.path.dirname(link), device["target"], link
                )
            )
            lines.append(
                'ACTION=="bind", KERNEL=="{}", {}, RUN+="/bin/chgrp {} {}", '
                'RUN+="/bin/chmod {} {}"'.format(
                    address, match, group, device["target"], file_mode, device["target"]
                )
            )
    return "\n".join(lines) + "\n"


# ---- observe, desire, plan, apply ------------------------------------------------------
# Like library/cxl_region.py: the guest as it is, the guest as it should be, the actions
# between the two (pure functions), then those actions. The binding is planned and applied
# first: which file maps a device (the uio device or the sysfs BAR2 file) is known only once
# the device is bound, so the paths and files are planned on the guest as observed after the
# binding - in check mode, on the guest as it is, which predicts the sysfs BAR2 file.
#
# A state has "devices" (key: <region> or <region>/<segment>; binding, symlink, file access)
# and "paths" (per region: what <link_dir>/<region> is, a symlink or a directory of symlinks).

# The keys of a device's state that the diff shows.
DIFF_KEYS = ("name", "pci_address", "driver", "driver_override", "path", "target", "file_access")


def path_kind(path):
    """What PATH is: symlink, directory, file or missing (a symlink is never followed)."""
    if os.path.islink(path):
        return "symlink"
    if os.path.isdir(path):
        return "directory"
    return "file" if os.path.lexists(path) else "missing"


def observe(sysfs, params):
    """The guest now: is the driver loaded; per device its binding, symlink and map file;
    per region what its path is."""
    devices = {}
    for device in devices_of(params):
        address, link = device["pci_address"], device["link"]
        uio = sysfs.uio_of(address)
        size = sysfs.bar_size(address, 2)
        kind, target = choose_map(sysfs, address, uio)
        map_file = sysfs.map_file(kind, address, uio)
        group, mode = file_access(map_file)
        devices[device["key"]] = {
            "name": device["key"],
            "label": device["label"],
            "pci_address": address,
            "driver": sysfs.driver_of(address),
            "driver_override": sysfs.read("bus/pci/devices", address, "driver_override"),
            "path": link,
            "target": os.readlink(link) if os.path.islink(link) else None,
            "file_access": f"{group} {mode}",
            # How the device, as bound now, maps its bytes.
            "map": kind,
            "map_target": target,
            "map_file": map_file,
            "uio": uio,
            "size_bytes": size,
        }
    paths = {}
    for region in params["regions"]:
        path = os.path.join(params["link_dir"], region["name"])
        kind = path_kind(path)
        paths[region["name"]] = {
            "path": path,
            "security": region["security"],
            "kind": kind,
            "entries": sorted(os.listdir(path)) if kind == "directory" else [],
            "devices": [device["key"] for device in devices_of({**params, "regions": [region]})],
        }
    return {
        "driver_loaded": sysfs.driver_loaded(params["driver"]),
        "devices": devices,
        "paths": paths,
    }


def read_files(paths):
    """{path: content, or None when it does not exist} of the module's own files."""
    contents = {}
    for path in paths:
        try:
            with open(path) as handle:
                contents[path] = handle.read()
        except FileNotFoundError:
            contents[path] = None
    return contents


def device_result(device):
    """What RV(regions) says of one device (a whole off region, or one segment)."""
    return {
        "path": device["path"],
        "target": device["target"],
        "map": device["map"],
        "pci_address": device["pci_address"],
        "uio": device["uio"],
        "size_bytes": device["size_bytes"],
        "access": device["access"],
        "mode": device["mode"],
    }


def desired_state(params, observed):
    """The guest as it should be, given OBSERVED (the guest once its devices are bound)."""
    driver, group = params["driver"], params["group"]
    modes = modes_by_access(params["mode"])
    grants = {device["key"]: device["access"] for device in devices_of(params)}
    devices = {}
    for key, now in observed["devices"].items():
        mode = modes[grants[key]]
        devices[key] = dict(
            now,
            driver=driver,
            driver_override=driver,
            target=now["map_target"],
            file_access=f"{group} {mode}",
            access=grants[key],
            mode=mode,
        )
    paths, results = {}, {}
    for region in params["regions"]:
        name, now = region["name"], observed["paths"][region["name"]]
        secdsm = region["security"] == "secdsm"
        paths[name] = dict(
            now,
            kind="directory" if secdsm else "symlink",
            entries=sorted(segment["name"] for segment in region["segments"]) if secdsm else [],
        )
        result = {
            "path": now["path"],
            "security": region["security"],
            "channel_group": channel_group_of(params, region),
            "group": group,
        }
        if secdsm:
            result["segments"] = [
                dict(name=segment["name"], **device_result(devices[f"{name}/{segment['name']}"]))
                for segment in region["segments"]
            ]
        else:
            result.update(device_result(devices[name]))
        results[name] = result
    files = {
        params["modules_load"]: f"{driver}\n",
        params["udev_rules"]: udev_rules(devices, driver, params["link_dir"], group, modes["rw"]),
        params["regions_json"]: json.dumps(results, indent=2, sort_keys=True) + "\n",
    }
    return {
        "driver_loaded": True,
        "devices": devices,
        "paths": paths,
        "results": results,
        "group": group,
        "files": {path: content for path, content in files.items() if path},
    }


def plan_binding(before, driver):
    """Load the driver if needed, then bind every device that is not bound to it."""
    actions = [] if before["driver_loaded"] else [("modprobe", driver)]
    for now in before["devices"].values():
        if now["driver"] != driver or now["driver_override"] != driver:
            actions.append(("bind", now["label"], now["pci_address"], driver))
    return actions


def plan_publish(observed, desired, files_now):
    """The paths, the map files' group and mode, and the module's files, from OBSERVED
    (the bound guest) to DESIRED. Per region: what stands in the way goes first (a symlink
    where the directory belongs, a directory where the symlink belongs, a directory entry that
    names no granted segment), then the directory, then the symlinks."""
    actions = []
    for name, want in desired["paths"].items():
        now = observed["paths"][name]
        if want["kind"] == "directory":
            if now["kind"] in ("symlink", "file"):
                actions.append(("remove", now["path"]))
            if now["kind"] != "directory":
                actions.append(("mkdir", want["path"]))
            for entry in now["entries"]:
                if entry not in want["entries"]:
                    actions.append(("remove", os.path.join(now["path"], entry)))
        elif now["kind"] == "directory":
            actions.append(("remove", now["path"]))
        for key in want["devices"]:
            device = desired["devices"][key]
            # A symlink found where the directory was (or inside what was a symlink) is none.
            found = observed["devices"][key]["target"] if now["kind"] == want["kind"] else None
            if found != device["target"]:
                actions.append(("link", device["path"], device["target"]))
    for key, want in desired["devices"].items():
        if observed["devices"][key]["file_access"] != want["file_access"]:
            actions.append(
                ("access", want["label"], want["map_file"], desired["group"], want["mode"])
            )
    for path, content in desired["files"].items():
        if files_now.get(path) != content:
            actions.append(("write", path, content))
    return actions


def describe(action):
    """An action as the module reports it."""
    kind = action[0]
    if kind == "modprobe":
        return f"modprobe {action[1]}"
    if kind == "bind":
        return f"bind {action[2]} to {action[3]}"
    if kind == "remove":
        return f"remove {action[1]}"
    if kind == "mkdir":
        return f"mkdir {action[1]}"
    if kind == "link":
        return f"link {action[1]} -> {action[2]}"
    if kind == "access":
        return f"chgrp {action[3]} and chmod {action[4]} {action[2]}"
    return f"write {action[1]}"


def apply(module, sysfs, actions, gid):
    for action in actions:
        kind = action[0]
        if kind == "modprobe":
            sysfs.load_driver(action[1])
        elif kind == "bind":
            _, label, address, driver = action
            sysfs.bind(address, driver)
            if sysfs.driver_of(address) != driver:
                module.fail_json(
                    msg=f"{label}: {address} did not bind to {driver} "
                    f"(driver now: {sysfs.driver_of(address)}); see dmesg"
                )
        elif kind == "remove":
            path = action[1]
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        elif kind == "mkdir":
            os.makedirs(action[1], 0o755, exist_ok=True)
        elif kind == "link":
            _, link, target = action
            os.makedirs(os.path.dirname(link), 0o755, exist_ok=True)
            tmp = link + ".tmp"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(target, tmp)
            os.rename(tmp, link)
        elif kind == "access":
            _, label, map_file, _, mode = action
            try:
                os.chown(map_file, -1, gid)
                os.chmod(map_file, int(mode, 8))
            except OSError as exc:
                module.fail_json(msg=f"{label}: cannot set the group and mode of {map_file}: {exc}")
        elif kind == "write":
            _, path, content = action
            directory = os.path.dirname(path)
            if directory:
                os.makedirs(directory, 0o755, exist_ok=True)
            tmp = path + ".tmp"
            with open(tmp, "w") as handle:
                handle.write(content)
            os.chmod(tmp, 0o644)
            os.rename(tmp, path)


def validate_regions(module):
    """Each region is of one kind, complete and without doubles."""
    names = set()
    for region in module.params["regions"]:
        name = region["name"]
        if not name or "/" in name or name in (".", "..") or name in names:
            module.fail_json(
                msg=f"region name {name!r} is empty, a path or given twice: the lab names each "
                "region once, as a plain name (cxl_lab.regions[].name)"
            )
        names.add(name)
        if region["security"] == "off":
            if not region.get("pci_address"):
                module.fail_json(
                    msg=f"region {name} (security off) has no pci_address: give the address of "
                    "its one ivshmem device (the resolved lab's vms[].ivshmem has it)"
                )
            if region.get("segments"):
                module.fail_json(
                    msg=f"region {name} has security off but lists segments: a region of "
                    "security off is one device (pci_address); set security: secdsm for one "
                    "device per segment"
                )
            continue
        if region.get("pci_address"):
            module.fail_json(
                msg=f"region {name} (security secdsm) has a pci_address: its devices are its "
                "segments' (regions[].segments[].pci_address); drop it, or set security: off"
            )
        if not region.get("segments"):
            module.fail_json(
                msg=f"region {name} (security secdsm) lists no segments: the lab grants a VM "
                "that maps the region at least its header; do not map the region otherwise"
            )
        seen = set()
        for segment in region["segments"]:
            if not SEGMENT_NAME.match(segment["name"]) or segment["name"] in seen:
                module.fail_json(
                    msg=f"region {name}: segment {segment['name']!r} is given twice or is not "
                    "header, client-<g> or server-<g> (docs/ring-protocol.md section 2)"
                )
            seen.add(segment["name"])


def validate(module, sysfs):
    """Fail before any change: a bad mode or group, a bad region, a device missing or of the
    wrong size. Returns the group's gid."""
    params = module.params
    parse_mode(module, params["mode"])
    try:
        gid = grp.getgrnam(params["group"]).gr_gid
    except KeyError:
        module.fail_json(
            msg="group {} does not exist in this guest: create it first (the lab_guest role "
            "does), or use group root".format(params["group"])
        )
    validate_regions(module)
    present = sysfs.ivshmem_addresses()
    owners = {}
    for device in devices_of(params):
        address, label = device["pci_address"], device["label"]
        if address in owners:
            module.fail_json(
                msg=f"{owners[address]} and {label} both name the device at {address}: each "
                "region of security off, and each segment of a secdsm region, is its own device"
            )
        owners[address] = label
        if address not in present:
            granted = f" (granted {device['access']})" if "/" in device["key"] else ""
            module.fail_json(
                msg="{}{}: no ivshmem device (1af4:1110) at {}; this guest has them at {}. "
                "Is the VM's domain XML up to date (re-run the vms role)?".format(
                    label, granted, address, ", ".join(present) or "no address"
                )
            )
        size = sysfs.bar_size(address, 2)
        if device["size_bytes"] and size != device["size_bytes"]:
            module.fail_json(
                msg="%s: the device at %s has a %d-byte BAR2, the lab describes %d bytes: "
                "restart the VM so that QEMU maps the resized region"
                % (label, address, size, device["size_bytes"])
            )
    return gid


def diff_view(state, files):
    """Per region: an off region's device, or a secdsm region's directory and segments."""
    view = {}
    for name, path in state["paths"].items():
        if path["security"] == "off":
            view[name] = dict({k: state["devices"][name][k] for k in DIFF_KEYS}, kind=path["kind"])
            continue
        view[name] = {
            "name": name,
            "path": path["path"],
            "kind": path["kind"],
            "entries": path["entries"],
            "segments": {
                key.split("/", 1)[1]: {k: state["devices"][key][k] for k in DIFF_KEYS}
                for key in path["devices"]
            },
        }
    view["files"] = files
    return view


def core(module, sysfs):
    params = module.params
    gid = validate(module, sysfs)
    before = observe(sysfs, params)
    binding = plan_binding(before, params["driver"])
    if binding and not module.check_mode:
        apply(module, sysfs, binding, gid)
        bound = observe(sysfs, params)
    else:
        bound = before
    desired = desired_state(params, bound)
    files_before = read_files(desired["files"])
    publish = plan_publish(bound, desired, files_before)
    if publish and not module.check_mode:
        apply(module, sysfs, publish, gid)
    actions = binding + publish
    return {
        "changed": bool(actions),
        "actions": [describe(action) for action in actions],
        "regions": desired["results"],
        "ansible_facts": {"cxl_regions": desired["results"]},
        "diff": {
            "before": diff_view(before, files_before),
            "after": diff_view(desired, desired["files"]),
        },
    }


ARGUMENT_SPEC = dict(
    regions=dict(
        type="list",
        elements="dict",
        required=True,
        options=dict(
            name=dict(type="str", required=True),
            security=dict(type="str", choices=["secdsm", "off"], default="off"),
            pci_address=dict(type="str"),
            size_bytes=dict(type="int"),
            access=dict(type="str", choices=["rw", "ro"], default="rw"),
            channel_group=dict(type="int"),
            segments=dict(
                type="list",
                elements="dict",
                options=dict(
                    name=dict(type="str", required=True),
                    pci_address=dict(type="str", required=True),
                    size_bytes=dict(type="int"),
                    access=dict(type="str", choices=["rw", "ro"], required=True),
                ),
            ),
        ),
    ),
    channel_groups=dict(type="dict", default={}),
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
    try:
        result = core(module, Sysfs(module.params["sys_root"], module))
    except OSError as exc:
        module.fail_json(msg="cxl_ivshmem: " + " ".join(str(exc).split()))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
