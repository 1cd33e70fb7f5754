#!/usr/bin/env bash
# Boots one kernel of bar's test matrix under qemu and streams its serial console.
#
#   scripts/vm/run.sh VMLINUZ INITRAMFS DISK LOG TIMEOUT_SECONDS [KERNEL_ARGS...]
#
# Two vCPUs on two NUMA nodes (CPU 0 and its memory on node 0, CPU 1 on node 1), so NUMA
# balancing has somewhere to move pages and tasks; full emulation (TCG), because nested KVM
# does not work on the machines this runs on. DISK is attached as an NVMe drive (built into
# Debian's cloud kernels). The console goes to stdout and LOG; the exit status is qemu's, or
# 124 when the VM did not power off within TIMEOUT_SECONDS.
#
# One emulator thread runs both vCPUs in turn (thread=single): with a thread per vCPU, the
# kernel's live patching of its own text (int3 first, then the new bytes, as when a tracepoint
# or kprobe is switched on) raced with the other vCPU running stale translated code, which
# hit the int3 and oopsed, in about one boot of 6.12 in two.
#
# NUMA balancing starts off (numa_balancing=disable); the NUMA suite turns it on for each of
# its tests. It takes pages away from a process's page tables until the process touches them
# again, and from Linux 6.5 on nothing bar can do brings a page of another process back: a
# stack walk that meets one (the outer frames of a busy thread's stack) is cut there, which
# the NUMA suite measures, and which would otherwise cut the stacks of every other suite at
# random.
set -euo pipefail

vmlinuz="${1:?usage: run.sh VMLINUZ INITRAMFS DISK LOG TIMEOUT_SECONDS [KERNEL_ARGS...]}"
initrd="${2:?}"
disk="${3:?}"
log="${4:?}"
timeout_s="${5:?}"
shift 5

mem_per_node="${BAR_VM_MEM_PER_NODE:-1024M}"
args=(
    -accel tcg,thread=single -cpu max -smp 2
    -m "$(( ${mem_per_node%M} * 2 ))M"
    -object "memory-backend-ram,id=m0,size=$mem_per_node"
    -object "memory-backend-ram,id=m1,size=$mem_per_node"
    -numa node,nodeid=0,cpus=0,memdev=m0
    -numa node,nodeid=1,cpus=1,memdev=m1
    -kernel "$vmlinuz" -initrd "$initrd"
    -append "console=ttyS0 panic=-1 quiet numa_balancing=disable $*"
    -drive "file=$disk,if=none,id=scratch,format=raw"
    -device nvme,drive=scratch,serial=bar-scratch
    -nic none -nographic -no-reboot
)
set +e
timeout --kill-after=10 "$timeout_s" qemu-system-x86_64 "${args[@]}" </dev/null 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
exit "$rc"
