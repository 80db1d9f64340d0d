#!/bin/sh
# The soak loop, run inside L1 (busybox sh) by `tests/nested-kvm/run --soak`:
# boots L2 guests one after another, round robin over the configurations
# the host names on L1's command line, and prints one result line per boot:
#   LANE SOAK START <config> <n>
#   LANE SOAK RESULT <config> <n> <outcome> <details>
# outcome: ok | triple-fault | internal-error | exited | reset | panic |
# timeout | stuck-after-reboot. A failed boot is followed by LANE LOG lines:
# the VMM's stderr and the guest's serial output (tails), and the last KVM
# exits of L1's trace (kvm_exit, kvm_inj_exception, kvm_userspace_exit).
#
# A configuration is VMM:KIND:VCPUS:MIB[:EXTRA]
#   VMM   hangar, hangar-b (a second build: LANE_HANGAR_B on the host), or
#         qemu (qemu-system-x86_64 -M pc -accel kvm -cpu host, the peer on
#         the same guest)
#   KIND  kit (the busybox kit; done at its shell prompt) or template (the
#         Debian 12 template as /dev/vda; done at the root@debian prompt)
#   EXTRA words joined by '+': fb (hangar: a 1024x768 framebuffer), net
#         (a virtio-net card through passt), disk (the kit with a virtio
#         disk), cpu0 (every thread of the VMM pinned to L1's CPU 0, so no
#         vCPU moves between L1's CPUs); any other word is added to the
#         guest's command line (nokaslr, no-kvmclock, nopv, ...).
# The host passes lane_soak=CONFIG=N,CONFIG=N (boots still to do).
. /lib.sh

# Five times the slowest boot seen (kit ~30 s, template ~60 s under TCG).
SOAK_PROMPT_KIT_S=180
SOAK_PROMPT_TEMPLATE_S=300
SOAK_REBOOT_S=120
KIT_CMDLINE="console=tty0 console=ttyS0 reboot=k panic=-1 quiet"
TEMPLATE_CMDLINE="console=ttyS0 reboot=k panic=-1 root=/dev/vda rw"

echo
info "l1-init uptime_ms=$(up_ms)"
l1_knobs
load_kvm
if [ ! -c /dev/kvm ]; then
    fail l1-kvm "no /dev/kvm;${kvm_errs:- insmod reported no error}"
    exit 0
fi
info "soak-l1 kernel=$(uname -r) $(l1_knob_values)$(kvm_amd_params)qemu=$(qemu-system-x86_64 --version 2>/dev/null | head -n1 | tr ' ' _)"

# The template disk, if the host gave L1 one.
if [ -e /lane/template ]; then
    for m in virtio_pci virtio_blk; do modprobe $m 2>&1 | sed 's/^/LANE INFO soak modprobe: /'; done
    i=0
    while [ ! -b /dev/vda ] && [ $i -lt 20 ]; do sleep 1; i=$((i + 1)); done
fi
ip link set lo up
insmod /lib/modules/lane/dummy.ko 2>/dev/null
ip link add lane0 type dummy && ip link set lane0 up &&
    ip addr add 10.0.2.15/24 dev lane0 && ip route add default via 10.0.2.2 dev lane0

# L1's view of every L2 exit, kept in a ring: the last ones before a
# failure say where the guest was.
T=/sys/kernel/tracing
mount -t tracefs tracefs $T 2>/dev/null
if [ -e $T/events/kvm/kvm_exit/enable ]; then
    echo 4096 >$T/buffer_size_kb
    for e in kvm_exit kvm_inj_exception kvm_userspace_exit; do
        echo 1 >$T/events/kvm/$e/enable
    done
    tracing=1
else
    info "soak: no kvm tracepoints in L1's tracefs; failures come without exit traces"
    tracing=0
fi

