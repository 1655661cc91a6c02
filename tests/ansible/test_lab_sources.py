"""One source of truth for the lab description: module_utils/cxl_lab.py.

Its defaults and choices are copied in two places a person reads: the role's schema
(roles/lab_description/meta/argument_specs.yml, whose defaults Ansible does not apply)
and the commented inventory (inventory/group_vars/all/lab.yml). These tests tie both
to cxl_lab.py, key by key, so that none of them can drift.
"""

import copy
from pathlib import Path

import pytest
import yaml
from ansible.module_utils import cxl_lab
from ansible.module_utils.cxl_lab import normalize

REPO = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((REPO / "roles/lab_description/meta/argument_specs.yml").read_text())
LAB_SPEC = SPEC["argument_specs"]["main"]["options"]["cxl_lab"]["options"]
INVENTORY = yaml.safe_load((REPO / "inventory/group_vars/all/lab.yml").read_text())["cxl_lab"]


def _without_devdax(description):
    """The description without its devdax regions, and without the VMs' mappings of them."""
    lab = copy.deepcopy(description)
    devdax = {r["name"] for r in lab["regions"] if r.get("medium") == "devdax"}
    lab["regions"] = [r for r in lab["regions"] if r["name"] not in devdax]
    for vm in lab["vms"]:
        vm["regions"] = [m for m in vm["regions"] if m["name"] not in devdax]
    return lab


# The inventory's lab on the ivshmem medium alone (cxl0 secdsm, cxl1 off), which the
# Sec-DSM and domain XML tests were written against; the devdax tests take INVENTORY.
IVSHMEM_LAB = _without_devdax(INVENTORY)

# (where, the schema's options there, cxl_lab.py's defaults there, the keys with no default)
LEVELS = [
    ("cxl_lab", LAB_SPEC, cxl_lab.LAB_DEFAULTS, ()),
    ("cxl_lab.image", LAB_SPEC["image"]["options"], cxl_lab.IMAGE_DEFAULTS, ()),
    ("cxl_lab.regions[]", LAB_SPEC["regions"]["options"], cxl_lab.REGION_DEFAULTS, ("name",)),
    ("cxl_lab.vms[]", LAB_SPEC["vms"]["options"], cxl_lab.VM_DEFAULTS, ("name",)),
    (
        "cxl_lab.vms[].regions[]",
        LAB_SPEC["vms"]["options"]["regions"]["options"],
        cxl_lab.MAPPING_DEFAULTS,
        ("name",),
    ),
]
CHOICES = {
    ("cxl_lab", "virt_type"): cxl_lab.VIRT_TYPES,
    ("cxl_lab.image", "source"): cxl_lab.IMAGE_SOURCES,
    ("cxl_lab.regions[]", "policy"): cxl_lab.POLICIES,
    ("cxl_lab.regions[]", "state"): cxl_lab.STATES,
    ("cxl_lab.regions[]", "security"): cxl_lab.SECURITY,
    ("cxl_lab.regions[]", "medium"): cxl_lab.MEDIA,
    ("cxl_lab.vms[]", "role"): cxl_lab.ROLES,
    ("cxl_lab.vms[]", "mem_policy"): cxl_lab.MEM_POLICIES,
    ("cxl_lab.vms[]", "state"): cxl_lab.STATES,
    ("cxl_lab.vms[].regions[]", "access"): cxl_lab.ACCESS,
}
# The values of the inventory's default lab that are not cxl_lab.py's defaults, on purpose:
# cxl1 is the comparison region without Sec-DSM; cxl2 is the devdax medium (without
# Sec-DSM, which needs ivshmem), sized for its layout rather than a power of two.
NOT_DEFAULTS = {
    ("cxl_lab.regions[]", "cxl1", "security"): "off",
    ("cxl_lab.regions[]", "cxl2", "security"): "off",
    ("cxl_lab.regions[]", "cxl2", "medium"): "devdax",
    ("cxl_lab.regions[]", "cxl2", "size_mib"): 130,
}
# The same host as the inventory's default lab assumes: one node, CPUs 0 and 1.
TOPOLOGY = {
    "node_ids": [0],
    "nodes": {0: {"cpus": [0, 1], "memory_total_mib": 8192, "memory_free_mib": 6000}},
    "online_cpus": [0, 1],
    "memory_available_mib": 6000,
}
BACKING = {"/dev/shm": {"fs": "tmpfs", "free_mib": 6000}}


def level_ids():
    return [where for where, *_ in LEVELS]


@pytest.mark.parametrize("where,spec,defaults,required", LEVELS, ids=level_ids())
def test_schema_has_exactly_the_keys_of_cxl_lab_py(where, spec, defaults, required):
    assert sorted(spec) == sorted(set(defaults) | set(required))


