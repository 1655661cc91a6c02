"""The lab as built by site.yml, checked on the live system (the lab scenario's verify).

The hypervisor is the host molecule hands to testinfra (localhost); the guests are
reached with the lab's own ssh_config (.lab/ssh_config, host keys pinned). The
expected values are the resolved lab description site.yml wrote (.lab/lab.json):
paths, PCI addresses, modes and links are read there, never derived again here.
One fact per test; a failing guest check prints the guest's console log tail.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import testinfra
from labssh import guest_host

REPO_ROOT = Path(__file__).resolve().parents[3]
LAB_JSON = Path(os.environ.get("CXL_LAB_JSON", REPO_ROOT / ".lab/lab.json"))

LAB = json.loads(LAB_JSON.read_text())
STATE_DIR = LAB["state_dir"]
REGIONS = {r["name"]: r for r in LAB["regions"]}
VMS = LAB["vms"]
VM_NAMES = [vm["name"] for vm in VMS]


@pytest.fixture(scope="module")
def hypervisor():
    # The region files and libvirt's system domains are root's: a lab brought up by a user
    # with sudo (cxl_lab_become) is checked through sudo too.
    return testinfra.get_host("local://", sudo=os.geteuid() != 0)


@pytest.fixture(scope="module", params=VMS, ids=VM_NAMES)
def vm(request):
    return request.param


@pytest.fixture(scope="module")
def guest(vm, hypervisor):
    host = guest_host(vm["name"])
    yield host


def live_xml(hypervisor, name: str) -> ET.Element:
    return ET.fromstring(hypervisor.check_output("virsh -c qemu:///system dumpxml %s", name))


def console_tail(hypervisor, name: str) -> str:
    return hypervisor.run("tail -n 30 %s/logs/%s-console.log", STATE_DIR, name).stdout


def secdsm(entry: dict) -> bool:
    return entry.get("security") == "secdsm"


def qemu_args(hypervisor, name: str) -> list[str]:
    return [
        a.get("value")
        for a in live_xml(hypervisor, name).iter("{http://libvirt.org/schemas/domain/qemu/1.0}arg")
    ]


def backends(hypervisor, name: str) -> dict[str, str]:
    """mem-path -> the whole memory-backend-file argument, from the live domain XML."""
    found = {}
    for arg in qemu_args(hypervisor, name):
        if arg.startswith("memory-backend-file,"):
            fields = dict(f.split("=", 1) for f in arg.split(",")[1:] if "=" in f)
            found[fields["mem-path"]] = arg
    return found


def devdax(entry: dict) -> bool:
    return entry.get("medium") == "devdax"


SECDSM_REGIONS = [name for name, r in REGIONS.items() if secdsm(r)]
DEVDAX_REGIONS = [name for name, r in REGIONS.items() if devdax(r)]
OFF_REGIONS = [name for name, r in REGIONS.items() if not secdsm(r)]
SEGMENT_FILES = [
    (name, seg) for name in SECDSM_REGIONS for seg in REGIONS[name]["segments"]
]
SEGMENT_IDS = [f"{name}-{seg['name']}" for name, seg in SEGMENT_FILES]


# ---- hypervisor ----------------------------------------------------------------


def test_domain_is_running(hypervisor, vm):
    assert hypervisor.check_output("virsh -c qemu:///system domstate %s", vm["name"]) == "running"


def test_vcpus_are_pinned_in_live_xml(hypervisor, vm):
    pins = live_xml(hypervisor, vm["name"]).findall("./cputune/vcpupin")
    assert pins and all(pin.get("cpuset") == vm["cpuset"] for pin in pins)


def test_numatune_in_live_xml(hypervisor, vm):
    memory = live_xml(hypervisor, vm["name"]).find("./numatune/memory")
    assert (memory.get("mode"), memory.get("nodeset")) == (vm["mem_policy"], str(vm["mem_node"]))


def test_region_backends_in_live_xml(hypervisor, vm):
    found = backends(hypervisor, vm["name"])
    for entry in vm["regions"]:
        if secdsm(entry):
            continue
        assert entry["path"] in found and "share=on" in found[entry["path"]]


def test_live_xml_maps_exactly_the_granted_segments(hypervisor, vm):
    """Sec-DSM: one backend per granted segment, none for the others (nothing else mapped)."""
    found = backends(hypervisor, vm["name"])
    for entry in vm["regions"]:
        if not secdsm(entry):
            continue
        region = REGIONS[entry["name"]]
        granted = {seg["path"] for seg in entry["segments"]}
        every = {seg["path"] for seg in region["segments"]}
        name = entry["name"]
        assert granted <= set(found), f"{name}: granted segments missing from the domain"
        assert not (every - granted) & set(found), f"{name}: an ungranted segment is mapped"


def test_read_only_grants_are_read_only_backends(hypervisor, vm):
    found = backends(hypervisor, vm["name"])
    for entry in vm["regions"]:
        for seg in entry.get("segments", []) if secdsm(entry) else []:
            arg = found[seg["path"]]
            assert ("readonly=on" in arg.split(",")) == (seg["access"] == "ro"), arg


def test_ssh_is_forwarded_on_loopback_only(hypervisor, vm):
    listening = hypervisor.check_output("ss -Hltn 'sport = :{}'".format(int(vm["ssh_port"])))
    assert "127.0.0.1:{}".format(vm["ssh_port"]) in listening
    assert (
        "0.0.0.0:{}".format(vm["ssh_port"]) not in listening
        and "*:{}".format(vm["ssh_port"]) not in listening
    )


@pytest.mark.parametrize("name", OFF_REGIONS)
def test_region_file_size(hypervisor, name):
    """The region, and for devdax the 2 MiB of the guests' device-DAX info block before it."""
    region = REGIONS[name]
    assert hypervisor.file(region["path"]).size == region["size_bytes"] + region.get(
        "data_offset", 0
    )


