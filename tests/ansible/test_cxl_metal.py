"""The bare-metal description (module_utils/cxl_metal.py, library/cxl_metal_description.py):
hosts that reach the same CXL memory without the lab's hypervisor. Each host's entry is the
cxl_vm the service roles read; secdsm is refused (nothing below the hosts enforces it), and
every wrong description is refused with its fix before anything is touched."""

import copy

import pytest
import yaml
from ansible.module_utils.cxl_metal import normalize_metal

from moduleutil import load_library
from test_lab_sources import REPO

EXAMPLE = yaml.safe_load((REPO / "inventory/metal.example.yml").read_text())["all"]["vars"][
    "cxl_metal"]

MiB = 1 << 20


def resolved(description=EXAMPLE):
    metal, errors = normalize_metal(copy.deepcopy(description))
    assert errors == []
    return metal


def errors_of(change, description=EXAMPLE):
    description = copy.deepcopy(description)
    change(description)
    metal, errors = normalize_metal(description)
    assert metal is None and errors, "expected a validation error"
    return " ".join(" ".join(errors).split())


def test_the_example_gives_each_host_the_entry_the_service_roles_read():
    metal = resolved()
    assert metal["link_dir"] == "/var/lib/cxl-metal/regions"
    server, client = metal["hosts"]
    assert (server["name"], server["role"], client["role"]) == ("cxl-host1", "server", "client")
    assert server["regions"] == [{"name": "cxl0", "security": "off", "access": "rw",
                                  "group": None, "medium": "devdax", "path": "/dev/dax0.0",
                                  "size_bytes": 1024 * MiB}]
    assert client["regions"][0]["path"] == "/dev/dax1.0"     # hosts[].paths
    assert server["links"] == [] and server["doorbell"] is None


def test_a_file_region_on_famfs_is_accepted():
    description = copy.deepcopy(EXAMPLE)
    description["regions"][0].update(medium="file", path="/mnt/famfs/cxl0", size_mib=65)
    description["hosts"][1]["paths"] = {}
    assert resolved(description)["hosts"][1]["regions"][0]["path"] == "/mnt/famfs/cxl0"


def test_secdsm_is_refused_because_no_hypervisor_enforces_it():
    said = errors_of(lambda d: d["regions"][0].update(security="secdsm"))
    assert "security secdsm on bare-metal hosts" in said
    assert "nothing below the hosts could refuse a write" in said
    assert 'Set security: "off"' in said


@pytest.mark.parametrize("change, says", [
    (lambda d: d["regions"][0].update(medium="ivshmem"), "use devdax"),
    (lambda d: d["regions"][0].update(size_mib=1023), "size_mib 1023 is odd"),
    (lambda d: d["regions"][0].update(size_mib=0), "must be a positive integer"),
    (lambda d: d["regions"][0].update(path="dax0.0"), "must be absolute"),
    (lambda d: d["regions"][0].pop("path"), "has no absolute path on this host"),
    (lambda d: d["hosts"][0].update(role="client"), "no host has role server"),
    (lambda d: d["hosts"][1].update(role="server"), "one server per region"),
    (lambda d: d["hosts"][1].update(regions=["cxl9"]), "reaches region cxl9"),
    (lambda d: d["hosts"][1].update(paths={"cxl9": "/dev/dax9.0"}), "paths names cxl9"),
    (lambda d: d["hosts"].append({"name": "cxl-host1"}), "host cxl-host1 is described twice"),
    (lambda d: d.update(vms=[]), "VMs are the emulated lab's"),
    (lambda d: d["regions"][0].update(grants=[]), "unknown keys ['grants']"),
    (lambda d: d.update(hosts=[]), "hosts must list the hosts"),
])
def test_a_wrong_description_is_refused_with_its_fix(change, says):
    assert says in errors_of(change)


def test_the_module_fails_with_every_problem(run_module):
    module = load_library("cxl_metal_description")
    description = copy.deepcopy(EXAMPLE)
    description["regions"][0]["security"] = "secdsm"
    description["hosts"][0]["role"] = "client"
    how, result = run_module(module, {"description": description}, check_mode=True)
    assert how == "fail" and len(result["errors"]) == 2
    assert result["msg"].startswith("The bare-metal description (cxl_metal) is wrong:")
    how, result = run_module(module, {"description": copy.deepcopy(EXAMPLE)})
    assert how == "exit" and result["metal"]["hosts"][0]["name"] == "cxl-host1"
