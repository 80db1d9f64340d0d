# Shared by the lane's cases (lane.sh) and the soak loop (soak.sh), run
# inside L1 by busybox sh: sourced, not executed.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root HANGAR_DATA_DIR=/hangar RUST_BACKTRACE=1
trap '' PIPE

up_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }
pass() { echo "LANE PASS $*"; }
fail() { echo "LANE FAIL $*"; }
info() { echo "LANE INFO $*"; }
# Tails of a case's hangar output into the console log, for diagnosis.
dump() { # dir name [lines]
    for f in err out; do
        [ -s "$1/$f" ] || continue
        # awk ends every line, even a prompt without a newline.
        tail -n "${3:-25}" "$1/$f" | tr -d '\r' | awk -v p="LANE LOG $2 $f: " '{ print p $0 }'
    done
}

# A word from L1's kernel command line: lane_NAME=VALUE (the host's knobs).
lane_param() { tr ' ' '\n' </proc/cmdline | sed -n "s/^lane_$1=//p" | head -n1; }

# load_kvm: insmod KVM for the emulated AMD-V CPU, kvm_amd with the
# parameters the host asked for (lane_kvm_amd=a=1,b=0); insmod's complaints
# collect in kvm_errs.
load_kvm() {
    kvm_errs=
    for m in irqbypass kvm ccp kvm-amd; do
        params=
        [ $m = kvm-amd ] && params=$(lane_param kvm_amd | tr ',' ' ')
        # shellcheck disable=SC2086 # one word per parameter
        out=$(insmod /lib/modules/lane/$m.ko $params 2>&1) || kvm_errs="$kvm_errs $m: $out;"
    done
}
# L1's memory knobs the host may set: lane_thp=always|madvise|never is
# L1's transparent huge page mode (L2 RAM is anonymous memory of the VMM).
l1_knobs() {
    thp=$(lane_param thp)
    [ -z "$thp" ] || echo "$thp" >/sys/kernel/mm/transparent_hugepage/enabled
}
# The knobs as L1 has them, for the record.
l1_knob_values() {
    printf 'thp=%s ' "$(sed 's/.*\[\(.*\)\].*/\1/' /sys/kernel/mm/transparent_hugepage/enabled)"
}
# kvm_amd's parameters as L1 has them, for the record.
kvm_amd_params() {
    for p in nested npt vls vgif avic lbrv tsc_scaling; do
        printf '%s=%s ' $p "$(cat /sys/module/kvm_amd/parameters/$p 2>/dev/null)"
    done
}

# ---- helpers for one VMM process fed through a fifo
# vm_exec DIR PROGRAM ARGS...: PROGRAM ARGS with stdin from DIR/in (kept open
# on fd 3), stdout to DIR/out, stderr to DIR/err; DIR/rc appears when it exits.
vm_exec() {
    vm=$1
    shift
    mkdir -p "$vm"
    mkfifo "$vm/in"
    vm_t0=$(up_ms)
    (
        "$@" <"$vm/in" >"$vm/out" 2>"$vm/err" &
        echo $! >"$vm/pid"
        wait $!
        echo $? >"$vm/rc"
    ) &
    exec 3>"$vm/in"
}
# vm_start DIR ARGS...: the same for `hangar ARGS`.
vm_start() {
    d=$1
    shift
    vm_exec "$d" hangar "$@"
}
# vm_wait FILE PATTERN SECONDS: 0 when PATTERN shows in FILE, 1 on timeout,
# 2 when hangar exited without it.
vm_wait() {
    i=0
    while [ "$i" -lt "$3" ]; do
        grep -q -- "$2" "$1" 2>/dev/null && return 0
        if [ -e "$vm/rc" ]; then
            grep -q -- "$2" "$1" 2>/dev/null && return 0
            return 2
        fi
        sleep 1
        i=$((i + 1))
    done
    return 1
}
why() { # the status of vm_wait -> words
    case $1 in 1) echo "timed out after $2 s" ;; 2) echo "hangar exited ($(cat "$vm/rc"))" ;; esac
}
# vm_end SECONDS: wait for hangar to exit, kill it after the deadline; sets vm_rc.
vm_end() {
    i=0
    while [ ! -e "$vm/rc" ] && [ "$i" -lt "$1" ]; do
        sleep 1
        i=$((i + 1))
    done
    if [ ! -e "$vm/rc" ]; then
        kill -9 "$(cat "$vm/pid")" 2>/dev/null
        while [ ! -e "$vm/rc" ]; do sleep 1; done
        vm_rc=killed
    else
        vm_rc=$(cat "$vm/rc")
    fi
    exec 3>&-
}
send() { echo "$1" >&3; }
marker_ms() { sed -n 's/.*init reached after \([0-9]*\) ms.*/\1/p' "$vm/err" | head -n1; }

BOOT_S=180   # an L2 boot under TCG took 14-29 s; leave room for a slow host
STEP_S=60
