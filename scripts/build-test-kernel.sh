#!/usr/bin/env bash
# Builds minivmm's test kernel: a small x86-64 Linux with full debug info, from Debian's
# linux-source-6.1 package, configured as `make tinyconfig` plus scripts/test-kernel.config.
# It builds into minivmm's cache (outside git) and prints the build directory, which holds
#   bzImage          the kernel to boot (minivmm --kernel DIR/bzImage)
#   vmlinux          the same kernel as an ELF file with DWARF 5 debug info (for gdb, crash)
#   vmlinux-gdb.py   Linux's GDB helpers (lx-dmesg, lx-ps, ...), auto-loaded beside vmlinux,
#   scripts/gdb/     which import their modules from here
#   .config          the final configuration; build.log the build's output
# A build is cached by the source package's version and the fragment's hash: a second run
# prints the directory at once. A clean build takes about 5 minutes on 2 cores (10 when they
# are shared with other builds).
#
#   MINIVMM_CACHE   cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/minivmm)
#   JOBS            parallel make jobs (default: the number of CPUs)
# Needs root (or sudo) the first time, to install Debian packages with apt-get.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
fragment="$here/test-kernel.config"
cache="${MINIVMM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/minivmm}/kernel"
jobs="${JOBS:-$(nproc)}"
export ARCH=x86_64
# The same `uname -v` whoever builds it.
export KBUILD_BUILD_USER=minivmm KBUILD_BUILD_HOST=minivmm

fail() { echo "build-test-kernel: $*" >&2; exit 1; }
say() { echo "build-test-kernel: $*" >&2; }

# --- Debian packages: the source tarball and what building a kernel needs ---
packages=(linux-source-6.1 bc flex bison libelf-dev xz-utils build-essential)
installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }
missing=()
for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || fail "needs apt-get (a Debian machine) to install: ${missing[*]}"
    if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
    apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends)
    say "installing ${missing[*]}"
    # Stale package lists are the usual reason a package is not found: update, then retry.
    if ! "${apt[@]}" "${missing[@]}" >&2; then
        "${sudo[@]}" apt-get update -q >&2 || fail "apt-get update failed (network? root?)"
        "${apt[@]}" "${missing[@]}" >&2 || fail "apt-get install ${missing[*]} failed"
    fi
fi
tarball=/usr/src/linux-source-6.1.tar.xz
[ -f "$tarball" ] || fail "$tarball is missing (is linux-source-6.1 installed?)"
version=$(dpkg-query -W -f='${Version}' linux-source-6.1)

# --- Cache key: the source version and the fragment; one build directory per key ---
hash=$(sha256sum "$fragment" | cut -c1-12)
src="$cache/linux-source-$version"
out="$cache/build-$version-$hash"
if [ -f "$out/.complete" ]; then
    echo "$out"
    exit 0
fi

mkdir -p "$cache"
# One build at a time per cache (two engineers, or make -j, may start it together).
exec 9>"$cache/.lock"
flock 9
if [ -f "$out/.complete" ]; then echo "$out"; exit 0; fi
start=$(date +%s)

# --- Source: unpacked once per package version, shared by all builds (they build with O=) ---
if [ ! -f "$src/.complete" ]; then
    say "unpacking $tarball ($version)"
    rm -rf "$src" "$src.tmp"
    mkdir -p "$src.tmp"
    tar -xJf "$tarball" -C "$src.tmp" --strip-components=1
    touch "$src.tmp/.complete"
    mv "$src.tmp" "$src"
fi

# --- Config: tinyconfig, then the fragment with allnoconfig semantics (merge_config.sh -n):
# whatever neither names stays off, so the kernel stays small. ---
rm -rf "$out"
mkdir -p "$out"
log="$out/build.log"
say "configuring in $out (log: $log)"
{
    make -C "$src" O="$out" tinyconfig
    # Run in the build directory, whose Makefile kbuild made: merge_config.sh runs make there.
    # It warns about every derived symbol of tinyconfig's .config; the check below counts.
    (cd "$out" && "$src/scripts/kconfig/merge_config.sh" -n .config "$fragment")
} >>"$log" 2>&1 || { tail -30 "$log" >&2; fail "configuration failed"; }

# Every option the fragment names must have survived: an unmet dependency drops an option
# without a word from Kconfig.
bad=0
while read -r line; do
    case "$line" in
        CONFIG_*=*)
            grep -qxF "$line" "$out/.config" ||
                { say "wanted $line, got: $(grep -E "^(# )?${line%%=*}[= ]" "$out/.config" || echo absent)"; bad=1; } ;;
        "# CONFIG_"*" is not set")
            sym=${line#\# }; sym=${sym%% *}
            ! grep -q "^$sym=" "$out/.config" ||
                { say "wanted $sym off, got: $(grep "^$sym=" "$out/.config")"; bad=1; } ;;
    esac
done < "$fragment"
[ $bad -eq 0 ] || fail "the configuration lost options of $fragment (see above; missing dependencies?)"

# --- Build: the compressed kernel (vmlinux comes with it) and the lx-* GDB helpers ---
say "building bzImage with $jobs jobs"
make -C "$src" O="$out" -j"$jobs" bzImage scripts_gdb >>"$log" 2>&1 ||
    { tail -40 "$log" >&2; fail "build failed (full log: $log)"; }
ln -sf arch/x86/boot/bzImage "$out/bzImage"
for f in bzImage vmlinux vmlinux-gdb.py scripts/gdb/linux/constants.py; do
    [ -e "$out/$f" ] || fail "the build did not produce $f"
done
touch "$out/.complete"
say "done in $(( $(date +%s) - start )) s"
echo "$out"
