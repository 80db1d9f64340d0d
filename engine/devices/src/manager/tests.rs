//! A whole device manager saved and restored, driven the way a guest
//! drives it: port I/O for the legacy devices and PCI configuration,
//! MMIO for a virtio disk's BAR. No KVM: interrupt lines are eventfds and
//! MSI routes are recorded.

#![allow(clippy::unwrap_used)]

use std::io;

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::pci::MsixMessage;
use crate::virtio::pci::driver_spec::*;
use crate::virtio::{MemoryDisk, QueuePosition, QueueSetupError};

const MEM_SIZE: usize = 0x10_0000;
const DISK_BYTES: u64 = 64 * 512;
/// The first virtio device's BAR: the first allocation in the window.
const BAR: u64 = PCI_MMIO_START;
/// Its PCI device number: the host bridge has 0.
const VIRTIO_SLOT: u32 = 1;

const MSIX_TABLE: u64 = 0x4000;
const MSIX_ENABLE: u8 = 0x80;

// The driver's ring and one request, in guest memory.
const QSIZE: u16 = 8;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x1_1000;
const STATUS: u64 = 0x1_2000;

/// Stands for KVM's GSI routing table.
#[derive(Default)]
struct Routes(Mutex<Vec<(u32, MsixMessage)>>);

