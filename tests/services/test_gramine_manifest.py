"""cxl_gramine renders a manifest that Gramine would accept, and refuses to run without Gramine.

The manifest is rendered for real (ansible-playbook, localhost) against this machine's
redis-server and a stand-in Gramine tree (libsysdb.so, runtime/glibc/) in a temporary
directory, since Gramine itself cannot be installed here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+, as in the lab's Debian bookworm

REGION = "/dev/cxl/cxl0"


def gramine_vars(root: Path, redis_server: Path, module: Path) -> dict:
    pkglibdir = root / "gramine"
    (pkglibdir / "runtime/glibc").mkdir(parents=True, exist_ok=True)
    (pkglibdir / "libsysdb.so").write_bytes(b"\x7fELF stand-in")
    config = root / "etc/redis.conf"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("port 6379\n")
    (root / "data").mkdir(exist_ok=True)
    return {
        "cxl_gramine_pkglibdir": str(pkglibdir),
        "cxl_gramine_dir": str(root / "out"),
        "cxl_gramine_redis_binary": str(redis_server),
        "cxl_gramine_redis_config": str(config),
        "cxl_gramine_module": str(module),
        "cxl_gramine_data_dir": str(root / "data"),
        "cxl_gramine_region_path": REGION,
        "cxl_gramine_sgx_enclave_size": "2G",
        "cxl_gramine_sgx_max_threads": 24,
    }


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, run_role, redis_server_binary, shared_object):
    if os.geteuid() != 0:
        pytest.skip("cxl_gramine makes root-owned files, as in the guests: run the tests as root")
    root = tmp_path_factory.mktemp("gramine")
    variables = gramine_vars(root, redis_server_binary, shared_object)
    first = run_role(root / "play", "cxl_gramine", variables)
    second = run_role(root / "play", "cxl_gramine", variables)
    path = root / "out/redis-server.manifest"
    manifest = tomllib.loads(path.read_text()) if path.exists() else None
    return {"first": first, "second": second, "manifest": manifest, "text": path.read_text()
            if path.exists() else ""}


def mounts(manifest: dict) -> dict:
    return {mount["path"]: mount for mount in manifest["fs"]["mounts"]}


def test_render_succeeds(rendered):
    assert rendered["first"].returncode == 0, rendered["first"].output[-4000:]


def test_manifest_is_valid_toml(rendered):
    assert rendered["manifest"] is not None


def test_every_trusted_file_exists(rendered):
    trusted = [uri.removeprefix("file:") for uri in rendered["manifest"]["sgx"]["trusted_files"]]
    assert [path for path in trusted if not Path(path).exists()] == []


def test_redis_server_is_trusted(rendered, redis_server_binary):
    assert f"file:{redis_server_binary}" in rendered["manifest"]["sgx"]["trusted_files"]


def test_module_is_trusted(rendered, shared_object):
    assert f"file:{shared_object}" in rendered["manifest"]["sgx"]["trusted_files"]


def test_host_glibc_is_not_trusted(rendered):
    trusted = rendered["manifest"]["sgx"]["trusted_files"]
    assert not [uri for uri in trusted if uri.endswith("/libc.so.6")]


def test_region_is_mounted_as_untrusted_shm(rendered):
    assert mounts(rendered["manifest"])[REGION]["type"] == "untrusted_shm"


def test_region_mount_is_the_device(rendered):
    assert mounts(rendered["manifest"])[REGION]["uri"] == f"dev:{REGION}"


def test_region_is_an_allowed_file(rendered):
    assert f"dev:{REGION}" in rendered["manifest"]["sgx"]["allowed_files"]


def test_entrypoint_is_redis_server(rendered, redis_server_binary):
    assert rendered["manifest"]["libos"]["entrypoint"] == str(redis_server_binary)


def test_sgx_settings_come_from_the_variables(rendered):
    sgx = rendered["manifest"]["sgx"]
    assert (sgx["enclave_size"], sgx["max_threads"]) == ("2G", 24)


def test_manifest_starts_with_ansible_managed(rendered):
    assert rendered["text"].startswith("#")


def test_second_render_changes_nothing(rendered):
    assert rendered["second"].recap["changed"] == 0, rendered["second"].output[-4000:]


def test_missing_gramine_fails_early(tmp_path, run_role, redis_server_binary, shared_object):
    variables = gramine_vars(tmp_path, redis_server_binary, shared_object)
    variables.update(cxl_gramine_enabled=True, cxl_gramine_bin_dir=str(tmp_path / "no-gramine"))
    run = run_role(tmp_path / "play", "cxl_gramine", variables)
    assert run.returncode != 0 and "Gramine is not installed" in run.output


def test_missing_gramine_changes_nothing(tmp_path, run_role, redis_server_binary, shared_object):
    variables = gramine_vars(tmp_path, redis_server_binary, shared_object)
    variables.update(cxl_gramine_enabled=True, cxl_gramine_bin_dir=str(tmp_path / "no-gramine"))
    run_role(tmp_path / "play", "cxl_gramine", variables)
    assert not (tmp_path / "out").exists()


def test_bad_enclave_size_is_refused(tmp_path, run_role, redis_server_binary, shared_object):
    variables = gramine_vars(tmp_path, redis_server_binary, shared_object)
    variables["cxl_gramine_sgx_enclave_size"] = "huge"
    run = run_role(tmp_path / "play", "cxl_gramine", variables)
    assert run.returncode != 0 and "enclave_size huge" in run.output
