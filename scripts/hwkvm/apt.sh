# Sourced by the hwkvm scripts: root-or-sudo apt helpers.

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=
apt_update() {
    [ -n "$apt_updated" ] && return 0
    as_root apt-get update -qq >&2 || { echo "apt-get update failed" >&2; return 1; }
    apt_updated=1
}

# Installs the Debian packages among "$@" that are not installed yet.
apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    apt_update
    echo "installing: ${missing[*]}" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

# QEMU 10 and its source come from bookworm-backports: add it (deb and deb-src) if absent.
ensure_backports() {
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ \
        || ! grep -rqs '^Types:.*deb-src\|^deb-src.*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "adding bookworm-backports (deb, deb-src) to apt's sources" >&2
        as_root tee /etc/apt/sources.list.d/minivmm-backports.sources >/dev/null <<'SRC'
Types: deb deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
        apt_updated=
    fi
    apt_update
}
