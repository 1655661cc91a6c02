"""Run the services roles for real, with ansible-playbook against localhost.

Each test writes a small playbook into a temporary directory and runs it with the same
Python (and therefore the same Ansible) as pytest, the repository's roles on the roles
path, and connection local. Nothing outside the temporary directories is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# Seconds one playbook run may take: only a hang reaches it, however slow the machine.
PLAYBOOK_TIMEOUT = 1200


def _ansible_playbook() -> str | None:
    beside = Path(sys.executable).with_name("ansible-playbook")
    if beside.exists():
        return str(beside)
    return shutil.which("ansible-playbook")


@dataclass
class PlaybookRun:
    returncode: int
    output: str

    @property
    def recap(self) -> dict[str, int]:
        """The PLAY RECAP counters of localhost (ok, changed, failed, ...)."""
        for line in self.output.splitlines():
            if line.startswith("localhost") and "ok=" in line:
                pairs = (item.split("=") for item in line.split()[2:])
                return {key: int(value) for key, value in pairs}
        raise AssertionError("no PLAY RECAP in the output:\n" + self.output[-4000:])


@pytest.fixture(scope="session")
def run_role():
    """run_role(workdir, role, variables, tasks_from=None) -> PlaybookRun."""
    playbook_bin = _ansible_playbook()
    if playbook_bin is None:
        pytest.skip("ansible-playbook is not installed (make venv installs it)")

    def run(workdir: Path, role: str, variables: dict,
            tasks_from: str | None = None) -> PlaybookRun:
        workdir.mkdir(parents=True, exist_ok=True)
        include = {"name": role}
        if tasks_from:
            include["tasks_from"] = tasks_from
        play = [{
            "name": f"Run {role} for a test",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {"ansible_python_interpreter": sys.executable, **variables},
            "tasks": [{"name": f"Apply {role}", "ansible.builtin.include_role": include}],
        }]
        playbook = workdir / f"{role}.yml"
        playbook.write_text(json.dumps(play, indent=2))
        env = dict(os.environ)
        env.update({
            "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
            "ANSIBLE_ROLES_PATH": str(REPO_ROOT / "roles"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_CALLBACKS_ENABLED": "",
            "ANSIBLE_LOCAL_TEMP": str(workdir / ".ansible-tmp"),
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
        })
        proc = subprocess.run(
            [playbook_bin, "-i", "localhost,", str(playbook)],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT,
        )
        return PlaybookRun(proc.returncode, proc.stdout + proc.stderr)

    return run


@pytest.fixture(scope="session")
def redis_server_binary() -> Path:
    path = shutil.which("redis-server")
    if path is None:
        pytest.skip("redis-server is not installed (requirements/apt-ring.txt)")
    return Path(path)


@pytest.fixture(scope="session")
def cc() -> str:
    path = shutil.which("cc")
    if path is None:
        pytest.skip("no C compiler (build-essential)")
    return path


@pytest.fixture(scope="session")
def shared_object(tmp_path_factory, cc) -> Path:
    """A tiny real shared library: stands in for cxl_ring.so where only ldd matters."""
    workdir = tmp_path_factory.mktemp("so")
    source = workdir / "stub.c"
    source.write_text("int cxl_ring_stub(void) { return 3; }\n")
    target = workdir / "cxl_ring.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(target), str(source)], check=True)
    return target


@pytest.fixture(scope="session")
def make_fake_repo():
    """make_fake_repo(root) -> root, filled as a miniature lab repository."""
    return _fake_repo


def _fake_repo(root: Path) -> Path:
    """A miniature lab repository: a Redis module, a ring library, a bench and a client."""
    files = {
        "driver/module.c": """
            #include "redismodule.h"
            #include "cxl_ring/ring.h"
            int RedisModule_OnLoad(void *ctx, void **argv, int argc) {
                (void)ctx; (void)argv; (void)argc;
                return ring_version() == STUB_REDISMODULE_OK ? 0 : 1;
            }
            """,
        # A stand-in for the Debian source's redismodule.h (scripts/fetch-redis-source.sh).
        "build/redis-src/redismodule.h": "#define STUB_REDISMODULE_OK 1\n",
        "build/redis-src/SOURCE": "redis_7.0.15.orig.tar.gz\n",
        "ring/include/cxl_ring/ring.h": "int ring_version(void);\n",
        "ring/src/ring.c": '#include "cxl_ring/ring.h"\nint ring_version(void) { return 1; }\n',
        "bench/c/main.c": """
            #include <math.h>
            #include <stdio.h>
            #include "cxl_ring/ring.h"
            int main(void) { printf("%d %f\\n", ring_version(), sqrt(2.0)); return 0; }
            """,
        # A program of its own under bench/c (like bench/c/null): not part of the bench
        # client (a second main(), and a header the bench's flags do not find).
        "bench/c/other/other.c": (
            '#include "not_on_the_bench_path.h"\nint main(void) { return 0; }\n'
        ),
        "client/cxl_ring/__init__.py": '"""A stand-in ring client."""\n',
        "README.md": "stand-in\n",
        "pyproject.toml": """
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "cxl-ring"
            version = "0.1.0"
            readme = "README.md"

            [tool.setuptools.packages.find]
            where = ["client"]
            """,
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root
