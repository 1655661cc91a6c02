#!/usr/bin/python
# Copyright: CXL-DSM Lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Create, resize or remove the backing file, or directory of segment files, of one shared
CXL region."""

DOCUMENTATION = r"""
---
module: cxl_region
short_description: Manage the backing file or segment directory of a CXL lab shared region
description:
  - With O(security=off), creates, resizes and removes the file on tmpfs (C(/dev/shm)) or
    hugetlbfs that the lab's VMs map as one ivshmem-plain device (QEMU C(memory-backend-file),
    C(share=on)).
  - With O(security=secdsm), manages a directory holding exactly one file per segment of the
    region's layout (docs/ring-protocol.md section 2; O(segments)), each mapped by the VMs granted
    it as its own ivshmem-plain device. Files of segments the layout no longer has are removed.
  - Every file gets an exact size, an owner and group (QEMU's user and group) and a mode that is
    never readable by other users; libvirt's own C(<shmem>) element would create it 0644. A
    segment directory is C(0750), owned like its files.
  - With O(prealloc=true) the pages are allocated here, under the region's NUMA policy
    (C(numactl --membind/--preferred/--interleave)), so that they sit on the far node before any
    VM touches them.
  - A path holding the other form (a file where a directory is wanted, or the reverse, when the
    region's security changed) is replaced; V(absent) removes either form.
version_added: "1.0.0"
author: CXL-DSM Lab contributors
options:
  path:
    description: Absolute path of the backing file (or segment directory), inside a tmpfs or
      hugetlbfs mount.
    type: path
    required: true
  state:
    description: V(present) creates or resizes the file or directory, V(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
  security:
    description: V(off) - one file of O(size_mib); V(secdsm) - a directory of O(segments) files.
    type: str
    choices: ["off", secdsm]
    default: "off"
  size_mib:
    description:
      - With O(security=off), the size of the file in MiB. With O(medium=ivshmem) it must be a
        power of two (it becomes a PCI BAR); with O(medium=devdax), even (an emulated NVDIMM
        is aligned to 2 MiB; the lab passes the region's size plus the 2 MiB its device-DAX info
        block takes).
      - Required with O(state=present) and O(security=off). Shrinking a region that running VMs
        map makes their accesses past the new end fault, so stop them first.
    type: int
  medium:
    description:
      - How the VMs map the file (security V(off) only) - V(ivshmem), an ivshmem-plain PCI BAR,
        or V(devdax), an emulated NVDIMM; it decides the rule O(size_mib) follows.
    type: str
    choices: [ivshmem, devdax]
    default: ivshmem
  segments:
    description:
      - With O(security=secdsm), the segment files the directory holds, in layout order (the lab
        passes its region's C(segments), sized by their span).
      - Required with O(state=present) and O(security=secdsm).
    type: list
    elements: dict
    suboptions:
      name:
        description: File name of the segment (C(header), C(client-0), C(server-0), ...).
        type: str
        required: true
      size_bytes:
        description: Size of the file, a power of two >= 4096 (the segment's span, a PCI BAR).
        type: int
        required: true
  owner:
    description: User owning the file (QEMU's user, C(libvirt-qemu) on Debian).
    type: str
    default: libvirt-qemu
  group:
    description: Group of the file (QEMU's group, C(kvm) on Debian).
    type: str
    default: kvm
  mode:
    description: Permissions, C(0600) or C(0660); any bit for other users is refused.
    type: str
    default: "0600"
  numa_node:
    description: Host NUMA node for the region's pages when preallocating; omit for no binding.
    type: int
  policy:
    description: NUMA policy used with O(numa_node).
    type: str
    choices: [bind, preferred, interleave]
    default: bind
  prealloc:
    description: Allocate every page now (under the NUMA policy) instead of on first touch.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - Run on the hypervisor as root.
"""

EXAMPLES = r"""
- name: A 256 MiB region on tmpfs, for QEMU's user only
  cxl_region:
    path: /dev/shm/cxl-lab-cxl0
    size_mib: 256

- name: A region preallocated on NUMA node 1, shared with QEMU's group
  cxl_region:
    path: /dev/hugepages/cxl-lab-far
    size_mib: 1024
    numa_node: 1
    policy: bind
    prealloc: true
    mode: "0660"

- name: A Sec-DSM region, one file per segment (one group of 8 channels)
  cxl_region:
    path: /dev/shm/cxl-lab-cxl1
    security: secdsm
    segments:
      - {name: header, size_bytes: 4096}
      - {name: client-0, size_bytes: 33554432}
      - {name: server-0, size_bytes: 33554432}

- name: Remove it (a file or a segment directory)
  cxl_region:
    path: /dev/shm/cxl-lab-cxl0
    state: absent
"""

RETURN = r"""
path:
  description: The backing file or segment directory.
  returned: always
  type: str
  sample: /dev/shm/cxl-lab-cxl0
size_bytes:
  description: Size of the file, or of the segment files together, after the run (0 when absent).
  returned: always
  type: int
  sample: 268435456
allocated_bytes:
  description: Bytes of the file (or segment files) backed by pages after the run.
  returned: always
  type: int
  sample: 0
actions:
  description: What was (or, in check mode, would be) done, in order; a segment directory's
    actions name the segment file or C(directory).
  returned: always
  type: list
  elements: str
  sample: [mkdir, chown directory, chmod directory, create header, chown header, chmod header]
"""

import grp
import os
import pwd
import re
import stat

from ansible.module_utils.basic import AnsibleModule

NUMACTL_POLICY = {"bind": "--membind", "preferred": "--preferred", "interleave": "--interleave"}
# A segment directory: its owner's files, listed by QEMU's group, never by others.
DIRECTORY_MODE = "0750"
SEGMENT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _owner_group_mode(st):
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return {"owner": owner, "group": group, "mode": f"{stat.S_IMODE(st.st_mode):04o}"}


def _file_facts(st):
    facts = {"size_bytes": st.st_size, "allocated_bytes": st.st_blocks * 512}
    facts.update(_owner_group_mode(st))
    return facts


def file_state(path):
    """The observable state of the region's path, as compared and diffed: absent, a file
    (security off) or a directory of segment files (security secdsm)."""
    try:
        st = os.stat(path)
    except OSError:
        return {"path": path, "state": "absent"}
    if not stat.S_ISDIR(st.st_mode):
        state = {"path": path, "state": "present", "form": "file"}
        state.update(_file_facts(st))
        return state
    state = {"path": path, "state": "present", "form": "directory"}
    state.update(_owner_group_mode(st))
    segments = {}
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        entry_st = entry.stat(follow_symlinks=False)
        segments[entry.name] = (
            _file_facts(entry_st) if stat.S_ISREG(entry_st.st_mode) else {"form": "other"}
        )
    state["segments"] = segments
    return state


def _desired_file(size, before, params):
    allocated = before.get("allocated_bytes", 0) if before else 0
    return {
        "size_bytes": size,
        "allocated_bytes": size if params["prealloc"] else min(allocated, size),
        "owner": params["owner"],
        "group": params["group"],
        "mode": "{:04o}".format(int(params["mode"], 8)),
    }


def desired_state(params, before):
    path = params["path"]
    if params["state"] == "absent":
        return {"path": path, "state": "absent"}
    if params["security"] == "off":
        after = {"path": path, "state": "present", "form": "file"}
        same_form = before if before.get("form") == "file" else None
        after.update(_desired_file(params["size_mib"] * 1024 * 1024, same_form, params))
        return after
    old = before.get("segments", {}) if before.get("form") == "directory" else {}
    return {
        "path": path,
        "state": "present",
        "form": "directory",
        "owner": params["owner"],
        "group": params["group"],
        "mode": DIRECTORY_MODE,
        "segments": {
            s["name"]: _desired_file(s["size_bytes"], old.get(s["name"]), params)
            for s in params["segments"]
        },
    }


def _file_actions(before, after, suffix=""):
    """Actions turning one file BEFORE (None: absent) into AFTER."""
    before = before or {}
    actions = []
    if not before:
        actions.append("create")
    elif before["size_bytes"] != after["size_bytes"]:
        actions.append("resize")
    if (
        after["allocated_bytes"] >= after["size_bytes"]
        and before.get("allocated_bytes", 0) < after["size_bytes"]
    ):
        actions.append("prealloc")
    if before.get("owner") != after["owner"] or before.get("group") != after["group"]:
        actions.append("chown")
    if before.get("mode") != after["mode"]:
        actions.append("chmod")
    return [action + suffix for action in actions]


def plan(before, after):
    """The actions that turn BEFORE into AFTER, in order. A directory's actions name their
    segment ("create client-0") or the directory itself ("mkdir", "chmod directory")."""
    if after["state"] == "absent":
        return ["remove"] if before["state"] == "present" else []
    actions = []
    if before["state"] == "present" and before["form"] != after["form"]:
        # security changed: the other form goes first (VMs mapping it are restarted anyway).
        actions.append("replace")
        before = {"path": before["path"], "state": "absent"}
    if after["form"] == "file":
        return actions + _file_actions(before if before["state"] == "present" else None, after)
    if before["state"] == "absent":
        actions.append("mkdir")
    if before.get("owner") != after["owner"] or before.get("group") != after["group"]:
        actions.append("chown directory")
    if before.get("mode") != after["mode"]:
        actions.append("chmod directory")
    old = before.get("segments", {})
    for name, wanted in after["segments"].items():
        if old.get(name, {}).get("form") == "other":
            actions.append("remove " + name)
            actions += _file_actions(None, wanted, " " + name)
        else:
            actions += _file_actions(old.get(name), wanted, " " + name)
    actions += ["remove " + name for name in old if name not in after["segments"]]
    return actions


def _prealloc(module, path, size, params):
    if params["numa_node"] is not None:
        numactl = module.get_bin_path("numactl", required=True)
        fallocate = module.get_bin_path("fallocate", required=True)
        cmd = [
            numactl,
            "%s=%d" % (NUMACTL_POLICY[params["policy"]], params["numa_node"]),
            fallocate,
            "-l",
            str(size),
            path,
        ]
        rc, out, err = module.run_command(cmd)
        if rc != 0:
            module.fail_json(
                msg="preallocating %s on node %d failed: %s"
                % (path, params["numa_node"], err or out),
                cmd=cmd,
            )
    else:
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)


def _ids(params):
    return pwd.getpwnam(params["owner"]).pw_uid, grp.getgrnam(params["group"]).gr_gid


def _remove(path):
    """Remove a region file, or a segment directory and the files in it."""
    if os.path.isdir(path) and not os.path.islink(path):
        for entry in os.scandir(path):
            os.unlink(entry.path)  # a subdirectory fails here: the lab never makes one
        os.rmdir(path)
    else:
        os.unlink(path)


def _apply_file(module, verb, path, size, params):
    if verb == "remove":
        _remove(path)
    elif verb == "create":
        # 0600 from the first instant: the file is never visible with a wider mode.
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
    elif verb == "resize":
        os.truncate(path, size)
    elif verb == "chown":
        os.chown(path, *_ids(params))
    elif verb == "chmod":
        os.chmod(path, int(params["mode"], 8))
    elif verb == "prealloc":
        _prealloc(module, path, size, params)


def apply(module, actions, params):
    path = params["path"]
    sizes = {s["name"]: s["size_bytes"] for s in params["segments"] or []}
    for action in actions:
        verb, _, target = action.partition(" ")
        if verb in ("remove", "replace") and not target:
            _remove(path)
        elif verb == "mkdir":
            os.mkdir(path, 0o700)
        elif target == "directory":
            if verb == "chown":
                os.chown(path, *_ids(params))
            else:
                os.chmod(path, int(DIRECTORY_MODE, 8))
        elif target:
            _apply_file(module, verb, os.path.join(path, target), sizes.get(target, 0), params)
        else:
            _apply_file(module, verb, path, (params["size_mib"] or 0) * 1024 * 1024, params)


def _check_mode_param(module, params):
    try:
        mode = int(params["mode"], 8)
    except ValueError:
        module.fail_json(msg="mode {!r} is not an octal mode such as 0600".format(params["mode"]))
    if mode & 0o007 or mode & ~0o777:
        module.fail_json(
            msg="mode {} would let other users reach the shared memory: "
            "use 0600 or 0660".format(params["mode"])
        )


def validate(module):
    params = module.params
    if params["state"] != "present":
        return
    if params["security"] == "off":
        if params["segments"]:
            module.fail_json(
                msg="segments are for security=secdsm (a directory of segment files): "
                "drop them, or set security=secdsm"
            )
        if not params["size_mib"] or params["size_mib"] <= 0:
            module.fail_json(msg="size_mib is required with state=present and must be positive")
        if params["medium"] == "devdax":
            if params["size_mib"] % 2:
                module.fail_json(
                    msg="size_mib %d is odd: an emulated NVDIMM (medium devdax) is a whole "
                    "number of 2 MiB pages" % params["size_mib"]
                )
        elif params["size_mib"] & (params["size_mib"] - 1):
            module.fail_json(
                msg="size_mib %d is not a power of two: ivshmem exposes the region as a PCI BAR, "
                "whose size must be one" % params["size_mib"]
            )
    else:
        if params["size_mib"] is not None:
            module.fail_json(
                msg="size_mib is for security=off: a secdsm region's files are sized by "
                "segments (size_bytes each): drop size_mib"
            )
        if not params["segments"]:
            module.fail_json(
                msg="security=secdsm with state=present needs segments "
                "([{name, size_bytes}], the region's layout: see docs/ring-protocol.md section 2)"
            )
        names = set()
        for segment in params["segments"]:
            name, size = segment["name"], segment["size_bytes"]
            if not SEGMENT_NAME_RE.match(name) or name in names:
                module.fail_json(
                    msg=f"segment name {name!r}: use a unique file name such as header, "
                    "client-0 or server-0"
                )
            names.add(name)
            if size < 4096 or size & (size - 1):
                module.fail_json(
                    msg="segment %s: size_bytes %d is not a power of two >= 4096: each segment "
                    "is the PCI BAR of its own ivshmem device" % (name, size)
                )
    _check_mode_param(module, params)
    for kind, name, lookup in (
        ("owner", params["owner"], pwd.getpwnam),
        ("group", params["group"], grp.getgrnam),
    ):
        try:
            lookup(name)
        except KeyError:
            module.fail_json(
                msg=f"{kind} {name} does not exist on this host: set it to QEMU's {kind} "
                "(see user/group in /etc/libvirt/qemu.conf)"
            )
    directory = os.path.dirname(params["path"]) or "/"
    if not os.path.isdir(directory):
        module.fail_json(
            msg=f"{directory} does not exist: the region's backing_dir must be a tmpfs "
            "or hugetlbfs mount"
        )


def _totals(state):
    if state.get("form") == "directory":
        files = [f for f in state["segments"].values() if "size_bytes" in f]
        return sum(f["size_bytes"] for f in files), sum(f["allocated_bytes"] for f in files)
    return state.get("size_bytes", 0), state.get("allocated_bytes", 0)


def core(module):
    validate(module)
    params = module.params
    before = file_state(params["path"])
    after = desired_state(params, before)
    actions = plan(before, after)
    if actions and not module.check_mode:
        apply(module, actions, params)
        final = file_state(params["path"])
    else:
        final = after if actions else before
    size, allocated = _totals(final)
    return {
        "changed": bool(actions),
        "path": params["path"],
        "size_bytes": size,
        "allocated_bytes": allocated,
        "actions": actions,
        "diff": {"before": before, "after": final},
    }


ARGUMENT_SPEC = dict(
    path=dict(type="path", required=True),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    security=dict(type="str", choices=["off", "secdsm"], default="off"),
    size_mib=dict(type="int"),
    medium=dict(type="str", choices=["ivshmem", "devdax"], default="ivshmem"),
    segments=dict(
        type="list",
        elements="dict",
        options=dict(
            name=dict(type="str", required=True),
            size_bytes=dict(type="int", required=True),
        ),
    ),
    owner=dict(type="str", default="libvirt-qemu"),
    group=dict(type="str", default="kvm"),
    mode=dict(type="str", default="0600"),
    numa_node=dict(type="int"),
    policy=dict(type="str", choices=["bind", "preferred", "interleave"], default="bind"),
    prealloc=dict(type="bool", default=False),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = core(module)
    except OSError as exc:
        module.fail_json(msg="cxl_region: " + " ".join(str(exc).split()))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
