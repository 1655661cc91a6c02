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


# ---- observe, desire, plan, apply ------------------------------------------------------
# Like library/cxl_region.py: the guest as it is, the guest as it should be, the actions
# between the two (pure functions), then those actions. The binding is planned and applied
# first: which file maps a region (the uio device or the sysfs BAR2 file) is known only once
# the device is bound, so the paths and files are planned on the guest as observed after the
# binding - in check mode, on the guest as it is, which predicts the sysfs BAR2 file.

# The keys of a region's state that the diff shows.
DIFF_KEYS = ("name", "pci_address", "driver", "driver_override", "path", "target", "access")


def observe(sysfs, params):
    """The guest now: is the driver loaded, and per region its binding, path and map file."""
    regions = {}
    for region in params["regions"]:
        address = region["pci_address"]
        link = os.path.join(params["link_dir"], region["name"])
        uio = sysfs.uio_of(address)
        size = sysfs.bar_size(address, 2)
        kind, target = choose_map(sysfs, address, uio, size)
        map_file = sysfs.map_file(kind, address, uio)
        group, mode = file_access(map_file)
        regions[region["name"]] = {
            "name": region["name"],
            "pci_address": address,
            "driver": sysfs.driver_of(address),
            "driver_override": sysfs.read("bus/pci/devices", address, "driver_override"),
            "path": link,
            "target": os.readlink(link) if os.path.islink(link) else None,
            "access": f"{group} {mode}",
            # How the device, as bound now, maps the region.
            "map": kind,
            "map_target": target,
            "map_file": map_file,
            "uio": uio,
            "size_bytes": size,
        }
    return {"driver_loaded": sysfs.driver_loaded(params["driver"]), "regions": regions}


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


def desired_state(params, observed):
    """The guest as it should be, given OBSERVED (the guest once its devices are bound)."""
    driver, group = params["driver"], params["group"]
    mode = "%04o" % int(str(params["mode"]), 8)
    regions, results = {}, {}
    for name, now in observed["regions"].items():
        regions[name] = dict(
            now,
            driver=driver,
            driver_override=driver,
            target=now["map_target"],
            access=f"{group} {mode}",
        )
        results[name] = {
            "path": now["path"],
            "target": now["map_target"],
            "map": now["map"],
            "pci_address": now["pci_address"],
            "uio": now["uio"],
            "size_bytes": now["size_bytes"],
            "group": group,
            "mode": mode,
        }
    files = {
        params["modules_load"]: f"{driver}\n",
        params["udev_rules"]: udev_rules(results, driver, params["link_dir"], group, mode),
        params["regions_json"]: json.dumps(results, indent=2, sort_keys=True) + "\n",
    }
    return {
        "driver_loaded": True,
        "regions": regions,
        "results": results,
        "group": group,
        "mode": mode,
        "files": {path: content for path, content in files.items() if path},
    }


def plan_binding(before, driver):
    """Load the driver if needed, then bind every device that is not bound to it."""
    actions = [] if before["driver_loaded"] else [("modprobe", driver)]
    for name, now in before["regions"].items():
        if now["driver"] != driver or now["driver_override"] != driver:
            actions.append(("bind", name, now["pci_address"], driver))
    return actions


def plan_publish(observed, desired, files_now):
    """The paths, the map files' group and mode, and the module's files, from OBSERVED
    (the bound guest) to DESIRED."""
    actions = []
    for name, want in desired["regions"].items():
        now = observed["regions"][name]
        if now["target"] != want["target"]:
            actions.append(("link", now["path"], want["target"]))
        if now["access"] != want["access"]:
            actions.append(("access", name, want["map_file"], desired["group"], desired["mode"]))
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
            _, name, address, driver = action
            sysfs.bind(address, driver)
            if sysfs.driver_of(address) != driver:
                module.fail_json(
                    msg=f"region {name}: {address} did not bind to {driver} "
                    f"(driver now: {sysfs.driver_of(address)}); see dmesg"
                )
        elif kind == "link":
            _, link, target = action
            os.makedirs(os.path.dirname(link), 0o755, exist_ok=True)
            tmp = link + ".tmp"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(target, tmp)
            os.rename(tmp, link)
        elif kind == "access":
            _, name, map_file, _, mode = action
            try:
                os.chown(map_file, -1, gid)
                os.chmod(map_file, int(mode, 8))
            except OSError as exc:
                module.fail_json(
                    msg=f"region {name}: cannot set the group and mode of {map_file}: {exc}"
                )
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


def validate(module, sysfs):
    """Fail before any change: a bad mode or group, a device missing or of the wrong size.
    Returns the group's gid."""
    params = module.params
    parse_mode(module, params["mode"])
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
    return gid


def diff_view(state, files):
    view = {name: {k: region[k] for k in DIFF_KEYS} for name, region in state["regions"].items()}
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
    try:
        result = core(module, Sysfs(module.params["sys_root"], module))
    except OSError as exc:
        module.fail_json(msg="cxl_ivshmem: " + " ".join(str(exc).split()))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
