# Copyright: CXL-DSM Lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab description: per-item defaults, cross-checks, derived values.

`normalize()` is a pure function of the description (the `cxl_lab` variable),
the host's NUMA topology (cxl_numa.read_topology) and what the backing
directories hold; it returns the complete lab every role reads, and a list of
errors each of which names the offending item and says the fix. Nothing is
created anywhere before this passes.

Derived values, so that no role recomputes them:
- each region's backing file path;
- per VM and mapped region, the guest PCI slot of its ivshmem-plain device
  (0x10 + index of the region in the VM's list) - the guest module finds the
  region there, and later roles only ever see /dev/cxl/<region>;
- the inter-VM links: every client VM gets one UDP tunnel on 127.0.0.1 to its
  server, addressed 169.254.<link>.1 (server) / 169.254.<link>.2 (client);
- deterministic MAC addresses, so that guests' network units match by MAC.

This module is the one place where the description's defaults and choices are
written: roles/lab_description/meta/argument_specs.yml (the schema Ansible checks)
and inventory/group_vars/all/lab.yml (the commented defaults) are tied to it by
tests/ansible/test_lab_sources.py, and the resolved lab is written once to
<controller_dir>/lab.json for the playbooks and tests that read it.

Per-item state (like stackhpc's libvirt_vms): a region or VM with
`state: absent` is removed by the next site.yml run. The resolved lab keeps the
present items in `regions` and `vms` (what the lab is: every reader uses these)
and the absent ones in `absent_regions` and `absent_vms` (what must go: only
lab_regions, lab_vms and teardown read these). Derived values are computed from
each item's position in the description, absent items included, so that marking
one absent does not renumber, readdress or restart the others.
"""

import copy
import re

from ansible.module_utils.cxl_numa import format_cpulist, parse_cpulist

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
REGION_PCI_SLOT_BASE = 0x10
USER_NIC_PCI_SLOT = 0x0F
LINK_PCI_SLOT_BASE = 0x08
MAX_LINKS = 200

STATES = ("present", "absent")
VM_DEFAULTS = {
    "state": "present",
    "role": "client",
    "vcpus": 1,
    "memory_mib": 1024,
    "cpuset": None,
    "cpu_node": 0,
    "mem_node": None,
    "mem_policy": "strict",
    "ssh_port": None,
    "regions": None,
    "server": None,
}
REGION_DEFAULTS = {
    "state": "present",
    "size_mib": 256,
    "backing_dir": "/dev/shm",
    "numa_node": None,
    "policy": "bind",
    "prealloc": False,
    "mode": "0600",
    "owner": "libvirt-qemu",
    "group": "kvm",
}
LAB_DEFAULTS = {
    "name": "cxl-lab",
    "state_dir": "/var/lib/cxl-dsm-lab",
    "virt_type": "auto",
    "link_base_port": 42000,
    "user_net": "169.254.250.0/24",
    "regions": None,
    "vms": None,
    "image": None,
    "services": None,
}
# One entry of a VM's `regions` list.
MAPPING_DEFAULTS = {
    "access": "rw",
}
IMAGE_DEFAULTS = {
    "source": "debootstrap",
    "suite": "bookworm",
    "mirror": "http://deb.debian.org/debian",
    "disk_size": "4G",
    "packages": [
        "linux-image-amd64",
        "systemd-sysv",
        "udev",
        "kmod",
        "openssh-server",
        "python3",
        "iproute2",
        "pciutils",
    ],
    "extra_packages": ["redis-server", "redis-tools", "python3-venv"],
    "cloud_image": "",
}
ROLES = ("server", "client")
POLICIES = ("bind", "preferred", "interleave")
MEM_POLICIES = ("strict", "preferred", "interleave")
ACCESS = ("rw", "ro")
VIRT_TYPES = ("auto", "kvm", "qemu")
IMAGE_SOURCES = ("debootstrap", "cloud")


def _with_defaults(item, defaults):
    merged = copy.deepcopy(defaults)
    merged.update({k: v for k, v in (item or {}).items() if v is not None or k not in defaults})
    for key, value in defaults.items():
        if merged.get(key) is None:
            merged[key] = value
    return merged


def _is_power_of_two(value):
    return value > 0 and value & (value - 1) == 0


def mac_address(vm_index, nic_index):
    """A locally administered, QEMU-prefixed MAC unique per (VM, NIC)."""
    return f"52:54:00:6c:{vm_index & 0xFF:02x}:{nic_index & 0xFF:02x}"


def _state(item, label, errors):
    """The item's state; a wrong one is reported and taken as present (nothing removed)."""
    if item["state"] not in STATES:
        errors.append(
            "{}: state {!r}: use present (the default) or absent (site.yml removes it).".format(
                label, item["state"]
            )
        )
        item["state"] = "present"
    return item["state"]


def _int(value, what, errors):
    try:
        return int(value)
    except (TypeError, ValueError):
        errors.append(f"{what} must be an integer, got {value!r}.")
        return None


def normalize(description, topology, backing=None, existing=None):
    """Return (lab, errors) for DESCRIPTION on a host with TOPOLOGY.

    backing: {directory: {"fs": "tmpfs"|"hugetlbfs"|other|None, "free_mib": n,
    "page_kib": n}} for each region's backing_dir (None = does not exist).
    existing: {path: size in bytes} of region files already present (they count
    as free memory when a region is kept or resized).
    """
    backing = backing or {}
    existing = existing or {}
    errors = []
    lab = _with_defaults(description, LAB_DEFAULTS)
    lab["image"] = _with_defaults(lab.get("image"), IMAGE_DEFAULTS)
    node_ids = topology["node_ids"]
    nodes = topology["nodes"]
    online = set(topology["online_cpus"])

    if lab["virt_type"] not in VIRT_TYPES:
        errors.append(
            "cxl_lab.virt_type is {!r}: use one of {}.".format(
                lab["virt_type"], ", ".join(VIRT_TYPES)
            )
        )
    if lab["image"]["source"] not in IMAGE_SOURCES:
        errors.append(
            "cxl_lab.image.source is {!r}: use debootstrap (built here from the Debian archive) "
            "or cloud (with cxl_lab.image.cloud_image set).".format(lab["image"]["source"])
        )
    if lab["image"]["source"] == "cloud" and not lab["image"]["cloud_image"]:
        errors.append(
            "cxl_lab.image.source is cloud but cxl_lab.image.cloud_image is empty: set it to "
            "the path or URL of an Ubuntu/Debian cloud image (qcow2)."
        )

    # ---- regions -------------------------------------------------------------
    regions = []
    region_by_name = {}
    absent_regions = []
    highest_memory_node = max([n for n in node_ids if nodes[n]["memory_total_mib"] > 0] or [0])
    wanted_per_dir = {}
    for index, raw in enumerate(lab["regions"] or []):
        region = _with_defaults(raw, REGION_DEFAULTS)
        name = region.get("name")
        label = "cxl_lab.regions[%d]" % index
        if not isinstance(name, str) or not NAME_RE.match(name):
            errors.append(
                f"{label}.name {name!r}: use a short lower-case name matching {NAME_RE.pattern} "
                "(it names the backing file and /dev/cxl/<name> in the guests)."
            )
            continue
        label = f"region {name}"
        if name in region_by_name or any(r["name"] == name for r in absent_regions):
            errors.append(f"{label} is described twice: give each region a unique name.")
            continue
        backing_dir = str(region["backing_dir"]).rstrip("/") or "/"
        region["backing_dir"] = backing_dir
        region["path"] = "{}/{}-{}".format(backing_dir, lab["name"], name)
        if _state(region, label, errors) == "absent":
            # Only what removing it needs: its name and backing file.
            absent_regions.append(region)
            continue
        size = _int(region["size_mib"], f"{label} size_mib", errors)
        if size is not None and not _is_power_of_two(size):
            errors.append(
                "%s: size_mib %d is not a power of two (ivshmem exposes the region as a "
                "PCI BAR): use one, e.g. 256 or 512." % (label, size)
            )
        if region["policy"] not in POLICIES:
            errors.append(
                "{}: policy {!r}: use one of {}.".format(
                    label, region["policy"], ", ".join(POLICIES)
                )
            )
        mode = str(region["mode"])
        if not re.match(r"^0?[0-7]{3}$", mode) or int(mode, 8) & 0o007:
            errors.append(
                f"{label}: mode {mode} would let other users read the shared memory: "
                "use 0600 (QEMU's user only) or 0660 (QEMU's user and group)."
            )
        if region["numa_node"] == "auto":
            region["numa_node"] = highest_memory_node
        if region["numa_node"] is not None:
            node = _int(region["numa_node"], f"{label} numa_node", errors)
            region["numa_node"] = node
            if node is not None and node not in node_ids:
                errors.append(
                    "%s: numa_node %d does not exist on this host (nodes: %s): set numa_node "
                    "to one of them, or to null for no binding." % (label, node, node_ids)
                )
        info = backing.get(backing_dir)
        if info is None or info.get("fs") is None:
            errors.append(
                f"{label}: backing_dir {backing_dir} does not exist: use /dev/shm, or mount "
                f"hugetlbfs there first (mount -t hugetlbfs none {backing_dir})."
            )
        elif info["fs"] not in ("tmpfs", "hugetlbfs"):
            errors.append(
                "{}: backing_dir {} is on {}, not memory: use /dev/shm (tmpfs) or a "
                "hugetlbfs mount.".format(label, backing_dir, info["fs"])
            )
        elif size is not None:
            if info["fs"] == "hugetlbfs" and (size * 1024) % max(info.get("page_kib") or 2048, 1):
                errors.append(
                    "%s: size_mib %d is not a multiple of %s's huge page size (%d KiB)."
                    % (label, size, backing_dir, info.get("page_kib"))
                )
            wanted_per_dir.setdefault(backing_dir, []).append(
                (name, size, existing.get(region["path"], 0))
            )
        region["size_mib"] = size
        region["size_bytes"] = (size or 0) * 1024 * 1024
        region["mode"] = "0" + mode[-3:] if re.match(r"^0?[0-7]{3}$", mode) else mode
        region["prealloc"] = bool(region["prealloc"])
        regions.append(region)
        region_by_name[name] = region
        if size and region["numa_node"] in nodes:
            node = nodes[region["numa_node"]]
            free = node["memory_free_mib"] + existing.get(region["path"], 0) // (1024 * 1024)
            if size > free:
                errors.append(
                    "%s: size_mib %d is larger than node %d's free memory (%d MiB): shrink "
                    "it, bind it to another node, or free memory there."
                    % (label, size, region["numa_node"], free)
                )
    for backing_dir, wanted in wanted_per_dir.items():
        free = backing[backing_dir].get("free_mib", 0) + sum(e for _, _, e in wanted) // (
            1024 * 1024
        )
        free = min(free, topology.get("memory_available_mib") or free)
        total = sum(size for _, size, _ in wanted)
        if total > free:
            errors.append(
                "regions %s need %d MiB in %s but only %d MiB are free there: shrink them "
                "(size_mib) or free memory."
                % (", ".join(n for n, _, _ in wanted), total, backing_dir, free)
            )

    # ---- VMs -----------------------------------------------------------------
    vms = []
    vm_by_name = {}
    absent_vms = []
    absent_region_names = {r["name"] for r in absent_regions}
    ports = {}
    for index, raw in enumerate(lab["vms"] or []):
        vm = _with_defaults(raw, VM_DEFAULTS)
        name = vm.get("name")
        label = "cxl_lab.vms[%d]" % index
        if not isinstance(name, str) or not NAME_RE.match(name):
            errors.append(
                f"{label}.name {name!r}: use a short lower-case name matching {NAME_RE.pattern} "
                "(it names the libvirt domain and the inventory host)."
            )
            continue
        label = f"vm {name}"
        if name in vm_by_name or any(v["name"] == name for v in absent_vms):
            errors.append(f"{label} is described twice: give each VM a unique name.")
            continue
        # The position in the description, absent VMs included: marking one VM absent
        # changes no other VM's default port, CPUs or MAC addresses.
        vm["index"] = index
        if _state(vm, label, errors) == "absent":
            # Only what removing it needs: its name (domain, files, host key).
            absent_vms.append(vm)
            continue
        if vm["role"] not in ROLES:
            errors.append("{}: role {!r}: use server or client.".format(label, vm["role"]))
        vm["vcpus"] = _int(vm["vcpus"], f"{label} vcpus", errors) or 1
        vm["memory_mib"] = _int(vm["memory_mib"], f"{label} memory_mib", errors) or 0
        if vm["memory_mib"] < 256:
            errors.append(
                "%s: memory_mib %d is too small for a Debian guest: use at least 256."
                % (label, vm["memory_mib"])
            )
        cpu_node = _int(vm["cpu_node"], f"{label} cpu_node", errors)
        mem_node = (
            cpu_node
            if vm["mem_node"] is None
            else _int(vm["mem_node"], f"{label} mem_node", errors)
        )
        vm["cpu_node"], vm["mem_node"] = cpu_node, mem_node
        for what, node in (("cpu_node", cpu_node), ("mem_node", mem_node)):
            if node is not None and node not in node_ids:
                errors.append(
                    "%s: %s %d does not exist on this host (nodes: %s): pick one of them."
                    % (label, what, node, node_ids)
                )
        if vm["mem_policy"] not in MEM_POLICIES:
            errors.append(
                "{}: mem_policy {!r}: use one of {}.".format(
                    label, vm["mem_policy"], ", ".join(MEM_POLICIES)
                )
            )
        node_cpus = nodes.get(cpu_node, {}).get("cpus") or sorted(online)
        if vm["cpuset"] is None:
            # Spread VMs over their node's CPUs, one vCPU per host CPU where possible.
            start = (vm["index"] * vm["vcpus"]) % max(len(node_cpus), 1)
            picked = (
                [node_cpus[(start + i) % len(node_cpus)] for i in range(vm["vcpus"])]
                if node_cpus
                else [0]
            )
            vm["cpuset"] = format_cpulist(picked)
        try:
            cpus = parse_cpulist(str(vm["cpuset"]))
        except ValueError:
            cpus = []
            errors.append(
                '{}: cpuset {!r} is not a CPU list like "0-1,4".'.format(label, vm["cpuset"])
            )
        missing = sorted(set(cpus) - online)
        if missing:
            errors.append(
                "{}: cpuset {} names CPUs this host lacks ({}): use online CPUs ({}).".format(
                    label, vm["cpuset"], format_cpulist(missing), format_cpulist(online)
                )
            )
        elif cpus and node_cpus and not set(cpus) <= set(node_cpus) and cpu_node in nodes:
            errors.append(
                "%s: cpuset %s is not on cpu_node %d (its CPUs: %s): change one of them."
                % (label, vm["cpuset"], cpu_node, format_cpulist(node_cpus))
            )
        vm["cpuset"] = format_cpulist(cpus) if cpus else str(vm["cpuset"])
        vm["cpus"] = cpus
        if vm["ssh_port"] is None:
            vm["ssh_port"] = 2222 + vm["index"]
        port = _int(vm["ssh_port"], f"{label} ssh_port", errors)
        vm["ssh_port"] = port
        if port is not None:
            if not 1024 <= port <= 65535:
                errors.append(
                    "%s: ssh_port %d: use an unprivileged port (1024-65535)." % (label, port)
                )
            if port in ports:
                errors.append(
                    "%s: ssh_port %d is also vm %s's: give each VM its own port on 127.0.0.1."
                    % (label, port, ports[port])
                )
            ports[port] = name
        vm["user_mac"] = mac_address(vm["index"], 0)
        mapped = []
        raw_regions = vm["regions"]
        if raw_regions is None:
            raw_regions = [{"name": r["name"]} for r in regions]
        for slot, entry in enumerate(raw_regions):
            if isinstance(entry, str):
                entry = {"name": entry}
            entry = _with_defaults(entry, MAPPING_DEFAULTS)
            rname = entry.get("name")
            access = entry["access"]
            if rname in absent_region_names:
                errors.append(
                    f"{label} maps region {rname}, which has state: absent: remove {rname} "
                    f"from {name}'s regions (cxl_lab.vms[].regions), or keep the region present."
                )
                continue
            if rname not in region_by_name:
                errors.append(
                    "{} maps region {!r}, which cxl_lab.regions does not describe: add it there "
                    "or remove it from the VM (known: {}).".format(
                        label, rname, ", ".join(sorted(region_by_name)) or "none"
                    )
                )
                continue
            if access not in ACCESS:
                errors.append(f"{label}: region {rname} access {access!r}: use rw or ro.")
            region = region_by_name[rname]
            if (
                vm["mem_policy"] == "strict"
                and region["numa_node"] is not None
                and mem_node is not None
                and region["numa_node"] != mem_node
            ):
                errors.append(
                    "%s maps region %s bound to node %d but its RAM is strict on node %d: "
                    "libvirt confines a strict VM's whole QEMU process to that node (cpuset.mems), "
                    "so the region could not be bound elsewhere. Set mem_policy: preferred on %s, "
                    "or bind the region to node %d."
                    % (label, rname, region["numa_node"], mem_node, name, mem_node)
                )
            pci_slot = REGION_PCI_SLOT_BASE + slot
            mapped.append(
                {
                    "name": rname,
                    "access": access,
                    "path": region["path"],
                    "size_bytes": region["size_bytes"],
                    "numa_node": region["numa_node"],
                    "policy": region["policy"],
                    "prealloc": region["prealloc"],
                    "pci_slot": pci_slot,
                    "pci_address": f"0000:00:{pci_slot:02x}.0",
                }
            )
        vm["regions"] = mapped
        # Exactly what the guest module takes (library/cxl_ivshmem.py).
        vm["ivshmem"] = [
            {"name": r["name"], "pci_address": r["pci_address"], "size_bytes": r["size_bytes"]}
            for r in mapped
        ]
        vm["links"] = []
        vms.append(vm)
        vm_by_name[name] = vm

    # ---- inter-VM links (TCP baseline) ----------------------------------------
    servers = [vm for vm in vms if vm["role"] == "server"]
    absent_vm_names = {vm["name"] for vm in absent_vms}
    links = []
    # A client's link number is its position among the described clients, absent ones
    # included, so that removing one client readdresses no other link.
    clients = [
        vm
        for vm in sorted(vms + absent_vms, key=lambda v: v["index"])
        if vm.get("role") == "client"
    ]
    for vm in vms:
        if vm["role"] != "client":
            continue
        if not servers:
            errors.append(
                "vm {} is a client but no VM has role server: make one of them the server.".format(
                    vm["name"]
                )
            )
            break
        server_name = vm.get("server") or servers[0]["name"]
        server = vm_by_name.get(server_name)
        if server_name in absent_vm_names:
            errors.append(
                "vm {}: its server {} has state: absent: point server: at a present server, "
                "or keep {} present.".format(vm["name"], server_name, server_name)
            )
            continue
        if server is None or server["role"] != "server":
            errors.append(
                "vm {}: server {!r} is not a VM with role server.".format(vm["name"], server_name)
            )
            continue
        link_id = clients.index(vm) + 1
        if link_id > MAX_LINKS:
            errors.append(
                "more than %d client VMs: the lab numbers links 169.254.1-%d.0/24."
                % (MAX_LINKS, MAX_LINKS)
            )
            break
        port = int(lab["link_base_port"]) + 2 * (link_id - 1)
        link = {
            "id": link_id,
            "server": server["name"],
            "client": vm["name"],
            "server_port": port,
            "client_port": port + 1,
            "server_address": "169.254.%d.1" % link_id,
            "client_address": "169.254.%d.2" % link_id,
            "prefix": 24,
        }
        links.append(link)
        for me, peer, mine, theirs, addr, peer_addr in (
            (
                server,
                vm,
                link["server_port"],
                link["client_port"],
                link["server_address"],
                link["client_address"],
            ),
            (
                vm,
                server,
                link["client_port"],
                link["server_port"],
                link["client_address"],
                link["server_address"],
            ),
        ):
            me["links"].append(
                {
                    "id": link_id,
                    "peer": peer["name"],
                    "local_port": mine,
                    "remote_port": theirs,
                    "address": addr,
                    "peer_address": peer_addr,
                    "prefix": 24,
                    "mac": mac_address(me["index"], link_id),
                    "pci_slot": LINK_PCI_SLOT_BASE + len(me["links"]),
                }
            )
    for vm in vms:
        if len(vm["links"]) > REGION_PCI_SLOT_BASE - LINK_PCI_SLOT_BASE - 1:
            errors.append(
                "vm %s has %d links; the lab gives one server at most %d clients: add another "
                "server and set `server:` on some clients."
                % (vm["name"], len(vm["links"]), REGION_PCI_SLOT_BASE - LINK_PCI_SLOT_BASE - 1)
            )
    link_ports = set()
    for link in links:
        link_ports.update((link["server_port"], link["client_port"]))
    clash = sorted(link_ports & set(ports))
    if clash:
        errors.append(
            "ssh_port {} collides with the inter-VM link ports from link_base_port {}: move "
            "one of them.".format(", ".join(map(str, clash)), lab["link_base_port"])
        )

    if not vms:
        errors.append(
            "cxl_lab.vms has no present VM: describe at least one (see "
            "inventory/group_vars/all/lab.yml), or run playbooks/teardown.yml to remove the lab."
        )
    lab["regions"] = regions
    lab["vms"] = vms
    lab["links"] = links
    lab["absent_regions"] = absent_regions
    lab["absent_vms"] = absent_vms
    return lab, errors
