# Copyright: CXL-DSM Lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab description: per-item defaults, cross-checks, derived values.

`normalize()` is a pure function of the description (the `cxl_lab` variable),
the host's NUMA topology (cxl_numa.read_topology) and what the backing
directories hold; it returns the complete lab every role reads, and a list of
errors each of which names the offending item and says the fix. Nothing is
created anywhere before this passes.

Derived values, so that no role recomputes them:
- each region's backing path: a file (`security: off`) or a directory of
  segment files (`security: secdsm`), and its layout-5 plan (docs/ring-protocol.md
  section 2): channel groups, segments with offset, size and span, region_size;
- per VM and mapped region, what it is granted: the whole region (off), or each
  segment rw, ro or not at all (secdsm: role defaults, then the VM's `grants`);
- per VM, the guest PCI slot of each ivshmem-plain device: 0x10 upwards over its
  devices, in region order then segment order - the guest module finds them there,
  and later roles only ever see /dev/cxl/<region>;
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
# Slots 0x10..0x1f: the last slot of a PCI bus is 0x1f.
MAX_REGION_DEVICES = 0x20 - REGION_PCI_SLOT_BASE
USER_NIC_PCI_SLOT = 0x0F
LINK_PCI_SLOT_BASE = 0x08
# The ivshmem-doorbell device (docs/doorbell.md): below the links, where libvirt puts
# nothing of its own in the lab's domains (it fills 0x01-0x02).
DOORBELL_PCI_SLOT = 0x07
# The doorbell server's policy besides its VMs (roles/lab_hypervisor/tasks/doorbell.yml);
# each lab has its own server, named after the lab (two labs on a host never share one).
DOORBELL_SOCKET_DIR = "/run/cxl-dsm-lab/{name}/doorbell"
DOORBELL_VECTORS = 2
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
    "channels": 8,
    "grants": None,
    "acl_user": None,
}
REGION_DEFAULTS = {
    "state": "present",
    "security": "secdsm",
    "size_mib": 256,
    "backing_dir": "/dev/shm",
    "numa_node": None,
    "policy": "bind",
    "prealloc": False,
    "mode": "0600",
    "owner": "libvirt-qemu",
    "group": "kvm",
    "segment_align": "auto",
    "medium": "ivshmem",
    "hmat_latency_ns": 300,
    "hmat_bandwidth_mib_s": 32768,
    "access_delay_ns": 0,
}
# The ring's injected far-memory delay (docs/ring-protocol.md 2.4): at most 1 ms per batch.
MAX_ACCESS_DELAY_NS = 1000000
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
    "doorbell": True,
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
        "ndctl",
    ],
    "extra_packages": ["redis-server", "redis-tools", "python3-venv"],
    "cloud_image": "",
}
# The ring sizes the lab plans regions with: cxl_lab.services.ring.req_ring / resp_ring,
# the driver's own defaults (docs/ring-protocol.md section 2.1).
RING_DEFAULTS = {
    "req_ring": 2 << 20,
    "resp_ring": 2 << 20,
}
ROLES = ("server", "client", "attacker")
SECURITY = ("secdsm", "off")
# How a region reaches the guests (docs/lab.md, "Mediums"): an ivshmem-plain PCI BAR (the
# default: it is what Sec-DSM's per-segment, read-only devices are made of), or an emulated
# NVDIMM turned into a device-DAX namespace, mapped write-back in a CPU-less guest NUMA node
# as CXL memory appears to Linux.
MEDIA = ("ivshmem", "devdax")
# devdax: the guest writes the namespace's info block into the first 2 MiB of the backing
# file (ndctl create-namespace --mode=devdax --map=mem --align=2M, by the first VM that finds
# it raw), so the file is the region's size plus this, and the ring starts there.
DEVDAX_RESERVE = 2 << 20
DEVDAX_ALIGN = 2 << 20
# HMAT of the guests' own node (initiator 0 -> node 0), beside each devdax region's node:
# idle local DRAM as Intel MLC measures it on a CXL-era server (docs/benchmarks.md).
LOCAL_HMAT = {"latency_ns": 113, "bandwidth_mib_s": 65536}
# SLIT distances: local 10, a devdax region's node 20 (a remote node, as Linux reports
# CXL memory behind a host bridge).
FAR_DISTANCE = 20
GRANTS = ("rw", "ro", "none")
POLICIES = ("bind", "preferred", "interleave")
MEM_POLICIES = ("strict", "preferred", "interleave")
ACCESS = ("rw", "ro")
VIRT_TYPES = ("auto", "kvm", "qemu")
IMAGE_SOURCES = ("debootstrap", "cloud")


