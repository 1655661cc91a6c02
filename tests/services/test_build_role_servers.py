"""cxl_build for another server (cxl_build_server: redis8 | valkey): the module is built
against that server's own header and the manifest says which server and version it is.

The server directory is filled here the way scripts/prepare-server.sh fills it (include/,
bin/, server.env), so the role does not build Redis 8 or install Valkey for this test;
`make test-servers` runs the script itself.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("cc")


def _debian12() -> bool:
    try:
        release = platform.freedesktop_os_release()
    except OSError:
        return False
    return release.get("ID") == "debian" and release.get("VERSION_CODENAME") == "bookworm"


def fake_server_dir(root: Path, version: str) -> Path:
    """What prepare-server.sh leaves: the server's header, binary links, server.env."""
    (root / "include").mkdir(parents=True)
    (root / "include/redismodule.h").write_text("#define STUB_REDISMODULE_OK 1\n")
    (root / "bin").mkdir()
    for name in ("redis-server", "redis-cli", "redis-benchmark"):
        (root / "bin" / name).write_text("#!/bin/sh\necho stand-in\n")
        (root / "bin" / name).chmod(0o755)
    (root / "server.env").write_text(
        f"CXL_TEST_SERVER={root}/bin/redis-server\nCXL_TEST_SERVER_VERSION={version}\n"
        f"CXL_TEST_HEADER={root}/include/redismodule.h\n"
        f"CXL_TEST_HEADER_SOURCE=valkey_{version}+dfsg1.orig.tar.xz\nCXL_TEST_NO_ASAN=''\n")
    return root


@pytest.fixture(scope="module")
def valkey_build(tmp_path_factory, run_role, make_fake_repo):
    if not _debian12():
        pytest.skip("cxl_build_server valkey needs a Debian 12 build host")
    repo = make_fake_repo(tmp_path_factory.mktemp("repo"))
    # The default server's header must not be the one used.
    (repo / "build/redis-src/redismodule.h").write_text('#error "not the server\'s header"\n')
    server_dir = fake_server_dir(tmp_path_factory.mktemp("server"), "8.0.1")
    variables = {"cxl_build_repo_dir": str(repo), "cxl_build_install_packages": False,
                 "cxl_build_bench": False, "cxl_build_wheel": False,
                 "cxl_build_server": "valkey", "cxl_build_server_dir": str(server_dir)}
    work = tmp_path_factory.mktemp("play")
    first = run_role(work, "cxl_build", variables)
    assert first.returncode == 0, first.output[-4000:]
    second = run_role(work, "cxl_build", variables)
    artifacts = json.loads((repo / "build/lab/artifacts.json").read_text())
    return {"first": first, "second": second, "artifacts": artifacts, "server_dir": server_dir}


def test_module_is_built_against_the_servers_header(valkey_build):
    module = Path(valkey_build["artifacts"]["module"])
    assert module.is_file() and module.name.startswith("cxl_ring-valkey8.0.1-")


def test_manifest_names_the_server_and_its_binaries(valkey_build):
    redis = valkey_build["artifacts"]["redis"]
    assert redis["server"] == "valkey" and redis["version"] == "8.0.1"
    assert redis["source"] == "tarball"           # deployed next to the module
    assert redis["bin_dir"] == str(valkey_build["server_dir"] / "bin")
    assert redis["files"] == ["redis-server", "redis-cli", "redis-benchmark"]
    assert redis["origin"] == "valkey_8.0.1+dfsg1.orig.tar.xz"


def test_second_run_changes_nothing(valkey_build):
    assert valkey_build["second"].recap["changed"] == 0, valkey_build["second"].output[-4000:]


def test_unknown_server_is_refused(tmp_path, run_role, make_fake_repo):
    repo = make_fake_repo(tmp_path / "repo")
    variables = {"cxl_build_repo_dir": str(repo), "cxl_build_install_packages": False,
                 "cxl_build_server": "keydb"}
    run = run_role(tmp_path / "play", "cxl_build", variables)
    assert run.returncode != 0 and "cxl_build_server" in run.output
