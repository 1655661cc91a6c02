"""roles/lab_vms/templates/domain.xml.j2 rendered with the resolved lab: each VM's QEMU
command line maps exactly the segments it is granted (readonly=on where ro), one device
per region with security off, each at the PCI slot the guest module looks for."""

import copy
import xml.etree.ElementTree as ET
from pathlib import Path

import jinja2
import pytest
from ansible.module_utils.cxl_lab import normalize
from ansible.plugins.filter.core import FilterModule

# The ivshmem regions of the inventory's lab (test_cxl_lab_devdax.py covers devdax).
from test_lab_sources import BACKING, TOPOLOGY
from test_lab_sources import IVSHMEM_LAB as INVENTORY

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "roles/lab_vms/templates/domain.xml.j2"
QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"


def render(lab, vm):
    env = jinja2.Environment(trim_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters.update(FilterModule().filters())
    text = env.from_string(TEMPLATE.read_text()).render(
        ansible_managed="Ansible managed",
        vm=vm,
        cxl_lab_resolved=dict(lab, controller_dir="/tmp/controller"),
        cxl_lab_virt_type="qemu",
        cxl_lab_image={"boot": "kernel", "kernel": "/k", "initrd": "/i", "cmdline": "root=vda"},
        _cxl_vm_dir="/var/lib/cxl-dsm-lab/vms/" + vm["name"],
    )
    return ET.fromstring(text)


def qemu_devices(domain):
    """{id: (memory-backend-file properties, ivshmem-plain properties)} from the XML."""
    args = [a.get("value") for a in domain.iter(QEMU_NS + "arg")]
    backends, devices, nvdimms = {}, {}, set()
    for flag, value in zip(args, args[1:]):
        props = dict(p.partition("=")[::2] for p in value.split(",")[1:])
        if flag == "-object" and value.startswith("memory-backend-file,"):
            backends[props["id"]] = props
        elif flag == "-device" and value.startswith("ivshmem-plain,"):
            devices[props["memdev"]] = props
        elif flag == "-device" and value.startswith("nvdimm,"):
            nvdimms.add(props["memdev"])  # a devdax region (test_cxl_lab_devdax.py)
    assert set(backends) == set(devices) | nvdimms, "every backend has its device"
    return {key: (backends[key], devices[key]) for key in devices}


def resolved(description=INVENTORY):
    lab, errors = normalize(copy.deepcopy(description), TOPOLOGY, BACKING)
    assert errors == []
    return lab


def expected_devices(vm):
    """What the resolved lab says the VM maps: {backend id: (path, size, ro, slot)}."""
    expected = {}
    for region in vm["regions"]:
        if region["security"] == "off":
            expected[f"cxl-{region['name']}"] = (
                region["path"], region["size_bytes"], region["access"] == "ro", region["pci_slot"]
            )
        for segment in region.get("segments", []):
            expected[f"cxl-{region['name']}-{segment['name']}"] = (
                segment["path"], segment["size_bytes"], segment["access"] == "ro",
                segment["pci_slot"],
            )
    return expected


def rendered_devices(lab, vm):
    found = {}
    for key, (backend, device) in qemu_devices(render(lab, vm)).items():
        assert backend["share"] == "on"
        assert device["bus"] == "pci.0"
        assert device["id"] == "ivshmem-" + key[len("cxl-"):]
        found[key] = (
            backend["mem-path"], int(backend["size"]), backend.get("readonly") == "on",
            int(device["addr"], 16),
        )
    return found


@pytest.mark.parametrize("name", ["vm1", "vm2", "vm3"])
def test_default_lab_maps_exactly_the_resolved_devices(name):
    lab = resolved()
    vm = next(v for v in lab["vms"] if v["name"] == name)
    assert rendered_devices(lab, vm) == expected_devices(vm)


SEGMENT_DIR = "/dev/shm/cxl-lab-cxl0/"
MiB32 = 32 << 20


def test_default_lab_grants_by_role():
    """cxl0 (secdsm): the server maps all five segments, clients and attackers their own
    group's three; cxl1 (off): one rw device for everyone."""
    lab = resolved()
    vm1, vm2, vm3 = (rendered_devices(lab, vm) for vm in lab["vms"])
    assert vm1 == {
        "cxl-cxl0-header": (SEGMENT_DIR + "header", 4096, False, 0x10),
        "cxl-cxl0-client-0": (SEGMENT_DIR + "client-0", MiB32, True, 0x11),
        "cxl-cxl0-server-0": (SEGMENT_DIR + "server-0", MiB32, False, 0x12),
        "cxl-cxl0-client-1": (SEGMENT_DIR + "client-1", MiB32, True, 0x13),
        "cxl-cxl0-server-1": (SEGMENT_DIR + "server-1", MiB32, False, 0x14),
        "cxl-cxl1": ("/dev/shm/cxl-lab-cxl1", 256 << 20, False, 0x15),
    }
    assert vm2 == {
        "cxl-cxl0-header": (SEGMENT_DIR + "header", 4096, True, 0x10),
        "cxl-cxl0-client-0": (SEGMENT_DIR + "client-0", MiB32, False, 0x11),
        "cxl-cxl0-server-0": (SEGMENT_DIR + "server-0", MiB32, True, 0x12),
        "cxl-cxl1": ("/dev/shm/cxl-lab-cxl1", 256 << 20, False, 0x13),
    }
    assert vm3 == {
        "cxl-cxl0-header": (SEGMENT_DIR + "header", 4096, True, 0x10),
        "cxl-cxl0-client-1": (SEGMENT_DIR + "client-1", MiB32, False, 0x11),
        "cxl-cxl0-server-1": (SEGMENT_DIR + "server-1", MiB32, True, 0x12),
        "cxl-cxl1": ("/dev/shm/cxl-lab-cxl1", 256 << 20, False, 0x13),
    }


def test_misconfiguration_override_adds_exactly_that_device():
    """An attacker granted client-0 ro (a misconfigured hypervisor) maps it read-only, and
    a none override takes its own server segment away."""
    description = copy.deepcopy(INVENTORY)
    description["vms"][2]["grants"] = {"cxl0": {"client-0": "ro", "server-1": "none"}}
    lab = resolved(description)
    devices = rendered_devices(lab, lab["vms"][2])
    assert {k: (ro, slot) for k, (_, _, ro, slot) in devices.items()} == {
        "cxl-cxl0-header": (True, 0x10),
        "cxl-cxl0-client-0": (True, 0x11),
        "cxl-cxl0-client-1": (False, 0x12),
        "cxl-cxl1": (False, 0x13),
    }


def test_ro_mapping_caps_every_segment_and_numa_binding_is_per_backend():
    description = copy.deepcopy(INVENTORY)
    description["vms"][1]["regions"][0]["access"] = "ro"
    description["vms"][1]["regions"][1]["access"] = "ro"
    description["regions"][0]["numa_node"] = 0
    lab = resolved(description)
    backends = qemu_devices(render(lab, lab["vms"][1]))
    assert all(backend.get("readonly") == "on" for backend, _ in backends.values())
    for key, (backend, _) in backends.items():
        bound = ("host-nodes" in backend, backend.get("policy"))
        assert bound == ((True, "bind") if key.startswith("cxl-cxl0-") else (False, None)), key


def test_each_vm_has_its_doorbell_on_its_own_socket():
    """With cxl_lab.doorbell (the default) each VM's QEMU gets an ivshmem-doorbell at
    00:07.0 on its own socket (the server tells the VMs apart by it); without, none."""
    lab = resolved()
    for vm in lab["vms"]:
        args = [a.get("value") for a in render(lab, vm).iter(QEMU_NS + "arg")]
        assert f"socket,id=cxlbell,path=/run/cxl-dsm-lab/cxl-lab/doorbell/{vm['name']}.sock" in args
        bell = [a for a in args if a.startswith("ivshmem-doorbell,")]
        assert bell == [
            "ivshmem-doorbell,id=cxl-doorbell,chardev=cxlbell,vectors=2,bus=pci.0,addr=0x07"
        ]
    off = copy.deepcopy(INVENTORY)
    off["doorbell"] = False
    lab = resolved(off)
    for vm in lab["vms"]:
        args = [a.get("value") for a in render(lab, vm).iter(QEMU_NS + "arg")]
        assert not [a for a in args if "doorbell" in a or "cxlbell" in a]
