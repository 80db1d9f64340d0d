#!/usr/bin/env bash
# Hangar set-up: installs the host packages the project uses and builds the
# default guest kit (Debian's kernel + a busybox initramfs) into
#   ${HANGAR_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/hangar}/kit/
# the default container image (busybox-static, an OCI layout) into
#   .../hangar/images-src/default/
# and the Debian container image (debootstrap minbase of this host's suite,
# from this host's apt mirror) into .../hangar/images-src/debian/, its plain
# root tree kept in .../hangar/rootfs/debian-SUITE/, and the "Debian 12" VM
# template (a bookworm system with systemd, the kit kernel's modules and an
# autologin root console, as a 4 GiB sparse ext4 disk image) into
# .../hangar/templates/debian-12/disk.raw, its tree kept in
# .../hangar/rootfs/debian-bookworm-vm/. The kit boots it with root=/dev/vda.
#
# Idempotent: a re-run checks installed packages with dpkg-query, the kit
# against a stamp of the package versions it was built from and the Debian
# root and VM template against stamps of their recipes, suite and mirror,
# and does nothing (needing no network) when all are current.
#
# Usage: packaging/setup.sh [--force-kit] [--force-debian] [--force-template]
#                           [--skip-packages] [--quiet]
#   --force-kit      rebuild the kit even if it is current
#   --force-debian   debootstrap the Debian root (and its image) again
#   --force-template debootstrap the Debian 12 VM template (and its disk) again
#   --skip-packages  do not check or install apt packages
#   --quiet          print only the summary line and errors
#
# Run it as your user (it uses sudo for apt and debootstrap) or as root. Run
# through sudo, it installs the packages as root and builds the rest for
# $SUDO_USER.
set -euo pipefail

prog=setup.sh
start_s=$(date +%s%N)

die() {
    echo "$prog: error: $*" >&2
    exit 1
}
log() {
    [[ $quiet == 1 ]] || echo "$prog: $*" >&2
}

force_kit=0
force_debian=0
force_template=0
skip_packages=0
quiet=0
orig_args=("$@")
while [[ $# -gt 0 ]]; do
    case $1 in
    --force-kit) force_kit=1 ;;
    --force-debian) force_debian=1 ;;
    --force-template) force_template=1 ;;
    --skip-packages) skip_packages=1 ;;
    --quiet | -q) quiet=1 ;;
    -h | --help)
        sed -n '2,/^set -e/s/^# \{0,1\}//p' "$0"
        exit 0
        ;;
    *) die "unknown option '$1' (try --help)" ;;
    esac
    shift
done

# Every Debian package the project uses anywhere: build, guest kit, tests, GUI.
PACKAGES=(
    build-essential pkg-config
    qemu-system-x86
    busybox-static cpio gzip xz-utils zstd kmod file
    xvfb libgl1-mesa-dri libegl1 libgl1 libxkbcommon-x11-0 libxcursor1 libxrandr2 libxi6
    imagemagick
    umoci skopeo
    libseccomp-dev libelf-dev zlib1g-dev # libcontainer: seccomp, eBPF device rules
    crun runc passt docker-registry      # container bench peers, networking, registry tests
    debootstrap                          # the Debian container image (and VM disk template)
    qemu-utils e2fsprogs                 # qemu-img (qcow2 cross-checks), mkfs.ext4 -d (disk template)
)
# The Rust target of the project's own no_std test guests.
RUST_TARGETS=(x86_64-unknown-none)

[[ $(uname -m) == x86_64 ]] || die "Hangar runs x86-64 guests with KVM: this host is $(uname -m)"
command -v dpkg-query >/dev/null && command -v apt-get >/dev/null ||
    die "this script needs a Debian-based system (dpkg and apt)"

# ---------------------------------------------------------------- packages --

sudo_cmd=()
if [[ $EUID -ne 0 ]]; then
    sudo_cmd=(sudo)
fi

apt_update_done=0
apt_update() {
    [[ $apt_update_done == 0 ]] || return 0
    log "apt-get update"
    "${sudo_cmd[@]}" apt-get update -qq || die "apt-get update failed (is the network to the package mirror up?)"
    apt_update_done=1
}

missing_packages() {
    # Prints the packages of "$@" that are not fully installed.
    local installed
    installed=$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "$@" 2>/dev/null |
        awk '$2 == "ii" { print $1 }' || true)
    local p
    for p in "$@"; do
        grep -qx -- "$p" <<<"$installed" || echo "$p"
    done
}