def test_devdax_regions_are_nvdimms_in_cpuless_nodes_in_live_xml(hypervisor, vm):
    """An emulated NVDIMM on the region's file, in a guest node of its own with no CPU, with
    the description's HMAT figures; no PCI device."""
    entries = [e for e in vm["regions"] if devdax(e)]
    if not entries:
        pytest.skip("this VM maps no devdax region")
    args = qemu_args(hypervisor, vm["name"])
    found = backends(hypervisor, vm["name"])
    cells = live_xml(hypervisor, vm["name"]).findall("./cpu/numa/cell")
    assert [c.get("id") for c in cells] == ["0"], "libvirt knows only the vCPUs' node"
    for entry in entries:
        node = entry["guest_node"]
        backend = found[entry["path"]].split(",")
        assert "share=on" in backend and f"size={entry['file_size_bytes']}" in backend
        assert f"nvdimm,id=nvdimm-{entry['name']},memdev=cxl-{entry['name']},node={node}," \
            f"slot={entry['nvdimm_slot']}" in args
        assert f"node,nodeid={node},initiator=0" in args
        assert (
            f"hmat-lb,initiator=0,target={node},hierarchy=memory,data-type=access-latency,"
            f"latency={entry['hmat_latency_ns']}" in args
        )
        assert not any(a.startswith("ivshmem-plain,") and f"cxl-{entry['name']}," in a + ","
                       for a in args)


@pytest.mark.parametrize("name", OFF_REGIONS)
def test_region_file_mode_is_private(hypervisor, name):
    assert hypervisor.file(REGIONS[name]["path"]).mode == int(REGIONS[name]["mode"], 8)


@pytest.mark.parametrize("name", OFF_REGIONS)
def test_region_file_belongs_to_qemu(hypervisor, name):
    assert hypervisor.file(REGIONS[name]["path"]).user == REGIONS[name]["owner"]


@pytest.mark.parametrize("name,seg", SEGMENT_FILES, ids=SEGMENT_IDS)
def test_segment_file_spans_its_segment(hypervisor, name, seg):
    assert hypervisor.file(seg["path"]).size == seg["span"]


@pytest.mark.parametrize("name,seg", SEGMENT_FILES, ids=SEGMENT_IDS)
def test_segment_file_is_private_to_qemu(hypervisor, name, seg):
    segment = hypervisor.file(seg["path"])
    assert (segment.user, segment.mode) == (REGIONS[name]["owner"], int(REGIONS[name]["mode"], 8))


