#!/usr/bin/python
# Copyright: CXL-DSM Lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validate the bare-metal description (cxl_metal) and complete it."""

DOCUMENTATION = r"""
---
module: cxl_metal_description
short_description: Validate and complete the description of bare-metal CXL hosts
description:
  - Checks the C(cxl_metal) description - regions every host already reaches (a device-DAX
    device or a file on famfs, with the bytes the ring may use), hosts with a role and the
    path of each region on them, one server per region - and fails with every problem found,
    each with the fix.
  - Refuses C(security=secdsm) - with no hypervisor of the lab's below the hosts, nothing could
    enforce a per-host grant on shared hardware.
  - Returns each host's entry in the shape the service roles read as C(cxl_vm).
version_added: "1.0.0"
author: CXL-DSM Lab contributors
options:
  description:
    description: The C(cxl_metal) variable (see inventory/metal.example.yml).
    type: dict
    required: true
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Validate the bare-metal description
  cxl_metal_description:
    description: "{{ cxl_metal }}"
  register: _metal
"""

RETURN = r"""
metal:
  description: The complete description.
  returned: success
  type: dict
  sample:
    name: cxl-metal
    link_dir: /var/lib/cxl-metal/regions
    regions: [{name: cxl0, medium: devdax, path: /dev/dax0.0, size_mib: 1024, security: "off"}]
    hosts:
      - {name: host1, role: server, links: [], doorbell: null,
         regions: [{name: cxl0, medium: devdax, path: /dev/dax0.0, size_bytes: 1073741824,
                    security: "off", access: rw, group: null}]}
  contains:
    regions:
      description: The regions, defaults filled in.
      type: list
    hosts:
      description: Each host's entry, the service roles' C(cxl_vm).
      type: list
errors:
  description: Every problem found, each with its fix (also joined in msg on failure).
  returned: failure
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.cxl_metal import normalize_metal


def core(module):
    metal, errors = normalize_metal(module.params["description"])
    if errors:
        module.fail_json(
            msg="The bare-metal description (cxl_metal) is wrong:\n- " + "\n- ".join(errors),
            errors=errors,
        )
    return {"changed": False, "metal": metal}


ARGUMENT_SPEC = dict(description=dict(type="dict", required=True))


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = core(module)
    except OSError as exc:
        module.fail_json(msg="cxl_metal_description: " + " ".join(str(exc).split()))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
