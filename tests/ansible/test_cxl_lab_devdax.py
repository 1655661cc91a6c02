"""The devdax medium in the lab description (module_utils/cxl_lab.py) and in each VM's
domain XML: an emulated NVDIMM on the region's file (the region plus the 2 MiB of the
guests' device-DAX info block), in a CPU-less guest NUMA node with HMAT figures, no PCI
slot; and every combination the lab cannot build refused before anything is created."""

import copy

import pytest
from ansible.module_utils import cxl_lab
from ansible.module_utils.cxl_lab import normalize

from test_domain_xml import QEMU_NS, render, rendered_devices
from test_lab_sources import BACKING, INVENTORY, TOPOLOGY

MiB = 1 << 20


def check(description, backing=BACKING):
    return normalize(copy.deepcopy(description), TOPOLOGY, backing)


def resolved(description=INVENTORY):
    lab, errors = check(description)
    assert errors == []
    return lab


def errors_of(change, description=INVENTORY):
    description = copy.deepcopy(description)
    change(description)
    _, errors = check(description)
    assert errors, "expected a validation error"
    return errors


def region(description, name="cxl2"):
    return next(r for r in description["regions"] if r["name"] == name)


def qemu_args(domain):
    args = [a.get("value") for a in domain.iter(QEMU_NS + "arg")]
    return list(zip(args, args[1:]))


def props(value):
    return dict(p.partition("=")[::2] for p in value.split(",")[1:])


def test_default_lab_has_one_region_per_medium():
    lab = resolved()
    assert [(r["name"], r["medium"], r["security"]) for r in lab["regions"]] == [
        ("cxl0", "ivshmem", "secdsm"), ("cxl1", "ivshmem", "off"), ("cxl2", "devdax", "off")
    ]
    cxl2 = region(lab)
    assert cxl2["data_offset"] == 2 * MiB
    assert cxl2["size_bytes"] == 130 * MiB
    assert cxl2["file_size_bytes"] == 132 * MiB
    assert cxl2["region_size"] <= cxl2["size_bytes"]
    for ivshmem in lab["regions"][:2]:
        assert ivshmem["data_offset"] == 0
        if ivshmem["security"] == "off":
            assert ivshmem["file_size_bytes"] == ivshmem["size_bytes"]


def test_every_vm_gets_the_nvdimm_in_node_1_and_no_pci_slot():
    lab = resolved()
    for vm in lab["vms"]:
        cxl2 = next(m for m in vm["regions"] if m["name"] == "cxl2")
        assert (cxl2["nvdimm_slot"], cxl2["guest_node"]) == (0, 1)
        assert "pci_slot" not in cxl2
        assert vm["devdax"] == [
            {"name": "cxl2", "guest_node": 1, "size_bytes": 130 * MiB,
             "channel_group": cxl2["group"]}
        ]
        assert all(e["name"] != "cxl2" for e in vm["ivshmem"])
        assert vm["memory"]["nvdimms"] == 1
        assert vm["memory"]["max_mib"] == vm["memory_mib"] + 132
    # The ivshmem devices keep the slots they have without cxl2.
    assert [m.get("pci_slot") for m in lab["vms"][1]["regions"]][1] == 0x13


def test_domain_xml_gives_qemu_the_nvdimm_node_and_hmat():
    lab = resolved()
    vm = lab["vms"][1]
    domain = render(lab, vm)
    assert domain.find("maxMemory").get("slots") == "1"
    assert int(domain.find("maxMemory").text) == vm["memory_mib"] + 132
    cells = domain.findall("cpu/numa/cell")
    assert [(c.get("id"), c.get("cpus"), c.get("memory")) for c in cells] == [
        ("0", "0-0", str(vm["memory_mib"]))
    ]
    args = qemu_args(domain)
    assert ("-machine", "nvdimm=on,hmat=on") in args
    numa = [v for f, v in args if f == "-numa"]
    assert "node,nodeid=1,initiator=0" in numa
    assert "dist,src=0,dst=1,val=20" in numa
    assert (
        "hmat-lb,initiator=0,target=1,hierarchy=memory,data-type=access-latency,latency=300"
        in numa
    )
    assert (
        "hmat-lb,initiator=0,target=1,hierarchy=memory,data-type=access-bandwidth,"
        "bandwidth=32768M" in numa
    )
    assert any(v.startswith("hmat-lb,initiator=0,target=0,") for v in numa)
    backend = next(props(v) for f, v in args if f == "-object" and "id=cxl-cxl2," in v)
    assert backend == {
        "id": "cxl-cxl2", "mem-path": "/dev/shm/cxl-lab-cxl2", "size": str(132 * MiB),
        "share": "on", "align": str(2 * MiB),
    }
    nvdimm = next(props(v) for f, v in args if f == "-device" and v.startswith("nvdimm,"))
    assert nvdimm == {"id": "nvdimm-cxl2", "memdev": "cxl-cxl2", "node": "1", "slot": "0"}
    # cxl2 is no ivshmem device
    assert all("cxl2" not in key for key in rendered_devices(lab, vm))


def test_a_lab_without_devdax_has_no_numa_nor_memory_slots():
    description = copy.deepcopy(INVENTORY)
    description["regions"] = description["regions"][:2]
    for vm in description["vms"]:
        vm["regions"] = vm["regions"][:2]
    lab = resolved(description)
    domain = render(lab, lab["vms"][0])
    assert domain.find("maxMemory") is None
    assert domain.find("cpu") is None
    assert not any(f == "-numa" for f, _ in qemu_args(domain))