@pytest.mark.parametrize("name", SECDSM_REGIONS)
def test_segment_directory_is_not_world_accessible(hypervisor, name):
    assert hypervisor.file(REGIONS[name]["path"]).mode & 0o007 == 0


def test_controller_key_is_private():
    assert (Path(LAB["controller_dir"]) / "id_ed25519").stat().st_mode & 0o777 == 0o600


def test_resolved_description_is_private():
    assert LAB_JSON.stat().st_mode & 0o777 == 0o600


# ---- guests --------------------------------------------------------------------


def test_guest_answers(guest, vm, hypervisor):
    result = guest.run("hostname")
    assert result.stdout.strip() == vm["name"], console_tail(hypervisor, vm["name"])


def devices(entry: dict) -> list[dict]:
    """The ivshmem devices of one region in one VM: one per granted segment, or the region's
    (none for a devdax region: an NVDIMM)."""
    if devdax(entry):
        return []
    return entry["segments"] if secdsm(entry) else [entry]


def test_ivshmem_is_bound_to_uio(guest, vm):
    for entry in vm["regions"]:
        for device in devices(entry):
            driver = guest.file("/sys/bus/pci/devices/{}/driver".format(device["pci_address"]))
            assert driver.linked_to.endswith("/uio_pci_generic")


def test_guest_sees_only_its_own_ivshmem_devices(guest, vm):
    """An ungranted segment is no device at all in the guest: nothing to probe or map."""
    listed = guest.check_output("lspci -n -d 1af4:1110 | wc -l")
    doorbell = 1 if vm.get("doorbell") else 0  # the ivshmem-doorbell is a 1af4:1110 too
    assert int(listed) == sum(len(devices(entry)) for entry in vm["regions"]) + doorbell


# ---- doorbells (docs/doorbell.md) -----------------------------------------------------------


def test_doorbell_is_bound_to_its_driver_and_published(guest, vm):
    """The ivshmem-doorbell at its PCI address belongs to the image's uio_cxl_doorbell (the
    regions' ivshmem-plain devices stay with uio_pci_generic), and /dev/cxl/doorbell is its
    uio device."""
    if not vm.get("doorbell"):
        pytest.skip("the lab gives this VM no doorbell")
    address = vm["doorbell"]["pci_address"]
    driver = guest.file(f"/sys/bus/pci/devices/{address}/driver")
    assert driver.linked_to.endswith("/uio_cxl_doorbell"), guest.run("dmesg | tail -n 20").stdout
    target = guest.check_output("readlink -f /dev/cxl/doorbell")
    assert target.startswith("/dev/uio"), target
    uio = target.rsplit("/", 1)[1]
    assert guest.file(f"/sys/class/uio/{uio}/name").content_string.strip() == "cxl_doorbell"
    # The uio device's version names the peer id the hypervisor's server gave this QEMU.
    assert guest.file(f"/sys/class/uio/{uio}/version").content_string.startswith("1 peer ")


def test_doorbell_server_hands_each_vm_only_its_peers(hypervisor):
    """Seen from the hypervisor's doorbell server: every VM's QEMU is connected on its own
    socket, and each can ring exactly the peers the lab allows it (a client its server, the
    server its clients and attackers; no client another client)."""
    if not LAB.get("doorbell", {}).get("enabled"):
        pytest.skip("the lab has no doorbells")
    config = LAB["doorbell"]["config"]
    state = json.loads(hypervisor.check_output("cat %s", config["state_file"]))
    for entry in config["vms"]:
        seen = state["vms"][entry["name"]]
        assert seen["connected"] is True, (entry["name"], seen)
        assert sorted(seen["rings"]) == sorted(entry["peers"]), (entry["name"], seen)
    clients = {vm["name"] for vm in VMS if vm["role"] != "server"}
    for name in clients:
        entry = next(e for e in config["vms"] if e["name"] == name)
        assert not set(entry["peers"]) & clients, entry


