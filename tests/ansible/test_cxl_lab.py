"""module_utils/cxl_lab.py: defaults, derived values, and every validation error says the fix."""

import copy

from ansible.module_utils.cxl_lab import normalize

TOPOLOGY = {
    "node_ids": [0, 1],
    "nodes": {
        0: {
            "cpus": [0, 1],
            "memory_total_mib": 8192,
            "memory_free_mib": 6000,
            "distances": [10, 21],
            "hugepages": {},
        },
        1: {
            "cpus": [2, 3],
            "memory_total_mib": 8192,
            "memory_free_mib": 6000,
            "distances": [21, 10],
            "hugepages": {},
        },
    },
    "online_cpus": [0, 1, 2, 3],
    "memory_available_mib": 12000,
    "hugetlbfs_mounts": {},
}
BACKING = {"/dev/shm": {"fs": "tmpfs", "free_mib": 12000}}
DEFAULT = {
    "regions": [{"name": "cxl0", "size_mib": 256}],
    "vms": [
        {
            "name": "vm1",
            "role": "server",
            "cpuset": "0",
            "ssh_port": 2222,
            "regions": [{"name": "cxl0"}],
        },
        {
            "name": "vm2",
            "role": "client",
            "cpuset": "1",
            "ssh_port": 2223,
            "regions": [{"name": "cxl0"}],
        },
    ],
}


def check(description, topology=TOPOLOGY, backing=BACKING, existing=None):
    return normalize(copy.deepcopy(description), topology, backing, existing)


def broken(**changes):
    description = copy.deepcopy(DEFAULT)
    for path, value in changes.items():
        target = description
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target[key]
        last = keys[-1]
        if last.isdigit():
            target[int(last)] = value
        else:
            target[last] = value
    lab, errors = check(description)
    assert errors, "expected a validation error"
    return " ".join(errors)


def test_default_lab_is_valid_and_complete():
    lab, errors = check(DEFAULT)
    assert errors == []
    region = lab["regions"][0]
    assert region["path"] == "/dev/shm/cxl-lab-cxl0"
    assert region["security"] == "secdsm"
    # One group of 8 channels: header 4 KiB + client-0 and server-0 of 32 MiB each.
    assert region["size_bytes"] == region["region_size"] == (64 << 20) + 4096
    assert region["mode"] == "0600"
    vm1, vm2 = lab["vms"]
    assert (vm1["vcpus"], vm1["memory_mib"], vm1["mem_node"]) == (1, 1024, 0)
    assert [s["pci_address"] for s in vm1["regions"][0]["segments"]] == [
        "0000:00:10.0", "0000:00:11.0", "0000:00:12.0"
    ]
    assert vm2["ivshmem"] == [
        {
            "name": "cxl0",
            "security": "secdsm",
            "segments": [
                {"name": "header", "pci_address": "0000:00:10.0", "size_bytes": 4096,
                 "access": "ro"},
                {"name": "client-0", "pci_address": "0000:00:11.0", "size_bytes": 32 << 20,
                 "access": "rw"},
                {"name": "server-0", "pci_address": "0000:00:12.0", "size_bytes": 32 << 20,
                 "access": "ro"},
            ],
        }
    ]
    assert vm1["user_mac"] != vm2["user_mac"]


def test_off_region_is_one_file_and_one_device():
    description = copy.deepcopy(DEFAULT)
    description["regions"][0]["security"] = "off"
    lab, errors = check(description)
    assert errors == []
    assert lab["regions"][0]["size_bytes"] == 256 << 20
    assert lab["vms"][0]["ivshmem"] == [
        {"name": "cxl0", "pci_address": "0000:00:10.0", "size_bytes": 256 << 20}
    ]


def test_client_is_linked_to_server_with_link_local_addresses():
    lab, _ = check(DEFAULT)
    (link,) = lab["links"]
    assert (link["server"], link["client"]) == ("vm1", "vm2")
    vm1, vm2 = lab["vms"]
    assert vm1["links"][0]["address"] == "169.254.1.1" == vm2["links"][0]["peer_address"]
    assert vm2["links"][0]["address"] == "169.254.1.2"
    assert vm1["links"][0]["local_port"] == vm2["links"][0]["remote_port"]


