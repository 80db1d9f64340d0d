//! Building a VM in three steps, each with its own type, so every way of
//! starting a guest shares the first and the last:
//!
//! 1. [`create_platform`]: the machine without its vCPUs ([`Platform`]):
//!    the KVM VM with its interrupt controllers and timer, guest RAM mapped
//!    into it, the devices and their wiring (irqfds, doorbells, screen).
//! 2. [`load_boot_source`]: what the configuration boots, put into guest
//!    memory; it says how the vCPUs begin ([`VcpuStart`]). Today that is
//!    the direct kernel loader of [`super::boot`]; firmware boot and
//!    snapshot restore will be other ways through this step.
//! 3. [`start_vcpus`]: create the vCPUs, give each its starting state and
//!    start their threads.
//!
//! Firecracker's builder is shaped the same way: one shared core for boot
//! and for restore from a snapshot, the boot-specific part in between.

use std::io::Write;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, NoDatamatch, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::boot::{self, BootError, BootSetup, BootSpec};
use super::framebuffer::GuestFramebuffer;
use super::irq_routing::{KvmIrqLine, KvmMsiRouting, ISA_IRQS};
use super::passt::{Passt, PasstError};
use super::state::{StateError, StateSupport, VcpuState, VmState};
use super::vcpu::{install_kick_handler, VcpuCommand, VcpuEnv, VcpuThread};
use super::vm::ControlMsg;
use hangar_api::config::{BootSource, DiskConfig, KernelKind, VmConfig};
use hangar_api::display::Display;
use hangar_devices::bus::lock;
use hangar_devices::irq::InterruptSink;
use hangar_devices::manager::{DeviceManager, DeviceManagerError};
use hangar_devices::virtio::net::NetDevice;
use hangar_devices::virtio::{BlockBackend, BlockDevice, MsiRouting};