def test_region_path_is_published(guest, vm):
    for entry in vm["regions"]:
        path = guest.file("/dev/cxl/{}".format(entry["name"]))
        if secdsm(entry):
            assert path.is_directory
            assert sorted(path.listdir()) == sorted(seg["name"] for seg in entry["segments"])
        else:
            assert path.is_symlink


def test_region_path_maps_the_whole_region(guest, vm):
    for entry in vm["regions"]:
        if secdsm(entry) or devdax(entry):
            continue
        size = guest.check_output(
            'python3 -c \'import json;print(json.load(open("/etc/cxl-lab/regions.json"))'
            '["{}"]["size_bytes"])\''.format(entry["name"])
        )
        assert int(size) == entry["size_bytes"]


def devdax_device(guest, entry: dict) -> str:
    """The device-DAX device behind /dev/cxl/<region> (dax<N>.<M>)."""
    return os.path.basename(guest.check_output("readlink -f /dev/cxl/%s", entry["name"]))


def test_devdax_region_is_a_device_dax_device_of_its_size_in_its_node(guest, vm):
    entries = [e for e in vm["regions"] if devdax(e)]
    if not entries:
        pytest.skip("this VM maps no devdax region")
    for entry in entries:
        dax = devdax_device(guest, entry)
        assert dax.startswith("dax"), dax
        attrs = {
            a: int(guest.check_output("cat /sys/bus/dax/devices/%s/%s", dax, a), 0)
            for a in ("size", "target_node")
        }
        assert attrs == {"size": entry["size_bytes"], "target_node": entry["guest_node"]}
        assert guest.check_output("ndctl list -N -r all") != ""


def test_devdax_node_has_no_cpu(guest, vm):
    """Every vCPU is in node 0; the regions' nodes have none (as CXL memory has)."""
    nodes = [e["guest_node"] for e in vm["regions"] if devdax(e)]
    if not nodes:
        pytest.skip("this VM maps no devdax region")
    cpu_nodes = guest.check_output(
        "for c in /sys/devices/system/cpu/cpu[0-9]*; do ls -d $c/node* ; done | sed 's/.*node//'"
    ).split()
    assert set(cpu_nodes) == {"0"}


# The guest's ACPI HMAT (/sys/firmware/acpi/tables/HMAT): every System Locality Latency
# and Bandwidth structure's access latencies, "initiator target ns" per line.
HMAT_LATENCIES = """
import struct
t = open("/sys/firmware/acpi/tables/HMAT", "rb").read()
at = 40  # table header (36) + reserved (4)
while at + 8 <= len(t):
    kind, length = struct.unpack_from("<H2xI", t, at)
    if kind == 1 and t[at + 9] == 0:  # locality, data type 0: access latency
        ni, nt = struct.unpack_from("<II", t, at + 12)
        base = struct.unpack_from("<Q", t, at + 24)[0]
        ini = struct.unpack_from("<%dI" % ni, t, at + 32)
        tgt = struct.unpack_from("<%dI" % nt, t, at + 32 + 4 * ni)
        vals = struct.unpack_from("<%dH" % (ni * nt), t, at + 32 + 4 * (ni + nt))
        for i in range(ni):
            for j in range(nt):
                print(ini[i], tgt[j], vals[i * nt + j] * base // 1000)
    at += length
"""


def test_hmat_tells_the_guest_the_region_latency(guest, vm):
    entries = [e for e in vm["regions"] if devdax(e)]
    if not entries:
        pytest.skip("this VM maps no devdax region")
    found = {
        tuple(map(int, line.split()[:2])): int(line.split()[2])
        for line in guest.check_output("python3 -c %s", HMAT_LATENCIES).splitlines()
    }
    for entry in entries:
        assert found.get((0, entry["guest_node"])) == entry["hmat_latency_ns"], found
    assert found.get((0, 0)) == vm["memory"]["local_hmat"]["latency_ns"], found


# Map each (path, length) given, then print the kernel's PAT memtype list: the ranges it
# tracks and the memory type each is mapped with.
MEMTYPES = (
    "import mmap,os,sys;a=sys.argv[1:];"
    "m=[mmap.mmap(os.open(p,os.O_RDWR),int(n)) for p,n in zip(a[::2],a[1::2])];"
    "print(open('/sys/kernel/debug/x86/pat_memtype_list').read())"
)