def test_vm_without_regions_maps_all_and_ro_is_kept():
    description = copy.deepcopy(DEFAULT)
    description["regions"].append({"name": "cxl1", "size_mib": 128, "security": "off"})
    description["vms"][0]["regions"] = None
    description["vms"][1]["regions"] = [{"name": "cxl1", "access": "ro"}]
    lab, errors = check(description)
    assert errors == []
    assert [r["name"] for r in lab["vms"][0]["regions"]] == ["cxl0", "cxl1"]
    # After cxl0's three segments (no client maps cxl0: one default group).
    assert lab["vms"][0]["regions"][1]["pci_address"] == "0000:00:13.0"
    assert lab["vms"][1]["regions"][0]["pci_address"] == "0000:00:10.0"
    assert lab["vms"][1]["regions"][0]["access"] == "ro"


def test_numa_node_auto_is_the_highest_node():
    description = copy.deepcopy(DEFAULT)
    description["regions"][0]["numa_node"] = "auto"
    for vm in description["vms"]:
        vm["mem_policy"] = "preferred"
    lab, errors = check(description)
    assert errors == []
    assert lab["regions"][0]["numa_node"] == 1


def test_unknown_numa_node():
    message = broken(regions__0__numa_node=3)
    assert "numa_node 3 does not exist" in message and "nodes: [0, 1]" in message


def test_vm_node_the_host_lacks():
    assert "cpu_node 7 does not exist" in broken(vms__0__cpu_node=7)


def test_overlapping_ports():
    message = broken(vms__1__ssh_port=2222)
    assert "ssh_port 2222 is also vm vm1's" in message and "own port" in message


def test_region_larger_than_free_memory():
    message = broken(regions__0__size_mib=16384, regions__0__security="off")
    assert "only 12000 MiB are free" in message and "shrink" in message


def test_region_larger_than_its_node():
    description = copy.deepcopy(DEFAULT)
    description["regions"][0].update(size_mib=8192, numa_node=1, security="off")
    for vm in description["vms"]:
        vm["mem_policy"] = "preferred"
    _, errors = check(
        description,
        backing={"/dev/shm": {"fs": "tmpfs", "free_mib": 100000}},
        topology=dict(TOPOLOGY, memory_available_mib=100000),
    )
    assert any("larger than node 1's free memory" in e for e in errors)


def test_existing_region_counts_as_free():
    _, errors = check(
        DEFAULT,
        backing={"/dev/shm": {"fs": "tmpfs", "free_mib": 100}},
        existing={"/dev/shm/cxl-lab-cxl0": 256 << 20},
    )
    assert errors == []


def test_unknown_region_in_vm():
    message = broken(vms__1__regions=[{"name": "cxl9"}])
    assert "maps region 'cxl9'" in message and "known: cxl0" in message


def test_region_size_must_be_power_of_two():
    assert "not a power of two" in broken(regions__0__size_mib=300, regions__0__security="off")
    # secdsm: size_mib only bounds the segment files, each of which is a power of two.
    description = copy.deepcopy(DEFAULT)
    description["regions"][0]["size_mib"] = 300
    assert check(description)[1] == []


def test_world_readable_mode_is_refused():
    assert "0600" in broken(regions__0__mode="0644")


def test_backing_dir_must_be_memory():
    description = copy.deepcopy(DEFAULT)
    description["regions"][0]["backing_dir"] = "/var/tmp"
    _, errors = check(description, backing={"/var/tmp": {"fs": "ext4", "free_mib": 1000}})
    assert any("not memory" in e for e in errors)
    _, errors = check(description, backing={})
    assert any("does not exist" in e and "hugetlbfs" in e for e in errors)


def test_cpuset_outside_host():
    message = broken(vms__0__cpuset="0-9")
    assert "CPUs this host lacks (4-9)" in message


def test_cpuset_on_wrong_node():
    assert "is not on cpu_node 0" in broken(vms__0__cpuset="2")


def test_strict_vm_with_region_on_another_node():
    description = copy.deepcopy(DEFAULT)
    description["regions"][0]["numa_node"] = 1
    _, errors = check(description)
    assert any("mem_policy: preferred" in e for e in errors)


def test_client_without_server():
    assert "no VM has role server" in broken(vms__0__role="client")


def test_duplicate_names():
    assert "described twice" in broken(vms__1__name="vm1")


def test_every_error_is_reported_at_once():
    description = copy.deepcopy(DEFAULT)
    description["regions"][0]["numa_node"] = 5
    description["vms"][1]["ssh_port"] = 2222
    _, errors = check(description)
    assert len(errors) >= 2


# ---- per-item state ----------------------------------------------------------------


