#!/usr/bin/python
# Copyright: CXL-DSM Lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Create, resize or remove the backing file of one shared CXL region."""

DOCUMENTATION = r"""
---
module: cxl_region
short_description: Manage the backing file of a shared memory region of the CXL lab
description:
  - Creates, resizes and removes the file on tmpfs (C(/dev/shm)) or hugetlbfs that the lab's
    VMs map as an ivshmem-plain device (QEMU C(memory-backend-file), C(share=on)).
  - The file gets an exact size, an owner and group (QEMU's user and group) and a mode that is
    never readable by other users; libvirt's own C(<shmem>) element would create it 0644.
  - With O(prealloc=true) the pages are allocated here, under the region's NUMA policy
    (C(numactl --membind/--preferred/--interleave)), so that they sit on the far node before any
    VM touches them.
version_added: "1.0.0"
author: CXL-DSM Lab contributors
options:
  path:
    description: Absolute path of the backing file, inside a tmpfs or hugetlbfs mount.
    type: path
    required: true
  state:
    description: V(present) creates or resizes the file, V(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
  size_mib:
    description:
      - Size of the region in MiB; must be a power of two (it becomes a PCI BAR).
      - Required with O(state=present). Shrinking a region that running VMs map makes their
        accesses past the new end fault, so stop them first.
    type: int
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

- name: Remove it
  cxl_region:
    path: /dev/shm/cxl-lab-cxl0
    state: absent
"""

RETURN = r"""
path:
  description: The backing file.
  returned: always
  type: str
  sample: /dev/shm/cxl-lab-cxl0
size_bytes:
  description: Size of the file after the run (0 when absent).
  returned: always
  type: int
  sample: 268435456
allocated_bytes:
  description: Bytes of the file backed by pages after the run.
  returned: always
  type: int
  sample: 0
actions:
  description: What was (or, in check mode, would be) done, in order.
  returned: always
  type: list
  elements: str
  sample: [create, resize, chown, chmod]
"""

import grp
import os
import pwd
import stat

from ansible.module_utils.basic import AnsibleModule

NUMACTL_POLICY = {"bind": "--membind", "preferred": "--preferred", "interleave": "--interleave"}


def file_state(path):
    """The observable state of the backing file, as compared and diffed."""
    try:
        st = os.stat(path)
    except OSError:
        return {"path": path, "state": "absent"}
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return {
        "path": path,
        "state": "present",
        "size_bytes": st.st_size,
        "allocated_bytes": st.st_blocks * 512,
        "owner": owner,
        "group": group,
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
    }


def desired_state(params, before):
    if params["state"] == "absent":
        return {"path": params["path"], "state": "absent"}
    size = params["size_mib"] * 1024 * 1024
    allocated = before.get("allocated_bytes", 0) if before.get("state") == "present" else 0
    return {
        "path": params["path"],
        "state": "present",
        "size_bytes": size,
        "allocated_bytes": size if params["prealloc"] else min(allocated, size),
        "owner": params["owner"],
        "group": params["group"],
        "mode": "{:04o}".format(int(params["mode"], 8)),
    }


def plan(before, after):
    """The actions that turn BEFORE into AFTER."""
    if after["state"] == "absent":
        return ["remove"] if before["state"] == "present" else []
    actions = []
    if before["state"] == "absent":
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
    return actions


def apply(module, actions, params):
    path = params["path"]
    size = (params["size_mib"] or 0) * 1024 * 1024
    if "remove" in actions:
        os.unlink(path)
        return
    if "create" in actions:
        # 0600 from the first instant: the file is never visible with a wider mode.
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
    elif "resize" in actions:
        os.truncate(path, size)
    if "chown" in actions:
        os.chown(path, pwd.getpwnam(params["owner"]).pw_uid, grp.getgrnam(params["group"]).gr_gid)
    if "chmod" in actions:
        os.chmod(path, int(params["mode"], 8))
    if "prealloc" in actions:
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


def validate(module):
    params = module.params
    if params["state"] == "present":
        if not params["size_mib"] or params["size_mib"] <= 0:
            module.fail_json(msg="size_mib is required with state=present and must be positive")
        if params["size_mib"] & (params["size_mib"] - 1):
            module.fail_json(
                msg="size_mib %d is not a power of two: ivshmem exposes the region as a PCI BAR, "
                "whose size must be one" % params["size_mib"]
            )
        try:
            mode = int(params["mode"], 8)
        except ValueError:
            module.fail_json(
                msg="mode {!r} is not an octal mode such as 0600".format(params["mode"])
            )
        if mode & 0o007 or mode & ~0o777:
            module.fail_json(
                msg="mode {} would let other users reach the shared memory: "
                "use 0600 or 0660".format(params["mode"])
            )
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
    return {
        "changed": bool(actions),
        "path": params["path"],
        "size_bytes": final.get("size_bytes", 0),
        "allocated_bytes": final.get("allocated_bytes", 0),
        "actions": actions,
        "diff": {"before": before, "after": final},
    }


ARGUMENT_SPEC = dict(
    path=dict(type="path", required=True),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    size_mib=dict(type="int"),
    owner=dict(type="str", default="libvirt-qemu"),
    group=dict(type="str", default="kvm"),
    mode=dict(type="str", default="0600"),
    numa_node=dict(type="int"),
    policy=dict(type="str", choices=["bind", "preferred", "interleave"], default="bind"),
    prealloc=dict(type="bool", default=False),
)


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_if=[("state", "present", ["size_mib"])],
        supports_check_mode=True,
    )
    try:
        result = core(module)
    except OSError as exc:
        module.fail_json(msg="cxl_region: " + " ".join(str(exc).split()))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
