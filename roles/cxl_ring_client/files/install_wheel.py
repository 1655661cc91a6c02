"""Install one wheel into the running Python's environment (a venv), with the stdlib only.

usage: <venv>/bin/python install_wheel.py WHEEL

Why not pip: in a TCG guest, pip costs minutes before it installs anything (ensurepip
byte-compiles pip and setuptools into the venv; pip run from its own wheel compiles every
module it imports on each run). The ring client's wheel needs none of pip's resolving: no
dependencies, no build. This does what the wheel format asks of an installer (PEP 427, the
"binary distribution format" of the packaging specifications) for such a wheel:

- refuse a wheel whose tags do not fit this interpreter, or that names a path outside the
  environment, before anything is touched;
- remove the files of an installed version of the same distribution (its RECORD), as pip's
  --force-reinstall does;
- unpack the wheel into site-packages (and its .data/ directories where they belong), write
  a launcher for each console script of entry_points.txt, INSTALLER and the completed RECORD;
- byte-compile the unpacked modules.

Exit status 0 when installed, 2 with a one-line reason when refused.
"""

from __future__ import annotations

import base64
import compileall
import configparser
import csv
import hashlib
import io
import os
import shutil
import sys
import sysconfig
import zipfile
from pathlib import Path, PurePosixPath

LAUNCHER = """#!{python}
import sys
from {module} import {attr}
if __name__ == "__main__":
    sys.argv[0] = sys.argv[0].removesuffix(".exe")
    sys.exit({call}())
"""
# Where a wheel's <name>.data/<key>/ directories go (sysconfig's install scheme keys).
DATA_KEYS = ("purelib", "platlib", "scripts", "data", "headers")


class Refused(Exception):
    pass


def compatible_tags() -> tuple[set[str], set[str], set[str]]:
    """(python tags, abi tags, platform tags) this interpreter accepts, for CPython 3.x."""
    major, minor = sys.version_info[:2]
    pythons = {f"cp{major}{minor}", f"py{major}", f"py{major}{minor}"}
    abis = {"none", "abi3", sys.implementation.cache_tag.replace("cpython-", "cp")}
    plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return pythons, abis, {"any", plat}


def check_tags(wheel: str) -> None:
    parts = Path(wheel).name[: -len(".whl")].split("-")
    if len(parts) not in (5, 6):
        raise Refused(f"{wheel}: not a wheel file name (name-version-python-abi-platform.whl)")
    pythons, abis, plats = compatible_tags()
    py, abi, plat = (set(tag.split(".")) for tag in parts[-3:])
    if not (py & pythons and abi & abis and plat & plats):
        raise Refused(
            f"{Path(wheel).name} does not fit this interpreter "
            f"({sys.implementation.cache_tag}, {sysconfig.get_platform()}): build the wheel "
            "with a Python of the same version"
        )


def target_of(member: str, dist_data: str, paths: dict[str, str]) -> Path:
    """Where a member of the wheel goes; refuses absolute paths and '..'."""
    p = PurePosixPath(member)
    if p.is_absolute() or ".." in p.parts:
        raise Refused(f"unsafe path in the wheel: {member!r}")
    if p.parts[0] == dist_data:
        if len(p.parts) < 3 or p.parts[1] not in DATA_KEYS:
            raise Refused(f"unknown .data directory in the wheel: {member!r}")
        return Path(paths[p.parts[1]], *p.parts[2:])
    return Path(paths["platlib"], *p.parts)


def record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def uninstall(name: str, site: Path, paths: dict[str, str]) -> None:
    """Remove every installed version of distribution `name` (the files its RECORD lists)."""
    prefix = name.replace("-", "_").lower() + "-"
    roots = {Path(p).resolve() for p in paths.values()}
    for info in site.glob("*.dist-info"):
        if not info.name.lower().startswith(prefix):
            continue
        record = info / "RECORD"
        rows = list(csv.reader(record.read_text().splitlines())) if record.exists() else []
        dirs = set()
        for row in rows:
            if not row:
                continue
            f = (site / row[0]).resolve()
            if not any(f.is_relative_to(r) for r in roots):
                continue  # never outside the environment, whatever the RECORD says
            if f.is_file() or f.is_symlink():
                f.unlink()
                dirs.add(f.parent)
                cache = f.parent / "__pycache__"
                if cache.is_dir():
                    dirs.add(cache)
        shutil.rmtree(info, ignore_errors=True)
        for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
            if d.name == "__pycache__":
                shutil.rmtree(d, ignore_errors=True)
            elif d.is_dir() and not any(d.iterdir()) and d not in roots:
                d.rmdir()


def install(wheel: str) -> list[str]:
    """Install `wheel`; returns the console scripts written."""
    check_tags(wheel)
    paths = sysconfig.get_paths()
    site = Path(paths["platlib"])
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        infos = {n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")}
        if len(infos) != 1:
            raise Refused(f"{wheel}: expected one .dist-info directory, found {sorted(infos)}")
        dist_info = infos.pop()
        dist_data = dist_info[: -len(".dist-info")] + ".data"
        targets = {n: target_of(n, dist_data, paths) for n in names if not n.endswith("/")}
        meta = zf.read(f"{dist_info}/WHEEL").decode()
        if "Wheel-Version: 1." not in meta:
            raise Refused(f"{wheel}: unsupported Wheel-Version (1.x is)")
        entry_points = configparser.ConfigParser(delimiters=("=",))
        entry_points.optionxform = str
        if f"{dist_info}/entry_points.txt" in names:
            entry_points.read_string(zf.read(f"{dist_info}/entry_points.txt").decode())

        uninstall(dist_info.split("-")[0], site, paths)
        record = []
        for member, target in targets.items():
            data = zf.read(member)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            if member.startswith(f"{dist_data}/scripts/") or member.endswith(".so"):
                target.chmod(0o755)
            record.append((os.path.relpath(target, site), record_hash(data), str(len(data))))

    scripts = []
    if entry_points.has_section("console_scripts"):
        for script, value in entry_points.items("console_scripts"):
            module, _, attr = value.strip().partition(":")
            call = attr.strip() or "main"
            launcher = LAUNCHER.format(
                python=sys.executable, module=module.strip(), attr=call.split(".")[0], call=call
            ).encode()
            path = Path(paths["scripts"], script)
            path.write_bytes(launcher)
            path.chmod(0o755)
            scripts.append(script)
            record.append((os.path.relpath(path, site), record_hash(launcher), str(len(launcher))))

    installer = site / dist_info / "INSTALLER"
    installer.write_text("cxl-lab\n")
    record.append((os.path.relpath(installer, site), "", ""))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerows(r for r in record if not r[0].endswith(f"{dist_info}/RECORD"))
    writer.writerow((f"{dist_info}/RECORD", "", ""))
    (site / dist_info / "RECORD").write_text(out.getvalue())

    packages = {site / PurePosixPath(n).parts[0] for n in targets if n.endswith(".py")}
    for package in packages:
        if package.is_dir():
            compileall.compile_dir(package, quiet=1)
        elif package.is_file():
            compileall.compile_file(package, quiet=1)
    return scripts


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: install_wheel.py WHEEL", file=sys.stderr)
        return 2
    try:
        scripts = install(argv[1])
    except (Refused, zipfile.BadZipFile, KeyError, OSError) as exc:
        print(f"install_wheel: {exc}", file=sys.stderr)
        return 2
    print(f"installed {Path(argv[1]).name} into {sys.prefix} (scripts: {', '.join(scripts)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