pkg_note="packages skipped"
if [[ $skip_packages == 0 ]]; then
    mapfile -t missing < <(missing_packages "${PACKAGES[@]}")
    if [[ ${#missing[@]} -gt 0 ]]; then
        if [[ $EUID -ne 0 ]] && ! command -v sudo >/dev/null; then
            die "packages missing (${missing[*]}) and sudo is not installed: run this script as root"
        fi
        log "installing: ${missing[*]}"
        apt_log=$(mktemp)
        apt_install() {
            "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -q --no-install-recommends "${missing[@]}" >"$apt_log" 2>&1
        }
        if ! apt_install; then
            # Perhaps stale or empty package lists: refresh them once.
            apt_update
            if ! apt_install; then
                tail -n 20 "$apt_log" >&2
                rm -f "$apt_log"
                die "apt-get install ${missing[*]} failed (see the lines above)"
            fi
        fi
        rm -f "$apt_log"
        pkg_note="installed ${#missing[@]} packages"
        # apt may remove a package of the list to make room for another (a
        # machine with a backported qemu-utils loses it to bookworm's
        # qemu-system-x86): install what went missing once more, from the
        # same release as the rest.
        mapfile -t missing < <(missing_packages "${PACKAGES[@]}")
        if [[ ${#missing[@]} -gt 0 ]]; then
            log "installing again (apt removed them): ${missing[*]}"
            apt_log=$(mktemp)
            if ! apt_install; then
                tail -n 20 "$apt_log" >&2
                rm -f "$apt_log"
                die "apt-get install ${missing[*]} failed (see the lines above)"
            fi
            rm -f "$apt_log"
            mapfile -t missing < <(missing_packages "${PACKAGES[@]}")
            [[ ${#missing[@]} -eq 0 ]] ||
                die "apt-get installed, yet these are not installed: ${missing[*]}"
        fi
    else
        pkg_note="${#PACKAGES[@]} packages present"
    fi
fi

# Run through sudo: the rest (rustup, the kit) belongs to the invoking user.
if [[ $EUID -eq 0 && -n ${SUDO_USER:-} && $SUDO_USER != root ]]; then
    log "continuing as $SUDO_USER"
    pass_env=()
    [[ -z ${HANGAR_DATA_DIR:-} ]] || pass_env+=("HANGAR_DATA_DIR=$HANGAR_DATA_DIR")
    [[ -z ${XDG_DATA_HOME:-} ]] || pass_env+=("XDG_DATA_HOME=$XDG_DATA_HOME")
    exec sudo -u "$SUDO_USER" -H -- env "${pass_env[@]}" \
        "$0" --skip-packages "${orig_args[@]}"
fi

# ------------------------------------------------------------- rust target --

if command -v rustup >/dev/null; then
    installed_targets=$(rustup target list --installed 2>/dev/null || true)
    for t in "${RUST_TARGETS[@]}"; do
        if ! grep -qx -- "$t" <<<"$installed_targets"; then
            log "rustup target add $t"
            rustup target add "$t" >/dev/null || die "rustup target add $t failed"
        fi
    done
else
    log "rustup not found: skipping 'rustup target add ${RUST_TARGETS[*]}' (needed for the test guests)"
fi

# --------------------------------------------------------------------- kit --

if [[ -n ${HANGAR_DATA_DIR:-} ]]; then
    data_dir=$HANGAR_DATA_DIR
elif [[ ${XDG_DATA_HOME:-} == /* ]]; then
    data_dir=$XDG_DATA_HOME/hangar
else
    [[ -n ${HOME:-} ]] || die "cannot determine Hangar's data directory: set HOME or HANGAR_DATA_DIR"
    data_dir=$HOME/.local/share/hangar
fi
kit_dir=$data_dir/kit
deb_dir=$data_dir/cache/debs

for tool in dpkg-deb depmod modprobe cpio gzip xz; do
    command -v "$tool" >/dev/null || die "'$tool' not found: run without --skip-packages to install it"
done

# Which packages the kit is built from, according to the local apt lists
# (no network). linux-image-amd64 is a metapackage: resolve it to the image.
candidate_versions() { # packages... -> "package version" lines, one apt-cache call
    apt-cache policy "$@" 2>/dev/null |
        awk '/^[^ ].*:$/ { p = substr($1, 1, length($1) - 1) } /Candidate:/ { print p, $2 }'
}
resolve_kernel_package() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}

kpkg=$(resolve_kernel_package || true)
if [[ -z $kpkg && ( $force_kit == 1 || ! -s $kit_dir/.stamp ) ]]; then
    # Empty apt lists (apt-get update never ran) and a kit to build: fetch them.
    if [[ $EUID -ne 0 ]] && ! command -v sudo >/dev/null; then
        die "apt does not know linux-image-amd64: run 'apt-get update' as root, then re-run"
    fi
    apt_update
    kpkg=$(resolve_kernel_package || true)
fi
kpkg_ver=""
bb_ver=""
if [[ -n $kpkg ]]; then
    versions=$(candidate_versions "$kpkg" busybox-static)
    kpkg_ver=$(awk -v p="$kpkg" '$1 == p { print $2 }' <<<"$versions")
    bb_ver=$(awk '$1 == "busybox-static" { print $2 }' <<<"$versions")
fi

script_sum=$(sha256sum "$0" | cut -c1-16)
wanted_stamp="recipe=$script_sum kernel=$kpkg=$kpkg_ver busybox=$bb_ver"

kit_current() {
    [[ -s $kit_dir/vmlinuz && -s $kit_dir/initramfs.cpio.gz && -s $kit_dir/VERSION && -s $kit_dir/.stamp ]] || return 1
    if [[ -z $kpkg_ver || -z $bb_ver || $kpkg_ver == "(none)" ]]; then
        log "apt lists do not name a kernel package: keeping the existing kit"
        return 0
    fi
    [[ $(cat "$kit_dir/.stamp") == "$wanted_stamp" && $(cat "$kit_dir/VERSION") == "${kpkg#linux-image-}" ]]
}

# fetch_deb PACKAGE VERSION: prints the path of that exact .deb in the cache
# (the kit and the VM template use the same kernel package), downloading it
# when it is not there.
fetch_deb() {
    local pkg=$1 ver=$2 f
    for f in "$deb_dir/${pkg}"_*.deb; do
        [[ -f $f ]] || continue
        if [[ $(dpkg-deb -f "$f" Package 2>/dev/null) == "$pkg" &&
            $(dpkg-deb -f "$f" Version 2>/dev/null) == "$ver" ]]; then
            echo "$f"
            return 0
        fi
    done
    log "downloading $pkg $ver"
    mkdir -p "$deb_dir"
    local dl
    dl=$(mktemp -d "$deb_dir/download.XXXXXX")
    local sandbox=()
    # As root, apt drops to the _apt user, which cannot write a private
    # home directory; download as root instead (as the user would).
    [[ $EUID -ne 0 ]] || sandbox=(-o APT::Sandbox::User=root)
    if ! (cd "$dl" && apt-get -qq "${sandbox[@]}" download "$pkg=$ver") >&2; then
        rm -rf "$dl"
        die "apt-get download $pkg=$ver failed (network to the package mirror? apt-get update?)"
    fi
    f=$(ls "$dl/${pkg}"_*.deb 2>/dev/null | head -n1 || true)
    [[ -n $f ]] || { rm -rf "$dl"; die "apt-get download $pkg produced no .deb"; }
    # Drop older versions of this package from the cache.
    rm -f "$deb_dir/${pkg}"_*.deb
    mv "$f" "$deb_dir/"
    rm -rf "$dl"
    echo "$deb_dir/$(basename "$f")"
}

kit_note=""
if [[ $force_kit == 0 ]] && kit_current; then
    kit_note="up to date"
else
    [[ -n $kpkg && -n $kpkg_ver && $kpkg_ver != "(none)" && -n $bb_ver && $bb_ver != "(none)" ]] ||
        die "apt does not know linux-image-amd64 or busybox-static: check the apt sources and run 'apt-get update'"
    kernel_release=${kpkg#linux-image-}
    log "building the guest kit from $kpkg $kpkg_ver and busybox-static $bb_ver"

    mkdir -p "$deb_dir" "$data_dir"
    build=$(mktemp -d "$data_dir/cache/build.XXXXXX")
    trap 'rm -rf "$build"' EXIT

    kdeb=$(fetch_deb "$kpkg" "$kpkg_ver")
    bbdeb=$(fetch_deb busybox-static "$bb_ver")

    log "unpacking"
    dpkg-deb -x "$kdeb" "$build/k" || die "cannot unpack $kdeb (delete it and re-run)"
    dpkg-deb -x "$bbdeb" "$build/bb" || die "cannot unpack $bbdeb (delete it and re-run)"
    # Newer Debian ships modules under usr/lib; depmod -b wants lib/modules.
    if [[ ! -d $build/k/lib/modules && -d $build/k/usr/lib/modules ]]; then
        ln -s usr/lib "$build/k/lib"
    fi
    [[ -d $build/k/lib/modules/$kernel_release ]] ||
        die "$kdeb has no lib/modules/$kernel_release"
    [[ -f $build/k/boot/vmlinuz-$kernel_release ]] ||
        die "$kdeb has no boot/vmlinuz-$kernel_release"
    busybox=$build/bb/bin/busybox
    [[ -x $busybox ]] || die "$bbdeb has no bin/busybox"

    depmod -b "$build/k" "$kernel_release" || die "depmod failed on the unpacked kernel"

    # ---- the initramfs tree
    root=$build/root
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc/init.d}
    chmod 1777 "$root/tmp"
    chmod 0700 "$root/root"
    cp "$busybox" "$root/bin/busybox"
    while read -r applet; do
        [[ -n $applet && $applet != bin/busybox ]] || continue
        mkdir -p "$root/$(dirname "$applet")"
        ln -sf /bin/busybox "$root/$applet"
    done < <("$busybox" --list-full)
    [[ -L $root/sbin/init && -L $root/bin/cttyhack && -L $root/bin/sh && -L $root/sbin/modprobe ]] ||
        die "busybox-static lacks init, cttyhack, sh or modprobe"
    # The kernel runs /init from an initramfs: a script that boots the disk
    # named by root=, or else hands over to busybox init (written below).

    # Kernel modules the kit loads, with their dependencies, decompressed.
    # virtio_mmio: QEMU microvm (the disk bench's peer) puts its disks there.
    KIT_MODULES=(virtio_pci virtio_mmio virtio_blk virtio_net virtio_console virtio_rng)
    # And those it loads only to boot from a disk (root=): ext4 (a module in
    # Debian's kernel) and crc32c, which ext4's metadata checksums ask the
    # crypto API for at mount time (loaded up front: the kernel's on-demand
    # request would need modules.alias lookups from busybox's modprobe).
    ROOT_MODULES=(ext4 crc32c_generic)
    kmods=$root/lib/modules/$kernel_release
    mkdir -p "$kmods"
    declare -A seen=()
    order=()
    for m in "${KIT_MODULES[@]}" "${ROOT_MODULES[@]}"; do
        deps=$(modprobe -d "$build/k" -S "$kernel_release" --show-depends --ignore-install "$m" 2>&1) ||
            die "cannot resolve module $m: $deps"
        while read -r verb path _; do
            [[ $verb == insmod && -z ${seen[$path]:-} ]] || continue
            seen[$path]=1
            rel=${path#"$build/k/lib/modules/$kernel_release/"}
            order+=("${rel%.ko*}.ko")
            mkdir -p "$kmods/$(dirname "$rel")"
            case $rel in
            *.ko) cp "$path" "$kmods/$rel" ;;
            *.ko.xz) xz -dc "$path" >"$kmods/${rel%.xz}" ;;
            *.ko.zst) zstd -qdc "$path" >"$kmods/${rel%.zst}" ;;
            *.ko.gz) gzip -dc "$path" >"$kmods/${rel%.gz}" ;;
            *) die "unexpected module file $rel" ;;
            esac
        done <<<"$deps"
    done
    for f in modules.builtin modules.builtin.modinfo; do
        [[ ! -f $build/k/lib/modules/$kernel_release/$f ]] ||
            cp "$build/k/lib/modules/$kernel_release/$f" "$kmods/"
    done
    printf '%s\n' "${order[@]}" >"$kmods/modules.order"
    depmod -b "$root" "$kernel_release" || die "depmod failed on the initramfs tree"
    # Busybox modprobe reads the text files; the binary indexes are dead weight.
    rm -f "$kmods"/*.bin "$kmods/modules.builtin.modinfo"
    printf '%s\n' "${KIT_MODULES[@]}" >"$root/etc/modules"
    printf '%s\n' "${ROOT_MODULES[@]}" >"$root/etc/modules-root"

    # /init: without root= it only reads the command line and execs busybox
    # init, so the kit's own system starts exactly as it always did. With
    # root=, it boots that disk's system (Debian's initramfs-tools would need
    # the guest's own kernel package; this is the few lines it takes).
    cat >"$root/init" <<'EOF'
#!/bin/sh
# Hangar guest kit: the kernel's first program. With root= on the kernel
# command line it mounts that disk and hands the machine to the disk's init;
# without root=, or when that disk cannot be booted, it starts the kit's own
# busybox system.
export PATH=/sbin:/usr/sbin:/bin:/usr/bin

# The kernel keeps root=, rootfstype=, rootdelay=, ro, rw and init= to itself
# (they reach no argument or environment variable of ours): read /proc.
mount -t proc -o nosuid,nodev,noexec proc /proc
root='' fstype='' mode=ro init=/sbin/init delay=30
set -f # the words are not file patterns
for arg in $(cat /proc/cmdline); do
    case $arg in
    root=*) root=${arg#root=} ;;
    rootfstype=*) fstype=${arg#rootfstype=} ;;
    rootdelay=*) delay=${arg#rootdelay=} ;;
    ro) mode=ro ;;
    rw) mode=rw ;;
    init=*) init=${arg#init=} ;;
    esac
done
set +f
if [ -z "$root" ]; then
    umount /proc
    exec /sbin/init "$@"
fi
# The kernel's words for init ("single", ...), for kit_system: plain words,
# the kernel splits its command line at spaces.
init_args=$*

# kit_system REASON: says why the disk cannot be booted and starts the kit's
# own system instead (a shell to look around, never a kernel panic: PID 1
# must not exit).
kit_system() {
    echo "hangar: cannot boot from root=$root: $*"
    echo "hangar: starting the kit's own system instead"
    umount /newroot 2>/dev/null
    umount /sys 2>/dev/null
    umount /proc 2>/dev/null
    # Last, and not through /dev/null: that open file would keep /dev busy.
    umount /dev 2>&-
    # shellcheck disable=SC2086 # words, split as the kernel split them
    exec /sbin/init $init_args
}

mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
# Init marker for the VMM, as the kit's rcS writes it: byte 1 to 0x402.
printf '\001' | dd of=/dev/port bs=1 seek=1026 count=1 conv=notrunc 2>/dev/null
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
failed=''
for m in $(cat /etc/modules /etc/modules-root); do
    modprobe "$m" 2>/dev/null || failed="$failed $m"
done
[ -z "$failed" ] || echo "hangar: modules that failed to load:$failed"

# The disk appears once its driver has probed the device: poll for it.
case $delay in '' | *[!0-9]*) delay=30 ;; esac
tries=$((delay * 10)) dev=''
while :; do
    case $root in
    /dev/*) [ ! -b "$root" ] || dev=$root ;;
    LABEL=* | UUID=*) dev=$(findfs "$root" 2>/dev/null) || dev='' ;;
    *) kit_system "root= must be /dev/NAME, LABEL=... or UUID=..." ;;
    esac
    [ -z "$dev" ] || break
    [ "$tries" -gt 0 ] || kit_system "no such disk after $delay s (is a disk attached?)"
    [ "$tries" -ne $((delay * 10)) ] || echo "hangar: waiting up to $delay s for $root"
    tries=$((tries - 1))
    sleep 0.1
done

mkdir -p /newroot
if [ -n "$fstype" ]; then
    mount -t "$fstype" -o "$mode" "$dev" /newroot
else
    mount -o "$mode" "$dev" /newroot
fi || kit_system "cannot mount $dev ($mode${fstype:+, $fstype}; see the line above)"

# in_newroot PATH: the path under /newroot that PATH names inside the disk's
# system, following symbolic links as that system sees them (/sbin/init is
# usually a link, absolute or through the usr-merge /sbin -> usr/sbin).
in_newroot() {
    done_='' rest=${1#/} links=0
    while [ -n "$rest" ]; do
        part=${rest%%/*}
        case $rest in */*) rest=${rest#*/} ;; *) rest='' ;; esac
        case $part in
        '' | .) continue ;;
        ..) done_=${done_%/*}; continue ;;
        esac
        if [ -L "/newroot$done_/$part" ]; then
            links=$((links + 1))
            [ "$links" -le 40 ] || return 1
            target=$(readlink "/newroot$done_/$part")
            case $target in /*) done_='' ;; esac
            rest=${target#/}${rest:+/$rest}
        else
            done_=$done_/$part
        fi
    done
    echo "/newroot$done_"
}
target=$(in_newroot "$init") && [ -f "$target" ] && [ -x "$target" ] ||
    kit_system "$dev has no program $init to start (init= names another)"

# The disk's system finds /dev, /proc and /sys already mounted.
for d in dev proc sys; do
    if [ -d "/newroot/$d" ]; then
        mount --move "/$d" "/newroot/$d"
    else
        umount "/$d"
    fi
done
echo "hangar: starting $init from $dev"
exec switch_root /newroot "$init" "$@"
EOF
    chmod 0755 "$root/init"

    cat >"$root/etc/inittab" <<'EOF'
# Hangar guest kit: busybox init.
::sysinit:/etc/init.d/rcS
# A job-control shell on the console (cttyhack finds the real tty).
::respawn:/bin/cttyhack /bin/sh -l
# And one on the screen's first virtual terminal, for the PS/2 keyboard.
tty1::respawn:/bin/sh -l
# The VMM's graceful stop sends Ctrl+Alt+Del through the emulated keyboard.
::ctrlaltdel:/sbin/reboot
::shutdown:/etc/init.d/rcK
EOF

    cat >"$root/etc/init.d/rcS" <<'EOF'
#!/bin/sh
# Hangar guest kit: system start, run once by busybox init.
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
# Init marker for the VMM: byte 1 to the debug port 0x402 (= 1026).
printf '\001' | dd of=/dev/port bs=1 seek=1026 count=1 conv=notrunc 2>/dev/null
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
hostname -F /etc/hostname
ip link set lo up 2>/dev/null
failed=
for m in $(cat /etc/modules); do
    modprobe "$m" 2>/dev/null || failed="$failed $m"
done
[ -z "$failed" ] || echo "hangar: modules that failed to load:$failed"
echo "Hangar guest ready (kernel $(uname -r))"
echo "Type 'reboot' or 'poweroff' to stop the machine."
EOF

    cat >"$root/etc/init.d/rcK" <<'EOF'
#!/bin/sh
# Hangar guest kit: system stop, run by busybox init before it reboots or
# powers off. /dev, /proc and /sys stay mounted for the last step.
sync
awk '$3 !~ /^(rootfs|proc|sysfs|devtmpfs|devpts|tmpfs|ramfs|cgroup2?|debugfs|securityfs)$/ { print $2 }' \
    /proc/mounts 2>/dev/null | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || mount -o remount,ro "$m" 2>/dev/null
done
sync
# Hangar has no ACPI: a power-off ends through its exit port instead.
[ ! -e /run/hangar-poweroff ] || exec /sbin/hangar-exit 0
exit 0
EOF

    # poweroff: busybox's would halt the CPU forever on a machine without
    # ACPI. Mark the request; rcK then stops the VM through the exit port.
    rm -f "$root/sbin/poweroff"
    cat >"$root/sbin/poweroff" <<'EOF'
#!/bin/sh
# Hangar guest kit: power off. Without -f, init runs rcK, which ends the
# machine through Hangar's exit port; with -f, end it here.
for a in "$@"; do
    [ "$a" != -f ] || exec /sbin/hangar-exit 0
done
: >/run/hangar-poweroff
exec /bin/busybox poweroff "$@"
EOF
    cat >"$root/sbin/hangar-exit" <<'EOF'
#!/bin/sh
# hangar-exit [STATUS]: stop the machine now with exit STATUS (0-255): one
# byte to Hangar's exit port 0x403 (= 1027). Elsewhere (e.g. QEMU) it falls
# back to busybox's own power-off.
status=${1:-0}
case $status in *[!0-9]* | '') echo "usage: hangar-exit [0-255]" >&2; exit 2 ;; esac
[ "$status" -le 255 ] || { echo "usage: hangar-exit [0-255]" >&2; exit 2; }
sync
printf "\\$(printf %03o "$status")" | dd of=/dev/port bs=1 seek=1027 count=1 conv=notrunc 2>/dev/null
sleep 1
exec /bin/busybox poweroff -f
EOF
    chmod 0755 "$root/sbin/poweroff" "$root/sbin/hangar-exit"
    chmod 0755 "$root/etc/init.d/rcS" "$root/etc/init.d/rcK"

    echo hangar >"$root/etc/hostname"
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\ntty:x:5:\n' >"$root/etc/group"
    cat >"$root/etc/profile" <<'EOF'
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
export HOME=/root
export PS1='\h:\w\$ '
export ENV=/etc/profile
# This busybox shell runs its own applets before searching PATH: route
# poweroff to the kit's script, which ends the VM through Hangar's exit port.
poweroff() { /sbin/poweroff "$@"; }
[ "$PWD" != / ] || cd "$HOME"
EOF

    # ---- pack: the tree, then /dev/console (a device node needs no root in
    # a hand-written newc entry), in one gzip stream.
    newc_entry() { # name mode rdev_major rdev_minor inode
        local name=$1 mode=$2 maj=$3 min=$4 ino=$5 namesize=$((${#1} + 1))
        printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
            "$ino" "$mode" 0 0 1 0 0 0 0 "$maj" "$min" "$namesize" 0
        printf '%s\0' "$name"
        local pad=$(((4 - (110 + namesize) % 4) % 4))
        ((pad == 0)) || head -c "$pad" /dev/zero
    }
    initrd_new=$build/initramfs.cpio.gz
    {
        (cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
            cpio --null -o -H newc -R 0:0 --reproducible --quiet)
        newc_entry dev/console $((8#020600)) 5 1 $((0x7fffff00))
        newc_entry 'TRAILER!!!' 0 0 0 0
    } | gzip -9 -n >"$initrd_new" || die "cannot pack the initramfs"

    # ---- the kernel: the bzImage, and the vmlinux inside it (ELF, PVH note).
    kernel=$build/k/boot/vmlinuz-$kernel_release
    cp "$kernel" "$build/vmlinuz"
    extract_vmlinux() { # bzImage out
        local img=$1 out=$2
        le32() { od -An -t u4 -j "$2" -N 4 "$1" | tr -d ' '; }
        [[ $(od -An -c -j 514 -N 4 "$img" | tr -d ' ') == HdrS ]] || return 1
        local setup_sects pm payload_offset payload_length
        setup_sects=$(od -An -t u1 -j 497 -N 1 "$img" | tr -d ' ')
        ((setup_sects > 0)) || setup_sects=4
        pm=$(((setup_sects + 1) * 512))
        payload_offset=$(le32 "$img" 584)
        payload_length=$(le32 "$img" 588)
        local magic
        magic=$(od -An -t x1 -j $((pm + payload_offset)) -N 4 "$img" | tr -d ' ')
        local payload=(tail -c +$((pm + payload_offset + 1)) "$img")
        case $magic in
        fd377a58) "${payload[@]}" | head -c "$payload_length" | xz -dc --single-stream >"$out" 2>/dev/null ;;
        28b52ffd) "${payload[@]}" | head -c $((payload_length - 4)) | zstd -qdc >"$out" 2>/dev/null ;;
        1f8b08*) "${payload[@]}" | head -c "$payload_length" | gzip -dc >"$out" 2>/dev/null ;;
        *) return 1 ;;
        esac
        [[ $(od -An -t x1 -N 4 "$out" | tr -d ' ') == 7f454c46 ]]
    }
    vmlinux_note="vmlinux"
    if ! extract_vmlinux "$kernel" "$build/vmlinux"; then
        rm -f "$build/vmlinux"
        vmlinux_note="no vmlinux (unknown compression)"
        log "warning: could not extract vmlinux from the bzImage; the kit has only vmlinuz"
    fi

    # ---- install atomically: build kit.new, then swap it in.
    new=$data_dir/kit.new
    rm -rf "$new"
    mkdir -p "$new"
    mv "$build/vmlinuz" "$initrd_new" "$new/"
    [[ ! -f $build/vmlinux ]] || mv "$build/vmlinux" "$new/"
    echo "$kernel_release" >"$new/VERSION"
    echo "$wanted_stamp" >"$new/.stamp"
    old=$data_dir/kit.old
    rm -rf "$old"
    [[ ! -e $kit_dir ]] || mv "$kit_dir" "$old"
    mv "$new" "$kit_dir"
    rm -rf "$old"
    kit_note="built ($vmlinux_note, initramfs $(($(stat -c %s "$kit_dir/initramfs.cpio.gz") / 1024)) KiB)"
fi

# ------------------------------------------------------------ image layout --
# The built-in container images are OCI image layouts made with plain tools
# (tar, gzip -n, sha256sum, hand-written JSON), so the engine imports them
# like any other layout.

# as_root CMD...: runs CMD as root (through sudo when this script is not).
as_root() {
    "${sudo_cmd[@]}" "$@"
}

# oci_pack [--as-root] OUT REF CONFIG TREE [TAR_OPTION...]: packs the tree
# TREE as the single layer of a new OCI image layout OUT (which must not
# exist), with the reference name REF and CONFIG (the JSON object of the
# image config's "config"). The layer is reproducible: sorted, numeric
# ownership, fixed times, gzip -n. TAR_OPTIONs (e.g. --exclude, or --owner=0
# --group=0 for a tree built as a user) go to tar; --as-root reads TREE as
# root. Sets oci_layer_size (bytes).
oci_pack() {
    local reader=()
    if [[ $1 == --as-root ]]; then
        reader=(as_root)
        shift
    fi
    local out=$1 ref=$2 config=$3 tree=$4
    shift 4
    [[ ! -e $out ]] || die "oci_pack: $out exists"
    mkdir -p "$out/blobs/sha256"
    local work
    work=$(mktemp -d)
    "${reader[@]}" tar --sort=name --numeric-owner --mtime=@0 --format=posix \
        --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
        "$@" -C "$tree" -cf - . >"$work/layer.tar" || die "cannot pack $tree into a layer"
    local diff_id layer_sum layer_size
    diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
    gzip -n -9 -c "$work/layer.tar" >"$work/layer.tar.gz" || die "cannot gzip the layer of $ref"
    layer_sum=$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)
    layer_size=$(stat -c %s "$work/layer.tar.gz")
    mv "$work/layer.tar.gz" "$out/blobs/sha256/$layer_sum"
    printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
        "$config" "$diff_id" >"$work/config.json"
    local config_sum config_size
    config_sum=$(sha256sum "$work/config.json" | cut -d' ' -f1)
    config_size=$(stat -c %s "$work/config.json")
    mv "$work/config.json" "$out/blobs/sha256/$config_sum"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
        "$config_sum" "$config_size" "$layer_sum" "$layer_size" >"$work/manifest.json"
    local manifest_sum manifest_size
    manifest_sum=$(sha256sum "$work/manifest.json" | cut -d' ' -f1)
    manifest_size=$(stat -c %s "$work/manifest.json")
    mv "$work/manifest.json" "$out/blobs/sha256/$manifest_sum"
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
        "$manifest_sum" "$manifest_size" "$ref" >"$out/index.json"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$out/oci-layout"
    rm -rf "$work"
    oci_layer_size=$layer_size
}

# swap_in NEW DEST: replaces DEST (if any) with the directory NEW.
swap_in() {
    local new=$1 dest=$2
    rm -rf "$dest.old"
    [[ ! -e $dest ]] || mv "$dest" "$dest.old"
    mv "$new" "$dest"
    rm -rf "$dest.old"
}

# ----------------------------------------------------------- default image --
# The container image `default`: busybox-static in
#   $data_dir/images-src/default/
# Rebuilt only when busybox or this recipe changes (stamp file); built in
# default.new, then swapped in.
image_src=$data_dir/images-src/default
image_note=""
build_default_image() {
    local bb=/bin/busybox
    [[ -x $bb ]] || { image_note="skipped (no $bb: install busybox-static)"; return 0; }
    local recipe=1
    local stamp
    stamp="recipe=$recipe busybox=$(sha256sum "$bb" | cut -d' ' -f1)"
    if [[ -s $image_src/.stamp && $(cat "$image_src/.stamp") == "$stamp" && -s $image_src/index.json ]]; then
        image_note="up to date"
        return 0
    fi
    local new=$image_src.new work
    rm -rf "$new"
    work=$(mktemp -d)
    local root=$work/root
    mkdir -p "$root"/{bin,etc,root,tmp,proc,sys,dev,home,var/tmp}
    chmod 1777 "$root/tmp" "$root/var/tmp"
    chmod 0700 "$root/root"
    cp "$bb" "$root/bin/busybox"
    local applet
    for applet in $("$bb" --list); do
        [[ $applet == busybox || -e $root/bin/$applet ]] || ln -s busybox "$root/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    printf 'default\n' >"$root/etc/hostname"
    oci_pack "$new" default '{"Env":["PATH=/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/"}' "$root" \
        --owner=0 --group=0
    echo "$stamp" >"$new/.stamp"
    rm -rf "$work"
    swap_in "$new" "$image_src"
    image_note="built ($((oci_layer_size / 1024)) KiB layer)"
}
build_default_image

# ------------------------------------------------------------ debian image --
# The container image `debian`: `debootstrap --variant=minbase` of this
# host's own suite from this host's own mirror (both read from its apt
# sources), as an OCI layout in
#   $data_dir/images-src/debian/
# The plain root tree is kept in $data_dir/rootfs/debian-SUITE/ (root-owned,
# with its device nodes: the VM disk template is made from it too), its stamp
# beside it in debian-SUITE.stamp: recipe, suite and mirror, then the build
# time. Both are rebuilt only when that stamp changes (or --force-debian),
# each in a .new directory swapped in when complete.
debian_recipe=1 # bump to rebuild the root tree everywhere
debian_image_recipe=1
debian_note=""

# host_apt_entries: prints "suite uri keyring" for every enabled "deb" entry
# with the component main of the host's apt sources, in apt's order
# (sources.list, then sources.list.d/ by name; one-line and deb822 format).
# keyring is a Signed-By file, or "-".
host_apt_entries() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*; do
        [[ -f $f && -r $f ]] || continue
        case $f in
        *.sources)
            awk '
            function flush(   n, m, i, j, U, S, signed) {
                signed = V["signed-by"]
                if ((" " V["types"] " ") ~ / deb / && tolower(V["enabled"]) != "no" &&
                    (" " V["components"] " ") ~ / main /) {
                    n = split(V["uris"], U, " ")
                    m = split(V["suites"], S, " ")
                    for (i = 1; i <= m; i++)
                        for (j = 1; j <= n; j++)
                            print S[i], U[j], (signed ~ /^\/[^ ]*$/ ? signed : "-")
                }
                split("", V)
                key = ""
            }
            function add(text) {
                gsub(/[ \t]+/, " ", text)
                V[key] = V[key] " " text
                sub(/^ +/, "", V[key])
                sub(/ +$/, "", V[key])
            }
            /^#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]/ { if (key != "") add($0); next } # a continuation line
            {
                c = index($0, ":")
                if (c == 0) next
                key = tolower(substr($0, 1, c - 1))
                V[key] = ""
                add(substr($0, c + 1))
            }
            END { flush() }' "$f"
            ;;
        */sources.list | *.list)
            awk '
            {
                sub(/#.*/, "")
                if ($1 != "deb") next
                line = $0
                opts = ""
                if (match(line, /\[[^\]]*\]/)) {
                    opts = substr(line, RSTART + 1, RLENGTH - 2)
                    line = substr(line, 1, RSTART - 1) " " substr(line, RSTART + RLENGTH)
                }
                n = split(line, F, " ")
                main = 0
                for (i = 4; i <= n; i++) if (F[i] == "main") main = 1
                if (!main || n < 4) next
                signed = "-"
                k = split(opts, O, " ")
                for (i = 1; i <= k; i++)
                    if (O[i] ~ /^signed-by=\//) signed = substr(O[i], 11)
                print F[3], F[2], signed
            }' "$f"
            ;;
        esac
    done
}

# host_debian_source: sets deb_suite, deb_mirror, deb_keyring from the host's
# apt sources: the first entry whose suite debootstrap knows, preferring the
# suite named by /etc/os-release (so -updates, -security, backports and
# third-party repositories are passed over).
host_debian_source() {
    local codename scripts=/usr/share/debootstrap/scripts
    # shellcheck source=/dev/null
    codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}") || codename=""
    deb_suite="" deb_mirror="" deb_keyring=""
    local suite uri keyring unsupported=""
    while read -r suite uri keyring; do
        [[ -n $suite && -f $scripts/$suite ]] || continue
        case $uri in
        http://* | https://* | file:/*) ;;
        *)
            unsupported+=" $uri"
            continue
            ;;
        esac
        if [[ -z $deb_suite || ($suite == "$codename" && $deb_suite != "$codename") ]]; then
            deb_suite=$suite deb_mirror=${uri%/} deb_keyring=$keyring
        fi
    done < <(host_apt_entries)
    [[ -n $deb_suite ]] && return 0
    if [[ -n $unsupported ]]; then
        die "the Debian image needs an http(s) or file: mirror in the apt sources; debootstrap cannot use:$unsupported"
    fi
    die "no apt source of this host names a suite debootstrap knows, with the component main (see /etc/apt/sources.list and /etc/apt/sources.list.d/): cannot build the Debian image"
}

# umount_below DIR: unmounts whatever an interrupted debootstrap left mounted
# at or below DIR (its /dev bind mount, /proc, /sys), deepest first.
umount_below() {
    local dir m
    dir=$(realpath -m -- "$1")
    awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo |
        sort -r | while read -r m; do
        as_root umount -l -- "$m" || die "cannot unmount $m (left by an earlier debootstrap)"
    done
}

# remove_tree DIR: removes a root-owned tree, never crossing into a mount.
remove_tree() {
    [[ -e $1 || -L $1 ]] || return 0
    umount_below "$1"
    as_root rm -rf --one-file-system -- "$1" || die "cannot remove $1"
}

build_debian_image() {
    local debootstrap
    debootstrap=$(command -v debootstrap || echo /usr/sbin/debootstrap)
    [[ -x $debootstrap ]] || die "'debootstrap' not found: run without --skip-packages to install it"
    if [[ $EUID -ne 0 ]] && ! command -v sudo >/dev/null; then
        die "debootstrap needs root and sudo is not installed: run this script as root"
    fi
    host_debian_source
    local rootfs_dir=$data_dir/rootfs
    local rootfs=$rootfs_dir/debian-$deb_suite
    local stamp_file=$rootfs.stamp
    local wanted="recipe=$debian_recipe suite=$deb_suite mirror=$deb_mirror"
    local rootfs_note=""

    if [[ $force_debian == 1 || ! -d $rootfs || ! -s $stamp_file || $(head -n1 "$stamp_file") != "$wanted" ]]; then
        mkdir -p "$rootfs_dir"
        local new=$rootfs.new log=$rootfs.log
        remove_tree "$new"
        local opts=(--variant=minbase)
        [[ $deb_keyring == - ]] || opts+=("--keyring=$deb_keyring")
        log "debootstrap --variant=minbase $deb_suite from the host's mirror (a minute or so; log in $log)"
        local t0 t1
        t0=$(date +%s)
        if ! as_root "$debootstrap" "${opts[@]}" "$deb_suite" "$new" "$deb_mirror" >"$log" 2>&1; then
            tail -n 15 "$log" >&2
            [[ ! -f $new/debootstrap/debootstrap.log ]] || as_root tail -n 15 "$new/debootstrap/debootstrap.log" >&2 || true
            remove_tree "$new"
            die "debootstrap of $deb_suite from $deb_mirror failed (network to the package mirror? see the lines above and $log)"
        fi
        t1=$(date +%s)
        # The image's own touches, on the tree itself (the VM template wants
        # them too): its hostname; none of this host's network set-up that
        # debootstrap copies in (resolv.conf; hosts gets Debian's plain one);
        # no package caches or lists (apt fetches the lists again on
        # 'apt-get update').
        # shellcheck disable=SC2016 # $1 is the inner shell's
        as_root sh -c '
            set -e
            cd "$1"
            echo debian >etc/hostname
            rm -f etc/resolv.conf
            printf "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n" >etc/hosts
            rm -f var/cache/apt/archives/*.deb var/cache/apt/archives/partial/* var/cache/apt/*.bin
            rm -rf var/lib/apt/lists/*
            mkdir -p var/lib/apt/lists/partial
        ' sh "$new" || die "cannot finish the Debian root in $new"
        [[ -x $new/bin/bash && -f $new/etc/debian_version ]] || die "debootstrap left no bin/bash or etc/debian_version in $new"
        umount_below "$new"
        local old=$rootfs.old
        remove_tree "$old"
        rm -f "$stamp_file"
        [[ ! -e $rootfs ]] || mv "$rootfs" "$old"
        mv "$new" "$rootfs"
        remove_tree "$old"
        printf '%s\nbuilt=%s\n' "$wanted" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$stamp_file"
        rootfs_note=" debootstrapped in $((t1 - t0)) s,"
    fi

    # ---- the image, from the tree with its owners (root:shadow, ...); /dev's
    # nodes stay out (the runtime provides /dev).
    local src=$data_dir/images-src/debian
    local image_stamp
    image_stamp="image-recipe=$debian_image_recipe $(paste -sd' ' "$stamp_file")"
    if [[ -s $src/.stamp && $(cat "$src/.stamp") == "$image_stamp" && -s $src/index.json ]]; then
        debian_note="$deb_suite$rootfs_note up to date"
        return 0
    fi
    log "packing the Debian image"
    local new_src=$src.new
    rm -rf "$new_src"
    mkdir -p "$data_dir/images-src"
    oci_pack --as-root "$new_src" debian \
        '{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/bash"],"WorkingDir":"/"}' \
        "$rootfs" --anchored --exclude='./dev/*' # its own owners (root:shadow, ...)
    echo "$image_stamp" >"$new_src/.stamp"
    swap_in "$new_src" "$src"
    debian_note="$deb_suite$rootfs_note built ($((oci_layer_size / 1024)) KiB layer)"
}
build_debian_image

# ------------------------------------------------------ Debian 12 VM template --
# The VM template `debian-12`: a bookworm system (systemd, udev, networkd)
# that the kit's kernel boots with root=/dev/vda, as a sparse ext4 image of
# the whole disk (no partition table: the kit mounts /dev/vda itself) in
#   $data_dir/templates/debian-12/disk.raw
# Hangar copies it (reflink or sparse copy) for each new VM, never boots it.
# Two stages, each with its own stamp:
#  - the tree: debootstrap of bookworm from this host's own mirror into
#    $data_dir/rootfs/debian-bookworm-vm/ (debootstrap's output, less the
#    package caches; stamp beside it), redone only when the package list,
#    the mirror or the debootstrap step changes (or --force-template);
#  - the disk: a throw-away copy of the tree gets the kit kernel's modules
#    and the VM's configuration (template_configure), then mkfs.ext4 -d packs
#    it (no mount, no loop device). Redone when the kit's kernel or the
#    configuration changes. Configuring a copy keeps the stage repeatable: a
#    file an older recipe wrote cannot linger in a newer disk.
# Stamps hash the recipe functions' own text (declare -f), so editing a step
# rebuilds what it makes, and editing anything else in this script does not.
template_note=""
TEMPLATE_ID=debian-12
TEMPLATE_SUITE=bookworm
TEMPLATE_SIZE=4G
# systemd as init with udev (loads the drivers from the modules below), dbus
# (logind, resolved), networkd's DHCP + resolved for DNS, and the few tools a
# first login wants. e2fsprogs (resize2fs) is in minbase already.
TEMPLATE_PACKAGES=(
    systemd-sysv udev kmod dbus systemd-resolved
    iproute2 iputils-ping netbase ca-certificates
    procps less vim-tiny
)
# Module trees of hardware a VM does not have (sound, cameras and TV cards,
# Wi-Fi, Bluetooth, InfiniBand, industrial I/O, the big GPU drivers): 170 of
# the kernel's 390 MB. virtio, the rest of drm (virtio-gpu, bochs),
# filesystems, netfilter and wired NICs stay.
TEMPLATE_MODULES_SKIP=(
    sound drivers/media drivers/net/wireless net/wireless net/mac80211
    drivers/bluetooth net/bluetooth drivers/infiniband drivers/staging
    drivers/iio drivers/comedi drivers/isdn
    drivers/gpu/drm/amd drivers/gpu/drm/i915 drivers/gpu/drm/nouveau drivers/gpu/drm/radeon
)

# template_debootstrap TREE MIRROR KEYRING: the tree's first stage, as root.
template_debootstrap() {
    local tree=$1 mirror=$2 keyring=$3
    local opts=(--variant=minbase "--include=$(IFS=,; echo "${TEMPLATE_PACKAGES[*]}")")
    [[ $keyring == - ]] || opts+=("--keyring=$keyring")
    debootstrap "${opts[@]}" "$TEMPLATE_SUITE" "$tree" "$mirror" || return 1
    # No package caches or lists (apt fetches the lists on 'apt-get update');
    # no copy of this host's resolv.conf.
    rm -f "$tree"/var/cache/apt/archives/*.deb "$tree"/var/cache/apt/archives/partial/* \
        "$tree"/var/cache/apt/*.bin "$tree/etc/resolv.conf"
    rm -rf "$tree"/var/lib/apt/lists/*
    mkdir -p "$tree/var/lib/apt/lists/partial"
    [[ -x $tree/lib/systemd/systemd && -x $tree/sbin/resize2fs ]] ||
        { echo "debootstrap left no systemd or resize2fs in $tree" >&2; return 1; }
}

# template_configure TREE RELEASE: makes the tree (a copy, with the kernel's
# modules under lib/modules/RELEASE) a Hangar VM's system, as root.
template_configure() {
    set -euo pipefail
    local t=$1 release=$2
    cd "$t"
    depmod -b . "$release"

    echo debian >etc/hostname
    printf '127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n' >etc/hosts
    # The whole disk is the root file system: no partition table.
    printf '# Hangar VM: the whole first disk is the root file system.\n/dev/vda\t/\text4\trw,relatime,errors=remount-ro\t0\t1\n' >etc/fstab
    # Each VM made from the template gets its own machine id at its first
    # boot (networkd's DHCP client id and the journal come from it).
    : >etc/machine-id
    rm -f var/lib/dbus/machine-id
    ln -s /etc/machine-id var/lib/dbus/machine-id

    # root is logged in on the serial console and the screen's first
    # terminal; its password stays locked (no password logins at all until
    # the owner sets one). The -o options are Debian's with -f (no password).
    mkdir -p etc/systemd/system/serial-getty@ttyS0.service.d etc/systemd/system/getty@tty1.service.d
    cat >etc/systemd/system/serial-getty@ttyS0.service.d/hangar-autologin.conf <<'EOF'
# Hangar VM: root logged in on the serial console (the console is the owner's).
[Service]
ExecStart=
ExecStart=-/sbin/agetty -o '-p -f -- \\u' --keep-baud --autologin root 115200,57600,38400,9600 - $TERM
EOF
    cat >etc/systemd/system/getty@tty1.service.d/hangar-autologin.conf <<'EOF'
# Hangar VM: root logged in on the screen's first terminal.
[Service]
ExecStart=
ExecStart=-/sbin/agetty -o '-p -f -- \\u' --noclear --autologin root - $TERM
EOF
    cat >>etc/motd <<'EOF'

Hangar: root is logged in on the consoles without a password, and root's
password is locked. Set one with 'passwd' before allowing remote logins.
EOF

    # DHCP on the (virtio) ethernet; resolved serves DNS from what DHCP gave
    # through its stub. Without a network nothing waits: wait-online is
    # masked, so boot never stalls on DHCP.
    mkdir -p etc/systemd/network
    cat >etc/systemd/network/20-hangar-dhcp.network <<'EOF'
# Hangar VM: the ethernet (Hangar's user-mode network answers DHCP).
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
    ln -sf ../run/systemd/resolve/stub-resolv.conf etc/resolv.conf

    # C.UTF-8 is built into glibc (no locales package); without the file,
    # pam_env logs an error at every login.
    echo LANG=C.UTF-8 >etc/default/locale

    # Errors (the level the kernel's `quiet` shows) from services go to the
    # console too, where the VM's owner looks.
    mkdir -p etc/systemd/journald.conf.d
    cat >etc/systemd/journald.conf.d/hangar-console.conf <<'EOF'
[Journal]
ForwardToConsole=yes
MaxLevelConsole=err
EOF

    # Hangar makes a VM's disk larger than the template: grow the file
    # system to the disk on boot (a no-op once it fits, so a disk grown
    # later is picked up too).
    cat >etc/systemd/system/hangar-grow-root.service <<'EOF'
[Unit]
Description=Grow the root file system to the size of its disk
After=systemd-remount-fs.service
ConditionPathIsReadWrite=/

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'exec /sbin/resize2fs "$$(findmnt -n -o SOURCE /)"'

[Install]
WantedBy=multi-user.target
EOF

    # Power-off: Hangar's machines have no ACPI; the last step of systemd's
    # shutdown writes the exit status to Hangar's exit port 0x403 (= 1027)
    # instead. Elsewhere (QEMU) the write goes nowhere and the normal
    # power-off follows.
    mkdir -p usr/lib/systemd/system-shutdown
    cat >usr/lib/systemd/system-shutdown/hangar-exit <<'EOF'
#!/bin/sh
# Hangar VM: stop the machine through Hangar's exit port on power-off.
[ "$1" = poweroff ] || [ "$1" = halt ] || exit 0
printf '\000' | dd of=/dev/port bs=1 seek=1027 count=1 conv=notrunc 2>/dev/null
exit 0
EOF
    chmod 0755 usr/lib/systemd/system-shutdown/hangar-exit

    chroot . systemctl enable --quiet systemd-networkd.service systemd-resolved.service \
        hangar-grow-root.service serial-getty@ttyS0.service getty@tty1.service
    # firstboot would ask for a locale, time zone and root password on the
    # console at the first boot (the empty machine id makes it one).
    chroot . systemctl mask --quiet systemd-networkd-wait-online.service systemd-firstboot.service
}

build_debian_template() {
    local template_dir=$data_dir/templates/$TEMPLATE_ID
    local image=$template_dir/disk.raw
    if [[ $EUID -ne 0 ]] && ! command -v sudo >/dev/null; then
        die "debootstrap needs root and sudo is not installed: run this script as root"
    fi
    command -v mkfs.ext4 >/dev/null || die "'mkfs.ext4' not found: run without --skip-packages to install it"

    # The same mirror as the Debian image: bookworm is this host's suite, or
    # another suite of the same (Debian) mirror.
    host_debian_source
    local keyring=$deb_keyring
    if [[ $deb_suite != "$TEMPLATE_SUITE" ]]; then
        local os_id
        # shellcheck source=/dev/null
        os_id=$(. /etc/os-release 2>/dev/null && echo "${ID:-}") || os_id=""
        if [[ $os_id != debian ]]; then
            template_note="skipped (the Debian 12 template is debootstrapped from a Debian mirror; this host's apt sources name $deb_suite)"
            return 0
        fi
        keyring=- # debootstrap's own Debian keyring
    fi

    # The kernel whose modules go in: the one the kit was built from.
    local kstamp kernel_pkg kernel_ver
    kstamp=$(tr ' ' '\n' <"$kit_dir/.stamp" | sed -n 's/^kernel=//p')
    kernel_pkg=${kstamp%%=*} kernel_ver=${kstamp#*=}
    [[ -n $kernel_pkg && -n $kernel_ver && $kernel_pkg != "$kstamp" ]] ||
        die "cannot read the kit's kernel from $kit_dir/.stamp: run with --force-kit"
    local release=${kernel_pkg#linux-image-}

    local tree=$data_dir/rootfs/debian-$TEMPLATE_SUITE-vm
    local tree_stamp=$tree.stamp
    local tree_recipe
    tree_recipe=$( { declare -p TEMPLATE_SUITE TEMPLATE_PACKAGES; declare -f template_debootstrap; } |
        sha256sum | cut -c1-16)
    local tree_wanted="recipe=$tree_recipe suite=$TEMPLATE_SUITE mirror=$deb_mirror"
    local tree_note=""
    if [[ $force_template == 1 || ! -d $tree || ! -s $tree_stamp || $(head -n1 "$tree_stamp") != "$tree_wanted" ]]; then
        mkdir -p "$data_dir/rootfs"
        local new=$tree.new log=$tree.log
        remove_tree "$new"
        log "debootstrap --variant=minbase $TEMPLATE_SUITE with systemd for the VM template, from the host's mirror (a few minutes; log in $log)"
        local t0 t1
        t0=$(date +%s)
        # shellcheck disable=SC2016 # $1.. are the inner shell's
        if ! as_root env PATH="/usr/sbin:/sbin:$PATH" bash -c "$(declare -p TEMPLATE_SUITE TEMPLATE_PACKAGES; declare -f template_debootstrap)"'
            template_debootstrap "$@"' bash "$new" "$deb_mirror" "$keyring" >"$log" 2>&1; then
            tail -n 15 "$log" >&2
            [[ ! -f $new/debootstrap/debootstrap.log ]] || as_root tail -n 15 "$new/debootstrap/debootstrap.log" >&2 || true
            remove_tree "$new"
            die "debootstrap of $TEMPLATE_SUITE from $deb_mirror failed (network to the package mirror? see the lines above and $log)"
        fi
        t1=$(date +%s)
        umount_below "$new"
        local old=$tree.old
        remove_tree "$old"
        rm -f "$tree_stamp"
        [[ ! -e $tree ]] || mv "$tree" "$old"
        mv "$new" "$tree"
        remove_tree "$old"
        printf '%s\nbuilt=%s\n' "$tree_wanted" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$tree_stamp"
        tree_note=" debootstrapped in $((t1 - t0)) s,"
    fi

    local disk_recipe
    disk_recipe=$( { declare -p TEMPLATE_SIZE TEMPLATE_MODULES_SKIP; declare -f template_configure; } |
        sha256sum | cut -c1-16)
    local disk_wanted
    disk_wanted="disk-recipe=$disk_recipe kernel=$kernel_pkg=$kernel_ver $(paste -sd' ' "$tree_stamp")"
    if [[ -s $image && -s $template_dir/.stamp && $(cat "$template_dir/.stamp") == "$disk_wanted" ]]; then
        template_note="$TEMPLATE_SUITE$tree_note up to date"
        return 0
    fi

    log "making the Debian 12 disk: the tree, $release's modules and the VM's configuration"
    local t0 t1
    t0=$(date +%s%N)
    local kdeb
    kdeb=$(fetch_deb "$kernel_pkg" "$kernel_ver")
    mkdir -p "$data_dir/cache" "$template_dir"
    # A copy that an interrupted run left behind goes first (root-owned:
    # remove_tree), then this run's is made.
    local work
    for work in "$data_dir"/cache/template.*; do
        [[ ! -d $work ]] || remove_tree "$work"
    done
    work=$(mktemp -d "$data_dir/cache/template.XXXXXX")
    as_root cp -a --reflink=auto "$tree" "$work/root" || die "cannot copy $tree"
    # The modules from the kernel package: only lib/modules, through the
    # tree's usr-merge lib -> usr/lib link, without the skipped trees.
    local excludes=() d
    for d in "${TEMPLATE_MODULES_SKIP[@]}"; do
        excludes+=("--exclude=./lib/modules/$release/kernel/$d")
    done
    dpkg-deb --fsys-tarfile "$kdeb" |
        as_root tar -x -C "$work/root" --keep-directory-symlink --anchored "${excludes[@]}" \
            "./lib/modules/$release" || die "cannot unpack the modules of $kdeb"
    # shellcheck disable=SC2016 # $1.. are the inner shell's
    as_root env PATH="/usr/sbin:/sbin:$PATH" bash -c "$(declare -f template_configure)"'
        template_configure "$@"' bash "$work/root" "$release" ||
        die "cannot configure the VM template in $work/root"

    # The image: sparse, its size fixed; mkfs -d copies the tree with its
    # owners, modes, device nodes, hard links and extended attributes.
    local new_image=$image.new
    as_root rm -f "$new_image"
    # (-q still says "Creating regular file" on stdout.)
    as_root mkfs.ext4 -q -F -L hangar-root -d "$work/root" "$new_image" "$TEMPLATE_SIZE" >/dev/null ||
        die "mkfs.ext4 -d could not pack $work/root into $new_image"
    [[ $EUID -eq 0 ]] || as_root chown "$(id -u):$(id -g)" "$new_image"
    chmod 0644 "$new_image"
    remove_tree "$work"
    rm -f "$template_dir/.stamp"
    mv "$new_image" "$image"
    printf 'Debian 12 (%s %s), kernel %s\n' "$TEMPLATE_SUITE" \
        "$(cat "$tree/etc/debian_version" 2>/dev/null || echo '?')" "$release" >"$template_dir/VERSION"
    echo "$disk_wanted" >"$template_dir/.stamp"
    t1=$(date +%s%N)
    local used_kib
    used_kib=$(du -k "$image" | cut -f1)
    template_note="$TEMPLATE_SUITE$tree_note disk made in $(((t1 - t0) / 1000000000)).$((((t1 - t0) / 100000000) % 10)) s ($TEMPLATE_SIZE, $((used_kib / 1024)) MiB allocated)"
}
build_debian_template

# ---------------------------------------------------------- rootless cgroup --
# A normal user's containers need a cgroup of their own on hosts whose
# controllers are cgroup v1 (on v2 systemd delegates one). Root needs none.
cgroup_note="root needs no delegated cgroup"
if [[ $EUID -ne 0 ]]; then
    if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
        cgroup_note="cgroup v2: delegated by systemd"
    else
        "${sudo_cmd[@]}" "$(dirname "$0")/delegate-cgroup" "$(id -un)" >/dev/null ||
            die "could not delegate a cgroup to $(id -un) (packaging/delegate-cgroup)"
        cgroup_note="cgroup delegated to $(id -un)"
    fi
fi

elapsed_ms=$((($(date +%s%N) - start_s) / 1000000))
echo "$prog: ready in $((elapsed_ms / 1000)).$(printf %03d $((elapsed_ms % 1000)) | cut -c1) s: $pkg_note; kit $(cat "$kit_dir/VERSION") $kit_note in $kit_dir; image default $image_note; image debian $debian_note; template debian-12 $template_note; rootless containers: $cgroup_note"