# ---- layout 5: the segment plan (docs/ring-protocol.md section 2) -------------------
# The same rule as cxl_layout_plan() in ring/include/cxl_ring/layout.h and
# cxl_ring.protocol.plan_layout(); tests/vectors/layout5.json holds their common vectors.
PAGE_SIZE = 4096
HEADER_SIZE = PAGE_SIZE
CONTROL_SIZE = PAGE_SIZE
MIN_RING_SIZE = 4096
MAX_RING_SIZE = 1 << 30
MAX_CHANNELS = 256
MAX_GROUPS = 32


def _pow2_ceil(n):
    p = 1
    while p < n:
        p <<= 1
    return p


def layout_plan(groups, req_ring, resp_ring, segment_align):
    """(region_size, segments) of a layout-5 region whose group g has groups[g] channels.

    Each segment: {name, kind (header|client|server), group (None for the header),
    first_channel, channel_count, offset, size, span}, in segment order. Raises
    ValueError, saying why, for what cxl_layout_plan() refuses (returns 0 for).
    """
    if not 1 <= len(groups) <= MAX_GROUPS:
        raise ValueError(f"{len(groups)} channel groups: a region has 1 to {MAX_GROUPS}")
    if segment_align < PAGE_SIZE or not _is_power_of_two(segment_align):
        raise ValueError(f"segment_align {segment_align} is not a power of two >= {PAGE_SIZE}")
    for what, size in (("req_ring", req_ring), ("resp_ring", resp_ring)):
        if not MIN_RING_SIZE <= size <= MAX_RING_SIZE or not _is_power_of_two(size):
            raise ValueError(
                f"{what} {size} is not a power of two from {MIN_RING_SIZE} to {MAX_RING_SIZE}"
            )
    if any(count < 1 for count in groups):
        raise ValueError("every channel group needs at least one channel")
    if sum(groups) > MAX_CHANNELS:
        raise ValueError(f"{sum(groups)} channels: a region has at most {MAX_CHANNELS}")
    segments = [
        {
            "name": "header",
            "kind": "header",
            "group": None,
            "first_channel": 0,
            "channel_count": 0,
            "size": HEADER_SIZE,
        }
    ]
    first = 0
    for group, count in enumerate(groups):
        for kind, ring in (("client", req_ring), ("server", resp_ring)):
            segments.append(
                {
                    "name": f"{kind}-{group}",
                    "kind": kind,
                    "group": group,
                    "first_channel": first,
                    "channel_count": count,
                    "size": count * (CONTROL_SIZE + ring),
                }
            )
        first += count
    offset = 0
    for segment in segments:
        segment["span"] = max(_pow2_ceil(segment["size"]), segment_align)
        segment["offset"] = offset
        offset += segment["span"]
    return offset, segments


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


def _ring_sizes(lab, errors):
    """The ring sizes regions are planned with (cxl_lab.services.ring), checked."""
    services = lab.get("services") if isinstance(lab.get("services"), dict) else {}
    ring = services.get("ring") if isinstance(services.get("ring"), dict) else {}
    sizes = {}
    for key, default in RING_DEFAULTS.items():
        value = ring.get(key)
        if value is None:
            sizes[key] = default
            continue
        value = _int(value, f"cxl_lab.services.ring.{key}", errors)
        if value is not None and (
            not MIN_RING_SIZE <= value <= MAX_RING_SIZE or not _is_power_of_two(value)
        ):
            errors.append(
                "cxl_lab.services.ring.%s %d: use a power of two from %d to %d (default %d)."
                % (key, value, MIN_RING_SIZE, MAX_RING_SIZE, default)
            )
            value = None
        sizes[key] = default if value is None else value
    return sizes


def _segment_align(region, page_bytes, label, errors):
    """auto: the backing's page size (4096 on tmpfs, the huge page size on hugetlbfs)."""
    value = region["segment_align"]
    if value == "auto":
        return page_bytes
    align = _int(value, f"{label} segment_align", errors)
    if align is None:
        return page_bytes
    if align < PAGE_SIZE or not _is_power_of_two(align):
        errors.append(
            "%s: segment_align %d: use auto, or a power of two >= %d." % (label, align, PAGE_SIZE)
        )
        return page_bytes
    if align % page_bytes:
        errors.append(
            "%s: segment_align %d is smaller than %s's page size (%d): use auto or at least %d."
            % (label, align, region["backing_dir"], page_bytes, page_bytes)
        )
        return page_bytes
    return align


def _mapping_names(vm, region_by_name):
    """(region name, access) of each entry of a VM's regions; null: every present region."""
    entries = vm["regions"]
    if entries is None:
        entries = [{"name": name} for name in region_by_name]
    for entry in entries:
        if isinstance(entry, str):
            entry = {"name": entry}
        entry = _with_defaults(entry, MAPPING_DEFAULTS)
        yield entry.get("name"), entry["access"]