# soak_boot CONFIG N: one boot; prints its START and RESULT lines.
soak_boot() {
    cfg=$1
    n=$2
    set -- $(echo "$cfg" | tr ':' ' ')
    vmm=$1 kind=$2 vcpus=$3 mib=$4 extra=$(echo "${5:-}" | tr '+' ' ')
    case $kind in
    kit) cmdline=$KIT_CMDLINE prompt='hangar:~#' prompt_s=$SOAK_PROMPT_KIT_S reboot=reboot ;;
    template) cmdline=$TEMPLATE_CMDLINE prompt='root@debian' prompt_s=$SOAK_PROMPT_TEMPLATE_S reboot='reboot -f' ;;
    *) fail soak "unknown kind '$kind' in $cfg" && return ;;
    esac
    fb=0 net=0 disk=0 pin=
    for w in $extra; do
        case $w in
        cpu0) pin="taskset -c 0" ;;
        fb) fb=1 ;;
        net) net=1 ;;
        disk) disk=1 ;;
        *) cmdline="$cmdline $w" ;;
        esac
    done
    d=/tmp/soak-$n-$(echo "$cfg" | tr ':+' '__')
    [ $tracing = 1 ] && echo >$T/trace
    echo "LANE SOAK START $cfg $n"
    case $vmm in
    hangar | hangar-b)
        set -- run --default --vcpus "$vcpus" --memory "$mib" --cmdline "$cmdline"
        [ $fb = 1 ] || set -- "$@" --display none
        [ $net = 1 ] && set -- "$@" --net
        [ $kind = template ] && set -- "$@" --disk /dev/vda
        [ $disk = 1 ] && set -- "$@" --disk /lane/disk.raw
        # shellcheck disable=SC2086 # pin is empty or two words
        vm_exec "$d" $pin "$vmm" "$@"
        ;;
    qemu)
        set -- qemu-system-x86_64 -M pc -accel kvm -cpu host -smp "$vcpus" -m "$mib" \
            -nodefaults -vga none -display none -serial stdio -no-reboot \
            -kernel /hangar/kit/vmlinuz -initrd /hangar/kit/initramfs.cpio.gz -append "$cmdline"
        [ $fb = 1 ] && set -- "$@" -vga std
        [ $net = 1 ] && set -- "$@" -nic user,model=virtio-net-pci,restrict=on
        [ $kind = template ] && set -- "$@" -drive file=/dev/vda,if=virtio,format=raw
        [ $disk = 1 ] && set -- "$@" -drive file=/lane/disk.raw,if=virtio,format=raw
        # shellcheck disable=SC2086 # pin is empty or two words
        vm_exec "$d" $pin "$@"
        ;;
    *) fail soak "unknown VMM '$vmm' in $cfg" && return ;;
    esac
    # Wait for the prompt, with a heartbeat for the host's idle watchdog.
    i=0
    st=1
    while [ $i -lt $prompt_s ]; do
        if grep -q -- "$prompt" "$vm/out" 2>/dev/null; then st=0; break; fi
        if [ -e "$vm/rc" ]; then st=2; break; fi
        sleep 2
        i=$((i + 2))
        [ $((i % 60)) = 0 ] &&
            info "soak $cfg $n waiting, ${i} s; serial: $(tr -d '\r' <"$vm/out" | grep -v '^$' | tail -n1 | cut -c1-100)"
    done
    ms=$(($(up_ms) - vm_t0))
    if [ $st = 0 ]; then
        send "$reboot"
        t=$(up_ms)
        vm_end $SOAK_REBOOT_S
        if [ "$vm_rc" = killed ]; then
            echo "LANE SOAK RESULT $cfg $n stuck-after-reboot prompt_ms=$ms"
            soak_dump "$cfg-$n"
        else
            echo "LANE SOAK RESULT $cfg $n ok prompt_ms=$ms stop_ms=$(($(up_ms) - t)) rc=$vm_rc"
        fi
        return
    fi
    if [ $st = 1 ]; then
        outcome=timeout
        kill -9 "$(cat "$vm/pid")" 2>/dev/null
    else
        # The VMM ended before the prompt: how.
        msg=$(grep -h 'exited:\|error' "$vm/err" 2>/dev/null | tr -d '\r' | tail -n1)
        case $msg in
        *triple-fault*) outcome=triple-fault ;;
        *internal\ error*) outcome=internal-error ;;
        *)
            if grep -q 'Kernel panic' "$vm/out" 2>/dev/null; then
                outcome=panic
            elif [ $vmm = qemu ]; then
                # -no-reboot: a triple fault ends QEMU like a reset does.
                outcome=reset
            else
                outcome=exited
            fi
            ;;
        esac
    fi
    vm_end $STEP_S
    last=$(tr -d '\r' <"$vm/out" 2>/dev/null | grep -v '^$' | tail -n1 | cut -c1-120)
    echo "LANE SOAK RESULT $cfg $n $outcome after_ms=$ms rc=$vm_rc serial_bytes=$(wc -c <"$vm/out") last=\"$last\" ${msg:+vmm=\"$msg\"}"
    soak_dump "$cfg-$n"
}

soak_dump() {
    dump "$vm" "$1" 40
    if [ $tracing = 1 ]; then
        grep -v '^#' $T/trace | tail -n 60 | sed "s|^|LANE LOG $1 trace: |"
    fi
    dmesg | tail -n 8 | sed "s|^|LANE LOG $1 dmesg: |"
}

# Boots still to do, from lane_soak=CONFIG=N,...; round robin until none.
todo=/tmp/soak-todo
lane_param soak | tr ',' '\n' | grep . >$todo
n=0
while grep -q '=[1-9]' $todo; do
    : >$todo.next
    while read -r line <&4; do
        cfg=${line%=*} left=${line##*=}
        if [ "$left" -gt 0 ]; then
            n=$((n + 1))
            soak_boot "$cfg" "$n"
            left=$((left - 1))
        fi
        echo "$cfg=$left" >>$todo.next
    done 4<$todo
    mv $todo.next $todo
done
info "soak-end uptime_ms=$(up_ms) boots=$n"
