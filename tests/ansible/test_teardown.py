"""playbooks/teardown.yml for real, on a lab of its own that never touches the default one.

The lab description is the default one renamed (labrun.py): its regions are the
segment directory /dev/shm/cxltest-teardown-cxl0 (secdsm) and the file
/dev/shm/cxltest-teardown-cxl1 (security off), its state and keys live in a temporary directory and
its VMs have names no other lab uses. Teardown starts libvirt's daemons when they are
down (a fresh CI run has none), removes what the lab left and, run again, changes
nothing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from labrun import RUN_BOUND, make_lab, recap, run

LAB_NAME = "cxltest-teardown"
SEGMENT_DIR = Path(f"/dev/shm/{LAB_NAME}-cxl0")
REGION_FILE = Path(f"/dev/shm/{LAB_NAME}-cxl1")
# The doorbell's directories are shared by every lab on the host (roles/lab_hypervisor).
SHARED_PARENTS = (Path("/etc/cxl-dsm-lab"), Path("/run/cxl-dsm-lab"))


@pytest.fixture
def test_lab(tmp_path):
    """An inventory whose lab is the default one under other names and paths."""
    variables = make_lab(tmp_path, LAB_NAME, 2922)
    yield tmp_path, variables["cxl_lab"]
    REGION_FILE.unlink(missing_ok=True)
    shutil.rmtree(SEGMENT_DIR, ignore_errors=True)


def test_teardown_removes_the_lab_then_changes_nothing(test_lab):
    workdir, lab = test_lab
    state = Path(lab["state_dir"])
    overlay_dir = state / "vms" / lab["vms"][0]["name"]
    overlay_dir.mkdir(parents=True)
    (overlay_dir / "overlay.qcow2").write_bytes(b"\0" * 512)
    (state / "logs").mkdir()
    (state / "images").mkdir()
    (state / "images" / "cached.qcow2").write_bytes(b"\0" * 512)
    controller = workdir / "controller"
    controller.mkdir()
    (controller / "id_ed25519").write_text("not a key\n")
    REGION_FILE.write_bytes(b"\0" * 4096)
    SEGMENT_DIR.mkdir()
    (SEGMENT_DIR / "header").write_bytes(b"\0" * 4096)

    first = run(workdir, "playbooks/teardown.yml")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    assert not REGION_FILE.exists() and not SEGMENT_DIR.exists()
    assert not (state / "vms").exists() and not (state / "logs").exists()
    assert not controller.exists()
    assert (state / "images" / "cached.qcow2").exists(), "the image cache must stay"

    second = run(workdir, "playbooks/teardown.yml")
    assert second.returncode == 0, second.stdout[-4000:]
    assert recap(second.stdout)["changed"] == 0, second.stdout[-4000:]


@pytest.fixture
def other_lab():
    """Another lab's doorbell directories on the same host, as a running `make lab` leaves."""
    made = []
    for parent in SHARED_PARENTS:
        if not parent.exists():
            made.append(parent)
        other = parent / f"{LAB_NAME}-other"
        other.mkdir(parents=True)
        made.append(other)
    yield [parent / f"{LAB_NAME}-other" for parent in SHARED_PARENTS]
    for path in reversed(made):
        path.rmdir()


def test_teardown_keeps_another_labs_directories_and_changes_nothing_again(test_lab, other_lab):
    """The shared parents go only when empty; while another lab uses them, both runs keep them."""
    workdir, _ = test_lab
    first = run(workdir, "playbooks/teardown.yml")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    assert all(path.is_dir() for path in other_lab)
    second = run(workdir, "playbooks/teardown.yml")
    assert second.returncode == 0, second.stdout[-4000:]
    assert recap(second.stdout)["changed"] == 0, second.stdout[-4000:]
    assert all(path.is_dir() for path in other_lab)


DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
</domain>
"""


def virsh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True,
                          text=True, timeout=RUN_BOUND)


def test_teardown_undefines_a_domain_of_the_lab(test_lab):
    """roles/lab_vms/tasks/destroy.yml asks libvirt itself which domains exist."""
    if shutil.which("virsh") is None:
        pytest.skip("libvirt is not installed (requirements/apt-lab.txt)")
    workdir, lab = test_lab
    started = run(workdir, "playbooks/teardown.yml")  # starts libvirt's daemons when down
    assert started.returncode == 0, started.stdout[-4000:]
    name = lab["vms"][1]["name"]
    xml = workdir / "domain.xml"
    xml.write_text(DOMAIN_XML.format(name=name))
    defined = virsh("define", str(xml))
    try:
        assert defined.returncode == 0, defined.stderr
        removed = run(workdir, "playbooks/teardown.yml")
        assert removed.returncode == 0, removed.stdout[-4000:]
        assert recap(removed.stdout)["changed"] > 0
        assert name not in virsh("list", "--all", "--name").stdout.split()
    finally:
        virsh("undefine", name)
