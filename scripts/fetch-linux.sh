#!/usr/bin/env bash
# Downloads Debian's stock cloud kernel (linux-image-*-cloud-amd64) and busybox-static into
# minivmm's cache (outside git) and prints the cache directory. Cached files are reused.
#   MINIVMM_CACHE   cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/minivmm)
set -euo pipefail

cache="${MINIVMM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/minivmm}"
dir="$cache/linux"
if [ -s "$dir/vmlinuz" ] && [ -s "$dir/busybox" ]; then
    echo "$dir"
    exit 0
fi

fail() { echo "fetch-linux: $*" >&2; exit 1; }
command -v apt-get >/dev/null || fail "needs apt-get (a Debian-based machine) to download the kernel"

pkg_of_meta() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
pkg=$(pkg_of_meta)
if [ -z "$pkg" ]; then
    echo "fetch-linux: updating the package lists" >&2
    if [ "$(id -u)" -eq 0 ]; then update=(apt-get update -qq); else update=(sudo apt-get update -qq); fi
    "${update[@]}" >&2 || fail "apt-get update failed: is the network (Debian mirror) reachable? (it needs root or sudo)"
    pkg=$(pkg_of_meta)
fi
[ -n "$pkg" ] || fail "no linux-image-*-cloud-amd64 package found in the apt sources"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetch-linux: downloading $pkg and busybox-static" >&2
# apt's sandbox user cannot write into a root-owned temp dir; let it download as root.
(cd "$work" && apt-get download -o APT::Sandbox::User=root "$pkg" busybox-static >&2) \
    || fail "apt-get download failed: is the network (Debian mirror) reachable?"
mkdir -p "$work/x"
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/x"; done

mkdir -p "$dir"
cp "$work"/x/boot/vmlinuz-* "$dir/vmlinuz.tmp"
cp "$work"/x/bin/busybox "$dir/busybox.tmp"
mv "$dir/vmlinuz.tmp" "$dir/vmlinuz"
mv "$dir/busybox.tmp" "$dir/busybox"
echo "$pkg" > "$dir/package"
echo "$dir"
