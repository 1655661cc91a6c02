"""module_utils/cxl_lab.py for Sec-DSM: the layout-5 plan (the protocol's rule, checked
against the C one), channel groups, grants and their validation, the resolved shape other
roles read (lab.json), PCI slots and the device limit."""

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from ansible.module_utils import cxl_lab
from ansible.module_utils.cxl_lab import layout_plan, normalize

# The ivshmem regions of the inventory's lab (test_cxl_lab_devdax.py covers devdax).
from test_lab_sources import BACKING, TOPOLOGY
from test_lab_sources import IVSHMEM_LAB as INVENTORY

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def check(description, backing=BACKING):
    return normalize(copy.deepcopy(description), TOPOLOGY, backing)


def resolved(description=INVENTORY):
    lab, errors = check(description)
    assert errors == []
    return lab


def errors_of(change):
    """The errors of the default lab after CHANGE(description)."""
    description = copy.deepcopy(INVENTORY)
    change(description)
    _, errors = check(description)
    assert errors, "expected a validation error"
    return errors


def vm_of(lab, name):
    return next(vm for vm in lab["vms"] if vm["name"] == name)


# ---- the plan ---------------------------------------------------------------------


def test_plan_of_the_protocol_defaults():
    """docs/ring-protocol.md 2.1: one group of 8, 2 MiB rings: 64 MiB + 4 KiB."""
    size, segments = layout_plan([8], 2 * MiB, 2 * MiB, 4096)
    assert size == 64 * MiB + 4096
    assert [(s["name"], s["offset"], s["size"], s["span"]) for s in segments] == [
        ("header", 0, 4096, 4096),
        ("client-0", 4096, 8 * (4096 + 2 * MiB), 32 * MiB),
        ("server-0", 4096 + 32 * MiB, 8 * (4096 + 2 * MiB), 32 * MiB),
    ]


def test_plan_of_groups_and_huge_pages():
    size, segments = layout_plan([1, 3], 4096, 8192, 2 * MiB)
    assert [(s["name"], s["group"], s["first_channel"], s["channel_count"]) for s in segments] == [
        ("header", None, 0, 0), ("client-0", 0, 0, 1), ("server-0", 0, 0, 1),
        ("client-1", 1, 1, 3), ("server-1", 1, 1, 3),
    ]
    assert all(s["span"] == 2 * MiB for s in segments) and size == 10 * MiB


@pytest.mark.parametrize(
    "groups,req,resp,align",
    [([], 4096, 4096, 4096), ([0], 4096, 4096, 4096), ([8] * 33, 4096, 4096, 4096),
     ([200, 57], 4096, 4096, 4096), ([8], 3000, 4096, 4096), ([8], 4096, 4096, 6000),
     ([8], 4096, 4096, 2048)],
)
def test_plan_refuses_what_the_c_plan_refuses(groups, req, resp, align):
    with pytest.raises(ValueError):
        layout_plan(groups, req, resp, align)