def memtype_at(listing: str, start: int) -> str:
    """The memory type of the range of the PAT list ("PAT: [mem 0x...-0x...] write-back")
    that holds START."""
    for low, high, kind in re.findall(r"\[mem (0x[0-9a-f]+)-(0x[0-9a-f]+)\] (\S+)", listing):
        if int(low, 16) <= start < int(high, 16):
            return kind
    return "none"


def test_devdax_maps_write_back_and_the_ivshmem_bar_uncached(guest, vm):
    """The point of the devdax medium: the ring's memory is mapped write-back (like CXL
    memory), where an ivshmem BAR (resource2 or uio) is mapped uncached-minus."""
    dax = next((e for e in vm["regions"] if devdax(e)), None)
    bar = next((e for e in vm["regions"] if not devdax(e) and not secdsm(e)), None)
    if dax is None or bar is None:
        pytest.skip("this VM lacks a devdax region or a single-device ivshmem region")
    guest.check_output(
        "mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug"
    )
    listing = guest.check_output(
        "python3 -c %s /dev/cxl/%s %s /dev/cxl/%s %s", MEMTYPES,
        dax["name"], str(dax["size_bytes"]), bar["name"], str(4096),
    )
    dax_start = int(guest.check_output(
        "cat /sys/bus/dax/devices/%s/resource", devdax_device(guest, dax)), 16)
    bar_start = int(guest.check_output(
        "sed -n 3p /sys/bus/pci/devices/%s/resource", bar["pci_address"]).split()[0], 16)
    print(f"devdax at {dax_start:#x}: {memtype_at(listing, dax_start)}; "
          f"ivshmem BAR2 at {bar_start:#x}: {memtype_at(listing, bar_start)}")
    assert memtype_at(listing, dax_start) == "write-back"
    assert memtype_at(listing, bar_start) == "uncached-minus"


def test_binding_survives_reboots(guest):
    assert guest.file("/etc/udev/rules.d/70-cxl-lab.rules").contains("uio_pci_generic")


def region_file_access(guest, path: str) -> tuple[str, int]:
    target = guest.file(path).linked_to
    return guest.file(target).group, guest.file(target).mode


def test_region_file_belongs_to_the_region_group(guest, vm):
    for entry in vm["regions"]:
        if secdsm(entry):
            continue
        assert region_file_access(guest, f"/dev/cxl/{entry['name']}") == ("cxl", 0o660)


def test_segment_files_carry_the_grant_in_their_mode(guest, vm):
    """A read-only segment's file has no write bit: the services' users cannot even open it rw."""
    for entry in vm["regions"]:
        for seg in entry["segments"] if secdsm(entry) else []:
            expected = 0o660 if seg["access"] == "rw" else 0o440
            path = f"/dev/cxl/{entry['name']}/{seg['name']}"
            assert region_file_access(guest, path) == ("cxl", expected), path


def test_udev_gives_the_region_file_its_group_again(guest, vm):
    """What the kernel does on a reboot or a re-probe (root 0600), the udev rule undoes."""
    entry = next((e for e in vm["regions"] if not secdsm(e)), None)
    if entry is None:
        pytest.skip("no single-file region in this VM")
    target = guest.file(f"/dev/cxl/{entry['name']}").linked_to
    guest.check_output("chgrp root %s && chmod 0600 %s", target, target)
    try:
        guest.check_output(
            "udevadm trigger --action=bind --settle /sys/bus/pci/devices/%s",
            entry["pci_address"],
        )
        assert region_file_access(guest, f"/dev/cxl/{entry['name']}") == ("cxl", 0o660)
    finally:
        guest.run("chgrp cxl %s && chmod 0660 %s", target, target)


