#!/usr/bin/env bash
# Builds the initramfs of bar's test VM: busybox, the guest init, bar-probe, the integration
# test binaries, the C workloads they run (built by the tests' build script), and the shared
# libraries all of them load.
#
#   scripts/vm/initramfs.sh OUT.cpio BAR_PROBE WORKLOADS_DIR TEST_BINARY...
#
# Binaries lose their DWARF (objcopy --strip-debug) but keep their symbol tables, which is what
# the stacks in the tests are named from. The archive is left uncompressed: qemu loads it
# straight into memory, and decompressing under emulation would cost more than it saves.
set -euo pipefail

usage="usage: initramfs.sh OUT.cpio BAR_PROBE WORKLOADS_DIR TEST_BINARY..."
out="${1:?$usage}"
probe="${2:?$usage}"
workloads="${3:?$usage}"
shift 3
here="$(cd "$(dirname "$0")" && pwd)"
log() { echo "vm-initramfs: $*" >&2; }

busybox="$(command -v busybox || true)"
if [ -z "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
    log "a static busybox is needed (Debian package busybox-static; scripts/setup.sh vm installs it)"
    exit 1
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
# The stage becomes the guest's /, which every user must be able to enter.
chmod 0755 "$stage"
mkdir -p "$stage"/{bin,tests,workloads,proc,sys,dev,tmp,root,scratch}
cp "$busybox" "$stage/bin/busybox"
install -m 0755 "$here/init" "$stage/init"

libs=()
add_binary() { # add_binary SRC DEST
    objcopy --strip-debug "$1" "$2"
    chmod 0755 "$2"
    while read -r lib; do libs+=("$lib"); done < <(ldd "$1" | grep -o '/[^ ]*' || true)
}
add_binary "$probe" "$stage/bin/bar-probe"
# Programs the tests run besides bar-probe (util-linux's setpriv drops privileges, its unshare
# makes a mount namespace).
mkdir -p "$stage/usr/bin"
for tool in setpriv unshare; do
    path="$(command -v "$tool" || true)"
    [ -n "$path" ] || { log "$tool is needed by the tests (scripts/setup.sh vm installs it)"; exit 1; }
    add_binary "$path" "$stage/usr/bin/$tool"
done
# The C workloads keep their unwind tables (.eh_frame is not debug information). `inlined`
# keeps its DWARF too: only DWARF says which functions were inlined where, and its test reads it.
for w in "$workloads"/*; do
    add_binary "$w" "$stage/workloads/$(basename "$w")"
    if [ "$(basename "$w")" = inlined ]; then
        cp "$w" "$stage/workloads/inlined"
    fi
done
for t in "$@"; do
    # cargo names test binaries <name>-<hash>; the VM runs them by name.
    name="$(basename "$t")"
    add_binary "$t" "$stage/tests/${name%-*}"
done
for lib in $(printf '%s\n' "${libs[@]}" | sort -u); do
    mkdir -p "$stage$(dirname "$lib")"
    cp -L "$lib" "$stage$lib"
done

(cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet) >"$out.tmp"
mv "$out.tmp" "$out"
log "$(du -h "$out" | cut -f1) with bar-probe, $# test binaries and ${#libs[@]} library references"
