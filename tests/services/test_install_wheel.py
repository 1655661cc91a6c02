"""roles/cxl_ring_client/files/install_wheel.py: the guests' wheel installer, on this host.

Real venvs (python3 -m venv --without-pip, as the role creates them) and real wheel files,
written here by hand so that every case (a new version, a foreign tag, a hostile path) is
one small zip. The console script is run, the package imported, by the venv's Python.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

INSTALLER = Path(__file__).resolve().parents[2] / "roles/cxl_ring_client/files/install_wheel.py"
TAG = f"cp{sys.version_info.major}{sys.version_info.minor}"
PLATFORM = sysconfig.get_platform().replace("-", "_").replace(".", "_")


def make_wheel(
    directory: Path,
    version: str,
    modules: dict[str, str],
    tag: str = TAG,
    extra: dict[str, str] | None = None,
) -> Path:
    info = f"demo_pkg-{version}.dist-info"
    wheel = directory / f"demo_pkg-{version}-{tag}-{tag}-{PLATFORM}.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in modules.items():
            zf.writestr(f"demo_pkg/{name}", text)
        zf.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: demo-pkg\nVersion: {version}\n"
        )
        zf.writestr(
            f"{info}/WHEEL",
            f"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: {tag}-{tag}-{PLATFORM}\n",
        )
        zf.writestr(f"{info}/entry_points.txt", "[console_scripts]\ndemo-cli = demo_pkg.cli:main\n")
        for name, text in (extra or {}).items():
            zf.writestr(name, text)
        zf.writestr(f"{info}/RECORD", "")
    return wheel


def cli_module(answer: str) -> str:
    return f"import sys\n\ndef main():\n    print({answer!r}, sys.argv[1:])\n    return 0\n"


@pytest.fixture
def venv(tmp_path):
    path = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    return path


def install(venv: Path, wheel: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv / "bin/python"), str(INSTALLER), str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def test_installs_the_package_and_its_console_script(tmp_path, venv):
    wheel = make_wheel(tmp_path, "1.0", {"__init__.py": "", "cli.py": cli_module("one")})
    result = install(venv, wheel)
    assert result.returncode == 0, result.stderr
    run = subprocess.run([str(venv / "bin/demo-cli"), "x"], capture_output=True, text=True)
    assert run.stdout.strip() == "one ['x']"
    record = (site_packages(venv) / "demo_pkg-1.0.dist-info/RECORD").read_text()
    assert "../../../bin/demo-cli,sha256=" in record and "demo_pkg/cli.py,sha256=" in record
    assert list((site_packages(venv) / "demo_pkg/__pycache__").glob("cli.*.pyc"))


def test_a_new_version_replaces_the_old_one(tmp_path, venv):
    old = make_wheel(
        tmp_path, "1.0", {"__init__.py": "", "cli.py": cli_module("one"), "gone.py": ""}
    )
    new = make_wheel(tmp_path, "2.0", {"__init__.py": "", "cli.py": cli_module("two")})
    assert install(venv, old).returncode == 0
    result = install(venv, new)
    assert result.returncode == 0, result.stderr
    site = site_packages(venv)
    assert not (site / "demo_pkg/gone.py").exists()
    assert not (site / "demo_pkg-1.0.dist-info").exists()
    run = subprocess.run([str(venv / "bin/demo-cli")], capture_output=True, text=True)
    assert run.stdout.startswith("two")


@pytest.mark.parametrize(
    "case,tag,extra,reason",
    [
        ("foreign interpreter", "cp27", None, "does not fit this interpreter"),
        ("path outside", TAG, {"../../escaped.py": "x = 1\n"}, "unsafe path"),
        ("absolute path", TAG, {"/tmp/escaped.py": "x = 1\n"}, "unsafe path"),
        ("unknown data directory", TAG, {"demo_pkg-3.0.data/elsewhere/x": ""}, "unknown .data"),
    ],
)
def test_a_bad_wheel_is_refused_and_the_installed_one_stays(
    tmp_path, venv, case, tag, extra, reason
):
    good = make_wheel(tmp_path, "1.0", {"__init__.py": "", "cli.py": cli_module("one")})
    assert install(venv, good).returncode == 0
    (tmp_path / "bad").mkdir()
    bad = make_wheel(
        tmp_path / "bad",
        "3.0",
        {"__init__.py": "", "cli.py": cli_module("three")},
        tag=tag,
        extra=extra,
    )
    result = install(venv, bad)
    assert result.returncode == 2, case
    assert reason in result.stderr and result.stderr.count("\n") == 1, result.stderr
    run = subprocess.run([str(venv / "bin/demo-cli")], capture_output=True, text=True)
    assert run.stdout.startswith("one"), case
    assert not (tmp_path / "escaped.py").exists() and not Path("/tmp/escaped.py").exists()


def test_not_a_wheel_is_refused(tmp_path, venv):
    junk = tmp_path / f"demo_pkg-1.0-{TAG}-{TAG}-{PLATFORM}.whl"
    junk.write_bytes(b"not a zip")
    result = install(venv, junk)
    assert result.returncode == 2 and result.stderr.startswith("install_wheel: ")
