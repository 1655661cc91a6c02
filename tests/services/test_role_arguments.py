"""The services roles' interfaces: documented defaults, argument specs, early clear failures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
ROLES = ["cxl_build", "cxl_redis_server", "cxl_gramine", "cxl_ring_client"]
PLAYBOOKS = ["playbooks/services.yml", "playbooks/bench.yml", "playbooks/check-regions.yml",
             "playbooks/reach-lab.yml", "playbooks/teardown.yml", "playbooks/infrastructure.yml",
             "site.yml"]


def defaults_of(role: str) -> dict:
    return yaml.safe_load((REPO_ROOT / "roles" / role / "defaults/main.yml").read_text()) or {}


# A guest's entry of the resolved lab (.lab/lab.json), as lab_vms hands it to the guest roles.
GUEST_VM = {"name": "localhost", "role": "server", "links": [],
            "regions": [{"name": "cxl0", "pci_address": "0000:00:10.0", "access": "rw"}]}


def spec_options(role: str) -> dict:
    specs = yaml.safe_load((REPO_ROOT / "roles" / role / "meta/argument_specs.yml").read_text())
    return specs["argument_specs"]["main"]["options"]


def undocumented(role: str) -> list[str]:
    """Top-level defaults whose line is not preceded by a comment (or a documented sibling)."""
    lines = (REPO_ROOT / "roles" / role / "defaults/main.yml").read_text().splitlines()
    missing = []
    for index, line in enumerate(lines):
        match = re.match(r"^([a-z_][a-z0-9_]*):", line)
        if not match:
            continue
        above = index - 1
        # Consecutive variables may share the comment above the first of them.
        while above >= 0 and re.match(r"^[a-z_][a-z0-9_]*:", lines[above]):
            above -= 1
        if above < 0 or not lines[above].startswith("#"):
            missing.append(match.group(1))
    return missing


@pytest.mark.parametrize("role", ROLES)
def test_every_default_is_commented(role):
    assert undocumented(role) == []


@pytest.mark.parametrize("role", ROLES)
def test_every_default_is_in_the_argument_spec(role):
    assert sorted(set(defaults_of(role)) - set(spec_options(role))) == []


@pytest.mark.parametrize("role", ROLES)
def test_every_optional_spec_option_has_a_default(role):
    optional = {name for name, option in spec_options(role).items() if not option.get("required")}
    assert sorted(optional - set(defaults_of(role))) == []


@pytest.mark.parametrize("role", ROLES)
def test_required_spec_options_have_no_default(role):
    """A required option (cxl_vm: the resolved lab's entry) is never guessed by a default."""
    required = {name for name, option in spec_options(role).items() if option.get("required")}
    assert sorted(required & set(defaults_of(role))) == []


@pytest.mark.parametrize("role", ROLES)
def test_no_private_default(role):
    assert [name for name in defaults_of(role) if name.startswith("_")] == []


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax(playbook):
    binary = Path(sys.executable).with_name("ansible-playbook")
    if not binary.exists():
        pytest.skip("ansible-playbook is not installed")
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"))
    proc = subprocess.run([str(binary), "--syntax-check", playbook], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # a hang only
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_server_role_refuses_an_unknown_layout(tmp_path, run_role):
    ring = {"layout": "v9", "channels": 8}
    run = run_role(tmp_path, "cxl_redis_server",
                   {"cxl_redis_server_ring_defaults": ring, "cxl_vm": GUEST_VM})
    assert run.returncode != 0 and "layout" in run.output


def test_server_role_needs_the_build_first(tmp_path, run_role):
    run = run_role(tmp_path, "cxl_redis_server",
                   {"cxl_redis_server_artifacts_dir": str(tmp_path), "cxl_vm": GUEST_VM})
    assert run.returncode != 0 and "artifacts.json is missing" in run.output


def test_client_role_needs_the_build_first(tmp_path, run_role):
    run = run_role(tmp_path, "cxl_ring_client",
                   {"cxl_ring_client_artifacts_dir": str(tmp_path), "cxl_vm": GUEST_VM})
    assert run.returncode != 0 and "artifacts.json is missing" in run.output


@pytest.mark.parametrize("role", ["cxl_redis_server", "cxl_ring_client"])
def test_guest_roles_need_the_resolved_lab_entry(tmp_path, run_role, role):
    run = run_role(tmp_path, role, {})
    assert run.returncode != 0 and "cxl_vm" in run.output
