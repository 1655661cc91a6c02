# Copyright: CXL-DSM Lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hypervisor's NUMA topology as the lab sees it, read from sysfs and procfs.

Every reader takes the filesystem roots as arguments so that the unit tests can
point them at a fake tree; nothing here changes the machine.
"""

import os
import re


def parse_cpulist(text):
    """Expand a kernel cpulist ("0-3,8,10-11") into a sorted list of ints."""
    cpus = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            first, last = part.split("-", 1)
            cpus.update(range(int(first), int(last) + 1))
        else:
            cpus.add(int(part))
    return sorted(cpus)


def format_cpulist(cpus):
    """The inverse of parse_cpulist: [0, 1, 2, 5] -> "0-2,5"."""
    cpus = sorted(set(cpus))
    ranges = []
    for cpu in cpus:
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else "%d-%d" % (a, b) for a, b in ranges)


def _read(path, default=None):
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return default


def _meminfo_kib(text, key):
    """Value in KiB of KEY in a /proc/meminfo or nodeN/meminfo text, or None."""
    match = re.search(rf"(?m)^(?:Node \d+ )?{re.escape(key)}:\s+(\d+) kB", text or "")
    return int(match.group(1)) if match else None


def read_hugepages(directory):
    """{page_size_kib: {"total": n, "free": n}} for a hugepages/ directory."""
    pages = {}
    try:
        entries = sorted(os.listdir(directory))
    except OSError:
        return pages
    for entry in entries:
        match = re.match(r"hugepages-(\d+)kB$", entry)
        if not match:
            continue
        base = os.path.join(directory, entry)
        pages[int(match.group(1))] = {
            "total": int((_read(os.path.join(base, "nr_hugepages"), "0") or "0").strip()),
            "free": int((_read(os.path.join(base, "free_hugepages"), "0") or "0").strip()),
        }
    return pages


def read_topology(sys_root="/sys", proc_root="/proc"):
    """The NUMA topology: nodes with CPUs, memory, distances and hugepages.

    A kernel without NUMA support (no node directory) is reported as one node 0
    holding every online CPU and all memory, which is what QEMU and libvirt see.
    """
    node_dir = os.path.join(sys_root, "devices/system/node")
    meminfo = _read(os.path.join(proc_root, "meminfo"), "")
    online_cpus = parse_cpulist(
        _read(os.path.join(sys_root, "devices/system/cpu/online"), "0") or "0"
    )
    nodes = {}
    try:
        names = sorted(n for n in os.listdir(node_dir) if re.match(r"node\d+$", n))
    except OSError:
        names = []
    for name in names:
        node_id = int(name[4:])
        base = os.path.join(node_dir, name)
        node_meminfo = _read(os.path.join(base, "meminfo"), "")
        distances = [int(d) for d in (_read(os.path.join(base, "distance"), "") or "").split()]
        nodes[node_id] = {
            "cpus": parse_cpulist(_read(os.path.join(base, "cpulist"), "") or ""),
            "memory_total_mib": (_meminfo_kib(node_meminfo, "MemTotal") or 0) // 1024,
            "memory_free_mib": (_meminfo_kib(node_meminfo, "MemFree") or 0) // 1024,
            "distances": distances,
            "hugepages": read_hugepages(os.path.join(base, "hugepages")),
        }
    if not nodes:
        nodes[0] = {
            "cpus": online_cpus,
            "memory_total_mib": (_meminfo_kib(meminfo, "MemTotal") or 0) // 1024,
            "memory_free_mib": (_meminfo_kib(meminfo, "MemFree") or 0) // 1024,
            "distances": [10],
            "hugepages": read_hugepages(os.path.join(sys_root, "kernel/mm/hugepages")),
        }
    return {
        "node_ids": sorted(nodes),
        "nodes": nodes,
        "online_cpus": online_cpus,
        "memory_available_mib": (_meminfo_kib(meminfo, "MemAvailable") or 0) // 1024,
        "hugetlbfs_mounts": read_hugetlbfs_mounts(proc_root),
    }


def read_hugetlbfs_mounts(proc_root="/proc"):
    """{mount point: page size in KiB} of the mounted hugetlbfs filesystems."""
    mounts = {}
    for line in (_read(os.path.join(proc_root, "mounts"), "") or "").splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[2] != "hugetlbfs":
            continue
        size_kib = 2048
        match = re.search(r"pagesize=(\d+)([KMG])", fields[3])
        if match:
            size_kib = int(match.group(1)) * {"K": 1, "M": 1024, "G": 1024 * 1024}[match.group(2)]
        mounts[fields[1]] = size_kib
    return mounts