ACL_USER_RE = re.compile(r"^[A-Za-z0-9_.:@+=-]{1,127}$")


def _check_redis_users(lab, errors):
    """cxl_lab.services.redis.users: {name: ACL rules}, written as redis.conf user lines."""
    services = lab.get("services") if isinstance(lab.get("services"), dict) else {}
    redis = services.get("redis") if isinstance(services.get("redis"), dict) else {}
    users = redis.get("users")
    if users is None:
        return
    if not isinstance(users, dict):
        errors.append(
            "cxl_lab.services.redis.users must be a mapping of user name to ACL rules "
            f"(app: \"on nopass ~app:* +@read +@write\"), got {users!r}."
        )
        return
    for name, rules in users.items():
        if not isinstance(name, str) or not ACL_USER_RE.match(name) or name == "-":
            errors.append(
                f"cxl_lab.services.redis.users: user name {name!r}: use 1 to 127 letters, "
                "digits and _.:@+=- (no spaces or commas)."
            )
        if not isinstance(rules, str) or not rules.strip() or any(c in rules for c in "\r\n"):
            errors.append(
                f"cxl_lab.services.redis.users.{name}: {rules!r}: give the user's ACL rules "
                "as one line (\"on nopass ~app:* +@read +@write\", as in ACL SETUSER)."
            )


def _check_acl_user(vm, label, lab, errors):
    """A client's or attacker's acl_user: the Redis ACL user its channel group's sessions run
    as (docs/ring-protocol.md section 12); described in services.redis.users, or default."""
    user = vm["acl_user"]
    if user is None:
        return
    if vm["role"] not in ("client", "attacker"):
        errors.append(
            f"{label}: acl_user {user!r}: only a client or attacker VM has a channel group "
            "whose sessions run as a Redis user; remove it from this VM."
        )
        return
    if not isinstance(user, str) or not ACL_USER_RE.match(user) or user == "-":
        errors.append(
            f"{label}: acl_user {user!r}: use a Redis user name of 1 to 127 letters, digits "
            "and _.:@+=- (no spaces or commas)."
        )
        return
    services = lab.get("services") if isinstance(lab.get("services"), dict) else {}
    redis = services.get("redis") if isinstance(services.get("redis"), dict) else {}
    users = redis.get("users") if isinstance(redis.get("users"), dict) else {}
    if user != "default" and user not in users:
        errors.append(
            f"{label}: acl_user {user!r} is not among cxl_lab.services.redis.users "
            f"({', '.join(sorted(users)) or 'none described'}): describe it there with its "
            "ACL rules, or use default."
        )


def _describe_groups(groups):
    if len(groups) == 1 and groups[0]["vm"] is None:
        return "one group of %d channels, no client VM maps it" % groups[0]["channels"]
    return "%d channel groups: %s" % (
        len(groups),
        ", ".join("%s %d" % (g["vm"], g["channels"]) for g in groups),
    )


def _role_grants(role, region, group):
    """What a VM of ROLE is granted in a secdsm REGION by default, per segment."""
    grants = {}
    for segment in region["segments"]:
        if role == "server":
            grants[segment["name"]] = "ro" if segment["kind"] == "client" else "rw"
        elif segment["kind"] == "header":
            grants[segment["name"]] = "ro"
        elif segment["group"] == group and group is not None:
            grants[segment["name"]] = "rw" if segment["kind"] == "client" else "ro"
        else:
            grants[segment["name"]] = "none"
    return grants


def _grants(vm, label, mapped, region_by_name, errors):
    """The VM's grants overrides, checked: {region: {segment: rw|ro|none}}."""
    grants = vm["grants"]
    if grants is None:
        return {}
    shape = "{<region>: {<segment>: rw|ro|none}}, e.g. {cxl0: {client-0: ro}}"
    if not isinstance(grants, dict):
        errors.append(f"{label}: grants {grants!r}: use {shape}.")
        return {}
    mapped_by_name = {m["name"]: m for m in mapped}
    checked = {}
    for rname, per_segment in grants.items():
        where = f"{label}: grants.{rname}"
        if rname not in region_by_name:
            errors.append(
                "{}: cxl_lab.regions describes no present region {!r}: grant segments of one "
                "of {} or remove the entry.".format(
                    where, rname, ", ".join(sorted(region_by_name)) or "none"
                )
            )
            continue
        region = region_by_name[rname]
        if rname not in mapped_by_name:
            errors.append(
                f"{where}: {vm['name']} does not map region {rname}: add {rname} to its "
                "regions, or remove the grant."
            )
            continue
        if region["security"] == "off":
            errors.append(
                f"{where}: region {rname} has security: off, where every VM maps the whole "
                f"region rw and there is nothing to grant: remove the grant, or set security: "
                f"secdsm on {rname}."
            )
            continue
        if not isinstance(per_segment, dict):
            errors.append(f"{where} {per_segment!r}: use {shape}.")
            continue
        names = [s["name"] for s in region["segments"]]
        checked[rname] = {}
        for segment, access in per_segment.items():
            if names and segment not in names:
                errors.append(
                    "{}: region {} has no segment {!r} (its segments: {}): grant one of "
                    "them.".format(where, rname, segment, ", ".join(names))
                )
            elif access not in GRANTS:
                errors.append(f"{where}.{segment}: access {access!r}: use rw, ro or none.")
            else:
                checked[rname][segment] = access
    return checked


