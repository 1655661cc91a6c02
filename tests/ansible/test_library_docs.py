"""Every module in library/: its DOCUMENTATION says what its argument_spec does, and main()
turns an OSError into one clear line (as community.libvirt's virt.py does)."""

from pathlib import Path

import pytest
import yaml

from moduleutil import load_library

LIBRARY = Path(__file__).resolve().parents[2] / "library"
MODULES = sorted(path.stem for path in LIBRARY.glob("cxl_*.py"))
# (documentation key, argument_spec key, value when absent)
FIELDS = [
    ("type", "type", "str"),
    ("default", "default", None),
    ("required", "required", False),
    ("choices", "choices", None),
    ("elements", "elements", None),
]
# A minimal valid call of each module, to reach core().
ARGS = {
    "cxl_devdax": {"regions": [{"name": "cxl2", "guest_node": 1, "size_bytes": 1 << 21}]},
    "cxl_ivshmem": {"regions": [{"name": "cxl0", "pci_address": "0000:00:10.0"}]},
    "cxl_lab_description": {"description": {}},
    "cxl_metal_description": {"description": {}},
    "cxl_numa_facts": {},
    "cxl_region": {"path": "/dev/shm/cxltest-docs", "size_mib": 4},
    "cxl_virt_probe": {},
}


@pytest.fixture(params=MODULES)
def module(request):
    return load_library(request.param)


def compare(documented, spec, where):
    """Every difference between the documented options and the argument_spec, as text."""
    problems = []
    for name in sorted(set(documented) | set(spec)):
        if name not in spec:
            problems.append(f"{where}{name}: documented but not in argument_spec")
            continue
        if name not in documented:
            problems.append(f"{where}{name}: in argument_spec but not documented")
            continue
        doc, arg = documented[name], spec[name]
        if not doc.get("description"):
            problems.append(f"{where}{name}: no description")
        for doc_key, arg_key, absent in FIELDS:
            doc_value, arg_value = doc.get(doc_key, absent), arg.get(arg_key, absent)
            if doc_value != arg_value:
                problems.append(f"{where}{name}: {doc_key} {doc_value!r} != {arg_value!r}")
        if "suboptions" in doc or "options" in arg:
            problems += compare(doc.get("suboptions", {}), arg.get("options", {}), f"{name}.")
    return problems


def test_every_module_is_checked():
    assert sorted(ARGS) == MODULES


def test_documentation_matches_the_argument_spec(module):
    documentation = yaml.safe_load(module.DOCUMENTATION)
    assert compare(documentation.get("options") or {}, module.ARGUMENT_SPEC, "") == []


def test_documentation_declares_check_and_diff_mode(module):
    attributes = yaml.safe_load(module.DOCUMENTATION)["attributes"]
    assert {"check_mode", "diff_mode"} <= set(attributes)


def test_examples_and_return_are_yaml(module):
    assert yaml.safe_load(module.EXAMPLES)
    assert yaml.safe_load(module.RETURN)


def test_oserror_becomes_one_line_failure(module, run_module, monkeypatch):
    name = module.__name__.rsplit("_library_", 1)[1]

    def core(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/dev/cxl/cxl0")

    monkeypatch.setattr(module, "core", core)
    how, result = run_module(module, ARGS[name], check_mode=True)
    assert how == "fail"
    assert result["msg"] == f"{name}: [Errno 13] Permission denied: '/dev/cxl/cxl0'"
