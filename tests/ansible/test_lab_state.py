"""state: absent for real: site.yml --tags regions on a lab of its own (labrun.py).

The lab is the default one renamed (cxl0 secdsm: a directory of segment files; cxl1
off: one file; cxl2 off on devdax: one file with the 2 MiB the guests' device-DAX info
block takes in front of the region), with small rings so that the regions are small,
and a fourth region no VM maps (secdsm, cxl3). Marking that region absent removes its
directory and nothing else, a second run changes nothing, and marking absent a region
that a present VM still maps is refused before any change, with the fix. The resolved
description (lab.json) follows each run.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from labrun import make_lab, recap, run, write_lab

LAB_NAME = "cxltest-state"
FILES = {name: Path(f"/dev/shm/{LAB_NAME}-{name}") for name in ("cxl0", "cxl1", "cxl2", "cxl3")}
# 4 KiB rings: a group of 8 channels is 64 KiB per segment.
SEGMENTS = {"header": 4096, "client-0": 64 << 10, "server-0": 64 << 10}


def remove(path):
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@pytest.fixture
def lab(tmp_path):
    variables = make_lab(tmp_path, LAB_NAME, 2932)
    variables["cxl_lab"]["services"]["ring"] = {"req_ring": 4096, "resp_ring": 4096}
    regions = variables["cxl_lab"]["regions"]
    for region in regions:
        region["size_mib"] = 4
    regions.append(dict(regions[0], name="cxl3"))
    write_lab(tmp_path, variables)
    yield tmp_path, variables
    for path in FILES.values():
        remove(path)


def segment_sizes(path):
    return {entry.name: entry.stat().st_size for entry in os.scandir(path)}


def regions_run(workdir):
    return run(workdir, "site.yml", "--tags", "regions")


def resolved(workdir) -> dict:
    return json.loads((workdir / "controller" / "lab.json").read_text())


def test_absent_region_is_removed_and_the_rest_stays(lab):
    workdir, variables = lab
    first = regions_run(workdir)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    # cxl0: two groups (vm2, vm3); cxl3: one default group, no VM maps it.
    assert segment_sizes(FILES["cxl0"]) == dict(SEGMENTS, **{"client-1": 64 << 10,
                                                              "server-1": 64 << 10})
    assert segment_sizes(FILES["cxl3"]) == SEGMENTS
    assert stat.S_IMODE(FILES["cxl0"].stat().st_mode) == 0o750
    assert FILES["cxl1"].is_file() and FILES["cxl1"].stat().st_size == 4 << 20
    assert FILES["cxl2"].is_file() and FILES["cxl2"].stat().st_size == 6 << 20
    cxl2 = next(r for r in resolved(workdir)["regions"] if r["name"] == "cxl2")
    assert (cxl2["medium"], cxl2["data_offset"], cxl2["file_size_bytes"]) == (
        "devdax", 2 << 20, 6 << 20)

    variables["cxl_lab"]["regions"][3]["state"] = "absent"
    write_lab(workdir, variables)
    second = regions_run(workdir)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    assert not FILES["cxl3"].exists()
    assert len(segment_sizes(FILES["cxl0"])) == 5
    assert FILES["cxl1"].stat().st_size == 4 << 20
    assert FILES["cxl2"].stat().st_size == 6 << 20
    lab_json = resolved(workdir)
    assert [r["name"] for r in lab_json["regions"]] == ["cxl0", "cxl1", "cxl2"]
    assert [r["name"] for r in lab_json["absent_regions"]] == ["cxl3"]

    third = regions_run(workdir)
    assert third.returncode == 0, third.stdout[-4000:]
    assert recap(third.stdout)["changed"] == 0, third.stdout[-4000:]


def test_absent_region_still_mapped_is_refused_before_any_change(lab):
    workdir, variables = lab
    assert regions_run(workdir).returncode == 0
    variables["cxl_lab"]["regions"][0]["state"] = "absent"
    write_lab(workdir, variables)
    refused = regions_run(workdir)
    assert refused.returncode != 0
    vm = variables["cxl_lab"]["vms"][0]["name"]
    assert f"vm {vm} maps region cxl0, which has state: absent" in refused.stdout
    assert f"remove cxl0 from {vm}'s regions" in refused.stdout
    assert FILES["cxl0"].exists()
