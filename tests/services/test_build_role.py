"""cxl_build on localhost: builds once per fingerprint, and a second run changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("cc")


def build_vars(repo: Path) -> dict:
    return {"cxl_build_repo_dir": str(repo), "cxl_build_install_packages": False}


@pytest.fixture(scope="module")
def built(tmp_path_factory, run_role, make_fake_repo):
    """The stand-in repository built twice in a row, then after a driver change, then after a
    new setup.py (which shapes the wheel: the optional C speed-ups)."""
    repo = make_fake_repo(tmp_path_factory.mktemp("repo"))
    work = tmp_path_factory.mktemp("play")
    first = run_role(work, "cxl_build", build_vars(repo))
    assert first.returncode == 0, first.output[-4000:]
    before = json.loads((repo / "build/lab/artifacts.json").read_text())
    second = run_role(work, "cxl_build", build_vars(repo))
    driver = repo / "driver/module.c"
    driver.write_text(driver.read_text() + "/* a change of the driver */\n")
    third = run_role(work, "cxl_build", build_vars(repo))
    after = json.loads((repo / "build/lab/artifacts.json").read_text())
    (repo / "setup.py").write_text("from setuptools import setup\n\nsetup()\n")
    fourth = run_role(work, "cxl_build", build_vars(repo))
    assert fourth.returncode == 0, fourth.output[-4000:]
    setup_changed = json.loads((repo / "build/lab/artifacts.json").read_text())
    return {"first": first, "second": second, "third": third, "before": before, "after": after,
            "setup_changed": setup_changed}


def test_first_run_builds(built):
    assert built["first"].recap["changed"] > 0


def test_second_run_changes_nothing(built):
    assert built["second"].recap["changed"] == 0, built["second"].output[-4000:]


def test_artifacts_exist(built):
    paths = [built["before"][kind] for kind in ("module", "bench", "wheel")]
    assert all(Path(path).is_file() for path in paths), paths


def test_module_is_named_after_its_fingerprint(built):
    assert built["before"]["fingerprint"]["module"] in Path(built["before"]["module"]).name


def test_artifacts_record_the_build_hosts_release(built):
    assert built["before"]["build_host"]["release"]


def test_driver_change_rebuilds_the_module(built):
    assert built["after"]["module"] != built["before"]["module"]


def test_driver_change_keeps_the_bench_client(built):
    assert built["after"]["bench"] == built["before"]["bench"]


def test_driver_change_keeps_the_wheel(built):
    assert built["after"]["wheel"] == built["before"]["wheel"]


def test_unknown_redis_source_is_refused(tmp_path, run_role, make_fake_repo):
    repo = make_fake_repo(tmp_path / "repo")
    variables = {**build_vars(repo), "cxl_build_redis_source": "svn"}
    run = run_role(tmp_path / "play", "cxl_build", variables)
    assert run.returncode != 0 and "cxl_build_redis_source" in run.output


def test_other_debian_redis_version_is_refused(tmp_path, run_role, make_fake_repo):
    repo = make_fake_repo(tmp_path / "repo")
    variables = {**build_vars(repo), "cxl_build_redis_version": "7.2.4"}
    run = run_role(tmp_path / "play", "cxl_build", variables)
    assert run.returncode != 0
    assert "must be built against the guests' redis-server version" in run.output


def test_setup_py_change_rebuilds_the_wheel_only(built):
    assert built["setup_changed"]["wheel"] != built["after"]["wheel"]
    assert Path(built["setup_changed"]["wheel"]).is_file()
    assert built["setup_changed"]["module"] == built["after"]["module"]
