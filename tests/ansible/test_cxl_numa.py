"""module_utils/cxl_numa.py and library/cxl_numa_facts.py on fake sysfs trees."""

import pytest
from ansible.module_utils.cxl_numa import format_cpulist, parse_cpulist, read_topology

from moduleutil import load_library, write_tree

TWO_NODES = {
    "sys/devices/system/cpu/online": "0-7\n",
    "sys/devices/system/node/node0/cpulist": "0-3\n",
    "sys/devices/system/node/node0/distance": "10 21\n",
    "sys/devices/system/node/node0/meminfo": (
        "Node 0 MemTotal:  16384000 kB\nNode 0 MemFree:  8192000 kB\n"
    ),
    "sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages": "512\n",
    "sys/devices/system/node/node0/hugepages/hugepages-2048kB/free_hugepages": "500\n",
    "sys/devices/system/node/node1/cpulist": "4-7\n",
    "sys/devices/system/node/node1/distance": "21 10\n",
    "sys/devices/system/node/node1/meminfo": (
        "Node 1 MemTotal:  8192000 kB\nNode 1 MemFree:  4096000 kB\n"
    ),
    "proc/meminfo": "MemTotal: 24576000 kB\nMemFree: 12288000 kB\nMemAvailable: 20000000 kB\n",
    "proc/mounts": (
        "tmpfs /dev/shm tmpfs rw 0 0\nnone /dev/hugepages hugetlbfs rw,pagesize=2M 0 0\n"
    ),
}


@pytest.mark.parametrize(
    "text, cpus", [("0-3,8,10-11", [0, 1, 2, 3, 8, 10, 11]), ("5", [5]), ("", [])]
)
def test_cpulist_round_trip(text, cpus):
    assert parse_cpulist(text) == cpus
    assert format_cpulist(cpus) == text


def test_two_nodes(tmp_path):
    write_tree(tmp_path, TWO_NODES)
    topo = read_topology(str(tmp_path / "sys"), str(tmp_path / "proc"))
    assert topo["node_ids"] == [0, 1]
    assert topo["nodes"][0]["cpus"] == [0, 1, 2, 3]
    assert topo["nodes"][1]["distances"] == [21, 10]
    assert topo["nodes"][0]["memory_free_mib"] == 8000
    assert topo["nodes"][0]["hugepages"] == {2048: {"total": 512, "free": 500}}
    assert topo["memory_available_mib"] == 19531
    assert topo["hugetlbfs_mounts"] == {"/dev/hugepages": 2048}


def test_kernel_without_numa_is_one_node(tmp_path):
    write_tree(
        tmp_path,
        {
            "sys/devices/system/cpu/online": "0-1\n",
            "proc/meminfo": "MemTotal: 2048000 kB\nMemFree: 1024000 kB\n",
        },
    )
    topo = read_topology(str(tmp_path / "sys"), str(tmp_path / "proc"))
    assert topo["node_ids"] == [0]
    assert topo["nodes"][0]["cpus"] == [0, 1]
    assert topo["nodes"][0]["memory_total_mib"] == 2000


def test_fact_module_sets_cxl_numa(tmp_path, run_module):
    write_tree(tmp_path, TWO_NODES)
    module = load_library("cxl_numa_facts")
    how, result = run_module(
        module,
        {"sys_root": str(tmp_path / "sys"), "proc_root": str(tmp_path / "proc")},
        check_mode=True,
    )
    assert how == "exit" and result["changed"] is False
    assert result["ansible_facts"]["cxl_numa"]["node_ids"] == [0, 1]