CASES = [
    ([8], 2 * MiB, 2 * MiB, 4096),
    ([8, 8], 2 * MiB, 2 * MiB, 4096),
    ([1], 4096, 4096, 4096),
    ([3, 1, 7], 65536, 4096, 4096),
    ([1, 2], 4096, 1 << 20, 2 * MiB),
    ([256], 4096, 4096, 4096),
    ([8] * 32, 4096, 8192, 1 << 30),
]
C_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include "cxl_ring/layout.h"
int main(int argc, char **argv) {
    uint32_t req = strtoul(argv[1], 0, 0), resp = strtoul(argv[2], 0, 0);
    uint32_t align = strtoul(argv[3], 0, 0);
    uint32_t groups[CXL_MAX_GROUPS], n = 0;
    struct cxl_segment_plan out[CXL_MAX_SEGMENTS];
    for (int i = 4; i < argc; i++) groups[n++] = strtoul(argv[i], 0, 0);
    unsigned long long size = cxl_layout_plan(groups, n, req, resp, align, out);
    printf("%llu\n", size);
    for (uint32_t k = 0; size && k < 1 + 2 * n; k++)
        printf("%u %u %u %u %llu %llu %llu\n", out[k].kind, out[k].group, out[k].first_channel,
               out[k].channel_count, (unsigned long long)out[k].offset,
               (unsigned long long)out[k].size, (unsigned long long)out[k].span);
    return 0;
}
"""
KIND = {"header": 1, "client": 2, "server": 3}


@pytest.fixture(scope="module")
def c_plan(tmp_path_factory):
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    work = tmp_path_factory.mktemp("plan")
    (work / "plan.c").write_text(C_PROGRAM)
    subprocess.run(
        [compiler, "-std=c11", "-I", str(REPO / "ring/include"), "-o", str(work / "plan"),
         str(work / "plan.c")],
        check=True, timeout=120,
    )
    return work / "plan"


@pytest.mark.parametrize("groups,req,resp,align", CASES)
def test_plan_is_cxl_layout_plan(c_plan, groups, req, resp, align):
    out = subprocess.run(
        [str(c_plan), str(req), str(resp), str(align), *map(str, groups)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.split("\n")
    size, segments = layout_plan(groups, req, resp, align)
    assert int(out[0]) == size
    rows = [tuple(map(int, line.split())) for line in out[1:] if line]
    assert rows == [
        (KIND[s["kind"]], 0xFFFF if s["group"] is None else s["group"], s["first_channel"],
         s["channel_count"], s["offset"], s["size"], s["span"])
        for s in segments
    ]


VECTORS = REPO / "tests/vectors/layout5.json"


def vectors(kind):
    if not VECTORS.exists():
        return []
    return json.loads(VECTORS.read_text())[kind]


def plan_args(case):
    return case["groups"], case["req_ring_size"], case["resp_ring_size"], case["segment_align"]


@pytest.mark.parametrize("case", vectors("plans"), ids=lambda case: case["name"])
def test_plan_matches_the_shared_vectors(case):
    """tests/vectors/layout5.json, the vectors the C and Python clients are checked against."""
    size, segments = layout_plan(*plan_args(case))
    assert size == case["region_size"]
    assert [
        dict(s, kind=KIND[s["kind"]], group=0xFFFF if s["group"] is None else s["group"])
        for s in segments
    ] == case["segments"]


@pytest.mark.parametrize("case", vectors("invalid_plans"), ids=lambda case: case["name"])
def test_plan_refuses_the_shared_invalid_vectors(case):
    with pytest.raises(ValueError):
        layout_plan(*plan_args(case))


# ---- the resolved lab (the shape lab.json has) ------------------------------------


def test_default_lab_resolves_to_the_contract_shape():
    lab = resolved()
    cxl0, cxl1 = lab["regions"]
    assert (cxl0["security"], cxl1["security"]) == ("secdsm", "off")
    for region in (cxl0, cxl1):
        assert (region["segment_align"], region["req_ring"], region["resp_ring"]) == (
            4096, 2 * MiB, 2 * MiB
        )
        assert region["groups"] == [
            {"group": 0, "vm": "vm2", "channels": 8, "first_channel": 0,
             "acl_user": None},
            {"group": 1, "vm": "vm3", "channels": 8, "first_channel": 8,
             "acl_user": "attacker"},
        ]
        assert region["region_size"] == 4096 + 4 * 32 * MiB
        assert [s["name"] for s in region["segments"]] == [
            "header", "client-0", "server-0", "client-1", "server-1"
        ]
        assert set(region["segments"][1]) == {
            "name", "kind", "group", "first_channel", "channel_count", "offset", "size", "span",
            "path",
        }
    assert cxl0["path"] == "/dev/shm/cxl-lab-cxl0"
    assert cxl0["segments"][3]["path"] == "/dev/shm/cxl-lab-cxl0/client-1"
    assert cxl0["size_bytes"] == cxl0["region_size"]  # what the host holds
    assert {s["path"] for s in cxl1["segments"]} == {"/dev/shm/cxl-lab-cxl1"}
    assert cxl1["size_bytes"] == 256 * MiB

    vm1, vm2, vm3 = lab["vms"]
    assert [(vm["role"], vm["regions"][0]["group"]) for vm in lab["vms"]] == [
        ("server", None), ("client", 0), ("attacker", 1)
    ]
    mapping = vm3["regions"][0]
    assert mapping["security"] == "secdsm"
    assert mapping["segments"] == [
        {"name": "header", "access": "ro", "path": "/dev/shm/cxl-lab-cxl0/header",
         "size_bytes": 4096, "pci_slot": 0x10, "pci_address": "0000:00:10.0"},
        {"name": "client-1", "access": "rw", "path": "/dev/shm/cxl-lab-cxl0/client-1",
         "size_bytes": 32 * MiB, "pci_slot": 0x11, "pci_address": "0000:00:11.0"},
        {"name": "server-1", "access": "ro", "path": "/dev/shm/cxl-lab-cxl0/server-1",
         "size_bytes": 32 * MiB, "pci_slot": 0x12, "pci_address": "0000:00:12.0"},
    ]
    off = vm3["regions"][1]
    assert (off["security"], off["group"], off["access"], off["pci_address"]) == (
        "off", 1, "rw", "0000:00:13.0"
    )
    assert "segments" not in off
    assert vm3["ivshmem"] == [
        {"name": "cxl0", "security": "secdsm", "segments": [
            {"name": s["name"], "pci_address": s["pci_address"], "size_bytes": s["size_bytes"],
             "access": s["access"]} for s in mapping["segments"]]},
        {"name": "cxl1", "pci_address": "0000:00:13.0", "size_bytes": 256 * MiB},
    ]
    assert [(s["name"], s["access"]) for s in vm1["regions"][0]["segments"]] == [
        ("header", "rw"), ("client-0", "ro"), ("server-0", "rw"), ("client-1", "ro"),
        ("server-1", "rw"),
    ]
    assert vm1["regions"][1]["pci_address"] == "0000:00:15.0"
    assert [link["client"] for link in lab["links"]] == ["vm2"], "attackers get no link"


def test_absent_attacker_keeps_its_group_and_nobody_moves():
    description = copy.deepcopy(INVENTORY)
    description["vms"].insert(1, dict(description["vms"][2], name="vm9", ssh_port=2230))
    before = resolved(description)
    description["vms"][1]["state"] = "absent"
    after = resolved(description)
    assert after["regions"][0]["groups"][0]["vm"] == "vm9"
    for vm in after["vms"]:
        assert vm["regions"] == vm_of(before, vm["name"])["regions"]


def test_channels_size_the_groups_and_a_region_no_client_maps_has_one_default_group():
    description = copy.deepcopy(INVENTORY)
    description["vms"][1]["channels"] = 2
    description["vms"][2]["regions"] = [{"name": "cxl1"}]
    description["regions"].append({"name": "cxl2", "size_mib": 128})
    description["vms"][0]["regions"].append({"name": "cxl2"})
    lab = resolved(description)
    assert [(g["vm"], g["channels"]) for g in lab["regions"][0]["groups"]] == [("vm2", 2)]
    assert lab["regions"][2]["groups"] == [
        {"group": 0, "vm": None, "channels": 8, "first_channel": 0, "acl_user": None}
    ]
    # 2 channels x (4 KiB + 2 MiB) = 4 MiB + 8 KiB: spans 8 MiB.
    assert lab["regions"][0]["segments"][1]["span"] == 8 * MiB


def test_ring_sizes_and_hugetlbfs_alignment_shape_the_plan():
    description = copy.deepcopy(INVENTORY)
    description["services"]["ring"] = {"req_ring": 65536, "resp_ring": 4096}
    for region in description["regions"]:
        region["backing_dir"] = "/dev/hugepages"
    backing = {"/dev/hugepages": {"fs": "hugetlbfs", "free_mib": 6000, "page_kib": 2048}}
    lab, errors = check(description, backing)
    assert errors == []
    cxl0 = lab["regions"][0]
    assert (cxl0["segment_align"], cxl0["req_ring"], cxl0["resp_ring"]) == (2 * MiB, 65536, 4096)
    assert {s["span"] for s in cxl0["segments"]} == {2 * MiB}


# ---- grants and their validation --------------------------------------------------


def grant(vm_index, grants):
    def change(description):
        description["vms"][vm_index]["grants"] = grants

    return change


@pytest.mark.parametrize(
    "grants,expected",
    [
        ({"cxl9": {"client-0": "ro"}}, "vm vm3: grants.cxl9: cxl_lab.regions describes no present "
         "region 'cxl9': grant segments of one of cxl0, cxl1 or remove the entry."),
        ({"cxl1": {"client-0": "ro"}}, "vm vm3: grants.cxl1: region cxl1 has security: off, "
         "where every VM maps the whole region rw and there is nothing to grant: remove the "
         "grant, or set security: secdsm on cxl1."),
        ({"cxl0": {"client-7": "ro"}}, "vm vm3: grants.cxl0: region cxl0 has no segment "
         "'client-7' (its segments: header, client-0, server-0, client-1, server-1): grant one "
         "of them."),
        ({"cxl0": {"client-0": "rx"}}, "vm vm3: grants.cxl0.client-0: access 'rx': use rw, ro "
         "or none."),
        ({"cxl0": ["client-0"]}, "vm vm3: grants.cxl0 ['client-0']: use {<region>: {<segment>: "
         "rw|ro|none}}, e.g. {cxl0: {client-0: ro}}."),
        ("client-0", "vm vm3: grants 'client-0': use {<region>: {<segment>: rw|ro|none}}, e.g. "
         "{cxl0: {client-0: ro}}."),
    ],
)
def test_each_bad_grant_is_one_error_with_its_fix(grants, expected):
    assert errors_of(grant(2, grants)) == [expected]


def test_grant_on_a_region_the_vm_does_not_map():
    def change(description):
        description["vms"][2]["regions"] = [{"name": "cxl1"}]
        description["vms"][2]["grants"] = {"cxl0": {"client-0": "ro"}}

    assert errors_of(change) == [
        "vm vm3: grants.cxl0: vm3 does not map region cxl0: add cxl0 to its regions, or remove "
        "the grant."
    ]


@pytest.mark.parametrize(
    "segment,access,why",
    [
        ("header", "ro", "the server writes the header: grant header rw"),
        ("server-1", "none", "the server writes every server segment (its responses): grant "
         "server-1 rw"),
        ("client-0", "rw", "the server reads every client segment (the requests) and never "
         "writes one: grant client-0 ro"),
        ("client-1", "none", "grant client-1 ro"),
    ],
)
def test_a_server_keeps_what_it_needs(segment, access, why):
    (error,) = errors_of(grant(0, {"cxl0": {segment: access}}))
    assert error.startswith(f"vm vm1 is region cxl0's server but its grants give it {segment} "
                            f"{access}: ")
    assert why in error and f"remove the override grants.cxl0.{segment}" in error


def test_every_bad_server_grant_is_its_own_error():
    errors = errors_of(grant(0, {"cxl0": {"header": "none", "server-0": "ro", "client-0": "rw"}}))
    assert len(errors) == 3


def test_server_mapping_a_secdsm_region_ro_is_one_error():
    def change(description):
        description["vms"][0]["regions"][0]["access"] = "ro"

    (error,) = errors_of(change)
    assert "vm vm1 is a server and maps region cxl0 (security: secdsm) with access ro" in error
    assert "map cxl0 rw" in error


def test_two_servers_on_one_secdsm_region():
    def change(description):
        description["vms"][2]["role"] = "server"
        description["vms"][2]["acl_user"] = None     # a server has no group, so no user

    (error,) = errors_of(change)
    assert "region cxl0 (security: secdsm) is mapped by the servers vm1 and vm3" in error


def test_client_overrides_model_misconfigurations():
    """A client or attacker may be granted anything: that is what the attack suite tests."""
    lab = resolved(
        dict(INVENTORY, vms=[
            INVENTORY["vms"][0], INVENTORY["vms"][1],
            dict(INVENTORY["vms"][2], grants={"cxl0": {"client-0": "rw", "header": "none"}}),
        ])
    )
    assert [(s["name"], s["access"]) for s in vm_of(lab, "vm3")["regions"][0]["segments"]] == [
        ("client-0", "rw"), ("client-1", "rw"), ("server-1", "ro")
    ]


# ---- sizes, channels, rings, alignment ----------------------------------------------


def set_region(index, **values):
    def change(description):
        description["regions"][index].update(values)

    return change


def test_secdsm_size_mib_bounds_the_segment_files():
    (error,) = errors_of(set_region(0, size_mib=64))
    assert error.startswith("region cxl0: its layout needs 134221824 bytes (2 channel groups: "
                            "vm2 8, vm3 8; rings 2097152/2097152 bytes, segment_align 4096) but "
                            "size_mib is 64: raise size_mib to at least 129")


def test_off_file_must_hold_the_layout():
    (error,) = errors_of(set_region(1, size_mib=64))
    assert "region cxl1: its layout needs 134221824 bytes" in error
    assert "use size_mib 256 (the next power of two)" in error


def test_unquoted_off_says_to_quote_it():
    (error,) = errors_of(set_region(1, security=False))
    assert error == 'region cxl1: security is false (YAML reads a bare off as false): write ' \
        'security: "off".'


def test_unknown_security():
    (error,) = errors_of(set_region(0, security="strict"))
    assert "region cxl0: security 'strict': use secdsm" in error and "or off" in error


@pytest.mark.parametrize("align", [2048, 6000, "big"])
def test_bad_segment_align(align):
    (error,) = errors_of(set_region(0, segment_align=align))
    assert error.startswith("region cxl0 segment_align must be an integer") or (
        "region cxl0: segment_align" in error and "use auto" in error
    )


def test_segment_align_below_the_huge_page():
    description = copy.deepcopy(INVENTORY)
    description["regions"][0].update(backing_dir="/dev/hugepages", segment_align=4096)
    backing = dict(BACKING)
    backing["/dev/hugepages"] = {"fs": "hugetlbfs", "free_mib": 6000, "page_kib": 2048}
    _, errors = check(description, backing)
    assert errors == [
        "region cxl0: segment_align 4096 is smaller than /dev/hugepages's page size (2097152): "
        "use auto or at least 2097152."
    ]


@pytest.mark.parametrize("channels", [0, 300])
def test_vm_channels_out_of_range(channels):
    def change(description):
        description["vms"][1]["channels"] = channels

    (error,) = errors_of(change)
    assert error.startswith(f"vm vm2: channels {channels}: use 1 to 256")


def test_too_many_channels_in_one_region():
    def change(description):
        description["vms"][1]["channels"] = 200
        description["vms"][2]["channels"] = 100

    errors = errors_of(change)
    assert len(errors) == 2  # one per region
    assert errors[0].startswith("region cxl0: its client and attacker VMs ask for 300 channels "
                                "in all (vm2 200, vm3 100); a region has at most 256")


@pytest.mark.parametrize("key,value", [("req_ring", 3000), ("resp_ring", 1024)])
def test_bad_ring_size(key, value):
    def change(description):
        description["services"]["ring"] = {key: value}

    assert errors_of(change) == [
        f"cxl_lab.services.ring.{key} {value}: use a power of two from 4096 to 1073741824 "
        "(default 2097152)."
    ]


def test_unknown_role_names_attacker():
    def change(description):
        description["vms"][2]["role"] = "spy"

    assert "vm vm3: role 'spy': use server, client or attacker." in errors_of(change)


# ---- PCI slots ----------------------------------------------------------------------


def clients(count, **vm):
    return [
        dict({"name": f"c{i}", "role": "client", "cpuset": "1", "ssh_port": 3000 + i}, **vm)
        for i in range(count)
    ]


def test_slots_run_from_0x10_over_every_device_of_a_vm():
    lab = resolved()
    vm1 = vm_of(lab, "vm1")
    slots = [s["pci_slot"] for s in vm1["regions"][0]["segments"]] + [vm1["regions"][1]["pci_slot"]]
    assert slots == list(range(0x10, 0x16))


def test_sixteen_devices_fit_seventeen_do_not():
    """A server of a secdsm region maps 1 + 2 per client: 7 clients and 1 off region = 16."""
    description = {
        "regions": [{"name": "cxl0", "size_mib": 1024}, {"name": "cxl1", "security": "off"}],
        "vms": [{"name": "srv", "role": "server", "cpuset": "0", "ssh_port": 2999}]
        + clients(7, regions=[{"name": "cxl0"}]),
    }
    lab, errors = check(description)
    assert errors == []
    server = vm_of(lab, "srv")
    assert server["regions"][1]["pci_address"] == "0000:00:1f.0"
    description["vms"].extend(
        clients(1, name="c7", role="attacker", ssh_port=3100, regions=[{"name": "cxl0"}])
    )
    _, errors = check(description)
    assert errors == [
        "vm srv needs 18 shared-memory devices (one per region with security: off, one per "
        "granted segment with secdsm) but the guest PCI slots 0x10-0x1f hold 16: map fewer "
        "regions, give a secdsm region fewer client VMs (its server maps 1 + 2 per client), or "
        "set security: off on one of them (one device)."
    ]


def test_server_reads_its_defaults_from_cxl_lab_py():
    assert cxl_lab.REGION_DEFAULTS["security"] == "secdsm"
    assert cxl_lab.VM_DEFAULTS["channels"] == 8
    assert cxl_lab.MAX_REGION_DEVICES == 16


# ---- access control: each group's Redis ACL user (docs/ring-protocol.md section 12) ---------


def test_each_group_carries_its_vms_acl_user():
    """The default lab: vm2 (group 0) has none, vm3 (group 1) runs as attacker; the server
    role writes the driver's acl_users from these ("-,attacker")."""
    lab = resolved()
    for region in lab["regions"]:
        assert [(g["vm"], g["acl_user"]) for g in region["groups"]] == [
            ("vm2", None), ("vm3", "attacker")]