def test_two_devdax_regions_get_two_nodes_and_slots():
    description = copy.deepcopy(INVENTORY)
    description["regions"].append(dict(region(description), name="cxl3", numa_node=0,
                                       hmat_latency_ns=500))
    for vm in description["vms"]:
        vm["regions"].append({"name": "cxl3"})
    lab = resolved(description)
    vm = lab["vms"][0]
    assert [(e["name"], e["guest_node"]) for e in vm["devdax"]] == [("cxl2", 1), ("cxl3", 2)]
    domain = render(lab, vm)
    assert domain.find("maxMemory").get("slots") == "2"
    args = qemu_args(domain)
    backend = next(props(v) for f, v in args if f == "-object" and "id=cxl-cxl3," in v)
    assert (backend["host-nodes"], backend["policy"]) == ("0", "bind")
    numa = [v for f, v in args if f == "-numa"]
    assert (
        "hmat-lb,initiator=0,target=2,hierarchy=memory,data-type=access-latency,latency=500"
        in numa
    )


@pytest.mark.parametrize(
    "change,expected",
    [
        (lambda d: region(d).update(medium="cxl"),
         "region cxl2: medium 'cxl': use ivshmem (a PCI BAR; the default, and what secdsm "
         "needs) or devdax (an emulated NVDIMM, a device-DAX namespace in a CPU-less guest "
         "node)."),
        (lambda d: region(d).update(size_mib=131),
         "region cxl2: size_mib 131 is odd: a device-DAX namespace is a whole number of 2 MiB "
         "pages: use an even size, e.g. 132."),
        (lambda d: region(d).update(hmat_latency_ns=0),
         "region cxl2: hmat_latency_ns 0 must be positive."),
        (lambda d: d["vms"][1]["regions"][2].update(access="ro"),
         "vm vm2 maps region cxl2 (medium devdax) with access ro: the lab maps an emulated "
         "NVDIMM read-write (it has no read-only one): map it rw, or use medium: ivshmem on "
         "cxl2, whose ro mapping QEMU enforces."),
    ],
    ids=["medium", "odd-size", "hmat", "ro"],
)
def test_each_bad_devdax_setting_is_one_error_with_its_fix(change, expected):
    assert errors_of(change) == [expected]


def test_secdsm_on_devdax_is_refused_with_why():
    errors = errors_of(lambda d: region(d).update(security="secdsm"))
    assert len(errors) == 1
    assert errors[0].startswith("region cxl2: medium devdax with security secdsm: ")
    assert "2 MiB info block" in errors[0]
    assert 'Set security: "off"' in errors[0] and "medium: ivshmem" in errors[0]


def test_a_devdax_region_too_small_for_its_layout_says_the_even_size():
    errors = errors_of(lambda d: region(d).update(size_mib=64))
    assert len(errors) == 1
    assert "raise size_mib to at least 130" in errors[0]


def test_devdax_on_gigantic_pages_is_refused():
    backing = dict(BACKING, **{"/dev/hugepages1G": {"fs": "hugetlbfs", "free_mib": 6000,
                                                     "page_kib": 1 << 20}})
    description = copy.deepcopy(INVENTORY)
    region(description).update(backing_dir="/dev/hugepages1G", size_mib=1024)
    _, errors = check(description, backing)
    assert any("larger than the 2 MiB device-DAX alignment" in e for e in errors), errors


def test_the_file_counts_against_the_backing_memory():
    """The free memory check counts the 2 MiB info block too."""
    need = sum(
        r["file_size_bytes"] if r["security"] == "off" else -(-r["region_size"] // MiB) * MiB
        for r in resolved()["regions"]
    ) // MiB
    backing = {"/dev/shm": {"fs": "tmpfs", "free_mib": need - 1}}
    topology = dict(TOPOLOGY, memory_available_mib=need - 1)
    _, errors = normalize(copy.deepcopy(INVENTORY), topology, backing)
    assert any(f"need {need} MiB in /dev/shm" in e for e in errors), errors


def test_media_constant_matches_the_schema():
    assert cxl_lab.MEDIA == ("ivshmem", "devdax")
    assert cxl_lab.DEVDAX_RESERVE == cxl_lab.DEVDAX_ALIGN == 2 * MiB


# ---- the ring's injected far-memory delay (docs/ring-protocol.md 2.4) ------------------------

def test_access_delay_defaults_to_none_and_is_kept_per_region():
    lab = resolved()
    assert [r["access_delay_ns"] for r in lab["regions"]] == [0, 0, 0]
    description = copy.deepcopy(INVENTORY)
    region(description, "cxl1")["access_delay_ns"] = 200
    assert region(resolved(description), "cxl1")["access_delay_ns"] == 200
    assert region(resolved(description), "cxl0")["access_delay_ns"] == 0


@pytest.mark.parametrize("value, says", [
    (-1, "outside 0..1000000"),
    (1000001, "outside 0..1000000"),
    ("slow", "must be an integer"),
])
def test_access_delay_out_of_range_is_refused(value, says):
    errors = errors_of(lambda d: region(d, "cxl1").update(access_delay_ns=value))
    assert any("access_delay_ns" in e and says in e for e in errors), errors
