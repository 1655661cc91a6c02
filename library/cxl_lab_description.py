#!/usr/bin/python
# Copyright: CXL-DSM Lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validate the lab description against this hypervisor and complete it."""

DOCUMENTATION = r"""
---
module: cxl_lab_description
short_description: Validate and complete the CXL lab description on the hypervisor
description:
  - Checks the C(cxl_lab) description against the host before anything is created - NUMA nodes
    and CPUs that exist, unique names and SSH ports, regions that fit in free memory and hold
    their layout, VMs that only map described regions, segment grants that name real segments
    and leave a server what it needs, at most 16 shared-memory devices per VM - and fails with
    every problem found, each with the fix.
  - Returns the complete lab (per-item defaults filled in, backing paths, each region's layout-5
    plan with its channel groups and segments, each VM's granted segments and guest PCI slots,
    inter-VM links with their link-local addresses, MAC addresses) that every role then reads.
  - Items with C(state=absent) are returned apart (RV(lab.absent_regions), RV(lab.absent_vms)), for
    removal; a region still mapped by a present VM is refused.
version_added: "1.0.0"
author: CXL-DSM Lab contributors
options:
  description:
    description: The C(cxl_lab) variable (see inventory/group_vars/all/lab.yml).
    type: dict
    required: true
  topology:
    description: The C(cxl_numa) fact; read from the host when omitted.
    type: dict
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Validate the lab description
  cxl_lab_description:
    description: "{{ cxl_lab }}"
    topology: "{{ cxl_numa }}"
  register: _lab
"""

RETURN = r"""
lab:
  description: The complete lab description.
  returned: success
  type: dict
  sample:
    regions:
      - {name: cxl0, security: secdsm, path: /dev/shm/cxl-lab-cxl0, region_size: 67112960,
         groups: [{group: 0, vm: vm2, channels: 8, first_channel: 0}],
         segments: [{name: header, kind: header, group: null, offset: 0, size: 4096, span: 4096,
                     first_channel: 0, channel_count: 0, path: /dev/shm/cxl-lab-cxl0/header}]}
    vms:
      - {name: vm1, role: server, cpuset: "0", ssh_port: 2222,
         regions: [{name: cxl0, security: secdsm, group: null,
                    segments: [{name: header, access: rw, pci_slot: 16}]}]}
    links: [{id: 1, server: vm1, client: vm2, server_address: 169.254.1.1}]
    absent_regions: []
    absent_vms: [{name: vm3, state: absent}]
  contains:
    regions:
      description: The present regions, defaults filled in, with their backing C(path) (a file,
        or with security secdsm a directory), channel C(groups) and layout C(segments).
      type: list
    vms:
      description: The present VMs, with their mapped regions (granted segments, PCI addresses),
        what the guest module takes (C(ivshmem)) and links.
      type: list
    links:
      description: The inter-VM links (TCP baseline), one per present client.
      type: list
    absent_regions:
      description: Regions with C(state=absent), whose backing file or directory site.yml removes.
      type: list
    absent_vms:
      description: VMs with C(state=absent), which site.yml destroys and undefines.
      type: list
errors:
  description: Every problem found, each with its fix (also joined in msg on failure).
  returned: failure
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.cxl_lab import normalize
from ansible.module_utils.cxl_numa import read_topology


def mount_of(path, mounts_text):
    """(mount point, fs type) of the mount holding PATH, from /proc/mounts text."""
    best = ("/", None)
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point = fields[1]
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(
            best[0]
        ):
            best = (point, fields[2])
    return best


def backing_info(directory, mounts_text, hugetlbfs_mounts):
    if not os.path.isdir(directory):
        return {"fs": None}
    point, fs = mount_of(directory, mounts_text)
    st = os.statvfs(directory)
    info = {"fs": fs, "mount": point, "free_mib": st.f_bavail * st.f_frsize // (1024 * 1024)}
    if fs == "hugetlbfs":
        info["page_kib"] = hugetlbfs_mounts.get(point, 2048)
    return info


def existing_bytes(path):
    """Bytes a region already holds at PATH: its file, or its directory's segment files."""
    if os.path.isfile(path):
        return os.stat(path).st_size
    if os.path.isdir(path):
        return sum(entry.stat().st_size for entry in os.scandir(path) if entry.is_file())
    return 0


def core(module):
    description = module.params["description"]
    topology = module.params["topology"] or read_topology()
    # Facts come back from Jinja with string keys: the node ids are ints here.
    topology = dict(topology)
    topology["nodes"] = {int(k): v for k, v in topology["nodes"].items()}
    try:
        with open("/proc/mounts") as handle:
            mounts_text = handle.read()
    except OSError:
        mounts_text = ""
    backing, existing = {}, {}
    for region in description.get("regions") or []:
        directory = str(region.get("backing_dir") or "/dev/shm").rstrip("/") or "/"
        backing[directory] = backing_info(
            directory, mounts_text, topology.get("hugetlbfs_mounts") or {}
        )
        path = "{}/{}-{}".format(
            directory, description.get("name") or "cxl-lab", region.get("name")
        )
        existing[path] = existing_bytes(path)
    lab, errors = normalize(description, topology, backing, existing)
    if errors:
        module.fail_json(
            msg="The lab description (cxl_lab) is wrong:\n- " + "\n- ".join(errors), errors=errors
        )
    return {"changed": False, "lab": lab}


ARGUMENT_SPEC = dict(
    description=dict(type="dict", required=True),
    topology=dict(type="dict"),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = core(module)
    except OSError as exc:
        module.fail_json(msg="cxl_lab_description: " + " ".join(str(exc).split()))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