# What a server must be granted in a secdsm region, and why (docs/ring-protocol.md 2).
SERVER_NEEDS = {
    "header": ("rw", "the server writes the header"),
    "server": ("rw", "the server writes every server segment (its responses)"),
    "client": ("ro", "the server reads every client segment (the requests) and never writes one"),
}


def _granted_segments(vm, label, mapping, region, errors):
    """The segments of a secdsm REGION the VM maps: role defaults, then its grants,
    capped at ro when it maps the region ro; a server must keep what it needs."""
    rname = region["name"]
    role = vm["role"] if vm["role"] in ROLES else "client"
    if role == "server" and mapping["access"] == "ro":
        errors.append(
            f"{label} is a server and maps region {rname} (security: secdsm) with access ro: "
            f"the server writes the header and every server segment: map {rname} rw "
            "(the default)."
        )
        return []
    grants = _role_grants(role, region, mapping["group"])
    grants.update(vm["grants"].get(rname, {}))
    if mapping["access"] == "ro":
        grants = {k: ("ro" if v == "rw" else v) for k, v in grants.items()}
    granted = []
    for segment in region["segments"]:
        access = grants[segment["name"]]
        if role == "server":
            need, why = SERVER_NEEDS[segment["kind"]]
            if access != need:
                errors.append(
                    "%s is region %s's server but its grants give it %s %s: %s: grant %s %s "
                    "(remove the override grants.%s.%s)."
                    % (
                        label,
                        rname,
                        segment["name"],
                        access,
                        why,
                        segment["name"],
                        need,
                        rname,
                        segment["name"],
                    )
                )
        if access != "none":
            granted.append(
                {
                    "name": segment["name"],
                    "access": access,
                    "path": segment["path"],
                    "size_bytes": segment["span"],
                }
            )
    return granted


def _allocate_pci_slots(vm, label, mapped, errors):
    """One ivshmem-plain device per off region and per granted secdsm segment, at
    0x10 upwards in region order, then segment order."""
    devices = []
    for mapping in mapped:
        if mapping["medium"] == "devdax":
            continue  # an NVDIMM: no PCI slot (_place_nvdimms)
        devices.extend(mapping["segments"] if mapping["security"] == "secdsm" else [mapping])
    for slot, device in enumerate(devices, REGION_PCI_SLOT_BASE):
        device["pci_slot"] = slot
        device["pci_address"] = f"0000:00:{slot:02x}.0"
    if len(devices) > MAX_REGION_DEVICES:
        errors.append(
            "%s needs %d shared-memory devices (one per region with security: off, one per "
            "granted segment with secdsm) but the guest PCI slots 0x10-0x1f hold %d: map fewer "
            "regions, give a secdsm region fewer client VMs (its server maps 1 + 2 per client), "
            "or set security: off on one of them (one device)."
            % (label, len(devices), MAX_REGION_DEVICES)
        )


def _place_nvdimms(vm, mapped):
    """Each devdax region the VM maps is an emulated NVDIMM in a guest NUMA node of its own,
    without CPUs (1, 2, ... in region order; node 0 holds the vCPUs and the VM's RAM), with
    the region's HMAT figures. vm["memory"] says what the domain needs for them: memory
    slots, the largest memory (RAM plus every NVDIMM's backing file), node 0's HMAT figures
    and the SLIT distance of the regions' nodes."""
    nvdimms = [m for m in mapped if m["medium"] == "devdax"]
    for slot, mapping in enumerate(nvdimms):
        mapping["nvdimm_slot"] = slot
        mapping["guest_node"] = slot + 1
    vm["memory"] = {
        "nvdimms": len(nvdimms),
        "max_mib": vm["memory_mib"] + sum(m["file_size_bytes"] >> 20 for m in nvdimms),
        "local_hmat": dict(LOCAL_HMAT),
        "far_distance": FAR_DISTANCE,
    }


def _devdax_entry(mapping):
    """What library/cxl_devdax.py takes for one mapped devdax region."""
    return {
        "name": mapping["name"],
        "guest_node": mapping["guest_node"],
        "size_bytes": mapping["size_bytes"],
        "channel_group": mapping["group"],
    }


