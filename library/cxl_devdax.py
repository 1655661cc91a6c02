#!/usr/bin/python
# Copyright: CXL-DSM Lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""In a guest: turn the lab's emulated NVDIMMs into device-DAX namespaces and publish
/dev/cxl/<region>."""

DOCUMENTATION = r"""
---
module: cxl_devdax
short_description: Give each devdax region of the CXL lab a device-DAX namespace and a stable path
description:
  - A region of medium C(devdax) reaches the guest as an emulated NVDIMM without a label area,
    in a NUMA node of its own without CPUs (the lab's C(vms[].devdax[].guest_node)). The module
    finds it by that node (never by probe order), through the device-DAX device whose
    C(target_node) it is, or the NVDIMM region whose C(numa_node) or C(target_node) it is.
  - Every VM mapping the region shares one backing file, so the namespace's info block (written
    by C(ndctl create-namespace --mode=devdax --map=mem --align=2M) into the first 2 MiB) is
    written once, by the first guest that finds the namespace raw (after lowering its NVDIMM
    region's C(align) from the kernel's 16 MiB to 2 MiB, which ndctl needs to create a
    namespace of a size that is not a multiple of 16 MiB); the others re-probe the namespace
    and the kernel finds the info block. C(--map=mem) keeps the page structures in
    each guest's own RAM (C(--map=dev) would put them in the shared file, where the guests
    would overwrite each other's). Run it on one guest at a time (the role sets throttle to 1).
  - The device's size must be the region's (O(regions[].size_bytes)); the module fails with
    both sizes otherwise.
  - C(<link_dir>/<region>) is a symlink to C(/dev/daxN.M), which gets O(group) and O(mode); a
    udev rule (O(udev_rules)) publishes the same at every boot, matching the device by its
    C(target_node).
