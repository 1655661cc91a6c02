#!/usr/bin/python
# Copyright: CXL-DSM Lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decide the lab's virt type: KVM only if a guest kernel really boots under it."""

DOCUMENTATION = r"""
---
module: cxl_virt_probe
short_description: Decide between KVM and TCG by booting a real kernel under KVM
description:
  - With O(virt_type=auto), boots O(kernel) under C(qemu-system-x86_64 -accel kvm) with no root
    filesystem and a bounded time. A kernel that reaches its root-mount panic has booted, so KVM
    works and the result is V(kvm). Anything else (no C(/dev/kvm), QEMU refusing KVM, or a kernel
    that hangs - as under some nested KVM set-ups) gives V(qemu) (TCG) and a warning.
  - With V(kvm) or V(qemu) the value is returned as given, without a probe.
  - Changes nothing on the host.
version_added: "1.0.0"
author: CXL-DSM Lab contributors
options:
  virt_type:
    description: V(auto), V(kvm) or V(qemu).
    type: str
    choices: [auto, kvm, qemu]
    default: auto
  kernel:
    description: The guest kernel to boot (the lab image's vmlinuz).
    type: path
  qemu:
    description: The QEMU binary.
    type: str
    default: qemu-system-x86_64
  timeout:
    description: Seconds the probe kernel has to boot under KVM.
    type: int
    default: 60
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Decide the virt type
  cxl_virt_probe:
    virt_type: auto
    kernel: /var/lib/cxl-dsm-lab/images/debian-bookworm-1a2b3c4d/vmlinuz
  register: _probe
"""

RETURN = r"""
virt_type:
  description: The libvirt domain type to use, V(kvm) or V(qemu).
  returned: always
  type: str
  sample: qemu
reason:
  description: Why.
  returned: always
  type: str
  sample: "a kernel did not boot under KVM within 60 s (nested KVM hang?)"
"""

import os
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule

# Printed by any kernel that got as far as mounting its root filesystem.
BOOTED_MARKERS = ("VFS: Unable to mount root", "Kernel panic", "Run /init", "Freeing unused kernel")


def probe_kvm(qemu, kernel, timeout, runner=subprocess.Popen, clock=time.monotonic):
    """(True, reason) if KERNEL boots under KVM within TIMEOUT seconds."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    if not kernel or not os.path.isfile(kernel):
        return False, f"no kernel to probe KVM with ({kernel})"
    cmd = [
        qemu,
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "256",
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-kernel",
        kernel,
        "-append",
        "console=ttyS0 panic=-1 loglevel=7",
    ]
    proc = runner(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = clock() + timeout
    output = b""
    try:
        os.set_blocking(proc.stdout.fileno(), False)
        while clock() < deadline:
            chunk = proc.stdout.read(65536)
            if chunk:
                output += chunk
                text = output.decode("utf-8", "replace")
                if any(marker in text for marker in BOOTED_MARKERS):
                    return True, "a kernel booted under KVM"
            elif proc.poll() is not None:
                text = output.decode("utf-8", "replace").strip().splitlines()
                return False, "QEMU refused KVM: %s" % (
                    text[-1] if text else f"exit {proc.returncode}"
                )
            else:
                time.sleep(0.2)
        return False, "a kernel did not boot under KVM within %d s (nested KVM hang?)" % timeout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def core(module, prober=probe_kvm):
    wanted = module.params["virt_type"]
    if wanted != "auto":
        return {"changed": False, "virt_type": wanted, "reason": "set in the lab description"}
    qemu = module.get_bin_path(module.params["qemu"], required=True)
    ok, reason = prober(qemu, module.params["kernel"], module.params["timeout"])
    if ok:
        return {"changed": False, "virt_type": "kvm", "reason": reason}
    module.warn(
        f"KVM is not usable here ({reason}): the lab runs its VMs under TCG (virt type qemu), "
        "which is much slower."
    )
    return {"changed": False, "virt_type": "qemu", "reason": reason}


ARGUMENT_SPEC = dict(
    virt_type=dict(type="str", choices=["auto", "kvm", "qemu"], default="auto"),
    kernel=dict(type="path"),
    qemu=dict(type="str", default="qemu-system-x86_64"),
    timeout=dict(type="int", default=60),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = core(module)
    except OSError as exc:
        module.fail_json(msg="cxl_virt_probe: " + " ".join(str(exc).split()))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