def _ivshmem_entry(mapping):
    """What library/cxl_ivshmem.py takes for one mapped region."""
    if mapping["security"] == "off":
        return {
            "name": mapping["name"],
            "pci_address": mapping["pci_address"],
            "size_bytes": mapping["size_bytes"],
        }
    return {
        "name": mapping["name"],
        "security": "secdsm",
        "segments": [
            {
                "name": s["name"],
                "pci_address": s["pci_address"],
                "size_bytes": s["size_bytes"],
                "access": s["access"],
            }
            for s in mapping["segments"]
        ],
    }


def _raw_vcpus(raw):
    try:
        return max(int(raw.get("vcpus") or 1), 1)
    except (TypeError, ValueError):
        return 1


def _default_cpus(raw_vms, index, cpu_node, node_cpus):
    """Host CPUs of a VM without a cpuset: the node's server VMs first, each on CPUs of
    its own where the node has enough; the client and attacker VMs spread over the
    CPUs left (all of the node's when the servers take them all), one vCPU per host CPU
    where possible. Every VM of the description counts, absent ones included, so that
    marking one VM absent moves no other VM. The server is the VM every client waits
    on: an attacker's CPU use should compete with a client, not with it."""
    if not node_cpus:
        return [0]
    same_node = []
    for i, raw in enumerate(raw_vms):
        if not isinstance(raw, dict):
            continue
        node = raw.get("cpu_node", VM_DEFAULTS["cpu_node"])
        if node == cpu_node or (i == index):
            same_node.append((i, raw))
    servers = [(i, r) for i, r in same_node if r.get("role") == "server"]
    others = [(i, r) for i, r in same_node if r.get("role") != "server"]
    reserved = sum(_raw_vcpus(r) for _, r in servers)
    me_server = any(i == index for i, _ in servers)
    if me_server or reserved >= len(node_cpus):
        pool, group = node_cpus, (servers if me_server else others)
        offset = 0 if me_server else reserved
    else:
        pool, group, offset = node_cpus[reserved:], others, 0
    for i, raw in group:
        if i == index:
            break
        offset += _raw_vcpus(raw)
    return [pool[(offset + k) % len(pool)] for k in range(_raw_vcpus(raw_vms[index]))]


def _check_one_server_per_region(vms, errors):
    servers = {}
    for vm in vms:
        if vm["role"] == "server":
            for mapping in vm["regions"]:
                if mapping["security"] == "secdsm":
                    servers.setdefault(mapping["name"], []).append(vm["name"])
    for rname, names in servers.items():
        if len(names) > 1:
            errors.append(
                "region %s (security: secdsm) is mapped by the servers %s; its header and "
                "server segments have one writer: give each server its own region, or map "
                "%s from one of them." % (rname, " and ".join(names), rname)
            )


