# Copyright: CXL-DSM Lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bare-metal description (``cxl_metal``): hosts that reach the same CXL memory without a
hypervisor of the lab's (docs/lab.md, "On real CXL hosts"), checked and completed.

Each region is memory every host already reaches - a device-DAX device or a file on famfs (or
any DAX-capable file system shared by the hosts) - named per host. Each host gets the entry the
service roles read as ``cxl_vm`` (role, regions, no links, no doorbell), so cxl_redis_server
and cxl_ring_client deploy on it as they do in a lab guest. Sec-DSM needs the lab's hypervisor
to map each segment with its grant: with no hypervisor there is nothing below the hosts to
enforce it, and ``security: secdsm`` is refused.
"""

import re

from ansible.module_utils.cxl_lab import DEVDAX_ALIGN, _with_defaults

# Inventory host names: more than the lab's own VM names allow.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MEDIA = ("devdax", "file")
ROLES = ("server", "client", "attacker")

METAL_DEFAULTS = {
    "name": "cxl-metal",
    # Where the hosts publish each region as <link_dir>/<region> (the service roles'
    # region directory). Not /dev/cxl: on a CXL host the kernel's memory devices live there.
    "link_dir": "/var/lib/cxl-metal/regions",
    "regions_json": "/etc/cxl-metal/regions.json",
    "group": "cxl",
    "regions": None,
    "hosts": None,
    "services": None,
}
REGION_DEFAULTS = {"security": "off", "medium": "devdax", "path": None, "size_mib": None}
HOST_DEFAULTS = {"role": "client", "regions": None, "paths": None}


def _name(value, what, errors):
    if not isinstance(value, str) or not NAME.match(value):
        errors.append(f"{what}: name {value!r} must be letters, digits, '_', '.' or '-'.")
        return False
    return True


def _named_item(raw, label, defaults, errors):
    """RAW with DEFAULTS filled in, or None when it is no mapping or has no valid name; unknown
    keys are reported."""
    keys = ", ".join(["name", *defaults])
    if not isinstance(raw, dict):
        errors.append(f"{label} must be a mapping ({keys}).")
        return None
    item = _with_defaults(raw, defaults)
    unknown = sorted(set(item) - set(defaults) - {"name"})
    if unknown:
        errors.append(f"{label}: unknown keys {unknown}: use {keys}.")
    return item if _name(item.get("name"), label, errors) else None


def _region(raw, index, errors):
    region = _named_item(raw, f"cxl_metal.regions[{index}]", REGION_DEFAULTS, errors)
    if region is None:
        return None
    label = f"region {region['name']}"
    if region["security"] == "secdsm":
        errors.append(
            f"{label}: security secdsm on bare-metal hosts: Sec-DSM is enforced by the lab's "
            "hypervisor, which maps each segment into each VM with its grant; here every host "
            "maps the whole device read-write and nothing below the hosts could refuse a write "
            "(CXL 2.0/3.0 give a host all of a shared device or none of it). Set "
            "security: \"off\", and run the Sec-DSM experiments in the emulated lab.")
    elif region["security"] != "off":
        errors.append(f"{label}: security {region['security']!r}: bare-metal regions are "
                      "security \"off\" (no hypervisor enforces secdsm).")
    if region["medium"] not in MEDIA:
        errors.append(f"{label}: medium {region['medium']!r}: use devdax (a device-DAX device, "
                      "/dev/daxX.Y) or file (a file on famfs or another DAX file system every "
                      "host mounts).")
    path = region["path"]
    if path is not None and (not isinstance(path, str) or not path.startswith("/")):
        errors.append(f"{label}: path {path!r} must be absolute (/dev/dax0.0, /mnt/famfs/ring).")
    size = region["size_mib"]
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        errors.append(f"{label}: size_mib {size!r} must be a positive integer: the bytes of the "
                      "device the ring may use (the driver checks its layout fits).")
    elif region["medium"] == "devdax" and (size << 20) % DEVDAX_ALIGN:
        errors.append(f"{label}: size_mib {size} is odd: a device-DAX device is a whole number "
                      f"of 2 MiB pages: use {size - 1} or less.")
    return region


def _host(raw, index, region_by_name, errors):
    host = _named_item(raw, f"cxl_metal.hosts[{index}]", HOST_DEFAULTS, errors)
    if host is None:
        return None
    label = f"host {host['name']}"
    if host["role"] not in ROLES:
        errors.append(f"{label}: role {host['role']!r}: use server, client or attacker.")
    names = host["regions"]
    if names is None:
        names = list(region_by_name)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        errors.append(f"{label}: regions must be a list of region names.")
        names = []
    paths = host["paths"] or {}
    if not isinstance(paths, dict):
        errors.append(f"{label}: paths must map region names to this host's paths.")
        paths = {}
    for name in sorted(set(paths) - set(names)):
        errors.append(f"{label}: paths names {name}, which this host does not reach "
                      f"(regions: {', '.join(names) or 'none'}).")
    mapped = []
    for name in names:
        region = region_by_name.get(name)
        if region is None:
            errors.append(f"{label} reaches region {name}, which cxl_metal.regions does not "
                          f"describe (described: {', '.join(region_by_name) or 'none'}).")
            continue
        path = paths.get(name, region["path"])
        if not isinstance(path, str) or not path.startswith("/"):
            errors.append(f"{label}: region {name} has no absolute path on this host: give the "
                          f"region a path, or this host paths.{name}.")
            path = None
        mapped.append({"name": name, "security": "off", "access": "rw", "group": None,
                       "medium": region["medium"], "path": path,
                       "size_bytes": (region["size_mib"] or 0) << 20})
    return {"name": host["name"], "role": host["role"], "regions": mapped, "links": [],
            "doorbell": None}


def normalize_metal(description):
    """(resolved, errors): the bare-metal description with defaults filled in and each host's
    ``cxl_vm``-shaped entry, or every problem found, each with its fix."""
    errors = []
    if not isinstance(description, dict):
        return None, ["cxl_metal must be a mapping (regions, hosts; docs/lab.md)."]
    unknown = sorted(set(description) - set(METAL_DEFAULTS))
    if "vms" in unknown:
        errors.append("cxl_metal: vms: bare-metal hosts are cxl_metal.hosts; VMs are the "
                      "emulated lab's (cxl_lab, site.yml).")
    elif unknown:
        errors.append(f"cxl_metal: unknown keys {unknown}: use {sorted(METAL_DEFAULTS)}.")
    metal = _with_defaults(description, METAL_DEFAULTS)
    _name(metal["name"], "cxl_metal", errors)
    for key in ("link_dir", "regions_json"):
        if not isinstance(metal[key], str) or not metal[key].startswith("/"):
            errors.append(f"cxl_metal: {key} {metal[key]!r} must be an absolute path.")
    if not isinstance(metal["regions"], list) or not metal["regions"]:
        errors.append("cxl_metal: regions must list at least one region (name, path, "
                      "size_mib, medium).")
        metal["regions"] = []
    if not isinstance(metal["hosts"], list) or not metal["hosts"]:
        errors.append("cxl_metal: hosts must list the hosts, one with role server.")
        metal["hosts"] = []
    regions = [_region(raw, i, errors) for i, raw in enumerate(metal["regions"])]
    regions = [r for r in regions if r]
    region_by_name = {}
    for region in regions:
        if region["name"] in region_by_name:
            errors.append(f"region {region['name']} is described twice.")
        region_by_name[region["name"]] = region
    hosts = [_host(raw, i, region_by_name, errors) for i, raw in enumerate(metal["hosts"])]
    hosts = [h for h in hosts if h]
    seen = set()
    for host in hosts:
        if host["name"] in seen:
            errors.append(f"host {host['name']} is described twice.")
        seen.add(host["name"])
    servers = [h for h in hosts if h["role"] == "server"]
    if hosts and not servers:
        errors.append("cxl_metal.hosts: no host has role server: one serves each region "
                      "with Redis and the cxl_ring driver.")
    for region in regions:
        serving = [h["name"] for h in servers
                   if any(m["name"] == region["name"] for m in h["regions"])]
        if len(serving) > 1:
            errors.append(f"region {region['name']} is reached by servers {', '.join(serving)}: "
                          "one server per region (a second would find the first's heartbeat "
                          "and refuse it).")
    if errors:
        return None, errors
    metal["regions"] = regions
    metal["hosts"] = hosts
    return metal, []
