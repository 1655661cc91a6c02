#!/usr/bin/env bash
# Make the other servers the driver is tested against reachable with apt, idempotently.
#
# usage: scripts/install-server-sources.sh
#
# On Debian 12 (bookworm) it adds, once:
#   - deb-src trixie: the Redis 8.0 source package (scripts/prepare-server.sh builds
#     redis-server from its orig tarball, once, into a cache outside the clone);
#   - deb and deb-src bookworm-backports: the valkey-server 8.0 binary package and
#     the source of exactly that version (its module header);
#   - a pin file so that neither suite ever upgrades anything by itself: trixie has
#     no binary entries at all, and bookworm-backports gets priority 100 (Debian's
#     own default for it), so only a package asked for as `pkg/bookworm-backports`
#     comes from there, and its dependencies still come from bookworm.
# Then it runs `apt-get update` once (only when it changed a file).
#
# Anywhere else (Ubuntu, another Debian release) it changes nothing and says so;
# prepare-server.sh then reports those servers as not available and `make
# test-servers` skips them.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-server-sources: run as root or install sudo" >&2; exit 1; }
    SUDO="sudo"
fi

. /etc/os-release
if [ "${ID:-}" != debian ] || [ "${VERSION_CODENAME:-}" != bookworm ]; then
    echo "install-server-sources: ${PRETTY_NAME:-this system} is not Debian 12: no trixie or" \
         "bookworm-backports entries added (Redis 8 and Valkey tests are skipped here)"
    exit 0
fi

# The mirror of the system's own bookworm entry (deb822 or one-line format).
mirror=""
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    mirror=$(awk '/^URIs:/ && !m {print $2; m=1}' /etc/apt/sources.list.d/debian.sources)
elif [ -f /etc/apt/sources.list ]; then
    mirror=$(awk '$1 == "deb" && $3 ~ /^bookworm/ && !m {print $2; m=1}' /etc/apt/sources.list)
fi
mirror=${mirror:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

list=/etc/apt/sources.list.d/cxl-dsm-lab-servers.sources
pin=/etc/apt/preferences.d/cxl-dsm-lab-servers
want_list=$(cat <<EOF
# Written by the CXL-DSM Lab (scripts/install-server-sources.sh): the servers the
# cxl_ring driver is tested against besides bookworm's redis-server.
Types: deb-src
URIs: $mirror
Suites: trixie
Components: main
Signed-By: $keyring

Types: deb deb-src
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: $keyring
EOF
)
want_pin=$(cat <<EOF
# Written by the CXL-DSM Lab (scripts/install-server-sources.sh): nothing is
# upgraded from these suites unless asked for by name (pkg/bookworm-backports).
Package: *
Pin: release n=bookworm-backports
Pin-Priority: 100

Package: *
Pin: release n=trixie
Pin-Priority: -1
EOF
)

changed=0
if [ "$(cat "$list" 2>/dev/null)" != "$want_list" ]; then
    printf '%s\n' "$want_list" | $SUDO tee "$list" >/dev/null
    changed=1
fi
if [ "$(cat "$pin" 2>/dev/null)" != "$want_pin" ]; then
    printf '%s\n' "$want_pin" | $SUDO tee "$pin" >/dev/null
    changed=1
fi
# A list file that is newer than the last update, or no trixie source index yet.
if [ $changed -eq 1 ] || ! ls /var/lib/apt/lists/*_dists_trixie_main_source_Sources* >/dev/null 2>&1; then
    echo "install-server-sources: trixie (deb-src) and bookworm-backports added; apt-get update"
    $SUDO apt-get update -qq
else
    echo "install-server-sources: trixie (deb-src) and bookworm-backports already configured"
fi
