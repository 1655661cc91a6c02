#!/usr/bin/python
# Copyright: CXL-DSM Lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Gather the hypervisor's NUMA topology as the fact cxl_numa."""

DOCUMENTATION = r"""
---
module: cxl_numa_facts
short_description: Gather the NUMA topology of the CXL lab's hypervisor
description:
  - Reads sysfs and procfs (no numactl needed) and sets the fact C(cxl_numa) with the nodes,
    their CPUs, memory, distances and hugepages, the online CPUs, the available memory and the
    mounted hugetlbfs filesystems.
  - A kernel without NUMA is reported as one node 0 holding everything, as QEMU sees it.
version_added: "1.0.0"
author: CXL-DSM Lab contributors
options:
  sys_root:
    description: Where sysfs is mounted (tests point it at a fake tree).
    type: path
    default: /sys
  proc_root:
    description: Where procfs is mounted.
    type: path
    default: /proc
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  facts:
    support: full
"""

EXAMPLES = r"""
- name: Gather the NUMA topology
  cxl_numa_facts:

- name: Show the CPUs of node 0
  ansible.builtin.debug:
    msg: "{{ cxl_numa.nodes[0].cpus }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to the host's facts.
  returned: always
  type: complex
  contains:
    cxl_numa:
      description: The topology.
      returned: always
      type: dict
      sample:
        node_ids: [0, 1]
        nodes:
          0: {cpus: [0, 1], memory_total_mib: 16000, memory_free_mib: 12000,
              distances: [10, 21], hugepages: {2048: {total: 0, free: 0}}}
        online_cpus: [0, 1, 2, 3]
        memory_available_mib: 20000
        hugetlbfs_mounts: {/dev/hugepages: 2048}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.cxl_numa import read_topology


def core(module):
    topology = read_topology(module.params["sys_root"], module.params["proc_root"])
    return {"changed": False, "ansible_facts": {"cxl_numa": topology}}


ARGUMENT_SPEC = dict(
    sys_root=dict(type="path", default="/sys"),
    proc_root=dict(type="path", default="/proc"),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = core(module)
    except OSError as exc:
        module.fail_json(msg="cxl_numa_facts: " + " ".join(str(exc).split()))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