/// Where the TSS the hypervisor needs on Intel sits: three pages just below
/// the BIOS area at the top of the 32-bit space, inside the MMIO gap.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Errors while building a VM.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A KVM call failed.
    #[error("KVM refused to {what}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Loading the kernel or building boot structures failed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Placing devices failed.
    #[error(transparent)]
    Devices(#[from] DeviceManagerError),
    /// A thread could not be started.
    #[error("cannot start a vCPU thread")]
    Spawn(#[source] std::io::Error),
    /// Saved KVM state could not be put back.
    #[error("cannot restore the saved vCPU and interrupt controller state")]
    Restore(#[source] StateError),
    /// User-mode networking could not start.
    #[error("cannot start the network")]
    Network(#[source] PasstError),
    /// A disk image could not be claimed or opened.
    #[error("cannot use disk {path}")]
    Disk {
        /// The image.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: hangar_block::disks::DiskError,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BuildError {
    move |source| BuildError::Kvm { what, source }
}

/// A locally administered unicast MAC, the same for a machine's name each
/// time (so its DHCP address stays put): 02:68:61 ("ha") + a name hash.
fn mac_address(name: &str) -> [u8; 6] {
    // FNV-1a: stable across runs and Rust versions, unlike DefaultHasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let [a, b, c, _] = h.to_be_bytes();
    [0x02, 0x68, 0x61, a, b, c]
}

/// Open a disk image as its definition says (raw or qcow2, never guessed).
fn open_disk(disk: &DiskConfig) -> Result<Box<dyn BlockBackend>, BuildError> {
    hangar_block::disks::open_backend(disk).map_err(|source| BuildError::Disk {
        path: disk.path.clone(),
        source,
    })
}

/// COM1's output: bytes collect here and the control thread sends them on
/// in batches, so a chatty guest costs one event per burst, not per byte.
struct SerialSink {
    buf: Arc<Mutex<Vec<u8>>>,
    notify: Sender<ControlMsg>,
}

impl Write for SerialSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buf = lock(&self.buf);
        let was_empty = buf.is_empty();
        buf.extend_from_slice(data);
        drop(buf);
        if was_empty {
            // The control thread may already be gone during teardown.
            let _ = self.notify.send(ControlMsg::SerialOutput);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A machine without its vCPUs (step 1): what every way of starting a
/// guest shares.
pub(crate) struct Platform {
    /// /dev/kvm, for what the vCPUs are created with.
    pub(crate) kvm: Kvm,
    /// The VM, shared with the interrupt routing.
    pub(crate) vm: Arc<VmFd>,
    /// Guest RAM, mapped into the VM; kept until every vCPU has been joined.
    pub(crate) memory: GuestMemoryMmap,
    /// The screen's memory, dirty-logged.
    pub(crate) framebuffer: Option<GuestFramebuffer>,
    /// The network backend, stopped after the devices.
    pub(crate) passt: Option<Passt>,
    /// The claims on the disk images, released when the machine goes.
    pub(crate) _disk_locks: Vec<hangar_block::disks::DiskLock>,
    /// The devices, their buses and interrupt lines.
    pub(crate) devices: DeviceManager,
    /// What COM1 wrote that the control thread has not sent on yet.
    pub(crate) serial_out: Arc<Mutex<Vec<u8>>>,
    /// The vCPU count the devices and boot tables were made for.
    pub(crate) vcpu_count: u8,
}

/// How the vCPUs begin, as step 2 leaves them for step 3.
#[derive(Debug, Clone)]
pub(crate) enum VcpuStart {
    /// Linux's 64-bit boot protocol: the bootstrap processor at the entry
    /// point with boot_params in RSI, the others waiting in KVM for the
    /// guest's INIT/SIPI.
    Boot(BootSetup),
    /// Where a saved machine stopped: each vCPU's state, index order, and
    /// the VM's interrupt controllers, timer and clock, put back after the
    /// vCPUs' and before any of them runs.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "snapshot restore will start machines this way; tests do now"
        )
    )]
    Restore {
        /// One per vCPU.
        vcpus: Vec<VcpuState>,
        /// The VM-wide part.
        vm: Box<VmState>,
    },
}

/// A built VM: its platform and its running vCPU threads. Dropped only
/// after its vCPU threads ended.
pub(crate) struct Machine {
    /// Everything but the vCPUs.
    pub(crate) platform: Platform,
    /// One thread per vCPU, index order.
    pub(crate) vcpus: Vec<VcpuThread>,
}

/// Build a VM that boots what `config` says and start its vCPUs.
pub(crate) fn build(
    config: &VmConfig,
    kind: KernelKind,
    tx: &Sender<ControlMsg>,
    display: Option<Display>,
) -> Result<Machine, BuildError> {
    let platform = create_platform(config, tx, display)?;
    let start = load_boot_source(&platform, &config.boot, kind)?;
    let vcpus = start_vcpus(&platform, &start, tx)?;
    Ok(Machine { platform, vcpus })
}

/// Step 1: the KVM VM (TSS, in-kernel irqchip, PIT), guest RAM registered
/// with it, and the devices `config` asks for, wired to KVM. Nothing is in
/// guest memory yet and there are no vCPUs.
pub(crate) fn create_platform(
    config: &VmConfig,
    tx: &Sender<ControlMsg>,
    display: Option<Display>,
) -> Result<Platform, BuildError> {
    let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
    let vm = kvm.create_vm().map_err(kvm_err("create a VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_err("set the TSS address"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("create the interrupt controllers"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(kvm_err("create the PIT timer"))?;

    let memory = boot::create_guest_memory(config.memory_mib)?;
    map_guest_memory(&vm, &memory)?;

    let serial_out = Arc::new(Mutex::new(Vec::new()));
    let sink = SerialSink {
        buf: serial_out.clone(),
        notify: tx.clone(),
    };
    let mut devices = DeviceManager::new(
        Box::new(sink),
        boot::ram_below_4g(&memory),
        boot::ram_above_4g(&memory),
    )?;
    let vm = Arc::new(vm);
    let routing: Arc<dyn MsiRouting> = Arc::new(KvmMsiRouting::new(vm.clone()));
    let mut disk_locks = Vec::with_capacity(config.disks.len());
    for (i, disk) in config.disks.iter().enumerate() {
        // Claimed before opening: another running machine may be writing it.
        disk_locks.push(
            hangar_block::disks::lock(&disk.path, !disk.read_only).map_err(|source| {
                BuildError::Disk {
                    path: disk.path.clone(),
                    source,
                }
            })?,
        );
        let backend = open_disk(disk)?;
        let name = format!("virtio-blk{i}");
        // The serial shows in the guest's /dev/disk/by-id.
        let device = BlockDevice::new(name.clone(), backend, &format!("hangar-disk{i}"));
        devices.add_virtio_device(name, Box::new(device), memory.clone(), routing.clone())?;
    }
    // User-mode networking: passt on the other end of a socketpair.
    let passt = match &config.network {
        Some(net) => {
            let (passt, socket) = Passt::start(net, &config.name).map_err(BuildError::Network)?;
            let name = "virtio-net0".to_string();
            let device = NetDevice::new(name.clone(), mac_address(&config.name), socket);
            devices.add_virtio_device(name, Box::new(device), memory.clone(), routing.clone())?;
            Some(passt)
        }
        None => None,
    };
    connect_devices(&vm, &devices)?;

    // The screen: its own dirty-logged slot after the RAM slots.
    let framebuffer = match (&config.display, display) {
        (Some(cfg), Some(display)) => {
            let base = devices.framebuffer_address(GuestFramebuffer::mapped_size(cfg))?;
            let fb = GuestFramebuffer::new(cfg, base, memory.num_regions() as u32, display)?;
            fb.register(&vm).map_err(kvm_err("map the framebuffer"))?;
            Some(fb)
        }
        _ => None,
    };
    Ok(Platform {
        kvm,
        vm,
        memory,
        framebuffer,
        passt,
        _disk_locks: disk_locks,
        devices,
        serial_out,
        vcpu_count: config.vcpus,
    })
}

/// Register every RAM region of `memory` with the VM, one slot each.
fn map_guest_memory(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<(), BuildError> {
    for (slot, region) in memory.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| BuildError::Boot(BootError::from(e)))?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mmap owned by `memory`, which the
        // Platform keeps until every vCPU thread has been joined.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("map guest memory"))?;
    }
    Ok(())
}

/// The devices' interrupt lines and doorbells, connected to KVM: legacy
/// pins raised with KVM_IRQ_LINE, the rest as irqfds; each virtio queue's
/// doorbell an ioeventfd.
fn connect_devices(vm: &Arc<VmFd>, devices: &DeviceManager) -> Result<(), BuildError> {
    let isa_sink: Arc<dyn InterruptSink> = Arc::new(KvmIrqLine(vm.clone()));
    for line in devices.irq_lines() {
        if line.gsi() < ISA_IRQS {
            line.deliver_through(isa_sink.clone());
        } else {
            vm.register_irqfd(line.eventfd(), line.gsi())
                .map_err(kvm_err("connect an interrupt line"))?;
        }
    }
    for (addr, doorbell) in devices.doorbells().map_err(BuildError::Spawn)? {
        vm.register_ioevent(&doorbell, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(kvm_err("connect a virtio doorbell"))?;
    }
    Ok(())
}

/// Step 2: put what `boot` names into guest memory. `kind` is what the
/// kernel file was found to be when the configuration was validated.
pub(crate) fn load_boot_source(
    platform: &Platform,
    boot: &BootSource,
    kind: KernelKind,
) -> Result<VcpuStart, BuildError> {
    match boot {
        BootSource::Kernel(kernel) => {
            let spec = BootSpec {
                kernel: &kernel.kernel,
                kind,
                initrd: kernel.initrd.as_deref(),
                cmdline: &kernel.cmdline,
                vcpus: platform.vcpu_count,
                screen: platform
                    .framebuffer
                    .as_ref()
                    .map(|fb| fb.screen_info(false)),
            };
            Ok(VcpuStart::Boot(boot::setup_guest(&platform.memory, &spec)?))
        }
    }
}

/// Step 3: create the platform's vCPUs, give each the state `start` says
/// (for a restore, the VM-wide state follows the vCPUs'), and start one
/// thread per vCPU; they run the guest at once.
pub(crate) fn start_vcpus(
    platform: &Platform,
    start: &VcpuStart,
    tx: &Sender<ControlMsg>,
) -> Result<Vec<VcpuThread>, BuildError> {
    let count = platform.vcpu_count;
    let state_support = Arc::new(StateSupport::probe(&platform.kvm, &platform.vm));
    let mut fds = Vec::with_capacity(usize::from(count));
    for index in 0..count {
        let fd = platform
            .vm
            .create_vcpu(u64::from(index))
            .map_err(kvm_err("create a vCPU"))?;
        fds.push(fd);
    }
    match start {
        VcpuStart::Boot(setup) => {
            let cpuid = platform
                .kvm
                .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
                .map_err(kvm_err("report its supported CPUID"))?;
            for (index, fd) in fds.iter().enumerate() {
                boot::configure_vcpu(fd, &cpuid, index as u8, count, setup)?;
            }
        }
        VcpuStart::Restore { vcpus, vm } => {
            if vcpus.len() != fds.len() {
                return Err(BuildError::Restore(StateError::VcpuCount {
                    saved: vcpus.len(),
                    vcpus: count,
                }));
            }
            for (fd, state) in fds.iter().zip(vcpus) {
                state
                    .restore(fd, &state_support)
                    .map_err(BuildError::Restore)?;
            }
            vm.restore(&platform.vm).map_err(BuildError::Restore)?;
        }
    }
    spawn_vcpu_threads(platform, fds, state_support, tx)
}

/// One thread per vCPU, in index order. If one cannot start, those already
/// running are stopped before the error returns (the memory they use goes
/// with the platform).
fn spawn_vcpu_threads(
    platform: &Platform,
    fds: Vec<VcpuFd>,
    state_support: Arc<StateSupport>,
    tx: &Sender<ControlMsg>,
) -> Result<Vec<VcpuThread>, BuildError> {
    // Every exit then records the registers, for a useful report of a
    // fatal one (see exit_history.rs).
    let sync_regs = platform.vm.check_extension(Cap::SyncRegs);
    install_kick_handler()
        .map_err(|e| BuildError::Spawn(std::io::Error::from_raw_os_error(e.errno())))?;
    let mut vcpus = Vec::with_capacity(fds.len());
    for (index, fd) in fds.into_iter().enumerate() {
        let tx = tx.clone();
        let report = Box::new(move |r| {
            let _ = tx.send(ControlMsg::Vcpu(r));
        });
        let env = VcpuEnv {
            io_bus: platform.devices.io_bus().clone(),
            mmio_bus: platform.devices.mmio_bus().clone(),
            reports: report,
            sync_regs,
            state_support: state_support.clone(),
        };
        let thread = VcpuThread::spawn(index as u8, fd, env);
        match thread {
            Ok(t) => vcpus.push(t),
            Err(e) => {
                for v in vcpus.drain(..) {
                    let v: VcpuThread = v;
                    v.send(VcpuCommand::Exit);
                    v.join();
                }
                return Err(BuildError::Spawn(e));
            }
        }
    }
    Ok(vcpus)
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// Each message says what was being done; the cause is its source, not
    /// part of its text, and the chain an event shows reads once each.
    #[test]
    fn build_errors_keep_their_source_out_of_their_message() {
        let refused = || std::io::Error::from_raw_os_error(libc::EACCES);
        let errors = [
            BuildError::Network(PasstError::Spawn(refused())),
            BuildError::Network(PasstError::Socket(refused())),
            BuildError::Disk {
                path: "/images/a.qcow2".into(),
                source: hangar_block::disks::DiskError::AlreadyExists("/images/a.qcow2".into()),
            },
            BuildError::Spawn(refused()),
        ];
        for e in &errors {
            let source = e.source().expect("a source");
            let text = e.to_string();
            assert!(!text.contains(&source.to_string()), "{text}");
            assert_eq!(
                hangar_api::error_text(e),
                format!("{text}: {}", hangar_api::error_text(source))
            );
        }
        assert_eq!(
            hangar_api::error_text(&errors[0]),
            format!("cannot start the network: cannot run passt: {}", refused())
        );
    }
}
