#!/usr/bin/env bash
# Get one of the servers the cxl_ring driver is tested against, and its module header.
#
# usage: scripts/prepare-server.sh NAME DEST
#
# NAME is one of
#   redis8  Redis 8.0 built from the orig tarball of Debian trixie's redis source package
#           (`apt-get source redis/trixie`), once per version and build flags, into
#           $CXL_SERVER_CACHE/redis-<version>-<flags hash>/ (default
#           /var/cache/cxl-dsm-lab/servers, outside the clone, like the guest image cache),
#           so that a second run or a CI run on the same machine does not rebuild it;
#   valkey  valkey-server from bookworm-backports, installed with apt
#           (valkey-server/bookworm-backports: that package only, its dependencies from
#           bookworm), and the module header from the Valkey source package (bookworm-
#           backports' own version when the archive has it, else trixie's), cached too.
# The bookworm redis-server (7.0) needs no preparing: it is what `make build` builds for.
#
# It writes DEST/include/redismodule.h (the server's own header: Redis 8.0's, or Valkey's
# redismodule.h, which maps the RedisModule_* API onto valkeymodule.h), DEST/bin/ (links
# redis-server, redis-cli, redis-benchmark to the server's binaries) and DEST/server.env
# (shell syntax) with CXL_TEST_SERVER (the server binary), CXL_TEST_SERVER_VERSION,
# CXL_TEST_HEADER, CXL_TEST_HEADER_SOURCE (the tarball it came from) and CXL_TEST_NO_ASAN
# (why the ASan build cannot be loaded into this server; empty: it can), for `make
# test-servers` and tests/ring.
#
# Exit status 3: the server is not available on this system (not Debian 12, or the archive
# index lacks it); the reason is printed in one line and the caller skips that server. Any
# other failure (a download, the build) is exit status 1.
set -euo pipefail
name=${1:?usage: prepare-server.sh NAME DEST}
dest=${2:?usage: prepare-server.sh NAME DEST}
here=$(cd "$(dirname "$0")" && pwd)

cache=${CXL_SERVER_CACHE:-/var/cache/cxl-dsm-lab/servers}
# make variables of the Redis 8 build: libc malloc (no jemalloc build, faster on 2 cores),
# no TLS, no systemd notify, none of the bundled Redis 8 modules (search, JSON, ...).
REDIS8_MAKE_ARGS=${REDIS8_MAKE_ARGS:-MALLOC=libc BUILD_TLS=no USE_SYSTEMD=no}
JOBS=${JOBS:-$(nproc)}

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

say() { echo "prepare-server $name: $*"; }
unavailable() { say "not available: $*"; exit 3; }

. /etc/os-release
[ "${ID:-}" = debian ] && [ "${VERSION_CODENAME:-}" = bookworm ] \
    || unavailable "${PRETTY_NAME:-this system} is not Debian 12 (no trixie sources nor bookworm-backports)"

if [ ! -w "$cache" ]; then
    $SUDO install -d -m 0755 -o "$(id -u)" -g "$(id -g)" "$cache"
fi
mkdir -p "$dest/include"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Download the orig tarball of source package $1 from suite $2 into $work; prints its path.
# The .dsc and the Debian diff are not needed (and a partial mirror may lack them).
fetch_orig() {
    (cd "$work" && apt-get source -qq --download-only "$1/$2" >/dev/null 2>&1) || true
    ls "$work"/"$1"_*.orig.tar.* 2>/dev/null | head -n1 || true
}

# Copy a header into DEST/include only when it differs: the module is rebuilt when it changes.
install_header() { cmp -s "$1" "$dest/include/$(basename "$1")" || cp "$1" "$dest/include/"; }

# DEST/bin/redis-server, redis-cli, redis-benchmark: links to the server's binaries under the
# names the lab's roles deploy (Valkey answers to them as it does to its own).
install_bins() {
    mkdir -p "$dest/bin"
    ln -sfn "$1" "$dest/bin/redis-server"
    ln -sfn "$2" "$dest/bin/redis-cli"
    ln -sfn "$3" "$dest/bin/redis-benchmark"
}

# upstream version of a Debian version: 5:8.0.2-3+deb13u3 -> 8.0.2, 8.1.1+dfsg1-3 -> 8.1.1
upstream() { sed -e 's/^[0-9]*://' -e 's/-[^-]*$//' -e 's/+.*//' <<<"$1"; }

write_env() {  # server binary, version, header, the tarball the header came from
    local no_asan=""
    # ASan's LD_PRELOAD replaces malloc and free but not jemalloc's own sized/extended API;
    # a server that calls it (Debian's valkey-server: sdallocx, nallocx) crashes at start.
    if nm -D "$(readlink -f "$1")" 2>/dev/null | grep -E ' U (sdallocx|mallocx|nallocx|dallocx)$' >/dev/null; then
        no_asan="$(basename "$1") calls jemalloc's sdallocx/nallocx, which ASan does not intercept"
    fi
    {
        printf 'CXL_TEST_SERVER=%q\n' "$1"
        printf 'CXL_TEST_SERVER_VERSION=%q\n' "$2"
        printf 'CXL_TEST_HEADER=%q\n' "$3"
        printf 'CXL_TEST_HEADER_SOURCE=%q\n' "$4"
        printf 'CXL_TEST_NO_ASAN=%q\n' "$no_asan"
    } >"$dest/server.env"
    say "$("$1" --version | head -n1)${no_asan:+ (no ASan: $no_asan)}"
}