# Read (3 arguments) or write (4) 64 bytes at an offset of a region or segment file in a
# guest, mapping LENGTH bytes (a device-DAX device maps only whole 2 MiB pages); reads open
# it read-only, so a read-only segment's file (no write bit) can be read.
PEEK = (
    "import mmap,os,sys;w=len(sys.argv)>4;o=int(sys.argv[2]);n=int(sys.argv[3]);"
    "fd=os.open(sys.argv[1],(os.O_RDWR if w else os.O_RDONLY)|os.O_SYNC);"
    "m=mmap.mmap(fd,n,prot=mmap.PROT_READ|(mmap.PROT_WRITE if w else 0));"
    "(m.__setitem__(slice(o,o+64),sys.argv[4].encode().ljust(64,b'\\0')) if w "
    "else print(m[o:o+64].rstrip(b'\\0').decode()))"
)


@pytest.mark.parametrize("name", OFF_REGIONS)
def test_bytes_written_in_one_vm_are_read_in_the_others_and_the_host(hypervisor, name):
    mappers = [vm for vm in VMS if any(e["name"] == name for e in vm["regions"])]
    writers = [
        vm for vm in mappers if all(e["access"] == "rw" for e in vm["regions"] if e["name"] == name)
    ]
    if not writers or len(mappers) < 2:
        pytest.skip(f"region {name} is not shared by a writer and a reader")
    token = f"molecule-{name}-{secrets.token_hex(8)}"
    size = REGIONS[name]["size_bytes"]
    offset = size - 8192
    guest_host(writers[0]["name"]).check_output(
        "python3 -c %s /dev/cxl/%s %s %s %s", PEEK, name, str(offset), str(size), token
    )
    for reader in mappers[1:] if mappers[0] is writers[0] else mappers:
        if reader is writers[0]:
            continue
        seen = guest_host(reader["name"]).check_output(
            "python3 -c %s /dev/cxl/%s %s %s", PEEK, name, str(offset), str(size)
        )
        assert seen == token, "{} reads {!r}".format(reader["name"], seen)
    # devdax: the region starts after the info block in the file
    on_host = host_bytes(
        hypervisor, REGIONS[name]["path"], REGIONS[name].get("data_offset", 0) + offset
    )
    assert on_host == token


def host_bytes(hypervisor, path: str, offset: int) -> str:
    return hypervisor.check_output(
        "dd if=%s bs=64 count=1 skip=%s status=none | tr -d '\\000'", path, str(offset // 64)
    )


def grants(name: str) -> list[tuple[dict, dict]]:
    """(vm, segment entry) for every segment of a secdsm region granted to a VM."""
    return [
        (vm, seg)
        for vm in VMS
        for entry in vm["regions"]
        if entry["name"] == name and secdsm(entry)
        for seg in entry["segments"]
    ]


@pytest.mark.parametrize("name", SECDSM_REGIONS)
def test_client_segment_bytes_reach_the_server_and_the_host(hypervisor, name):
    """A client writes its own client segment; the server VM and the host read the bytes."""
    writable = [(vm, seg) for vm, seg in grants(name)
                if seg["access"] == "rw" and seg["name"].startswith("client-")]
    if not writable:
        pytest.skip(f"no client holds a writable segment of {name}")
    writer, seg = writable[0]
    readers = [vm for vm, other in grants(name)
               if other["name"] == seg["name"] and vm is not writer]
    token = f"molecule-{name}-{secrets.token_hex(8)}"
    offset = seg["size_bytes"] - 8192  # past the sections the layout uses in this segment
    path = f"/dev/cxl/{name}/{seg['name']}"
    length = str(offset + 64)
    guest_host(writer["name"]).check_output(
        "python3 -c %s %s %s %s %s", PEEK, path, str(offset), length, token)
    for reader in readers:
        seen = guest_host(reader["name"]).check_output(
            "python3 -c %s %s %s %s", PEEK, path, str(offset), length)
        assert seen == token, "{} reads {!r}".format(reader["name"], seen)
    assert host_bytes(hypervisor, seg["path"], offset) == token


@pytest.mark.parametrize("name", SECDSM_REGIONS)
def test_a_client_write_into_the_header_is_dropped(hypervisor, name):
    """root in a client VM opens the read-only header for writing and writes: nothing lands."""
    readonly = [(vm, seg) for vm, seg in grants(name)
                if seg["access"] == "ro" and seg["name"] == "header"]
    if not readonly:
        pytest.skip(f"no VM holds {name}'s header read-only")
    vm, seg = readonly[0]
    offset = 4096 - 64  # the header page's reserved tail: harmless if it did land
    before = host_bytes(hypervisor, seg["path"], offset)
    token = f"forged-{secrets.token_hex(8)}"
    # The file's mode (no write bit) is the guest's own rule, and root owns the guest: give
    # it a write bit, write through a writable mapping, put the mode back. Only QEMU's
    # read-only backend is left to stop the write.
    guest_host(vm["name"]).check_output(
        "t=$(readlink -f %s) && m=$(stat -c %%a $t) && chmod u+w $t && "
        "{ python3 -c %s %s %s %s %s; rc=$?; chmod $m $t; exit $rc; }",
        f"/dev/cxl/{name}/header", PEEK, f"/dev/cxl/{name}/header", str(offset), "4096", token,
    )
    assert host_bytes(hypervisor, seg["path"], offset) == before != token


# One datagram over the inter-VM link and its echo (reversed), port 40999. The echo
# server waits, and the client keeps sending, long enough for any machine: the bounds
# (180 s, 150 s) only stop a hang; a fast machine answers in the first round.
UDP_ECHO_ONCE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 40999))
s.settimeout(180)
data, peer = s.recvfrom(64)
s.sendto(data[::-1], peer)
"""
UDP_PING = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
reply = b""
deadline = time.monotonic() + 150
while not reply and time.monotonic() < deadline:
    s.sendto(b"ping-link", (sys.argv[1], 40999))
    try:
        reply = s.recv(64)
    except OSError:
        time.sleep(1)
print(reply.decode())
"""


