#!/bin/sh
# The lane's cases, run inside L1 (busybox sh).
. /lib.sh

echo
info "l1-init uptime_ms=$(up_ms)"

# ---- L1: KVM on the emulated AMD-V CPU
l1_knobs
load_kvm
if [ -c /dev/kvm ]; then
    pass l1-kvm "uptime_ms=$(up_ms) $(kvm_amd_params)$(l1_knob_values)cpus=$(grep -c ^processor /proc/cpuinfo)${kvm_errs:+ insmod errors:$kvm_errs}"
else
    fail l1-kvm "no /dev/kvm;${kvm_errs:- insmod reported no error}"
    dmesg | tail -n 20 | sed 's|^|LANE LOG l1-kvm dmesg: |'
fi


# ---- missing-kernel: a clear error naming the path, non-zero exit
d=/tmp/missing-kernel
mkdir -p $d
timeout 60 hangar run --kernel /nonexistent --memory 256 </dev/null >$d/out 2>$d/err
rc=$?
if [ "$rc" -ne 0 ] && grep -q /nonexistent $d/err; then
    pass missing-kernel "exit=$rc error=\"$(tr -d '\r' <$d/err | grep /nonexistent | head -n1)\""
else
    fail missing-kernel "exit=$rc; stderr does not name /nonexistent"
    dump $d missing-kernel
fi

# ---- boot-1vcpu, then serial-input and reboot on the same guest
# Only the poweroff boot has a screen (see the README's known problems:
# with a dirty-logged framebuffer in every boot the lane got flakier).
vm_start /tmp/boot-1vcpu run --default --vcpus 1 --display none
if vm_wait "$vm/err" "init reached after" $BOOT_S; then
    pass boot-1vcpu "marker_ms=$(marker_ms) seen_after_ms=$(($(up_ms) - vm_t0))"
    booted=1
else
    s=$?
    fail boot-1vcpu "no init marker: $(why $s $BOOT_S)"
    booted=0
fi
if [ $booted = 1 ] && vm_wait "$vm/out" "hangar:~#" $STEP_S; then
    t=$(up_ms)
    send 'echo lane-$((6*7))'
    if vm_wait "$vm/out" "lane-42" $STEP_S; then
        pass serial-input "echo_ms=$(($(up_ms) - t)) (1 s polling)"
    else
        s=$?
        fail serial-input "no lane-42 on stdout: $(why $s $STEP_S)"
    fi
    # The kernel found PCI through the type-1 ports (no ACPI): bus 0 with
    # Hangar's host bridge, 8086:29c0.
    send 'echo pci=$(cat /sys/bus/pci/devices/0000:00:00.0/vendor):$(cat /sys/bus/pci/devices/0000:00:00.0/device)'
    if vm_wait "$vm/out" "pci=0x8086:0x29c0" $STEP_S; then
        pass pci-host-bridge "the guest kernel enumerated 0000:00:00.0 = 8086:29c0 through ports 0xcf8/0xcfc"
    else
        s=$?
        fail pci-host-bridge "no pci=0x8086:0x29c0 on stdout: $(why $s $STEP_S)"
    fi
else
    fail serial-input "no shell prompt on stdout"
    fail pci-host-bridge "no shell prompt on stdout"
fi
t=$(up_ms)
send reboot
vm_end $STEP_S
if [ "$vm_rc" = 0 ] && grep -q "exited: guest reset" "$vm/err"; then
    pass reboot "exit=0 stop_ms=$(($(up_ms) - t))"
else
    fail reboot "exit=$vm_rc; $(grep 'exited:' "$vm/err" | tr -d '\r' | head -n1)"
fi
[ "$vm_rc" = 0 ] && [ $booted = 1 ] || dump "$vm" boot-1vcpu

# ---- boot-2vcpu: the guest sees two processors
# Known and unexplained: about one L2 boot in 25 under nested SVM on TCG
# never prints (seen with 1 and 2 vCPUs; the same binary then boots). One
# retry, said loudly in the log and in the PASS line, so the rest of the
# lane still runs; a second silent boot fails the case.
retried=0
vm_start /tmp/boot-2vcpu run --default --vcpus 2 --display none
vm_wait "$vm/err" "init reached after" $BOOT_S
s=$?
if [ "$s" != 0 ]; then
    info "retry boot-2vcpu: first boot gave no init marker ($(why $s $BOOT_S))"
    dump "$vm" boot-2vcpu-first
    kill -9 "$(cat "$vm/pid")" 2>/dev/null
    vm_end $STEP_S
    retried=1
    vm_start /tmp/boot-2vcpu-retry run --default --vcpus 2 --display none