case "$name" in
redis8)
    "$here/install-server-sources.sh" >/dev/null
    # The cache is keyed by the version apt offers, the build flags and compiler, and the
    # layout of a cache entry (bump cache_layout when what is kept there changes).
    cache_layout=2
    flags_hash=$( (echo "$cache_layout $REDIS8_MAKE_ARGS"; cc --version | head -n1) | sha256sum | cut -c1-12)
    ver=$(apt-cache showsrc redis 2>/dev/null | awk '/^Version:/ {print $2}' \
          | grep -E '^([0-9]+:)?8\.' | sort -V | tail -n1 || true)
    [ -n "$ver" ] || unavailable "no Redis 8 source package in the apt index (trixie deb-src)"
    ver=$(upstream "$ver")
    tree=$cache/redis-$ver-$flags_hash
    exec 9>"$cache/.redis-$ver.lock"
    flock 9
    if [ ! -f "$tree/BUILD" ]; then
        tarball=$(fetch_orig redis trixie)
        [ -n "$tarball" ] || { say "apt-get source redis/trixie gave no orig tarball"; exit 1; }
        say "building Redis $ver ($REDIS8_MAKE_ARGS, -j$JOBS) into $tree, once"
        tar xf "$tarball" -C "$work"
        srcdir=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'redis-*' | head -n1)
        # shellcheck disable=SC2086  # word splitting of the make variables is wanted
        make -C "$srcdir" -j"$JOBS" $REDIS8_MAKE_ARGS >"$work/build.log" 2>&1 || {
            tail -n 40 "$work/build.log" >&2; say "build failed"; exit 1; }
        rm -rf "$tree.tmp" && mkdir -p "$tree.tmp/bin" "$tree.tmp/include"
        cp "$srcdir/src/redis-server" "$srcdir/src/redis-cli" "$srcdir/src/redis-benchmark" \
            "$tree.tmp/bin/"
        cp "$srcdir/src/redismodule.h" "$tree.tmp/include/"
        printf 'source %s\nmake %s\ncc %s\n' "$(basename "$tarball")" "$REDIS8_MAKE_ARGS" \
            "$(cc --version | head -n1)" >"$tree.tmp/BUILD"
        rm -rf "$tree" && mv "$tree.tmp" "$tree"
    fi
    install_header "$tree/include/redismodule.h"
    install_bins "$tree/bin/redis-server" "$tree/bin/redis-cli" "$tree/bin/redis-benchmark"
    write_env "$tree/bin/redis-server" "$ver" "$tree/include/redismodule.h" \
        "$(awk '/^source/ {print $2}' "$tree/BUILD")"
    ;;
valkey)
    "$here/install-server-sources.sh" >/dev/null
    if ! command -v valkey-server >/dev/null; then
        apt-cache policy valkey-server 2>/dev/null | grep -q bookworm-backports \
            || unavailable "no valkey-server in bookworm-backports"
        say "installing valkey-server/bookworm-backports"
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
            valkey-server/bookworm-backports valkey-tools/bookworm-backports >/dev/null
        # The package starts a systemd/init service on port 6379; the tests start their own
        # servers and the lab does not use it.
        $SUDO systemctl disable --now valkey-server >/dev/null 2>&1 \
            || $SUDO service valkey-server stop >/dev/null 2>&1 || true
    fi
    bin=$(command -v valkey-server)
    ver=$(upstream "$(dpkg-query -W -f='${Version}' valkey-server)")
    hdr_dir=$cache/valkey-header-$ver
    exec 9>"$cache/.valkey-header.lock"
    flock 9
    if [ ! -s "$hdr_dir/redismodule.h" ]; then
        # The server's own version's source when the archive has it, else trixie's 8.x: the
        # module API is looked up by name at load time, so a newer header only adds entries.
        tarball=$(fetch_orig valkey bookworm-backports)
        [ -n "$tarball" ] || tarball=$(fetch_orig valkey trixie)
        [ -n "$tarball" ] || { say "apt-get source valkey gave no orig tarball"; exit 1; }
        member_dir=$(tar taf "$tarball" | awk -F/ '/\/src\/valkeymodule\.h$/ && !f {print $1; f=1}')
        tar xaf "$tarball" -C "$work" "$member_dir/src/valkeymodule.h" "$member_dir/src/redismodule.h"
        rm -rf "$hdr_dir.tmp" && mkdir -p "$hdr_dir.tmp"
        cp "$work/$member_dir/src/valkeymodule.h" "$work/$member_dir/src/redismodule.h" "$hdr_dir.tmp/"
        basename "$tarball" >"$hdr_dir.tmp/SOURCE"
        rm -rf "$hdr_dir" && mv "$hdr_dir.tmp" "$hdr_dir"
    fi
    install_header "$hdr_dir/valkeymodule.h"
    install_header "$hdr_dir/redismodule.h"
    install_bins "$bin" "$(command -v valkey-cli)" "$(command -v valkey-benchmark)"
    write_env "$bin" "$ver" "$hdr_dir/redismodule.h" "$(cat "$hdr_dir/SOURCE")"
    ;;
*)
    echo "prepare-server: unknown server '$name' (redis8, valkey)" >&2
    exit 2
    ;;
esac
