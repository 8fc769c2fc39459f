#!/usr/bin/env bash
# Builds the QEMU that runs the hardware-virtualised KVM test host: Debian's QEMU 10 source
# (bookworm-backports) with qemu-int3-intercept.patch, TCG only, x86_64 only. Cached; prints
# the path of the qemu-system-x86_64 it built. About 2 minutes on 2 cores.
#   MINIVMM_CACHE   cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/minivmm)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache="${MINIVMM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/minivmm}"
dir="$cache/hwkvm/qemu"
version=10.0.2
patch="$here/qemu-int3-intercept.patch"
# The build is keyed by the patch: change the patch and it is rebuilt.
stamp="$version-$(sha256sum "$patch" | cut -c1-16)"
bin="$dir/build/qemu-system-x86_64"
if [ -x "$bin" ] && [ "$(cat "$dir/stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "$bin"
    exit 0
fi

fail() { echo "build-qemu: $*" >&2; exit 1; }
. "$here/apt.sh"
apt_install ninja-build libglib2.0-dev libpixman-1-dev libfdt-dev libattr1-dev \
    flex bison pkg-config python3-venv gcc make xz-utils patch
ensure_backports

mkdir -p "$dir"
tarball="$dir/qemu_${version}+ds.orig.tar.xz"
if [ ! -s "$tarball" ]; then
    echo "build-qemu: downloading QEMU $version's source from bookworm-backports" >&2
    # The .dsc and debian.tar.xz are not always served; only the orig tarball is needed.
    (cd "$dir" && as_root apt-get source -qq --download-only -t bookworm-backports qemu >&2) || true
    [ -s "$tarball" ] || fail "apt-get source did not bring $tarball (is bookworm-backports' deb-src reachable?)"
fi

# QEMU's build tools: the +ds tarball drops its bundled meson and pycotap.
venv="$dir/venv"
if [ ! -x "$venv/bin/meson" ]; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q meson==1.5.0 pycotap==1.3.1 >&2 || fail "pip could not install meson and pycotap from PyPI"
fi

src="$dir/src"
rm -rf "$src" "$dir/build" "$dir/stamp"
mkdir -p "$src"
tar -xJf "$tarball" -C "$src" --strip-components=1
patch -d "$src" -p1 -s < "$patch"
# The +ds tarball has no firmware blobs: do not unpack or list them (we use Debian's).
sed -i '1i unpack_edk2_blobs = false' "$src/pc-bios/meson.build"

mkdir -p "$dir/build"
(
    cd "$dir/build"
    PATH="$venv/bin:$PATH" "$src/configure" --python="$venv/bin/python3" \
        --target-list=x86_64-softmmu --without-default-features --enable-tcg \
        --enable-virtfs --enable-attr --disable-docs --disable-werror --disable-install-blobs >&2
    PATH="$venv/bin:$PATH" ninja qemu-system-x86_64 >&2
) || fail "building QEMU failed (see above)"
echo "$stamp" > "$dir/stamp"
echo "$bin"
