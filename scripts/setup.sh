#!/usr/bin/env bash
# Installs what a fresh Debian machine with rustup's stable and nightly toolchains lacks to
# build and test bar. Idempotent: a second run only checks and returns in about a second.
#
#   scripts/setup.sh            build prerequisites (rust-src for nightly, bpf-linker)
#   scripts/setup.sh vm         + qemu, busybox, cpio for the kernel matrix
#   scripts/setup.sh bench      + the peer tracers, bpftool, GNU time and inferno's CLI for
#                               the benchmarks (cargo xtask bench)
#   scripts/setup.sh report     + chromium for the HTML report test
#   scripts/setup.sh export     + Go, whose `go tool pprof` the export test reads profiles with
#   scripts/setup.sh stacks     + Debian's python3.11 and perf, which the unwinding test
#                               compares bar's stacks of a frameless interpreter against
set -euo pipefail

TOOLS="${BAR_TOOLS_DIR:-$HOME/.cache/bar-tools}"
NIGHTLY="${BAR_NIGHTLY:-nightly}"
BPF_LINKER_VERSION="0.13.0"

log() { echo "setup: $*" >&2; }

apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    # Wait for another apt run instead of failing on its lock.
    local apt=(apt-get -o DPkg::Lock::Timeout=600 -y -q --no-install-recommends)
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}" >/dev/null; then
        apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}" >/dev/null
    fi
}

rust_prereqs() {
    if ! rustup component list --toolchain "$NIGHTLY" --installed 2>/dev/null | grep -q '^rust-src'; then
        log "adding rust-src to the $NIGHTLY toolchain"
        rustup component add rust-src --toolchain "$NIGHTLY" >/dev/null
    fi

    local linker="$TOOLS/bin/bpf-linker"
    if [ -x "$linker" ] && "$linker" --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
        return 0
    fi
    if [ -x "$linker" ]; then
        log "bpf-linker is present but does not run; rebuilding it"
    fi
    # bpf-linker must link the same LLVM the nightly rustc emits bitcode for. Release tarballs are
    # not reachable from these machines, so build it against the nightly's own libLLVM; the binary
    # keeps an rpath to $TOOLS/llvm, which therefore stays.
    local sysroot llvm_so llvm_major
    sysroot="$(rustc +"$NIGHTLY" --print sysroot)"
    llvm_so="$(find "$sysroot/lib" -maxdepth 1 -name 'libLLVM.so.*' | head -n1)"
    [ -n "$llvm_so" ] || { log "no libLLVM.so.* in $sysroot/lib"; exit 1; }
    llvm_major="$(rustc +"$NIGHTLY" -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')"
    mkdir -p "$TOOLS/llvm/lib"
    # The linker loads libLLVM by its soname through the rpath, so both names must be present.
    ln -sf "$llvm_so" "$TOOLS/llvm/lib/libLLVM.so"
    ln -sf "$llvm_so" "$TOOLS/llvm/lib/$(basename "$llvm_so")"
    log "building bpf-linker $BPF_LINKER_VERSION against LLVM $llvm_major (a few minutes, once)"
    LLVM_PREFIX="$TOOLS/llvm" cargo +"$NIGHTLY" install --quiet --locked --root "$TOOLS" \
        bpf-linker --version "$BPF_LINKER_VERSION" --no-default-features --features "llvm-$llvm_major"
}

# inferno's command-line tools (inferno-collapse-perf, inferno-flamegraph), for the perf
# pipeline the benchmarks compare `bar-probe report` with.
INFERNO_VERSION="0.12.8"
bench_tools() {
    # The tools have no --version; cargo install keeps a record of what it installed.
    if [ -x "$TOOLS/bin/inferno-flamegraph" ] &&
        grep -q "^\"inferno $INFERNO_VERSION " "$TOOLS/.crates.toml" 2>/dev/null; then
        return 0
    fi
    log "building inferno $INFERNO_VERSION (about a minute, once)"
    cargo install --quiet --locked --root "$TOOLS" inferno --version "$INFERNO_VERSION"
}

case "${1:-build}" in
    build) rust_prereqs ;;
    # e2fsprogs makes the VMs' scratch disk; util-linux has the setpriv the tests use.
    vm) rust_prereqs; apt_install qemu-system-x86 busybox-static cpio e2fsprogs util-linux ;;
    bench)
        rust_prereqs
        apt_install linux-perf bpftrace bpfcc-tools libbpf-tools bpftool time stress-ng hyperfine
        bench_tools
        ;;
    report) apt_install chromium ;;
    # Debian's golang-go ships pprof prebuilt (`go tool pprof`), so it runs offline.
    export) apt_install golang-go ;;
    stacks) apt_install python3.11 linux-perf ;;
    *) log "unknown group '$1' (build, vm, bench, report, export, stacks)"; exit 2 ;;
esac
