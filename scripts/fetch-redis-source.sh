#!/usr/bin/env bash
# Fetch the Redis source the cxl_ring driver is built against and extract its
# redismodule.h into DEST (the source is never copied into our tree).
#
# usage: scripts/fetch-redis-source.sh DEST
#
# Default: the distribution's own source package (`apt-get source redis=<version of the
#          installed redis-server>`, the version the lab's redis-server runs; deb-src is enabled by
#          scripts/install-system-deps.sh).
# REDIS_TARBALL=/path/redis-X.Y.Z.tar.gz, or REDIS_URL=... with REDIS_SHA256=...:
#          a release tarball instead (labs with internet, upstream 7.x/8.x).
set -euo pipefail
dest=${1:?usage: fetch-redis-source.sh DEST}
mkdir -p "$dest"
[ -s "$dest/redismodule.h" ] && exit 0

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -n "${REDIS_URL:-}" ]; then
    : "${REDIS_SHA256:?REDIS_URL needs REDIS_SHA256 (the release checksum)}"
    curl -fsSL -o "$work/redis.tar.gz" "$REDIS_URL"
    echo "$REDIS_SHA256  $work/redis.tar.gz" | sha256sum -c --quiet
    REDIS_TARBALL=$work/redis.tar.gz
fi
if [ -z "${REDIS_TARBALL:-}" ]; then
    # The source of the redis-server this system runs, by version: other suites' deb-src
    # lines (make test-servers adds trixie's) must not change what the driver is built against.
    spec=redis
    ver=$(dpkg-query -W -f='${source:Version}' redis-server 2>/dev/null || true)
    [ -n "$ver" ] && spec="redis=$ver"
    # Only the orig tarball is needed: a failure to fetch the .dsc or the Debian patches alone
    # is not fatal.
    (cd "$work" && apt-get source -qq --download-only "$spec" >/dev/null 2>&1) || true
    REDIS_TARBALL=$(ls "$work"/redis_*.orig.tar.gz 2>/dev/null | head -n1)
    if [ -z "$REDIS_TARBALL" ]; then
        echo "fetch-redis-source: 'apt-get source $spec' found no orig tarball; enable deb-src" \
             "(make deps does) or set REDIS_TARBALL / REDIS_URL+REDIS_SHA256" >&2
        exit 1
    fi
fi
member=$(tar tzf "$REDIS_TARBALL" | awk '/\/src\/redismodule\.h$/ && !f {print; f=1}')
tar xzf "$REDIS_TARBALL" -C "$work" "$member"
cp "$work/$member" "$dest/redismodule.h"
basename "$REDIS_TARBALL" > "$dest/SOURCE"
echo "fetch-redis-source: redismodule.h from $(cat "$dest/SOURCE")"