def test_every_item_is_present_by_default():
    lab, _ = check(DEFAULT)
    assert [r["state"] for r in lab["regions"]] == ["present"]
    assert [vm["state"] for vm in lab["vms"]] == ["present", "present"]
    assert lab["absent_regions"] == [] and lab["absent_vms"] == []


def test_absent_region_is_listed_for_removal_only():
    description = copy.deepcopy(DEFAULT)
    description["regions"].append({"name": "cxl1", "state": "absent"})
    lab, errors = check(description)
    assert errors == []
    assert [r["name"] for r in lab["regions"]] == ["cxl0"]
    (gone,) = lab["absent_regions"]
    assert (gone["name"], gone["state"]) == ("cxl1", "absent")
    assert gone["path"] == "/dev/shm/cxl-lab-cxl1"


def test_absent_region_is_not_mapped_by_a_vm_that_maps_every_region():
    description = copy.deepcopy(DEFAULT)
    description["regions"].append({"name": "cxl1", "state": "absent"})
    description["vms"][0]["regions"] = None
    lab, errors = check(description)
    assert errors == []
    assert [r["name"] for r in lab["vms"][0]["regions"]] == ["cxl0"]


def test_absent_region_still_mapped_by_a_present_vm_is_refused():
    description = copy.deepcopy(DEFAULT)
    description["regions"][0]["state"] = "absent"
    _, errors = check(description)
    for vm in ("vm1", "vm2"):
        assert any(
            f"vm {vm} maps region cxl0, which has state: absent" in e
            and f"remove cxl0 from {vm}'s regions" in e
            for e in errors
        ), errors


def test_absent_region_mapped_by_an_absent_vm_is_fine():
    description = copy.deepcopy(DEFAULT)
    description["regions"].append({"name": "cxl1", "size_mib": 128})
    description["vms"].append(
        {"name": "vm3", "cpuset": "1", "regions": [{"name": "cxl1"}], "state": "absent"}
    )
    description["regions"][1]["state"] = "absent"
    lab, errors = check(description)
    assert errors == []
    assert [vm["name"] for vm in lab["absent_vms"]] == ["vm3"]


def test_absent_vm_keeps_the_others_unchanged():
    """Marking a VM absent renumbers nothing: ports, CPUs, MACs and links stay."""
    description = copy.deepcopy(DEFAULT)
    for vm in description["vms"]:
        del vm["cpuset"], vm["ssh_port"]
    description["vms"].insert(1, {"name": "vm3", "regions": [{"name": "cxl0"}]})
    before, errors = check(description)
    assert errors == []
    description["vms"][1]["state"] = "absent"
    after, errors = check(description)
    assert errors == []
    assert [vm["name"] for vm in after["vms"]] == ["vm1", "vm2"]
    assert [vm["name"] for vm in after["absent_vms"]] == ["vm3"]
    old = {vm["name"]: vm for vm in before["vms"]}
    for vm in after["vms"]:
        for key in ("ssh_port", "cpuset", "user_mac", "regions"):
            assert vm[key] == old[vm["name"]][key], key
    assert after["vms"][1]["links"][0]["address"] == old["vm2"]["links"][0]["address"]


def test_absent_vm_frees_its_port():
    description = copy.deepcopy(DEFAULT)
    description["vms"].append({"name": "vm3", "ssh_port": 2222, "state": "absent"})
    _, errors = check(description)
    assert errors == []


def test_client_of_an_absent_server_is_refused():
    description = copy.deepcopy(DEFAULT)
    description["vms"].insert(0, {"name": "vm0", "role": "server", "state": "absent"})
    description["vms"][2]["server"] = "vm0"
    message = " ".join(check(description)[1])
    assert "its server vm0 has state: absent" in message and "point server:" in message


def test_unknown_state_says_the_choices():
    message = broken(regions__0__state="gone")
    assert "region cxl0: state 'gone'" in message and "present" in message and "absent" in message
    assert "vm vm2: state 'deleted'" in broken(vms__1__state="deleted")


def test_lab_with_every_vm_absent_says_teardown():
    description = copy.deepcopy(DEFAULT)
    for vm in description["vms"]:
        vm["state"] = "absent"
    message = " ".join(check(description)[1])
    assert "no present VM" in message and "teardown" in message