@pytest.mark.parametrize("where,spec,defaults,required", LEVELS, ids=level_ids())
def test_schema_defaults_are_cxl_lab_py_defaults(where, spec, defaults, required):
    """A default in the schema is cxl_lab.py's; a key cxl_lab.py derives has none there."""
    for key, default in defaults.items():
        if default is None or isinstance(default, list):
            assert "default" not in spec[key], f"{where}.{key}: cxl_lab.py derives it"
        else:
            assert spec[key].get("default") == default, f"{where}.{key}"
    for key in required:
        assert spec[key].get("required") is True, f"{where}.{key}"


@pytest.mark.parametrize("where,key", sorted(CHOICES))
def test_schema_choices_are_cxl_lab_py_choices(where, key):
    spec = dict((w, s) for w, s, _, _ in LEVELS)[where]
    assert spec[key]["choices"] == list(CHOICES[(where, key)])


def test_every_choice_list_of_the_schema_is_checked():
    listed = {
        (where, key) for where, spec, _, _ in LEVELS for key, option in spec.items()
        if "choices" in option
    }
    assert listed == set(CHOICES)


def inventory_levels():
    vm_mappings = [m for vm in INVENTORY["vms"] for m in vm.get("regions") or []]
    return [
        ("cxl_lab", [INVENTORY], cxl_lab.LAB_DEFAULTS),
        ("cxl_lab.image", [INVENTORY["image"]], cxl_lab.IMAGE_DEFAULTS),
        ("cxl_lab.regions[]", INVENTORY["regions"], cxl_lab.REGION_DEFAULTS),
        ("cxl_lab.vms[]", INVENTORY["vms"], cxl_lab.VM_DEFAULTS),
        ("cxl_lab.vms[].regions[]", vm_mappings, cxl_lab.MAPPING_DEFAULTS),
    ]


@pytest.mark.parametrize(
    "where,items,defaults", inventory_levels(), ids=[w for w, *_ in inventory_levels()]
)
def test_inventory_spells_out_every_key(where, items, defaults):
    """Every key of cxl_lab.py is in the commented inventory (services is documented in
    docs/lab.md; its defaults are the service roles')."""
    known = set(defaults) | {"name"}
    for item in items:
        assert set(item) <= known, f"{where}: unknown {sorted(set(item) - known)}"
        assert set(defaults) - {"services"} <= set(item), f"{where}: missing keys"


@pytest.mark.parametrize(
    "where,items,defaults", inventory_levels()[:3], ids=[w for w, *_ in inventory_levels()[:3]]
)
def test_inventory_values_are_cxl_lab_py_defaults(where, items, defaults):
    for item in items:
        for key, default in defaults.items():
            if default is not None:
                expected = NOT_DEFAULTS.get((where, item.get("name"), key), default)
                assert item[key] == expected, f"{where}.{key}"


def test_inventory_default_lab_is_the_sec_dsm_lab():
    """vm1 server, vm2 client, vm3 attacker; cxl0 secdsm, cxl1 off, cxl2 off on devdax, all
    mapped by all."""
    assert [(vm["name"], vm["role"]) for vm in INVENTORY["vms"]] == [
        ("vm1", "server"), ("vm2", "client"), ("vm3", "attacker")
    ]
    assert [(r["name"], r["security"], r.get("medium")) for r in INVENTORY["regions"]] == [
        ("cxl0", "secdsm", "ivshmem"), ("cxl1", "off", "ivshmem"), ("cxl2", "off", "devdax")
    ]
    lab, errors = normalize(copy.deepcopy(INVENTORY), TOPOLOGY, BACKING)
    assert errors == []
    for vm in lab["vms"]:
        assert [r["name"] for r in vm["regions"]] == ["cxl0", "cxl1", "cxl2"]


def test_inventory_vms_resolve_as_the_bare_defaults():
    """The inventory's VMs, spelled out, resolve exactly as the same VMs given by name, role
    and ACL user only: every other value written there is the default cxl_lab.py would
    choose (an ACL user is a choice of the lab: the attacker's, none by default)."""
    bare = copy.deepcopy(INVENTORY)
    bare["vms"] = [{"name": vm["name"], "role": vm["role"],
                    **({"acl_user": vm["acl_user"]} if vm.get("acl_user") else {})}
                   for vm in INVENTORY["vms"]]
    bare["regions"] = [
        {"name": r["name"], "security": r["security"], "medium": r["medium"],
         **({"size_mib": r["size_mib"]} if r["medium"] == "devdax" else {})}
        for r in INVENTORY["regions"]
    ]
    spelled, errors = normalize(copy.deepcopy(INVENTORY), TOPOLOGY, BACKING)
    assert errors == []
    derived, errors = normalize(bare, TOPOLOGY, BACKING)
    assert errors == []
    assert spelled == derived


def test_lab_description_module_documents_the_resolved_keys():
    """RETURN of library/cxl_lab_description.py names the resolved lab's lists."""
    text = (REPO / "library/cxl_lab_description.py").read_text()
    lab, _ = normalize(copy.deepcopy(INVENTORY), TOPOLOGY, BACKING)
    for key in ("regions", "vms", "links", "absent_regions", "absent_vms"):
        assert key in lab and f"{key}:" in text, key