fi
if vm_wait "$vm/err" "init reached after" $BOOT_S; then
    m=$(marker_ms)
    if vm_wait "$vm/out" "hangar:~#" $STEP_S; then
        send 'echo cpus=$(grep -c ^processor /proc/cpuinfo)'
        vm_wait "$vm/out" "cpus=[0-9]" $STEP_S
    fi
    cpus=$(tr -d '\r' <"$vm/out" | sed -n 's/^cpus=\([0-9]*\)$/\1/p' | head -n1)
    if [ "$cpus" = 2 ]; then
        pass boot-2vcpu "marker_ms=$m cpus=2 retried=$retried"
    else
        fail boot-2vcpu "marker_ms=$m but the guest counts ${cpus:-no} processors"
    fi
else
    s=$?
    fail boot-2vcpu "no init marker: $(why $s $BOOT_S)"
    dump "$vm" boot-2vcpu
fi
# graceful-stop: SIGTERM asks the guest to shut down (Ctrl+Alt+Del through
# the emulated keyboard; the kit's init reboots on it).
t=$(up_ms)
kill -TERM "$(cat "$vm/pid")" 2>/dev/null
vm_end $STEP_S
if [ "$vm_rc" = 0 ] && grep -q "exited: stopped (the guest shut down)" "$vm/err"; then
    pass graceful-stop "exit=0 stop_ms=$(($(up_ms) - t))"
else
    fail graceful-stop "exit=$vm_rc; $(grep 'exited:' "$vm/err" | tr -d '\r' | head -n1)"
    dump "$vm" boot-2vcpu
fi

# ---- disks and network (issue 6): two boots over the same three disks.
# Boot A writes a file on each and syncs, then hangar is killed (no clean
# shutdown: only what sync made durable counts); boot B finds the files,
# gets an address from passt by DHCP, fetches a page from L1's loopback
# through the gateway address, and serves one through a port forward.
# disk_vm DIR EXTRA...: the kit with the three disks.
disk_vm() {
    d=$1
    shift
    vm_start "$d" run --default --vcpus 1 --display none \
        --disk /lane/disk.raw --disk /lane/disk.qcow2,format=qcow2 \
        --disk /lane/clone.qcow2,format=qcow2 "$@"
}
base_sum=$(md5sum /lane/base.raw | cut -d' ' -f1)
disk_vm /tmp/disk-a
if vm_wait "$vm/out" "hangar:~#" $BOOT_S; then
    send 'modprobe ext4 && mkdir -p /mnt/a /mnt/b /mnt/c && mount /dev/vda /mnt/a && mount /dev/vdb /mnt/b && mount /dev/vdc /mnt/c && echo raw-$((6*7)) >/mnt/a/f && echo qcow2-$((6*7)) >/mnt/b/f && echo clone-$((6*7)) >/mnt/c/f && sync && echo synced-$((6*7))'
    if vm_wait "$vm/out" "synced-42" $STEP_S; then
        pass disk-write "three ext4 disks (raw, qcow2, qcow2 over a raw base) mounted, written, synced"
    else
        s=$?
        fail disk-write "no synced-42: $(why $s $STEP_S)"
        # What the guest kernel made of the PCI devices.
        send 'dmesg | grep -iE "pci|virtio|vd[a-z]|msi|bar" | tail -n 40; ls /sys/bus/virtio/devices; echo diag-$((6*7))'
        vm_wait "$vm/out" "diag-42" $STEP_S
        dump "$vm" disk-a 60
    fi
else
    s=$?
    fail disk-write "no shell prompt: $(why $s $BOOT_S)"
    dump "$vm" disk-a
fi
kill -9 "$(cat "$vm/pid")" 2>/dev/null
vm_end $STEP_S

ip link set lo up
insmod /lib/modules/lane/dummy.ko 2>/dev/null
# passt needs an interface with a default route to copy; a dummy one sends
# nothing anywhere (L1 has no network at all: QEMU runs with -nic none).
ip link add lane0 type dummy && ip link set lane0 up &&
    ip addr add 10.0.2.15/24 dev lane0 && ip route add default via 10.0.2.2 dev lane0
