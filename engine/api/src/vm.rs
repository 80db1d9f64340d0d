//! What only VMs have in the API: their exit reasons, figures, events and
//! commands.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use hangar_devices::i8042::MouseButtons;
use hangar_devices::keymap::GuestKey;

/// The marker value the default kit's `/init` writes when it starts.
pub const MARKER_INIT_REACHED: u8 = 1;

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmExit {
    /// The guest reset the machine (e.g. `reboot`): a clean stop.
    GuestReset,
    /// The guest powered off through the debug port with this status.
    GuestExit(u8),
    /// The caller stopped it; `forced` if the guest did not stop by itself in time.
    Stopped {
        /// True if the VM was torn down by force after the timeout.
        forced: bool,
    },
    /// The VM failed: a triple fault, an emulation failure, a set-up error.
    Failed(String),
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::GuestReset => f.write_str("guest reset"),
            VmExit::GuestExit(code) => write!(f, "guest powered off with status {code}"),
            VmExit::Stopped { forced: false } => f.write_str("stopped (the guest shut down)"),
            VmExit::Stopped { forced: true } => f.write_str("stopped by force"),
            VmExit::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// A vCPU's registers at the moment of a fault, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterDump {
    /// vCPU index.
    pub vcpu: u8,
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Flags.
    pub rflags: u64,
    /// General registers rax, rbx, rcx, rdx, rsi, rdi, rbp.
    pub gprs: [u64; 7],
    /// Control registers cr0, cr2, cr3, cr4.
    pub cr: [u64; 4],
    /// Extended feature enable register.
    pub efer: u64,
    /// Code segment selector.
    pub cs: u16,
}

impl std::fmt::Display for RegisterDump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [rax, rbx, rcx, rdx, rsi, rdi, rbp] = self.gprs;
        let [cr0, cr2, cr3, cr4] = self.cr;
        write!(
            f,
            "vcpu{} rip={:#x} rsp={:#x} rflags={:#x} cs={:#x} rax={rax:#x} rbx={rbx:#x} rcx={rcx:#x} rdx={rdx:#x} rsi={rsi:#x} rdi={rdi:#x} rbp={rbp:#x} cr0={cr0:#x} cr2={cr2:#x} cr3={cr3:#x} cr4={cr4:#x} efer={:#x}",
            self.vcpu, self.rip, self.rsp, self.rflags, self.cs, self.efer
        )
    }
}

/// One vCPU's counters since the VM started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuStats {
    /// CPU time of the vCPU thread (guest plus exit handling).
    pub cpu_time: Duration,
    /// Exits to the VMM (port I/O, MMIO, signals...).
    pub exits: u64,
}

/// A VM's own figures (its CPU time and resident memory are in
/// [`crate::Stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStats {
    /// Time since the VM's vCPUs started.
    pub uptime: Duration,
    /// Per-vCPU counters, by index.
    pub vcpus: Vec<VcpuStats>,
    /// Guest RAM size in bytes.
    pub guest_memory_bytes: u64,
    /// What each disk and network card moved since the VM started, in the
    /// order of the machine's disks, then its network card.
    #[serde(default)]
    pub devices: Vec<DeviceIo>,
}

/// One device's I/O counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIo {
    /// The device's name (`virtio-blk0`, `virtio-net0`).
    pub name: String,
    /// Bytes and requests so far (for a network card: read = received by
    /// the guest, written = sent by it).
    pub counters: hangar_devices::virtio::IoCountersSnapshot,
}

/// What only a VM reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmEvent {
    /// The guest wrote a boot-progress marker to the debug port.
    BootMarker {
        /// The marker value; [`MARKER_INIT_REACHED`] means its init started.
        value: u8,
        /// Time since the Start command was accepted.
        since_start: Duration,
    },
    /// The guest drew on its screen: read the changes from
    /// the engine's `display` handle's [`crate::Display::take_changes`]. At
    /// most one per screen refresh (60 a second), none while the screen is
    /// still.
    DisplayUpdated,
}

/// What only a VM is asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmCommand {
    /// A key pressed or released on the guest's PS/2 keyboard.
    Key {
        /// The key, by position on a US keyboard.
        key: GuestKey,
        /// Pressed (true) or released.
        pressed: bool,
    },
    /// The guest's PS/2 mouse moved, scrolled or changed buttons.
    Pointer {
        /// Counts to the right.
        dx: i32,
        /// Counts downwards (screen direction).
        dy: i32,
        /// Wheel notches away from the user.
        wheel: i32,
        /// The buttons held now.
        buttons: MouseButtons,
    },
    /// Ctrl+Alt+Del on the guest's keyboard, without stopping the VM (the
    /// host's own Ctrl+Alt+Del never reaches it).
    CtrlAltDel,
}
