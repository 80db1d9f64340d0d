# Shared by tests/screenshots/run and tests/screenshots/frame-bench: build,
# a throw-away Hangar config with test machines, Xvfb, and running the app
# with a UI script (see app/src/gui/automation.rs for the step format).
# Source it from a script that has `set -euo pipefail` and sets $prog.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
guests=$root/tests/guests/target/x86_64-unknown-none/release
# HANGAR_BIN: use this binary (tests/run passes the debug build it already has).
hangar=${HANGAR_BIN:-$root/target/release/hangar}
kit=${HANGAR_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/hangar}/kit

die() {
    echo "$prog: error: $*" >&2
    exit 1
}
log() { echo "$prog: $*" >&2; }

build() {
    log "building the test guests"
    cargo build --quiet --release --target x86_64-unknown-none --manifest-path "$root/tests/guests/Cargo.toml"
    if [[ -z ${HANGAR_BIN:-} ]]; then
        log "building hangar (release)"
        cargo build --quiet --release -p hangar --manifest-path "$root/Cargo.toml"
    fi
}

work=$(mktemp -d "${TMPDIR:-/tmp}/hangar-screens.XXXXXX")
xvfb_pid=
cleanup() {
    if [[ -n $xvfb_pid ]]; then
        kill "$xvfb_pid" 2>/dev/null || true
        wait "$xvfb_pid" 2>/dev/null || true
    fi
    if [[ -n ${HANGAR_KEEP_WORK:-} ]]; then
        log "kept $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# machine ID NAME KERNEL [INITRD CMDLINE MEMORY]: write a definition into $HANGAR_CONFIG_DIR.
machine() {
    local id=$1 name=$2 kernel=$3 initrd=${4:-} cmdline=${5:-} memory=${6:-64}
    local initrd_json=null
    [[ -z $initrd ]] || initrd_json="\"$initrd\""
    cat >"$HANGAR_CONFIG_DIR/machines/$id.json" <<JSON
{"version":1,"id":"$id","config":{"name":"$name","vcpus":1,"memory_mib":$memory,"kernel":"$kernel","initrd":$initrd_json,"cmdline":"$cmdline"},"created":0}
JSON
}

# A fresh config directory with the test machines ("with-broken" adds a corrupt file).
make_config() {
    export HANGAR_CONFIG_DIR=$work/config
    rm -rf "$HANGAR_CONFIG_DIR"
    mkdir -p "$HANGAR_CONFIG_DIR/machines"
    if [[ -f $kit/vmlinuz && -f $kit/initramfs.cpio.gz ]]; then
        machine debian "Debian (default kit)" "$kit/vmlinuz" "$kit/initramfs.cpio.gz" \
            "console=ttyS0 reboot=k panic=-1 quiet" 512
    else
        log "no default kit in $kit (packaging/setup.sh builds it): leaving the Debian machine out"
    fi
    machine echo "Echo test guest" "$guests/echo"
    machine chatter "Chatter test guest" "$guests/chatter"
    machine chatter-b "Chatter test guest B" "$guests/chatter"
    if [[ ${1:-} == with-broken ]]; then
        printf '{"version":1,"id":"old-backup","config":{"name":' >"$HANGAR_CONFIG_DIR/machines/old-backup.json"
    fi
}

start_xvfb() {
    local n=90
    while [[ -e /tmp/.X$n-lock || -e /tmp/.X11-unix/X$n ]]; do
        n=$((n + 1))
    done
    Xvfb ":$n" -screen 0 1400x900x24 -nolisten tcp >"$work/xvfb.log" 2>&1 &
    xvfb_pid=$!
    for _ in $(seq 100); do
        [[ -e /tmp/.X11-unix/X$n ]] && break
        kill -0 "$xvfb_pid" 2>/dev/null || die "Xvfb :$n did not start: $(cat "$work/xvfb.log")"
        sleep 0.1
    done
    [[ -e /tmp/.X11-unix/X$n ]] || die "Xvfb :$n did not come up"
    export DISPLAY=:$n
    unset WAYLAND_DISPLAY
    log "Xvfb on $DISPLAY (1400x900x24)"
}

# run_script FILE LOG [ENV=VALUE...]: run the window with a UI script, log to LOG.
run_script() {
    local script=$1 out=$2
    shift 2
    local rc=0
    env "$@" HANGAR_UI_SCRIPT="$script" LIBGL_ALWAYS_SOFTWARE=1 RUST_LOG=warn \
        timeout 180 "$hangar" >"$out" 2>&1 || rc=$?
    if [[ $rc != 0 ]]; then
        cat "$out" >&2
        die "hangar exited with status $rc running $script"
    fi
}
