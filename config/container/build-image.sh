#!/bin/sh
# Builds the agent's image (see Containerfile) from an agent binary:
#   build-image.sh LB_BINARY TAG CONTEXT_DIR
# stages CONTEXT_DIR/rootfs from this machine, then builds with the first engine that works
# here: podman, buildah, or docker (only if its daemon answers). Prints the engine's name on
# its last line.
set -eu
lb=$1
tag=$2
ctx=$3
here=$(cd "$(dirname "$0")" && pwd)
ip=$(command -v ip) || { echo "iproute2's ip is not installed" >&2; exit 1; }
busybox=/bin/busybox
# The init container has no libraries of its own to run: busybox must be the static one.
if ! file -L "$busybox" 2>/dev/null | grep -q "statically linked"; then
    echo "$busybox is not static: install Debian's busybox-static" >&2
    exit 1
fi

rm -rf "$ctx/rootfs"
r=$ctx/rootfs
mkdir -p "$r/etc/lb" "$r/var/lib/lb" "$r/sys/fs/bpf" "$r/sys/fs/cgroup" "$r/proc" "$r/dev" \
    "$r/tmp" "$r/run"
chmod 1777 "$r/tmp"
install -D -m 755 "$lb" "$r/usr/local/bin/lb"
install -D -m 755 "$ip" "$r/usr/sbin/ip"
install -D -m 755 "$busybox" "$r/bin/busybox"
for tool in sh grep sed tr mount cat ls echo sleep test; do
    ln -s busybox "$r/bin/$tool"
done
# The shared libraries the agent and ip load (and the loader), at the paths they name.
libs=$( (ldd "$lb"; ldd "$ip") | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $2 ~ /^\(/ { print $1 }' | sort -u)
for lib in $libs; do
    install -D -m 755 "$(readlink -f "$lib")" "$r$lib"
done
if [ -d /usr/share/iproute2 ]; then
    mkdir -p "$r/usr/share"
    cp -r /usr/share/iproute2 "$r/usr/share/"
fi
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$r/etc/passwd"
printf 'root:x:0:\n' > "$r/etc/group"
cp "$here/Containerfile" "$ctx/Containerfile"

if command -v podman >/dev/null 2>&1; then
    podman build --quiet -t "$tag" -f "$ctx/Containerfile" "$ctx" >&2
    echo podman
elif command -v buildah >/dev/null 2>&1; then
    buildah bud --quiet -t "$tag" -f "$ctx/Containerfile" "$ctx" >&2
    echo buildah
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    docker build --quiet -t "$tag" -f "$ctx/Containerfile" "$ctx" >&2
    echo docker
else
    echo "no container engine runs here: install podman (cargo xtask setup does)" >&2
    exit 1
fi
