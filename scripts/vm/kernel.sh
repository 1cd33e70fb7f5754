#!/usr/bin/env bash
# Fetches a Debian cloud kernel of one series and unpacks it, for the VM test matrix.
#
#   scripts/vm/kernel.sh SERIES CACHE_DIR      e.g. scripts/vm/kernel.sh 6.12 target/vm
#
# Picks the newest `linux-image-<SERIES>...-cloud-amd64` package apt knows (refreshing the
# package lists once if it knows none), downloads it with `apt-get download` into
# CACHE_DIR/debs (kept: a second run does not download again) and unpacks it with
# `dpkg-deb -x` into CACHE_DIR/kernels/<package>. Prints one line: `<package> <vmlinuz>`.
# Fails with a reason on stderr when no such package exists or it cannot be fetched.
set -euo pipefail

series="${1:?usage: kernel.sh SERIES CACHE_DIR}"
cache="${2:?usage: kernel.sh SERIES CACHE_DIR}"
log() { echo "vm-kernel: $*" >&2; }

# 6.1 -> ^linux-image-6\.1[.-]<version>-cloud-amd64$ (6.1.0-56, 6.12.117+deb12, ...)
pattern="^linux-image-${series//./\\.}[.-][0-9][0-9.+a-z~-]*-cloud-amd64\$"
candidates() {
    apt-cache search --names-only "$pattern" 2>/dev/null | awk '{print $1}' | sort -V
}

pkg="$(candidates | tail -n1)"
if [ -z "$pkg" ]; then
    log "apt knows no package matching $pattern; refreshing the package lists"
    apt-get update -q >/dev/null 2>&1 || log "apt-get update failed"
    pkg="$(candidates | tail -n1)"
fi
if [ -z "$pkg" ]; then
    log "no Debian package provides a $series cloud kernel (searched apt for $pattern)"
    exit 1
fi

debs="$cache/debs"
mkdir -p "$debs"
deb="$(find "$debs" -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -n1)"
if [ -z "$deb" ]; then
    log "downloading $pkg"
    # apt-get download writes into the current directory; a partial file is left under a
    # temporary name and removed on failure, so the cache never holds half a package.
    tmp="$(mktemp -d "$debs/.download.XXXXXX")"
    if ! (cd "$tmp" && apt-get download -q "$pkg" >/dev/null 2>"$tmp/err"); then
        log "apt-get download $pkg failed: $(tr '\n' ' ' <"$tmp/err")"
        rm -rf "$tmp"
        exit 1
    fi
    mv "$tmp"/*.deb "$debs/"
    rm -rf "$tmp"
    deb="$(find "$debs" -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -n1)"
fi

dir="$cache/kernels/$pkg"
if [ ! -d "$dir/boot" ]; then
    log "unpacking $(basename "$deb")"
    rm -rf "$dir.tmp"
    mkdir -p "$dir.tmp"
    dpkg-deb -x "$deb" "$dir.tmp"
    mv "$dir.tmp" "$dir"
fi
vmlinuz="$(find "$dir/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n1)"
if [ -z "$vmlinuz" ]; then
    log "$deb has no boot/vmlinuz-*"
    exit 1
fi
echo "$pkg $vmlinuz"