httpd -p 127.0.0.1:8000 -h /www
disk_vm /tmp/disk-b --net --forward 18080:8080
if vm_wait "$vm/out" "hangar:~#" $BOOT_S; then
    send 'modprobe ext4 && mkdir -p /mnt/a /mnt/b /mnt/c && mount /dev/vda /mnt/a && mount /dev/vdb /mnt/b && mount /dev/vdc /mnt/c && cat /mnt/a/f /mnt/b/f /mnt/c/f; echo read-$((6*7))'
    vm_wait "$vm/out" "read-42" $STEP_S
    out=$(tr -d '\r' <"$vm/out")
    if echo "$out" | grep -q '^raw-42$'; then
        pass disk-persist "raw image: the file written before the kill is there"
    else
        fail disk-persist "no raw-42 after restart"
        dump "$vm" disk-b
    fi
    if echo "$out" | grep -q '^qcow2-42$'; then
        pass qcow2-persist "qcow2 image: the file written before the kill is there"
    else
        fail qcow2-persist "no qcow2-42 after restart"
    fi
    if echo "$out" | grep -q '^clone-42$' && [ "$(md5sum /lane/base.raw | cut -d' ' -f1)" = "$base_sum" ]; then
        pass qcow2-backing "the clone kept its file; its raw base is unchanged (md5 $base_sum)"
    else
        fail qcow2-backing "clone-42 missing or the base image changed"
    fi
    # DHCP from passt; the script records the address and the gateway.
    send "printf '#!/bin/sh\n[ \"\$1\" = bound ] || exit 0\nip addr add \$ip/\${mask:-24} dev \$interface\nip route add default via \$router\necho \"\$ip \$router\" >/tmp/lease\n' >/tmp/dhcp.sh && chmod +x /tmp/dhcp.sh && ip link set eth0 up && udhcpc -i eth0 -q -f -n -t 5 -s /tmp/dhcp.sh >/dev/null 2>&1; echo lease=\$(cat /tmp/lease)"
    if vm_wait "$vm/out" "lease=[0-9]" $STEP_S; then
        lease=$(tr -d '\r' <"$vm/out" | sed -n 's/^lease=//p' | head -n1)
        pass net-dhcp "address and gateway from passt: $lease"
        send 'wget -q -O - http://$(cut -d" " -f2 /tmp/lease):8000/hello.txt; echo fetched-$((6*7))'
        vm_wait "$vm/out" "fetched-42" $STEP_S
        if tr -d '\r' <"$vm/out" | grep -q '^lane-http-ok$'; then
            pass net-gateway-fetch "the guest fetched http://GATEWAY:8000/hello.txt from L1's 127.0.0.1:8000"
        else
            fail net-gateway-fetch "no lane-http-ok in the guest's output"
            dump "$vm" disk-b
        fi
        send 'mkdir -p /tmp/www && echo guest-http-ok >/tmp/www/index.html && httpd -p 8080 -h /tmp/www && echo serving-$((6*7))'
        vm_wait "$vm/out" "serving-42" $STEP_S
        # (busybox 1.35's wget -T crashes: timeout(1) bounds it instead.)
        got=$(timeout 30 wget -q -O - http://127.0.0.1:18080/index.html 2>/tmp/wget.err)
        if [ "$got" = guest-http-ok ]; then
            pass net-port-forward "L1's 127.0.0.1:18080 reached the guest's httpd on port 8080"
        else
            fail net-port-forward "wget 127.0.0.1:18080 gave '$got': $(tr '\n' ' ' </tmp/wget.err)"
            netstat -ltn 2>&1 | sed 's/^/LANE LOG net-port-forward netstat: /'
            send 'netstat -ltn; ip addr; echo diag-$((6*7))'
            vm_wait "$vm/out" "diag-42" $STEP_S
            dump "$vm" disk-b 40
        fi
    else
        s=$?
        fail net-dhcp "no lease: $(why $s $STEP_S)"
        fail net-gateway-fetch "no address"
        fail net-port-forward "no address"
        dump "$vm" disk-b
    fi
else
    s=$?
    for c in disk-persist qcow2-persist qcow2-backing net-dhcp net-gateway-fetch net-port-forward; do
        fail $c "no shell prompt on the second boot: $(why $s $BOOT_S)"
    done
    dump "$vm" disk-b
fi
send poweroff
vm_end $STEP_S

# ---- template-boot: the Debian 12 template (systemd) boots from its disk
# to a root shell on the serial console. QEMU gives L1 the template as
# /dev/vda (a throwaway snapshot); L2 gets that block device as its disk.
TEMPLATE_S=1200
if [ -e /lane/template ]; then
    # virtio_pci is no dependency of virtio_blk: both, by name.
    for m in virtio_pci virtio_blk; do
        modprobe $m 2>&1 | sed 's/^/LANE INFO template modprobe: /'
    done
    # The driver binds the disk asynchronously.
    i=0
    while [ ! -b /dev/vda ] && [ $i -lt 20 ]; do sleep 1; i=$((i + 1)); done
fi
if [ -e /lane/template ] && [ -b /dev/vda ]; then
    # template_boot DIR: boot it and wait for the prompt (a heartbeat for the
    # host's idle watchdog); sets t (start) and tb_status (0 prompt,
    # 1 timeout, 2 hangar exited).
    template_boot() {
        vm_start "$1" run --default --vcpus 2 --memory 1024 --display none \
            --cmdline "console=ttyS0 reboot=k panic=-1 root=/dev/vda rw" --disk /dev/vda
        t=$(up_ms)
        i=0
        tb_status=1
        while [ $i -lt $TEMPLATE_S ]; do
            if grep -q "root@debian" "$vm/out" 2>/dev/null; then tb_status=0; break; fi
            if [ -e "$vm/rc" ]; then tb_status=2; break; fi
            sleep 10
            i=$((i + 10))
            [ $((i % 120)) = 0 ] && info "template-boot waiting, ${i} s"
        done
    }
    # The same one retry as the kit boots, for the same nested-SVM early
    # triple faults (seen here too, 5 s into the kernel).
    retried=0
    template_boot /tmp/template
    if [ $tb_status != 0 ]; then
        info "retry template-boot: first boot gave no prompt ($(why $tb_status $TEMPLATE_S))"
        dump "$vm" template-first
        kill -9 "$(cat "$vm/pid")" 2>/dev/null
        vm_end $STEP_S
        retried=1
        template_boot /tmp/template-retry
    fi
    if [ $tb_status = 0 ]; then
        ms=$(($(up_ms) - t))
        send 'echo template-$((6*7)) $(. /etc/os-release; echo $PRETTY_NAME | tr " " _)'
        if vm_wait "$vm/out" "template-42" $STEP_S; then
            pass template-boot "prompt_ms=$ms $(tr -d '\r' <"$vm/out" | grep -o 'template-42 [^ ]*' | tail -n1) retried=$retried"
        else
            fail template-boot "prompt after $ms ms, but no answer to a command"
            dump "$vm" template
        fi
        send poweroff
        vm_end 300
    else
        fail template-boot "no root@debian prompt: $(why $tb_status $TEMPLATE_S)"
        dump "$vm" template
        kill -9 "$(cat "$vm/pid")" 2>/dev/null
        vm_end $STEP_S
    fi
else
    fail template-boot "no template disk in L1 (packaging/setup.sh builds it)"
fi


# ---- poweroff: the kit's poweroff ends the VM through the exit port.
# The same guest has a screen: text typed on its emulated PS/2 keyboard
# (--type, at the init marker) reaches the shell on tty1, which writes to
# the serial line (ps2-keyboard), and fbcon draws the boot log and that
# shell on the framebuffer (fbcon-screen, from --screen-summary at exit).
# The same one retry as boot-2vcpu (see there), for the same unexplained
# nested-SVM boot failures: once seen here as an L2 triple fault 6 s into
# the third boot, before any prompt; the rerun of the lane passed.
# poweroff_start DIR (a function: busybox sh has no arrays)
poweroff_start() {
    vm_start "$1" run --default --vcpus 1 --screen-summary \
        --type 'echo kbd-$((6*7)) >/dev/ttyS0\n'
}
retried=0
poweroff_start /tmp/poweroff
vm_wait "$vm/out" "hangar:~#" $BOOT_S
s=$?
if [ "$s" != 0 ]; then
    info "retry poweroff: first boot gave no shell prompt ($(why $s $BOOT_S))"
    dump "$vm" poweroff-first
    kill -9 "$(cat "$vm/pid")" 2>/dev/null
    vm_end $STEP_S
    retried=1
    poweroff_start /tmp/poweroff-retry
fi
if vm_wait "$vm/out" "hangar:~#" $BOOT_S; then
    if vm_wait "$vm/out" "kbd-42" $STEP_S; then
        pass ps2-keyboard "typed on the PS/2 keyboard, kbd-42 came back on the serial line"
    else
        s=$?
        fail ps2-keyboard "no kbd-42 on stdout: $(why $s $STEP_S)"
    fi
    t=$(up_ms)
    send poweroff
    vm_end $STEP_S
    if [ "$vm_rc" = 0 ] && grep -q "exited: guest powered off with status 0" "$vm/err"; then
        pass poweroff "exit=0 marker_ms=$(marker_ms) stop_ms=$(($(up_ms) - t)) retried=$retried"
    else
        fail poweroff "exit=$vm_rc; $(grep 'exited:' "$vm/err" | tr -d '\r' | head -n1)"
        dump "$vm" poweroff
    fi
    bands=$(sed -n 's/.*hangar: screen [0-9x]*: \([0-9]*\) of .*/\1/p' "$vm/err" | head -n1)
    if [ -n "$bands" ] && [ "$bands" -ge 2 ]; then
        pass fbcon-screen "$(grep 'hangar: screen' "$vm/err" | tr -d '\r' | head -n1 | sed 's/^hangar: //')"
    else
        fail fbcon-screen "the screen has ${bands:-no} bands with text (want 2 or more)"
        dump "$vm" poweroff
    fi
else
    s=$?
    fail poweroff "no shell prompt: $(why $s $BOOT_S)"
    send reboot
    vm_end $STEP_S
    dump "$vm" poweroff
fi

# ---- bench (only with run --bench): hangar bench boot against QEMU microvm.
# Every line of its output goes to the console as "LANE BENCH <line>"; the
# host keeps them apart from the case lines. Informational: only whether it
# ran is a case.
if [ -e /etc/lane-bench ]; then
    . /etc/lane-bench
    info "bench-start uptime_ms=$(up_ms)"
    d=/tmp/bench
    mkdir -p $d
    t=$(up_ms)
    { timeout "$BENCH_LIMIT" hangar bench boot --runs "$BENCH_RUNS" --memory "$BENCH_MEMORY" 2>&1
        echo $? >$d/rc; } | tee $d/out | sed 's/^/LANE BENCH /'
    rc=$(cat $d/rc)
    s=$((($(up_ms) - t) / 1000))
    info "bench-end uptime_ms=$(up_ms)"
    if [ "$rc" = 0 ] && grep -q '^hangar: init reached: median' $d/out &&
        grep -q '^qemu -M microvm: init reached: median' $d/out; then
        pass bench "exit=0 runs=$BENCH_RUNS memory=$BENCH_MEMORY wall_s=$s" \
            "failed_boots=$(grep -c '^[a-z]* run [0-9]*: failed' $d/out)"
    elif [ "$rc" = 0 ]; then
        fail bench "exit=0 wall_s=$s but no init medians for both VMMs:" \
            "$(grep -E '^qemu|not run|not measured' $d/out | head -n1)"
    else
        fail bench "exit=$rc wall_s=$s (limit $BENCH_LIMIT s): $(grep 'error' $d/out | tail -n1)"
        dmesg | tail -n 20 | sed 's|^|LANE LOG bench dmesg: |'
    fi
fi
if [ -e /etc/lane-bench ]; then
    d=/tmp/bench-disk
    mkdir -p $d
    t=$(up_ms)
    { timeout "$BENCH_LIMIT" hangar bench disk --tools /lane/bench-tools.raw --data /lane/bench-data.raw \
        --runs 3 --ops 2000 --memory "$BENCH_MEMORY" 2>&1
        echo $? >$d/rc; } | tee $d/out | sed 's/^/LANE BENCH /'
    rc=$(cat $d/rc)
    s=$((($(up_ms) - t) / 1000))
    if [ "$rc" = 0 ] && grep -q '^  rand-read: [0-9.]*x' $d/out; then
        pass bench-disk "exit=0 wall_s=$s $(grep -E '^  (seq|rand)-' $d/out | tr -s ' ' | tr '\n' ';')"
    else
        fail bench-disk "exit=$rc wall_s=$s: $(grep -E 'error|failed|n/a' $d/out | tail -n1)"
    fi
fi
info "l1-end uptime_ms=$(up_ms)"
