"""The driver tests run against the server they were asked to (docs/servers.md).

`make test-servers` runs tests/ring once per server with CXL_TEST_SERVER (the binary),
CXL_TEST_SERVER_VERSION and CXL_TEST_MODULE (the module built against that server's
header); this file checks that the server started is that one, so that a selection that
silently fell back to the default redis-server cannot pass for Redis 8 or Valkey.
"""

from __future__ import annotations

import os

import pytest
from ringharness import MODULE, REDIS_SERVER

pytestmark = pytest.mark.timeout(60)


def test_the_selected_server_and_module_are_running(server):
    info = server.client().info("server")
    # Valkey answers redis_version 7.2.4 (its Redis compatibility level) and valkey_version.
    name = info.get("server_name", "redis")
    version = str(info.get("valkey_version") or info["redis_version"])
    wanted = os.environ.get("CXL_TEST_SERVER_VERSION")
    if wanted:
        assert version == wanted, f"{REDIS_SERVER} runs {name} {version}, not {wanted}"
    if "valkey" in os.path.basename(REDIS_SERVER):
        assert name == "valkey", info
    modules = {m["name"]: m for m in server.client(decode_responses=True).module_list()}
    assert "cxl_ring" in modules, modules
    assert os.path.realpath(modules["cxl_ring"]["path"]) == os.path.realpath(MODULE)