def _doorbell(lab, vms, errors):
    """The doorbells between VMs (docs/doorbell.md): per VM its peer id (position + 1, so
    that marking a VM absent renumbers no other) and its peers, the VMs it may ring: a
    server's are the client and attacker VMs mapping a region it serves, theirs the servers
    of the regions they map. A client never gets another client. Also each VM's
    vm["doorbell"] (its socket and device address) and the server's whole policy."""
    enabled = lab.get("doorbell")
    if not isinstance(enabled, bool):
        errors.append(
            f"cxl_lab.doorbell is {enabled!r}: use true (an ivshmem-doorbell device per VM, so "
            "that an idle server sleeps until a client rings) or false (the server polls)."
        )
        enabled = False
    if enabled and lab["image"]["source"] != "debootstrap":
        errors.append(
            "cxl_lab.doorbell needs the guest driver that the debootstrap image builds in "
            "(uio_cxl_doorbell): set cxl_lab.doorbell: false with image.source {}.".format(
                lab["image"]["source"]
            )
        )
        enabled = False
    entries = []
    socket_dir = DOORBELL_SOCKET_DIR.format(name=lab["name"])
    for vm in vms:
        mine = {m["name"] for m in vm.get("regions") or []}
        if vm["role"] == "server":
            peers = [
                o["name"]
                for o in vms
                if o["role"] != "server" and mine & {m["name"] for m in o.get("regions") or []}
            ]
        else:
            peers = [
                o["name"]
                for o in vms
                if o["role"] == "server" and mine & {m["name"] for m in o.get("regions") or []}
            ]
        entry = {"name": vm["name"], "id": vm["index"] + 1, "peers": peers}
        entries.append(entry)
        vm["doorbell"] = (
            {
                "id": entry["id"],
                "peers": peers,
                "socket": "%s/%s.sock" % (socket_dir, vm["name"]),
                "vectors": DOORBELL_VECTORS,
                "pci_slot": DOORBELL_PCI_SLOT,
                "pci_address": "0000:00:%02x.0" % DOORBELL_PCI_SLOT,
            }
            if enabled
            else None
        )
    return {
        "enabled": enabled,
        # Where this lab's server lives on the hypervisor (its unit, or its daemon's files).
        "unit": "cxl-ivshmem-server-%s" % lab["name"],
        "config_path": "/etc/cxl-dsm-lab/%s/doorbell.json" % lab["name"],
        "pidfile": "/run/cxl-ivshmem-server-%s.pid" % lab["name"],
        "log": "/var/log/cxl-ivshmem-server-%s.log" % lab["name"],
        "config": {
            "socket_dir": socket_dir,
            "dir_mode": "0750",
            "socket_mode": "0660",
            "group": "kvm",
            "vectors": DOORBELL_VECTORS,
            "memory_size": 4096,
            "state_file": socket_dir + "/state.json",
            "vms": entries,
        },
    }


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
    rings = _ring_sizes(lab, errors)
    _check_redis_users(lab, errors)
    regions = []
    region_by_name = {}
    absent_regions = []
    highest_memory_node = max([n for n in node_ids if nodes[n]["memory_total_mib"] > 0] or [0])
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
        if name == "doorbell":
            errors.append(
                "region doorbell: /dev/cxl/doorbell is the guests' doorbell device "
                "(docs/doorbell.md): give the region another name."
            )
            continue
        backing_dir = str(region["backing_dir"]).rstrip("/") or "/"
        region["backing_dir"] = backing_dir
        region["path"] = "{}/{}-{}".format(backing_dir, lab["name"], name)
        if _state(region, label, errors) == "absent":
            # Only what removing it needs: its name and backing path (file or directory).
            absent_regions.append(region)
            continue
        if region["security"] is False:
            errors.append(
                f"{label}: security is false (YAML reads a bare off as false): "
                'write security: "off".'
            )
            region["security"] = "off"
        elif region["security"] not in SECURITY:
            errors.append(
                "{}: security {!r}: use secdsm (one device per segment, each VM granted only "
                "what its role needs) or off (one device, the whole region rw for every "
                "VM).".format(label, region["security"])
            )
            region["security"] = "secdsm"
        known_medium = region["medium"] in MEDIA
        if not known_medium:
            errors.append(
                "{}: medium {!r}: use ivshmem (a PCI BAR; the default, and what secdsm needs) "
                "or devdax (an emulated NVDIMM, a device-DAX namespace in a CPU-less guest "
                "node).".format(label, region["medium"])
            )
            region["medium"] = "ivshmem"
        devdax = region["medium"] == "devdax"
        if devdax and region["security"] == "secdsm":
            errors.append(
                f"{label}: medium devdax with security secdsm: Sec-DSM maps every segment as "
                "a device of its own, read-only where the grant says ro, and its header is a "
                "single 4 KiB page; a device-DAX namespace needs a size aligned to 2 MiB plus "
                "a 2 MiB info block, and the lab has no read-only NVDIMM. Set security: \"off\" "
                "on this region (one NVDIMM, read-write in every VM that maps it), or keep "
                "medium: ivshmem for Sec-DSM."
            )
        if devdax:
            for key in ("hmat_latency_ns", "hmat_bandwidth_mib_s"):
                value = _int(region[key], f"{label} {key}", errors)
                if value is not None and value <= 0:
                    errors.append(f"{label}: {key} {value} must be positive.")
                    value = None
                region[key] = value or REGION_DEFAULTS[key]
        delay = _int(region["access_delay_ns"], f"{label} access_delay_ns", errors)
        if delay is not None and not 0 <= delay <= MAX_ACCESS_DELAY_NS:
            errors.append(
                f"{label}: access_delay_ns {delay} is outside 0..{MAX_ACCESS_DELAY_NS}: the "
                "ring's injected far-memory delay per batch read (docs/ring-protocol.md 2.4), "
                "e.g. 200 for a CXL hop on a host with one NUMA node; 0 turns it off."
            )
            delay = None
        region["access_delay_ns"] = delay or 0
        size = _int(region["size_mib"], f"{label} size_mib", errors)
        if size is not None and size <= 0:
            errors.append(f"{label}: size_mib {size} must be positive: use e.g. 256.")
            size = None
        if size is not None and devdax and (size << 20) % DEVDAX_ALIGN:
            errors.append(
                "%s: size_mib %d is odd: a device-DAX namespace is a whole number of 2 MiB "
                "pages: use an even size, e.g. %d." % (label, size, size + 1)
            )
        elif (
            size is not None
            and known_medium
            and not devdax
            and region["security"] == "off"
            and not _is_power_of_two(size)
        ):
            errors.append(
                "%s: size_mib %d is not a power of two (with security: off ivshmem exposes "
                "the whole region as one PCI BAR): use one, e.g. 256 or 512." % (label, size)
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
        page_bytes = PAGE_SIZE
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
        elif info["fs"] == "hugetlbfs":
            page_bytes = max(info.get("page_kib") or 2048, 1) * 1024
            if size is not None and region["security"] == "off" and (size << 20) % page_bytes:
                errors.append(
                    "%s: size_mib %d is not a multiple of %s's huge page size (%d KiB)."
                    % (label, size, backing_dir, page_bytes // 1024)
                )
            elif devdax and DEVDAX_RESERVE % page_bytes:
                errors.append(
                    "%s: medium devdax on %s, whose huge pages (%d KiB) are larger than the "
                    "2 MiB device-DAX alignment: use /dev/shm or a 2 MiB hugetlbfs mount."
                    % (label, backing_dir, page_bytes // 1024)
                )
        region["segment_align"] = _segment_align(region, page_bytes, label, errors)
        region["size_mib"] = size
        region["mode"] = "0" + mode[-3:] if re.match(r"^0?[0-7]{3}$", mode) else mode
        region["prealloc"] = bool(region["prealloc"])
        region.update(rings)
        regions.append(region)
        region_by_name[name] = region

    # ---- channel groups: one per client or attacker VM mapping a region ----------
    # Numbered in VM order, absent VMs included (like every derived value): marking a
    # client absent keeps its group, so that no other VM's segments, devices or
    # channels move; its channels stay reserved until its entry is deleted.
    group_vms = {name: [] for name in region_by_name}
    absent_region_names = {r["name"] for r in absent_regions}
    seen_vms = set()
    for raw in lab["vms"] or []:
        raw = _with_defaults(raw, VM_DEFAULTS)
        name = raw.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name) or name in seen_vms:
            continue  # reported below
        seen_vms.add(name)
        if raw["role"] not in ("client", "attacker"):
            continue
        try:
            channels = int(raw["channels"])
        except (TypeError, ValueError):
            channels = None  # a present VM's is reported with it
        if raw["state"] == "absent" and (channels is None or channels < 1):
            channels = VM_DEFAULTS["channels"]  # unchecked: it only keeps the numbering
        for rname, _access in _mapping_names(raw, region_by_name):
            if rname in group_vms and name not in [v for v, _, _ in group_vms[rname]]:
                user = raw["acl_user"] if isinstance(raw["acl_user"], str) else None
                group_vms[rname].append((name, channels, user))

    # ---- each region's layout and memory ----------------------------------------
    wanted_per_dir = {}
    for region in regions:
        name, label = region["name"], "region %s" % region["name"]
        groups, first = [], 0
        for group, (vm, channels, user) in enumerate(
            group_vms[name] or [(None, VM_DEFAULTS["channels"], None)]
        ):
            groups.append({"group": group, "vm": vm, "channels": channels, "first_channel": first,
                           "acl_user": user})
            first += channels or 0
        region["groups"] = groups
        region["segments"] = []
        region["region_size"] = 0
        region["size_bytes"] = (region["size_mib"] or 0) << 20
        # Where the ring's byte 0 is in the backing file, and the file's size: devdax keeps
        # the namespace's info block in front of the region (DEVDAX_RESERVE).
        region["data_offset"] = DEVDAX_RESERVE if region["medium"] == "devdax" else 0
        region["file_size_bytes"] = region["size_bytes"] + region["data_offset"]
        if any(not 1 <= (g["channels"] or 0) <= MAX_CHANNELS for g in groups):
            continue  # a VM's channels are wrong: reported with that VM
        if len(groups) > MAX_GROUPS:
            errors.append(
                "%s is mapped by %d client and attacker VMs, each with its own channel group; "
                "a region has at most %d groups: map it from fewer VMs, or describe another "
                "region for the others." % (label, len(groups), MAX_GROUPS)
            )
            continue
        if first > MAX_CHANNELS:
            errors.append(
                "%s: its client and attacker VMs ask for %d channels in all (%s); a region "
                "has at most %d: lower their channels."
                % (
                    label,
                    first,
                    ", ".join("%s %d" % (g["vm"], g["channels"]) for g in groups),
                    MAX_CHANNELS,
                )
            )
            continue
        try:
            region_size, segments = layout_plan(
                [g["channels"] for g in groups],
                region["req_ring"],
                region["resp_ring"],
                region["segment_align"],
            )
        except ValueError:
            continue  # the ring sizes or segment_align: reported with them
        region["region_size"] = region_size
        for segment in segments:
            segment["path"] = (
                region["path"]
                if region["security"] == "off"
                else "{}/{}".format(region["path"], segment["name"])
            )
        region["segments"] = segments
        size = region["size_mib"]
        if size is None:
            continue
        needed_mib = -(-region_size // (1 << 20))
        if region_size > size << 20:
            if region["medium"] == "devdax":
                fix = "raise size_mib to at least %d" % (needed_mib + needed_mib % 2)
            elif region["security"] == "off":
                fix = "use size_mib %d (the next power of two)" % _pow2_ceil(needed_mib)
            else:
                fix = "raise size_mib to at least %d" % needed_mib
            errors.append(
                "%s: its layout needs %d bytes (%s; rings %d/%d bytes, segment_align %d) but "
                "size_mib is %d: %s, or give its VMs fewer channels or smaller rings "
                "(cxl_lab.services.ring)."
                % (
                    label,
                    region_size,
                    _describe_groups(groups),
                    region["req_ring"],
                    region["resp_ring"],
                    region["segment_align"],
                    size,
                    fix,
                )
            )
        if region["security"] == "secdsm":
            # The host holds exactly the segment files; size_mib only bounds them.
            region["size_bytes"] = region_size
            size = needed_mib
        size += region["data_offset"] >> 20
        info = backing.get(region["backing_dir"]) or {}
        if info.get("fs") in ("tmpfs", "hugetlbfs"):
            wanted_per_dir.setdefault(region["backing_dir"], []).append(
                (name, size, existing.get(region["path"], 0))
            )
        if region["numa_node"] in nodes:
            node = nodes[region["numa_node"]]
            free = node["memory_free_mib"] + existing.get(region["path"], 0) // (1024 * 1024)
            if size > free:
                errors.append(
                    "%s: its %d MiB are larger than node %d's free memory (%d MiB): shrink "
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
                "(size_mib, or fewer channels and smaller rings) or free memory."
                % (", ".join(n for n, _, _ in wanted), total, backing_dir, free)
            )

    # ---- VMs -----------------------------------------------------------------
    vms = []
    vm_by_name = {}
    absent_vms = []
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
            errors.append(
                "{}: role {!r}: use server, client or attacker.".format(label, vm["role"])
            )
        if vm["role"] in ("client", "attacker"):
            channels = _int(vm["channels"], f"{label} channels", errors)
            if channels is not None and not 1 <= channels <= MAX_CHANNELS:
                errors.append(
                    "%s: channels %d: use 1 to %d (the channels of its group in every "
                    "region it maps)." % (label, channels, MAX_CHANNELS)
                )
            vm["channels"] = channels
        _check_acl_user(vm, label, lab, errors)
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
            vm["cpuset"] = format_cpulist(
                _default_cpus(lab["vms"], vm["index"], cpu_node, node_cpus)
            )
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
        for rname, access in _mapping_names(vm, region_by_name):
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
            if region["medium"] == "devdax" and access == "ro":
                errors.append(
                    f"{label} maps region {rname} (medium devdax) with access ro: the lab maps "
                    "an emulated NVDIMM read-write (it has no read-only one): map it rw, or "
                    f"use medium: ivshmem on {rname}, whose ro mapping QEMU enforces."
                )
            group = next((g["group"] for g in region["groups"] if g["vm"] == name), None)
            mapped.append(
                {
                    "name": rname,
                    "medium": region["medium"],
                    "data_offset": region["data_offset"],
                    "file_size_bytes": region["file_size_bytes"],
                    "security": region["security"],
                    "access": access,
                    "group": group,
                    "path": region["path"],
                    "size_bytes": region["size_bytes"],
                    "numa_node": region["numa_node"],
                    "policy": region["policy"],
                    "prealloc": region["prealloc"],
                    "hmat_latency_ns": region["hmat_latency_ns"],
                    "hmat_bandwidth_mib_s": region["hmat_bandwidth_mib_s"],
                }
            )
        vm["grants"] = _grants(vm, label, mapped, region_by_name, errors)
        for mapping in mapped:
            if mapping["security"] == "secdsm":
                mapping["segments"] = _granted_segments(
                    vm, label, mapping, region_by_name[mapping["name"]], errors
                )
        _allocate_pci_slots(vm, label, mapped, errors)
        _place_nvdimms(vm, mapped)
        vm["regions"] = mapped
        # Exactly what the guest modules take (library/cxl_ivshmem.py, library/cxl_devdax.py).
        vm["ivshmem"] = [_ivshmem_entry(m) for m in mapped if m["medium"] == "ivshmem"]
        vm["devdax"] = [_devdax_entry(m) for m in mapped if m["medium"] == "devdax"]
        vm["links"] = []
        vms.append(vm)
        vm_by_name[name] = vm
    _check_one_server_per_region(vms, errors)

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
    lab["doorbell"] = _doorbell(lab, vms, errors)
    lab["regions"] = regions
    lab["vms"] = vms
    lab["links"] = links
    lab["absent_regions"] = absent_regions
    lab["absent_vms"] = absent_vms
    return lab, errors
