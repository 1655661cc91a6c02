#!/usr/bin/env bash
# Install the Debian/Ubuntu packages the lab needs, idempotently.
#
# usage: scripts/install-system-deps.sh requirements/apt-*.txt
#
# Each list holds one package per line (# comments allowed). Only packages that
# are missing are installed, so a second run makes no change and needs no
# network. Source packages (deb-src) are enabled because the cxl_ring driver is
# built against the redismodule.h of the distribution's own Redis source.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-system-deps: run as root or install sudo" >&2; exit 1; }
    SUDO="sudo"
fi

wanted=$(cat "$@" | sed -e 's/#.*//' -e 's/[[:space:]]//g' | grep -v '^$' | sort -u)
missing=()
for pkg in $wanted; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$pkg")
    fi
done

# deb-src entries mirroring the binary ones (deb822 or one-line format).
src_list=/etc/apt/sources.list.d/cxl-dsm-lab-src.sources
need_update=0
if ! grep -rqsE '^(deb-src|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    src=""
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/ubuntu.sources; do
        [ -f "$f" ] && { src=$f; break; }
    done
    if [ -n "$src" ]; then
        sed -e 's/^Types:.*/Types: deb-src/' "$src" | $SUDO tee "$src_list" >/dev/null
    elif [ -f /etc/apt/sources.list ]; then
        grep -E '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' \
            | $SUDO tee /etc/apt/sources.list.d/cxl-dsm-lab-src.list >/dev/null
    fi
    need_update=1
fi

if [ ${#missing[@]} -eq 0 ] && [ $need_update -eq 0 ]; then
    echo "install-system-deps: all ${#wanted} packages present"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-system-deps: installing ${missing[*]}"
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