impl MsiRouting for Routes {
    fn route(&self, gsi: u32, message: MsixMessage) -> io::Result<()> {
        lock(&self.0).push((gsi, message));
        Ok(())
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn disk() -> Box<dyn BlockBackend> {
    Box::new(MemoryDisk::new(DISK_BYTES).unwrap())
}

/// A manager with one virtio disk, as the VM builds it.
fn manager(mem: &GuestMemoryMmap, routes: &Arc<Routes>) -> DeviceManager {
    let mut m = DeviceManager::new(Box::new(io::sink()), 512 << 20, 0).unwrap();
    let name = "virtio-blk0".to_string();
    let disk = BlockDevice::new(name.clone(), disk(), "hangar-disk0");
    m.add_virtio_device(name, Box::new(disk), mem.clone(), routes.clone())
        .unwrap();
    m
}

fn restore(
    state: &DeviceStates,
    mem: &GuestMemoryMmap,
    routes: &Arc<Routes>,
) -> Result<DeviceManager, DeviceManagerError> {
    let args = DeviceManagerArgs {
        serial_out: Box::new(io::sink()),
        memory: mem.clone(),
        routing: routes.clone(),
        virtio: vec![VirtioBackend::Block {
            name: "virtio-blk0".into(),
            backend: disk(),
        }],
    };
    DeviceManager::restore(args, state)
}

// ---- the guest's side: ports and MMIO ----

fn outb(m: &DeviceManager, port: u16, v: u8) {
    m.io_bus().write(port.into(), &[v]).unwrap();
}

fn inb(m: &DeviceManager, port: u16) -> u8 {
    let mut b = [0u8];
    m.io_bus().read(port.into(), &mut b).unwrap();
    b[0]
}

fn outl(m: &DeviceManager, port: u16, v: u32) {
    m.io_bus().write(port.into(), &v.to_le_bytes()).unwrap();
}

fn inl(m: &DeviceManager, port: u16) -> u32 {
    let mut b = [0u8; 4];
    m.io_bus().read(port.into(), &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn cmos_write(m: &DeviceManager, reg: u8, v: u8) {
    outb(m, 0x70, reg);
    outb(m, 0x71, v);
}

fn cmos_read(m: &DeviceManager, reg: u8) -> u8 {
    outb(m, 0x70, reg);
    inb(m, 0x71)
}

/// CONFIG_ADDRESS for bus 0, `device`, function 0, register byte `reg`.
fn conf1(device: u32, reg: u32) -> u32 {
    0x8000_0000 | device << 11 | (reg & 0xfc)
}

fn config_read(m: &DeviceManager, device: u32, reg: u32) -> u32 {
    outl(m, 0xcf8, conf1(device, reg));
    inl(m, 0xcfc)
}

fn config_write_byte(m: &DeviceManager, device: u32, reg: u32, v: u8) {
    outl(m, 0xcf8, conf1(device, reg));
    outb(m, 0xcfc + (reg % 4) as u16, v);
}

fn bar_write(m: &DeviceManager, offset: u64, value: u64, len: usize) {
    m.mmio_bus()
        .write(BAR + offset, &value.to_le_bytes()[..len])
        .unwrap();
}

fn bar_read(m: &DeviceManager, offset: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    m.mmio_bus().read(BAR + offset, &mut b[..len]).unwrap();
    u64::from_le_bytes(b)
}

/// The offset of the virtio device's MSI-X capability, walked the way a
/// driver walks the list.
fn msix_capability(m: &DeviceManager) -> u32 {
    let mut at = config_read(m, VIRTIO_SLOT, 0x34) & 0xfc;
    for _ in 0..48 {
        let header = config_read(m, VIRTIO_SLOT, at);
        if header & 0xff == 0x11 {
            return at;
        }
        at = (header >> 8) & 0xfc;
    }
    panic!("no MSI-X capability");
}

/// What a driver does up to, but not including, DRIVER_OK: decoding and
/// MSI-X on, vector 1 programmed, VERSION_1 | FLUSH accepted, queue 0 set
/// up on fresh rings.
fn bring_up_to_features_ok(m: &DeviceManager, mem: &GuestMemoryMmap) {
    mem.write_slice(&[0u8; 0x3000], GuestAddress(DESC)).unwrap();
    config_write_byte(m, VIRTIO_SLOT, 0x04, 0x06);
    let msix = msix_capability(m);
    config_write_byte(m, VIRTIO_SLOT, msix + 3, MSIX_ENABLE);
    let entry = MSIX_TABLE + 16;
    bar_write(m, entry, 0xfee0_1000, 4);
    bar_write(m, entry + 8, 0x41, 4);
    bar_write(m, entry + 12, 0, 4);
    bar_write(m, DEVICE_STATUS, 0, 1);
    bar_write(m, DEVICE_STATUS, ACKNOWLEDGE.into(), 1);
    bar_write(m, DEVICE_STATUS, (ACKNOWLEDGE | DRIVER).into(), 1);
    let features = F_VERSION_1 | F_FLUSH;
    bar_write(m, DRIVER_FEATURE_SELECT, 0, 4);
    bar_write(m, DRIVER_FEATURE, features & 0xffff_ffff, 4);
    bar_write(m, DRIVER_FEATURE_SELECT, 1, 4);
    bar_write(m, DRIVER_FEATURE, features >> 32, 4);
    bar_write(
        m,
        DEVICE_STATUS,
        (ACKNOWLEDGE | DRIVER | FEATURES_OK).into(),
        1,
    );
    bar_write(m, MSIX_CONFIG, 0, 2);
    bar_write(m, QUEUE_SELECT, 0, 2);
    bar_write(m, QUEUE_SIZE, QSIZE.into(), 2);
    bar_write(m, QUEUE_MSIX_VECTOR, 1, 2);
    bar_write(m, QUEUE_DESC, DESC, 8);
    bar_write(m, QUEUE_DRIVER, AVAIL, 8);
    bar_write(m, QUEUE_DEVICE, USED, 8);
    bar_write(m, QUEUE_ENABLE, 1, 2);
}

fn driver_ok(m: &DeviceManager) -> u8 {
    let all = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
    bar_write(m, DEVICE_STATUS, all.into(), 1);
    bar_read(m, DEVICE_STATUS, 1) as u8
}

/// One OUT request of sector `sector` with 512 bytes of `fill`, published
/// at avail slot `n`; the doorbell rung.
fn submit_write(m: &DeviceManager, mem: &GuestMemoryMmap, n: u16, sector: u64, fill: u8) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&1u32.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    mem.write_slice(&[fill; 512], GuestAddress(DATA)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let descs = [(HDR, 16u32, 1u16), (DATA, 512, 1), (STATUS, 1, 2)];
    for (i, (addr, len, flags)) in descs.into_iter().enumerate() {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&((i + 1) as u16).to_le_bytes());
        mem.write_slice(&d, GuestAddress(DESC + i as u64 * 16))
            .unwrap();
    }
    mem.write_obj(0u16, GuestAddress(AVAIL + 4 + u64::from(n % QSIZE) * 2))
        .unwrap();
    mem.write_obj(n + 1, GuestAddress(AVAIL + 2)).unwrap();
    let doorbells = m.doorbells().unwrap();
    doorbells[0].1.write(1).unwrap();
}

fn wait_used(mem: &GuestMemoryMmap, idx: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap() != idx {
        assert!(
            std::time::Instant::now() < deadline,
            "request {idx} never completed"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Everything the keyboard controller has for the guest, read as Linux's
/// `i8042_flush` does.
fn i8042_drain(m: &DeviceManager) -> Vec<u8> {
    let mut out = Vec::new();
    while inb(m, 0x64) & 1 != 0 {
        out.push(inb(m, 0x60));
        assert!(out.len() <= 64, "output never ends");
    }
    out
}

/// Leave every device in a state a fresh one is not in.
fn stir(m: &DeviceManager, mem: &GuestMemoryMmap) {
    // RTC: binary mode, a RAM byte, an alarm register selected with NMIs
    // masked.
    cmos_write(m, 0x0b, 0x06);
    cmos_write(m, 0x50, 0x77);
    outb(m, 0x70, 0x85);
    // Keyboard controller: IRQ 12 enabled, LEDs set, a key and a byte the
    // controller was asked to send waiting, the keyboard waiting for the
    // argument of "scancode set".
    outb(m, 0x64, 0x60);
    outb(m, 0x60, 0x47);
    outb(m, 0x60, 0xed);
    outb(m, 0x60, 0x02);
    assert!(m.inject_key(GuestKey::A, true));
    outb(m, 0x64, 0xd2);
    outb(m, 0x60, 0x77);
    outb(m, 0x60, 0xf0);
    // COM1: line control, receive interrupt, scratch, typed input.
    outb(m, 0x3fb, 0x1b);
    outb(m, 0x3f9, 0x01);
    outb(m, 0x3ff, 0x42);
    assert_eq!(m.serial_input(b"pending"), 7);
    // Debug port: a boot marker.
    outb(m, 0x402, 0x2a);
    // The host bridge's cache line size.
    config_write_byte(m, 0, 0x0c, 0x10);
    // The disk, negotiated and its queue set up.
    bring_up_to_features_ok(m, mem);
    // CONFIG_ADDRESS left on the disk's status/command dword.
    outl(m, 0xcf8, conf1(VIRTIO_SLOT, 0x04));
}

#[test]
fn test_a_stirred_manager_round_trips_and_behaves_the_same() {
    let mem = memory();
    let routes = Arc::new(Routes::default());
    let original = manager(&mem, &routes);
    let fresh = original.save();
    stir(&original, &mem);
    let state = original.save();
    assert_ne!(state, fresh);
    // Every device moved away from its reset state.
    assert_ne!(state.serial, fresh.serial);
    assert_ne!(state.i8042, fresh.i8042);
    assert_ne!(state.cmos.ram, fresh.cmos.ram);
    assert_ne!(state.debug_port, fresh.debug_port);
    assert_ne!(state.pci_host_bridge, fresh.pci_host_bridge);
    assert_ne!(state.pci_config_io, fresh.pci_config_io);
    assert_ne!(state.virtio, fresh.virtio);
    assert_eq!(state.virtio[0].driver_features, F_VERSION_1 | F_FLUSH);
    assert!(!state.virtio[0].active);

    let json = serde_json::to_string(&state).unwrap();
    let parsed: DeviceStates = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed, state);
    let restored_mem = memory();
    let restored_routes = Arc::new(Routes::default());
    let restored = restore(&parsed, &restored_mem, &restored_routes).unwrap();
    assert_eq!(restored.save(), state);
    // The restored disk's programmed vector was routed for the new VM, on
    // the GSI it had.
    let vector_1 = (
        FIRST_MSI_GSI + 1,
        MsixMessage {
            address: 0xfee0_1000,
            data: 0x41,
        },
    );
    assert_eq!(*lock(&restored_routes.0), vec![vector_1]);
    assert_eq!(
        restored
            .irq_lines()
            .iter()
            .map(IrqLine::gsi)
            .collect::<Vec<_>>(),
        original
            .irq_lines()
            .iter()
            .map(IrqLine::gsi)
            .collect::<Vec<_>>()
    );
    assert_eq!(restored.doorbells().unwrap()[0].0, BAR + 0x3000);

    // Both answer the guest alike.
    for m in [&original, &restored] {
        // CONFIG_ADDRESS still selects the disk's command register.
        assert_eq!(inl(m, 0xcf8), conf1(VIRTIO_SLOT, 0x04));
        assert_eq!(inl(m, 0xcfc) & 0xffff, 0x0006);
        assert_eq!(config_read(m, 0, 0x0c) & 0xff, 0x10);
        assert_eq!(cmos_read(m, 0x50), 0x77);
        assert_eq!(cmos_read(m, 0x0b), 0x06);
        // The ACK latched first, then the controller's byte, the
        // keyboard's other ACKs and the key.
        assert_eq!(i8042_drain(m), vec![0xfa, 0x77, 0xfa, 0xfa, 0x1e]);
        // "Which set?": the keyboard still waited for the argument.
        outb(m, 0x60, 0x00);
        assert_eq!(i8042_drain(m), vec![0xfa, 0x41]);
        assert_eq!(inb(m, 0x3fb), 0x1b);
        assert_eq!(inb(m, 0x3f9), 0x01);
        assert_eq!(inb(m, 0x3ff), 0x42);
        let typed: Vec<u8> = (0..7).map(|_| inb(m, 0x3f8)).collect();
        assert_eq!(typed, b"pending");
        bar_write(m, QUEUE_SELECT, 0, 2);
        assert_eq!(bar_read(m, QUEUE_SIZE, 2), u64::from(QSIZE));
        assert_eq!(bar_read(m, QUEUE_MSIX_VECTOR, 2), 1);
        assert_eq!(bar_read(m, QUEUE_DESC, 8), DESC);
        assert_eq!(bar_read(m, QUEUE_DRIVER, 8), AVAIL);
        assert_eq!(bar_read(m, QUEUE_DEVICE, 8), USED);
        assert_eq!(
            bar_read(m, DEVICE_STATUS, 1) as u8,
            ACKNOWLEDGE | DRIVER | FEATURES_OK
        );
    }
    // Alike after it too; only the RTC's update flags may differ, if a
    // second of host time ended between the two managers' reads.
    let (mut now, was) = (restored.save(), original.save());
    now.cmos.ram[0x0c] = was.cmos.ram[0x0c];
    now.cmos.flags_computed_until = was.cmos.flags_computed_until;
    assert_eq!(now, was);

    // And the restored disk works: DRIVER_OK, then a write reaches it.
    restored_mem
        .write_slice(&[0u8; 0x3000], GuestAddress(DESC))
        .unwrap();
    assert_eq!(driver_ok(&restored) & 0xc0, 0, "no NEEDS_RESET or FAILED");
    submit_write(&restored, &restored_mem, 0, 3, 0x5a);
    wait_used(&restored_mem, 1);
    assert_eq!(
        restored_mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        0
    );
    restored.shut_down_virtio();
    original.shut_down_virtio();
}

#[test]
fn test_a_started_disk_restores_at_its_ring_positions() {
    let mem = memory();
    let routes = Arc::new(Routes::default());
    let original = manager(&mem, &routes);
    bring_up_to_features_ok(&original, &mem);
    assert_eq!(driver_ok(&original) & 0xc0, 0);
    for n in 0..3 {
        submit_write(&original, &mem, n, u64::from(n), n as u8);
        wait_used(&mem, n + 1);
    }
    // Its I/O thread holds the queue: where it stands is not known.
    let running = original.save();
    assert!(running.virtio[0].active);
    assert_eq!(running.virtio[0].positions, None);
    assert!(matches!(
        restore(&running, &mem, &routes),
        Err(DeviceManagerError::VirtioState {
            source: VirtioPciError::PositionsUnknown,
            ..
        })
    ));
    // Paused at a request boundary, the disk knows where its queue stands.
    original.pause_virtio();
    let stopped = original.save();
    assert_eq!(
        stopped.virtio[0].positions,
        Some(vec![QueuePosition {
            next_avail: 3,
            next_used: 3,
        }])
    );
    // The guest goes on publishing: nothing serves it now.
    submit_write(&original, &mem, 3, 3, 3);
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), 3);
    let restored = restore(&stopped, &mem, &routes).unwrap();
    assert_eq!(restored.save(), stopped, "restored but not yet running");
    // The restored VM owns the rings from here on.
    original.shut_down_virtio();
    restored.resume_virtio().unwrap();
    // Its new thread takes the request whose doorbell rang before it ran.
    wait_used(&mem, 4);
    submit_write(&restored, &mem, 4, 4, 4);
    wait_used(&mem, 5);
    // Slots 3 and 4 used once each, with the chain's head, in order.
    for n in 0..5u64 {
        let id: u32 = mem.read_obj(GuestAddress(USED + 4 + n * 8)).unwrap();
        assert_eq!(id, 0, "used slot {n}");
    }
    restored.shut_down_virtio();

    // Rings outside guest memory are no queue to restore.
    let mut outside = stopped.clone();
    outside.virtio[0].queues[0].device = MEM_SIZE as u64;
    assert!(matches!(
        restore(&outside, &mem, &routes),
        Err(DeviceManagerError::VirtioState {
            source: VirtioPciError::Queue {
                index: 0,
                source: QueueSetupError::OutsideMemory
            },
            ..
        })
    ));
    // Nor is a size that is not a power of two.
    let mut odd = stopped;
    odd.virtio[0].queues[0].size = 6;
    assert!(matches!(
        restore(&odd, &mem, &routes),
        Err(DeviceManagerError::VirtioState {
            source: VirtioPciError::Queue {
                index: 0,
                source: QueueSetupError::Registers(_)
            },
            ..
        })
    ));
}

#[test]
fn test_restore_refuses_backends_that_do_not_match() {
    let mem = memory();
    let routes = Arc::new(Routes::default());
    let state = manager(&mem, &routes).save();
    let args = |virtio| DeviceManagerArgs {
        serial_out: Box::new(io::sink()),
        memory: mem.clone(),
        routing: routes.clone(),
        virtio,
    };
    assert!(matches!(
        DeviceManager::restore(args(Vec::new()), &state),
        Err(DeviceManagerError::VirtioCount { saved: 1, given: 0 })
    ));
    let (ours, _peer) = UnixStream::pair().unwrap();
    let net = VirtioBackend::Net {
        name: "virtio-net0".into(),
        stream: ours,
    };
    assert!(matches!(
        DeviceManager::restore(args(vec![net]), &state),
        Err(DeviceManagerError::VirtioKind(name)) if name == "virtio-net0"
    ));
    let small = VirtioBackend::Block {
        name: "virtio-blk0".into(),
        backend: Box::new(MemoryDisk::new(DISK_BYTES / 2).unwrap()),
    };
    assert!(matches!(
        DeviceManager::restore(args(vec![small]), &state),
        Err(DeviceManagerError::Disk {
            source: BlkError::CapacityMismatch { .. },
            ..
        })
    ));
    // A device's own refusal names the device.
    let mut bad = state.clone();
    bad.cmos.index = 0x80;
    let err = restore(&bad, &mem, &routes).err().unwrap();
    assert!(matches!(
        err,
        DeviceManagerError::Cmos(CmosError::Index(0x80))
    ));
    assert_eq!(err.to_string(), "cannot restore the RTC");
    // A state from before the debug port and host bridge were saved.
    let mut old: serde_json::Value = serde_json::to_value(&state).unwrap();
    let map = old.as_object_mut().unwrap();
    map.remove("debug_port");
    map.remove("pci_host_bridge");
    let old: DeviceStates = serde_json::from_value(old).unwrap();
    assert_eq!(old, state);
}