@pytest.mark.parametrize("change, said", [
    (lambda d: vm_of(d, "vm3").update(acl_user="nobody"),
     "vm vm3: acl_user 'nobody' is not among cxl_lab.services.redis.users (attacker)"),
    (lambda d: vm_of(d, "vm3").update(acl_user="two words"),
     "vm vm3: acl_user 'two words': use a Redis user name"),
    (lambda d: vm_of(d, "vm3").update(acl_user="a,b"),
     "vm vm3: acl_user 'a,b': use a Redis user name"),
    (lambda d: vm_of(d, "vm1").update(acl_user="attacker"),
     "vm vm1: acl_user 'attacker': only a client or attacker VM"),
    (lambda d: d["services"]["redis"].update(users=["attacker"]),
     "cxl_lab.services.redis.users must be a mapping"),
    (lambda d: d["services"]["redis"]["users"].update(app="on\nnopass"),
     "cxl_lab.services.redis.users.app: 'on\\nnopass': give the user's ACL rules as one line"),
])
def test_a_wrong_acl_user_is_refused_by_name(change, said):
    errors = errors_of(change)
    assert any(said in e for e in errors), errors


def test_default_needs_no_description():
    description = copy.deepcopy(INVENTORY)
    vm_of(description, "vm2").update(acl_user="default")
    lab, errors = check(description)
    assert errors == []
    assert [g["acl_user"] for g in lab["regions"][0]["groups"]] == ["default", "attacker"]