def test_every_error_names_its_item_and_a_fix():
    """A wrong description of every kind at once: each error says which item and what to do."""
    description = copy.deepcopy(DEFAULT)
    description["regions"][0].update(numa_node=5, mode="0644", size_mib=300, state="present")
    description["regions"].append({"name": "cxl1", "state": "absent"})
    description["vms"][0].update(ssh_port=2223, regions=[{"name": "cxl1"}])
    description["vms"][1].update(cpuset="9", state="maybe")
    _, errors = check(description)
    assert len(errors) >= 6, errors
    items = ("region cxl0", "region cxl1", "vm vm1", "vm vm2")
    fixes = ("use ", "remove", "set ", "pick", "give", "change", "shrink")
    for error in errors:
        assert any(item in error for item in items), error
        assert any(fix in error.lower() for fix in fixes), error


def test_default_cpus_give_the_server_a_cpu_of_its_own():
    """Without cpusets, the server VM takes the node's first CPU and the client and
    attacker VMs spread over the others: an attacker's CPU use competes with a client,
    not with the server. With more servers than CPUs, everyone spreads over all."""
    description = copy.deepcopy(DEFAULT)
    description["vms"].append({"name": "vm3", "role": "attacker", "regions": [{"name": "cxl0"}]})
    for vm in description["vms"]:
        vm.pop("cpuset", None), vm.pop("ssh_port", None)
    lab, errors = check(description)
    assert errors == []
    assert {vm["name"]: vm["cpuset"] for vm in lab["vms"]} == {"vm1": "0", "vm2": "1", "vm3": "1"}
    description["vms"].insert(0, {"name": "vm0", "role": "client", "regions": [{"name": "cxl0"}]})
    description["vms"][1]["vcpus"] = 2  # the server takes both CPUs of node 0
    lab, errors = check(description)
    assert errors == []
    cpus = {vm["name"]: vm["cpuset"] for vm in lab["vms"]}
    assert cpus == {"vm0": "0", "vm1": "0-1", "vm2": "1", "vm3": "0"}, cpus


def test_doorbell_peers_follow_the_regions():
    """A client may ring the servers of the regions it maps, a server their clients and
    attackers; a client never another client; ids are positions + 1 (absent VMs count)."""
    description = copy.deepcopy(DEFAULT)
    description["regions"].append({"name": "cxl1", "size_mib": 256})
    description["vms"].append({"name": "vm0", "state": "absent"})
    description["vms"].append(
        {"name": "vm3", "role": "attacker", "ssh_port": 2230, "regions": [{"name": "cxl0"}]}
    )
    description["vms"].append(
        {"name": "vm4", "role": "client", "ssh_port": 2231, "regions": [{"name": "cxl1"}]}
    )
    lab, errors = check(description)
    assert errors == [], errors
    bell = lab["doorbell"]
    assert bell["enabled"] is True
    assert bell["config"]["vms"] == [
        {"name": "vm1", "id": 1, "peers": ["vm2", "vm3"]},
        {"name": "vm2", "id": 2, "peers": ["vm1"]},
        {"name": "vm3", "id": 4, "peers": ["vm1"]},
        {"name": "vm4", "id": 5, "peers": []},
    ]
    vm2 = next(vm for vm in lab["vms"] if vm["name"] == "vm2")
    assert vm2["doorbell"]["pci_address"] == "0000:00:07.0"
    assert vm2["doorbell"]["socket"] == "/run/cxl-dsm-lab/cxl-lab/doorbell/vm2.sock"
    assert bell["config"]["vectors"] == vm2["doorbell"]["vectors"]


def test_doorbell_off_and_wrong_values():
    description = copy.deepcopy(DEFAULT)
    description["doorbell"] = False
    lab, errors = check(description)
    assert errors == [] and lab["doorbell"]["enabled"] is False
    assert all(vm["doorbell"] is None for vm in lab["vms"])
    description["doorbell"] = "yes"
    _, errors = check(description)
    assert any("cxl_lab.doorbell is 'yes': use true" in e for e in errors), errors
    description["doorbell"] = True
    description["image"] = {"source": "cloud", "cloud_image": "/x.img"}
    _, errors = check(description)
    assert any("set cxl_lab.doorbell: false with image.source cloud" in e for e in errors), errors


def test_a_region_cannot_be_named_doorbell():
    description = copy.deepcopy(DEFAULT)
    description["regions"][0]["name"] = "doorbell"
    for vm in description["vms"]:
        vm["regions"] = [{"name": "doorbell"}]
    _, errors = check(description)
    assert any("/dev/cxl/doorbell is the guests' doorbell device" in e for e in errors), errors