def test_inter_vm_link_carries_udp(vm):
    if vm["role"] != "client":
        pytest.skip("checked from the clients")
    link = vm["links"][0]
    guest_host(link["peer"]).run(
        "timeout 200 python3 -c %s %s >/dev/null 2>&1 &", UDP_ECHO_ONCE, link["peer_address"]
    )
    reply = guest_host(vm["name"]).check_output("python3 -c %s %s", UDP_PING, link["peer_address"])
    assert reply == "knil-gnip"


def ring_doorbell(host, peer_id: int, times: int) -> None:
    code = ('import os, struct; fd = os.open("/dev/cxl/doorbell", os.O_WRONLY); '
            f'[os.write(fd, struct.pack("<I", {int(peer_id)} << 16)) for _ in range({int(times)})]')
    host.check_output(f"python3 -c '{code}'")


def doorbell_events(host) -> int:
    uio = host.check_output("readlink -f /dev/cxl/doorbell").rsplit("/", 1)[1]
    return int(host.file(f"/sys/class/uio/{uio}/event").content_string)


def test_a_client_cannot_ring_another_client():
    """The attacker VM rings the client VM's peer id (read from the hypervisor's state, as a
    well-informed attacker would know it) 100 times: the client's kernel counts no interrupt.
    Then the server rings the same client once and it does: the path itself works."""
    if not LAB.get("doorbell", {}).get("enabled"):
        pytest.skip("the lab has no doorbells")
    by_role = {vm["role"]: vm for vm in reversed(VMS)}
    if not {"attacker", "client", "server"} <= set(by_role):
        pytest.skip("needs a server, a client and an attacker VM")
    hv = testinfra.get_host("local://", sudo=os.geteuid() != 0)
    state = json.loads(hv.check_output("cat %s", LAB["doorbell"]["config"]["state_file"]))
    client_id = state["vms"][by_role["client"]["name"]]["id"]
    attacker, client, server = (guest_host(by_role[r]["name"])
                                for r in ("attacker", "client", "server"))
    before = doorbell_events(client)
    ring_doorbell(attacker, client_id, 100)
    time.sleep(2)
    assert doorbell_events(client) == before, "the attacker's rings reached the client"
    ring_doorbell(server, client_id, 1)
    deadline = time.monotonic() + 60  # catches a hang only
    while doorbell_events(client) == before:
        assert time.monotonic() < deadline, "the server's ring never reached the client"
        time.sleep(0.2)