version_added: "1.0.0"
author: CXL-DSM Lab contributors
options:
  regions:
    description:
      - The devdax regions this guest maps, as the resolved lab's C(vms[].devdax) lists them.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Region name; the path is C(<link_dir>/<name>).
        type: str
        required: true
      guest_node:
        description: The guest NUMA node (without CPUs) the region's NVDIMM is in.
        type: int
        required: true
      size_bytes:
        description: The region's size; the device-DAX device must have exactly this size.
        type: int
        required: true
      channel_group:
        description: This guest's channel group in the region, recorded in the result.
        type: int
  link_dir:
    description: Directory of the stable per-region paths.
    type: path
    default: /dev/cxl
  group:
    description: Group of each C(/dev/daxN.M); it must exist.
    type: str
    default: root
  mode:
    description: Octal mode of each C(/dev/daxN.M); never world-accessible.
    type: str
    default: "0600"
  udev_rules:
    description: File of udev rules that publish the paths at every boot; empty to skip.
    type: path
    default: /etc/udev/rules.d/70-cxl-devdax.rules
  ndctl:
    description: The ndctl program.
    type: str
    default: ndctl
  sys_root:
    description: Where sysfs is mounted (tests point it at a fake tree).
    type: path
    default: /sys
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
notes:
  - Needs root and ndctl in the guest (the lab's debootstrap image has it).
  - A re-probe or a format disables the namespace for a moment; it is done only when the guest
    has no device-DAX device for the region.
"""

EXAMPLES = r"""
- name: Publish the devdax regions
  cxl_devdax:
    regions:
      - {name: cxl2, guest_node: 1, size_bytes: 136314880, channel_group: 0}
    group: cxl
    mode: "0660"
  throttle: 1
"""

RETURN = r"""
regions:
  description: Per region, its path and device.
  returned: always
  type: dict
  sample:
    cxl2:
      path: /dev/cxl/cxl2
      medium: devdax
      target: /dev/dax0.0
      namespace: namespace0.0
      guest_node: 1
      size_bytes: 136314880
      align: 2097152
      channel_group: 0
      group: cxl
      mode: "0660"
      how: found
"""

import grp
import os
import re
import stat
import time

from ansible.module_utils.basic import AnsibleModule

DAX_NAME = re.compile(r"^dax\d+\.\d+$")
NAMESPACE_NAME = re.compile(r"^namespace\d+\.\d+$")
DEVDAX_ALIGN = 2 << 20
# Seconds to wait for the device after a re-probe of a namespace whose info block another
# guest may have written (the probe is synchronous; this covers a driver loaded by udev).
REPROBE_WAIT = 2.0
# Where the device nodes are (tests point it at a fake /dev).
DEV_ROOT = "/dev"


class Sysfs:
    """The sysfs reads the module needs; tests point the root at a fake tree."""

    def __init__(self, root):
        self.root = root

    def read(self, *parts):
        try:
            with open(os.path.join(self.root, *parts)) as handle:
                return handle.read().strip()
        except OSError:
            return None

    def listdir(self, *parts):
        try:
            return sorted(os.listdir(os.path.join(self.root, *parts)))
        except OSError:
            return []

    def write(self, value, *parts):
        with open(os.path.join(self.root, *parts), "w") as handle:
            handle.write(value)

    def number(self, *parts):
        text = self.read(*parts)
        try:
            return int(text, 0) if text is not None else None
        except ValueError:
            return None

    def dax_devices(self):
        """{name: {"target_node", "numa_node", "size", "align"}} of every device-DAX device."""
        found = {}
        for name in self.listdir("bus/dax/devices"):
            if DAX_NAME.match(name):
                found[name] = {
                    "target_node": self.number("bus/dax/devices", name, "target_node"),
                    "numa_node": self.number("bus/dax/devices", name, "numa_node"),
                    "size": self.number("bus/dax/devices", name, "size"),
                    "align": self.number("bus/dax/devices", name, "align") or DEVDAX_ALIGN,
                }
        return found

    def nd_regions(self):
        """{name: {"nodes", "namespaces", "size"}} of every NVDIMM region."""
        found = {}
        for name in self.listdir("bus/nd/devices"):
            if not name.startswith("region"):
                continue
            nodes = {
                self.number("bus/nd/devices", name, attr) for attr in ("numa_node", "target_node")
            }
            found[name] = {
                "nodes": nodes - {None},
                "align": self.number("bus/nd/devices", name, "align"),
                "namespaces": [
                    n for n in self.listdir("bus/nd/devices", name) if NAMESPACE_NAME.match(n)
                ],
                "size": self.number("bus/nd/devices", name, "size"),
            }
        return found


def find_dax(sysfs, node):
    """(name, info) of the device-DAX device in guest NODE, or (None, None)."""
    for name, info in sysfs.dax_devices().items():
        if info["target_node"] == node:
            return name, info
    return None, None


def find_namespace(sysfs, node):
    """(region, namespace) of the NVDIMM in guest NODE, or (region, None), or (None, None)."""
    for region, info in sysfs.nd_regions().items():
        if node in info["nodes"]:
            spaces = info["namespaces"]
            return region, (spaces[0] if spaces else None)
    return None, None


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


def udev_rules(results, link_dir, group, mode):
    """The rules that publish each region again at boot, the device found by its node."""
    lines = [
        "# Managed by the CXL lab (library/cxl_devdax.py): each devdax region's device-DAX",
        f"# device (found by its guest NUMA node) is published as {link_dir}/<region>,",
        f"# group {group}, mode {mode}.",
    ]
    link_rel = link_dir[len("/dev/") :] if link_dir.startswith("/dev/") else link_dir
    for name in sorted(results):
        node = results[name]["guest_node"]
        lines.append(f"# region {name}: guest node {node}")
        lines.append(
            f'ACTION=="add", SUBSYSTEM=="dax", ATTR{{target_node}}=="{node}", '
            f'SYMLINK+="{link_rel}/{name}", GROUP="{group}", MODE="{mode}"'
        )
    return "\n".join(lines) + "\n"


def file_access(path):
    """(gid, "0ooo") of PATH, or (None, None) when it is missing."""
    try:
        info = os.stat(path)
    except OSError:
        return None, None
    return info.st_gid, "%04o" % stat.S_IMODE(info.st_mode)


class Runner:
    """ndctl, and a wait for the kernel to show the device it probes."""

    def __init__(self, module, sysfs):
        self.module = module
        self.sysfs = sysfs
        self.ndctl = module.get_bin_path(module.params["ndctl"])

    def run(self, label, *args):
        if not self.ndctl:
            self.module.fail_json(
                msg=f"{label}: {self.module.params['ndctl']} is not installed in this guest: "
                "the lab's debootstrap image has it (cxl_lab.image.packages: ndctl); a cloud "
                "image needs it added"
            )
        rc, out, err = self.module.run_command([self.ndctl, *args])
        if rc != 0:
            self.module.fail_json(
                msg=f"{label}: ndctl {' '.join(args)} failed (exit {rc}): "
                + " ".join((err or out).split())
            )
        return out

    def wait_dax(self, node, seconds=10.0):
        deadline = time.monotonic() + seconds
        while True:
            name, info = find_dax(self.sysfs, node)
            if name or time.monotonic() >= deadline:
                return name, info
            time.sleep(0.1)


def ensure_dax(module, runner, sysfs, region):
    """The region's device-DAX device: found, found after a re-probe, or made. Returns
    (name, info, how)."""
    name, node = region["name"], region["guest_node"]
    label = f"region {name}"
    dax, info = find_dax(sysfs, node)
    if dax:
        return dax, info, "found"
    nd_region, namespace = find_namespace(sysfs, node)
    if not nd_region or not namespace:
        module.fail_json(
            msg=f"{label}: no NVDIMM in guest NUMA node {node} (NVDIMM regions here: "
            f"{', '.join(sorted(sysfs.nd_regions())) or 'none'}). Is the VM's domain XML up "
            "to date (re-run the vms role, which restarts a VM whose devices changed)?"
        )
    if module.check_mode:
        return None, None, "would probe or format"
    # Another guest may have written the info block since this one booted.
    runner.run(label, "disable-namespace", namespace)
    runner.run(label, "enable-namespace", namespace)
    dax, info = runner.wait_dax(node, REPROBE_WAIT)
    if dax:
        return dax, info, "re-probed"
    # The region's alignment (16 MiB by default on x86) must divide the namespace's size
    # for ndctl to create one; the NVDIMM is a whole number of 2 MiB pages, so lower it.
    # It is the formatting guest's setting only: another guest probes the info block
    # with its region as it booted.
    if (sysfs.nd_regions()[nd_region]["align"] or DEVDAX_ALIGN) != DEVDAX_ALIGN:
        runner.run(label, "disable-region", nd_region)
        sysfs.write(str(DEVDAX_ALIGN), "bus/nd/devices", nd_region, "align")
        runner.run(label, "enable-region", nd_region)
    runner.run(
        label, "create-namespace", "--force", f"--reconfig={namespace}", "--mode=devdax",
        "--map=mem", f"--align={DEVDAX_ALIGN // (1 << 20)}M",
    )
    dax, info = runner.wait_dax(node)
    if not dax:
        module.fail_json(
            msg=f"{label}: ndctl made {namespace} a devdax namespace but no device-DAX device "
            f"appeared in node {node} within 10 s; see dmesg"
        )
    return dax, info, "formatted"


def core(module, sysfs):
    params = module.params
    mode = "%04o" % parse_mode(module, params["mode"])
    try:
        gid = grp.getgrnam(params["group"]).gr_gid
    except KeyError:
        module.fail_json(
            msg="group {} does not exist in this guest: create it first (the lab_guest role "
            "does), or use group root".format(params["group"])
        )
    names, nodes = set(), set()
    for region in params["regions"]:
        if region["name"] in names or "/" in region["name"] or region["guest_node"] in nodes:
            module.fail_json(
                msg=f"region {region['name']!r} (guest node {region['guest_node']}) is given "
                "twice, shares a node with another, or is a path: the lab gives each devdax "
                "region a plain name and a node of its own"
            )
        names.add(region["name"])
        nodes.add(region["guest_node"])
    runner = Runner(module, sysfs)
    results, actions = {}, []
    for region in params["regions"]:
        name = region["name"]
        dax, info, how = ensure_dax(module, runner, sysfs, region)
        if how != "found":
            actions.append(f"{how} the namespace of region {name}")
        result = {
            "path": os.path.join(params["link_dir"], name),
            "medium": "devdax",
            "target": os.path.join(DEV_ROOT, dax) if dax else None,
            "namespace": find_namespace(sysfs, region["guest_node"])[1],
            "guest_node": region["guest_node"],
            "size_bytes": info["size"] if info else None,
            "align": info["align"] if info else None,
            "channel_group": region.get("channel_group"),
            "group": params["group"],
            "mode": mode,
            "how": how,
        }
        results[name] = result
        if not dax:
            continue
        if info["size"] != region["size_bytes"]:
            module.fail_json(
                msg="region %s: device %s is %s bytes, the lab describes %d: the info block "
                "took another amount than the 2 MiB the lab reserves in front of the region "
                "(cxl_lab.py DEVDAX_RESERVE), or the file was resized under a running VM "
                "(restart it)" % (name, dax, info["size"], region["size_bytes"])
            )
        link, target = result["path"], result["target"]
        current = os.readlink(link) if os.path.islink(link) else None
        if current != target:
            actions.append(f"link {link} -> {target}")
            if not module.check_mode:
                if os.path.lexists(link) and not os.path.islink(link):
                    module.fail_json(msg=f"region {name}: {link} exists and is not a symlink")
                os.makedirs(os.path.dirname(link), 0o755, exist_ok=True)
                tmp = link + ".tmp"
                if os.path.lexists(tmp):
                    os.unlink(tmp)
                os.symlink(target, tmp)
                os.rename(tmp, link)
        if file_access(target) != (gid, mode):
            actions.append(f"chgrp {params['group']} and chmod {mode} {target}")
            if not module.check_mode:
                os.chown(target, -1, gid)
                os.chmod(target, int(mode, 8))
    if params["udev_rules"]:
        content = udev_rules(results, params["link_dir"], params["group"], mode)
        try:
            with open(params["udev_rules"]) as handle:
                now = handle.read()
        except FileNotFoundError:
            now = None
        if now != content:
            actions.append(f"write {params['udev_rules']}")
            if not module.check_mode:
                os.makedirs(os.path.dirname(params["udev_rules"]), 0o755, exist_ok=True)
                tmp = params["udev_rules"] + ".tmp"
                with open(tmp, "w") as handle:
                    handle.write(content)
                os.chmod(tmp, 0o644)
                os.rename(tmp, params["udev_rules"])
    return {"changed": bool(actions), "actions": actions, "regions": results}


ARGUMENT_SPEC = dict(
    regions=dict(
        type="list",
        elements="dict",
        required=True,
        options=dict(
            name=dict(type="str", required=True),
            guest_node=dict(type="int", required=True),
            size_bytes=dict(type="int", required=True),
            channel_group=dict(type="int"),
        ),
    ),
    link_dir=dict(type="path", default="/dev/cxl"),
    group=dict(type="str", default="root"),
    mode=dict(type="str", default="0600"),
    udev_rules=dict(type="path", default="/etc/udev/rules.d/70-cxl-devdax.rules"),
    ndctl=dict(type="str", default="ndctl"),
    sys_root=dict(type="path", default="/sys"),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = core(module, Sysfs(module.params["sys_root"]))
    except OSError as exc:
        module.fail_json(msg="cxl_devdax: " + " ".join(str(exc).split()))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
