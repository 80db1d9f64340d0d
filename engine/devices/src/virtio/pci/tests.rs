//! Tests of the virtio-PCI transport as a driver sees it, without KVM: a
//! real virtio-blk device on an in-memory disk, real guest memory, real
//! interrupt lines (whose eventfds show what fired) and a routing table
//! that records what KVM would be told. Registers are reached the way the
//! guest reaches them: configuration dwords, BAR offsets, and the MMIO
//! window that finds the BAR by address.

#![allow(clippy::unwrap_used)]

use std::io;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::driver_spec::*;
use super::*;
use crate::pci::PciDevice;
use crate::virtio::blk::BlkState;
use crate::virtio::block::BlockDevice;
use crate::virtio::device::VirtioDeviceState;
use crate::BusDevice;
use hangar_block::backend::{BlockBackend, MemoryDisk};
use hangar_testkit::Rng;

const MEM_SIZE: usize = 0x10_0000;
const BAR: u64 = 0xc000_0000;
const DISK_SECTORS: u64 = 128;
const GSI_BASE: u32 = 24;
/// Vector 0 is for config changes, vector 1 for the queue.
const QUEUE_VECTOR: u16 = 1;

// The driver's queue, as tests/guests' virtio-blk lays it out.
const QSIZE: u16 = 8;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x1_1000;
const STATUS: u64 = 0x1_2000;

// virtio-blk request types and descriptor flags.
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const NEXT: u16 = 1;
const WRITE: u16 = 2;

// Configuration space.
const REG_COMMAND: usize = 1;
const REG_BAR0: usize = 4;
const COMMAND_MEMORY: u8 = 0x2;
const COMMAND_BUS_MASTER: u8 = 0x4;
const MSIX_ENABLE: u8 = 0x80;
const MSIX_FUNCTION_MASK: u8 = 0x40;

const TABLE: u64 = MSIX_TABLE_OFFSET as u64;
const PBA: u64 = MSIX_PBA_OFFSET as u64;

/// Stands for KVM's GSI routing table: remembers every route it was given.
#[derive(Default)]
struct Routes(Mutex<Vec<(u32, MsixMessage)>>);

impl Routes {
    fn all(&self) -> Vec<(u32, MsixMessage)> {
        lock(&self.0).clone()
    }
}

impl MsiRouting for Routes {
    fn route(&self, gsi: u32, message: MsixMessage) -> io::Result<()> {
        lock(&self.0).push((gsi, message));
        Ok(())
    }
}

/// The test's handle on the disk the device writes to.
struct SharedDisk(Arc<MemoryDisk>);

impl BlockBackend for SharedDisk {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn is_read_only(&self) -> bool {
        self.0.is_read_only()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }
}

/// A disk behind the transport, and what the test observes it through.
struct Rig {
    dev: VirtioPciDevice,
    mem: GuestMemoryMmap,
    disk: Arc<MemoryDisk>,
    /// Second handles on the device's interrupt lines, one per vector.
    lines: Vec<IrqLine>,
    routes: Arc<Routes>,
}

fn rig() -> Rig {
    rig_with(DISK_SECTORS, BAR)
}

fn rig_with(sectors: u64, bar: u64) -> Rig {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let disk = Arc::new(MemoryDisk::new(sectors * 512).unwrap());
    let blk = BlockDevice::new(
        "virtio-blk-test".into(),
        Box::new(SharedDisk(disk.clone())),
        "hangar-test-disk",
    );
    let vectors = u32::from(VirtioPciDevice::vector_count(1));
    let lines: Vec<IrqLine> = (0..vectors)
        .map(|i| IrqLine::new(GSI_BASE + i).unwrap())
        .collect();
    let observed = lines.iter().map(|l| l.try_clone().unwrap()).collect();
    let routes = Arc::new(Routes::default());
    let mut dev = VirtioPciDevice::new(
        "virtio-blk-test".into(),
        Box::new(blk),
        mem.clone(),
        lines,
        routes.clone(),
    )
    .unwrap();
    dev.set_bar_address(bar).unwrap();
    Rig {
        dev,
        mem,
        disk,
        lines: observed,
        routes,
    }
}

// ---- BAR and configuration space access, as a driver does it ----

fn bar_write(dev: &mut VirtioPciDevice, offset: u64, value: u64, len: usize) {
    let bytes = value.to_le_bytes();
    assert_eq!(BusDevice::write(dev, offset, &bytes[..len]), None);
}

fn bar_read(dev: &mut VirtioPciDevice, offset: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    BusDevice::read(dev, offset, &mut b[..len]);
    u64::from_le_bytes(b)
}

fn w8(dev: &mut VirtioPciDevice, offset: u64, v: u8) {
    bar_write(dev, offset, v.into(), 1)
}
fn w16(dev: &mut VirtioPciDevice, offset: u64, v: u16) {
    bar_write(dev, offset, v.into(), 2)
}
fn w32(dev: &mut VirtioPciDevice, offset: u64, v: u32) {
    bar_write(dev, offset, v.into(), 4)
}
fn w64(dev: &mut VirtioPciDevice, offset: u64, v: u64) {
    bar_write(dev, offset, v, 8)
}
fn r8(dev: &mut VirtioPciDevice, offset: u64) -> u8 {
    bar_read(dev, offset, 1) as u8
}
fn r16(dev: &mut VirtioPciDevice, offset: u64) -> u16 {
    bar_read(dev, offset, 2) as u16
}
fn r32(dev: &mut VirtioPciDevice, offset: u64) -> u32 {
    bar_read(dev, offset, 4) as u32
}
fn r64(dev: &mut VirtioPciDevice, offset: u64) -> u64 {
    bar_read(dev, offset, 8)
}

fn status(dev: &mut VirtioPciDevice) -> u8 {
    r8(dev, DEVICE_STATUS)
}

/// Configuration space dword at byte `offset` (rounded down).
fn cfg32(dev: &VirtioPciDevice, offset: usize) -> u32 {
    dev.read_config_register(offset / 4)
}

fn cfg8(dev: &VirtioPciDevice, offset: usize) -> u8 {
    cfg32(dev, offset).to_le_bytes()[offset % 4]
}

fn cfg_write(dev: &mut VirtioPciDevice, offset: usize, data: &[u8]) {
    dev.write_config_register(offset / 4, (offset % 4) as u64, data);
}

/// The capability list as a driver walks it: (offset, ID).
fn capabilities(dev: &VirtioPciDevice) -> Vec<(usize, u8)> {
    let mut out = Vec::new();
    let mut at = usize::from(cfg8(dev, 0x34) & !3);
    while at != 0 {
        assert!((0x40..0x100).contains(&at), "capability at {at:#x}");
        assert!(out.len() < 48, "capability list loops");
        out.push((at, cfg8(dev, at)));
        at = usize::from(cfg8(dev, at + 1) & !3);
    }
    out
}

fn msix_cap(dev: &VirtioPciDevice) -> usize {
    capabilities(dev)
        .into_iter()
        .find(|&(_, id)| id == 0x11)
        .map(|(at, _)| at)
        .unwrap()
}

/// The high byte of the MSI-X message control word.
fn set_msix_control(dev: &mut VirtioPciDevice, bits: u8) {
    let at = msix_cap(dev);
    cfg_write(dev, at + 3, &[bits]);
}

fn enable_decoding(dev: &mut VirtioPciDevice) {
    cfg_write(dev, REG_COMMAND * 4, &[COMMAND_MEMORY | COMMAND_BUS_MASTER]);
}

/// What the guest programs into table entry `n`.
fn msg(n: u16) -> MsixMessage {
    MsixMessage {
        address: 0xfee0_0000 | u64::from(n) << 12,
        data: 0x40 + u32::from(n),
    }
}

fn program_vector(dev: &mut VirtioPciDevice, n: u16, masked: bool) {
    let e = TABLE + u64::from(n) * 16;
    let m = msg(n);
    w32(dev, e, m.address as u32);
    w32(dev, e + 4, (m.address >> 32) as u32);
    w32(dev, e + 8, m.data);
    w32(dev, e + 12, u32::from(masked));
}

fn mask_vector(dev: &mut VirtioPciDevice, n: u16, masked: bool) {
    w32(dev, TABLE + u64::from(n) * 16 + 12, u32::from(masked));
}

fn pending_bits(dev: &mut VirtioPciDevice) -> u64 {
    r64(dev, PBA)
}

/// Write the 64-bit feature set the way Linux does (two windows).
fn write_driver_features(dev: &mut VirtioPciDevice, features: u64) {
    w32(dev, DRIVER_FEATURE_SELECT, 0);
    w32(dev, DRIVER_FEATURE, features as u32);
    w32(dev, DRIVER_FEATURE_SELECT, 1);
    w32(dev, DRIVER_FEATURE, (features >> 32) as u32);
}

fn read_driver_features(dev: &mut VirtioPciDevice) -> u64 {
    w32(dev, DRIVER_FEATURE_SELECT, 0);
    let lo = r32(dev, DRIVER_FEATURE);
    w32(dev, DRIVER_FEATURE_SELECT, 1);
    let hi = r32(dev, DRIVER_FEATURE);
    u64::from(hi) << 32 | u64::from(lo)
}

fn offered_features(dev: &mut VirtioPciDevice) -> u64 {
    w32(dev, DEVICE_FEATURE_SELECT, 0);
    let lo = r32(dev, DEVICE_FEATURE);
    w32(dev, DEVICE_FEATURE_SELECT, 1);
    let hi = r32(dev, DEVICE_FEATURE);
    u64::from(hi) << 32 | u64::from(lo)
}

/// Reset, acknowledge and negotiate `features`; returns the status read
/// back after FEATURES_OK.
fn negotiate(dev: &mut VirtioPciDevice, features: u64) -> u8 {
    w8(dev, DEVICE_STATUS, 0);
    assert_eq!(status(dev), 0);
    w8(dev, DEVICE_STATUS, ACKNOWLEDGE);
    w8(dev, DEVICE_STATUS, ACKNOWLEDGE | DRIVER);
    write_driver_features(dev, features);
    w8(dev, DEVICE_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    status(dev)
}

/// Queue 0's registers, the way tests/guests' driver writes them.
fn setup_queue(dev: &mut VirtioPciDevice, size: u16, desc: u64, avail: u64, used: u64) {
    w16(dev, QUEUE_SELECT, 0);
    w16(dev, QUEUE_SIZE, size);
    w16(dev, QUEUE_MSIX_VECTOR, QUEUE_VECTOR);
    w64(dev, QUEUE_DESC, desc);
    w64(dev, QUEUE_DRIVER, avail);
    w64(dev, QUEUE_DEVICE, used);
    w16(dev, QUEUE_ENABLE, 1);
}

fn driver_ok(dev: &mut VirtioPciDevice) -> u8 {
    w8(
        dev,
        DEVICE_STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    status(dev)
}

/// Zero the driver's rings, as a driver allocating them fresh would.
fn clear_rings(mem: &GuestMemoryMmap) {
    mem.write_slice(&[0u8; 0x3000], GuestAddress(DESC)).unwrap();
}

impl Rig {
    /// The whole driver bring-up: decoding, MSI-X with vector 1 unmasked,
    /// VERSION_1 | FLUSH, queue 0 of QSIZE entries, DRIVER_OK.
    fn start(&mut self) {
        enable_decoding(&mut self.dev);
        program_vector(&mut self.dev, 0, false);
        program_vector(&mut self.dev, QUEUE_VECTOR, false);
        set_msix_control(&mut self.dev, MSIX_ENABLE);
        self.start_queue();
    }

    /// Negotiate and start the queue on fresh rings; MSI-X as it is.
    fn start_queue(&mut self) {
        clear_rings(&self.mem);
        let s = negotiate(&mut self.dev, F_VERSION_1 | F_FLUSH);
        assert_ne!(s & FEATURES_OK, 0);
        setup_queue(&mut self.dev, QSIZE, DESC, AVAIL, USED);
        let s = driver_ok(&mut self.dev);
        assert_eq!(s & (NEEDS_RESET | FAILED), 0, "status {s:#x}");
        assert!(self.dev.active);
    }

    /// Put a request in the rings (header, optional 512-byte data buffer,
    /// status) and publish it; returns the avail index after it.
    fn submit(&self, kind: u32, sector: u64, with_data: bool) -> u16 {
        let m = &self.mem;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        m.write_slice(&h, GuestAddress(HDR)).unwrap();
        m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let device_writes = kind == T_IN;
        let mut descs = vec![(HDR, 16u32, 0u16)];
        if with_data {
            descs.push((DATA, 512, if device_writes { WRITE } else { 0 }));
        }
        descs.push((STATUS, 1, WRITE));
        let n = descs.len();
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let flags = if i + 1 < n { flags | NEXT } else { flags };
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&((i + 1) as u16).to_le_bytes());
            m.write_slice(&d, GuestAddress(DESC + i as u64 * 16))
                .unwrap();
        }
        let idx: u16 = m.read_obj(GuestAddress(AVAIL + 2)).unwrap();
        let slot = AVAIL + 4 + u64::from(idx % QSIZE) * 2;
        m.write_obj(0u16, GuestAddress(slot)).unwrap();
        let next = idx.wrapping_add(1);
        m.write_obj(next, GuestAddress(AVAIL + 2)).unwrap();
        next
    }

    /// What KVM's ioeventfd does when the guest writes the doorbell.
    fn ring(&self) {
        self.dev.doorbells()[0].1.write(1).unwrap();
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    /// The used element for request number `n` (0-based): (id, len).
    fn used_elem(&self, n: u16) -> (u32, u32) {
        let at = USED + 4 + u64::from(n % QSIZE) * 8;
        (
            self.mem.read_obj(GuestAddress(at)).unwrap(),
            self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }

    fn request_status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn wait_used(&self, idx: u16) {
        wait_until(|| self.used_idx() == idx, "the used ring to advance");
    }

    /// Consume a signal on vector `n`'s line, if it fired.
    fn fired(&self, n: u16) -> bool {
        self.lines[usize::from(n)].eventfd().read().is_ok()
    }

    fn wait_fired(&self, n: u16) {
        wait_until(|| self.fired(n), "the vector's eventfd");
    }
}

/// Poll `cond` until it holds; fail after five seconds.
fn wait_until(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..512u32)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn blk_state(dev: &VirtioPciDevice) -> BlkState {
    match dev.device().save_state() {
        VirtioDeviceState::Blk(s) => s,
        other => panic!("not a disk: {other:?}"),
    }
}

// ---- identity and capabilities ----

#[test]
fn test_identity_and_header() {
    let r = rig();
    let d = &r.dev;
    assert_eq!(cfg32(d, 0x00), 0x1042_1af4, "vendor 0x1af4, device 0x1042");
    // Revision 1, class 01 (mass storage) 00 00.
    assert_eq!(cfg32(d, 0x08), 0x0100_0001);
    assert_eq!(cfg32(d, 0x2c), 0x0040_1af4, "subsystem");
    // Status: capability list.
    assert_ne!(cfg32(d, 0x04) & (1 << 20), 0);
    // Header type 0, single function.
    assert_eq!(cfg8(d, 0x0e), 0);
    // No INTx pin: MSI-X only.
    assert_eq!(cfg8(d, 0x3d), 0);
    // BAR 0: 32-bit non-prefetchable memory where it was placed.
    assert_eq!(cfg32(d, 0x10), BAR as u32);
    for bar in 1..6 {
        assert_eq!(cfg32(d, 0x10 + bar * 4), 0, "BAR {bar} is unused");
    }
    assert_eq!(d.bars().len(), 1);
    assert_eq!(d.bars()[0].size, BAR_SIZE);
    assert_eq!(d.bar_address(), BAR);
}

#[test]
fn test_bar_sizing_reads_back_the_size_mask() {
    let mut r = rig();
    cfg_write(&mut r.dev, REG_BAR0 * 4, &u32::MAX.to_le_bytes());
    assert_eq!(cfg32(&r.dev, 0x10), !(BAR_SIZE as u32 - 1));
    cfg_write(&mut r.dev, REG_BAR0 * 4, &(BAR as u32).to_le_bytes());
    assert_eq!(r.dev.bar_address(), BAR);
}

#[test]
fn test_capability_chain_points_at_the_bar() {
    let mut r = rig();
    let caps = capabilities(&r.dev);
    let mut seen = Vec::new();
    let mut notify_len = 0;
    for &(at, id) in &caps {
        assert_eq!(at % 4, 0, "capabilities are dword aligned");
        match id {
            0x09 => {
                let cap_len = cfg8(&r.dev, at + 2);
                let cfg_type = cfg8(&r.dev, at + 3);
                let bar = cfg8(&r.dev, at + 4);
                let offset = u64::from(cfg32(&r.dev, at + 8));
                let length = u64::from(cfg32(&r.dev, at + 12));
                assert_eq!(bar, 0);
                assert!(offset + length <= BAR_SIZE);
                match cfg_type {
                    1 => assert_eq!((cap_len, offset, length), (16, 0x0000, 0x38)),
                    3 => assert_eq!((cap_len, offset, length), (16, 0x1000, 1)),
                    4 => {
                        assert_eq!((cap_len, offset), (16, 0x2000));
                        assert!(length >= 60, "virtio-blk config is 60 bytes");
                    }
                    2 => {
                        assert_eq!((cap_len, offset), (20, 0x3000));
                        assert_eq!(cfg32(&r.dev, at + 16), 4, "notify_off_multiplier");
                        notify_len = length;
                    }
                    t => panic!("unknown virtio structure {t}"),
                }
                seen.push(cfg_type);
            }
            0x11 => {
                let control = (cfg32(&r.dev, at) >> 16) as u16;
                assert_eq!(control & 0x7ff, 1, "two vectors: config and queue");
                assert_eq!(control & 0xc000, 0, "disabled and unmasked at reset");
                assert_eq!(cfg32(&r.dev, at + 4), 0x4000, "table at 0x4000 in BAR 0");
                assert_eq!(cfg32(&r.dev, at + 8), 0x6000, "PBA at 0x6000 in BAR 0");
                seen.push(0x11);
            }
            other => panic!("unexpected capability {other:#x}"),
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, vec![1, 2, 3, 4, 0x11], "each structure exactly once");
    // The driver's doorbell: notify offset + queue_notify_off * multiplier.
    w16(&mut r.dev, QUEUE_SELECT, 0);
    assert_eq!(r16(&mut r.dev, QUEUE_NOTIFY_OFF), 0);
    assert!(notify_len >= 2);
    let doorbells = r.dev.doorbells();
    assert_eq!(doorbells.len(), 1);
    assert_eq!(doorbells[0].0, BAR + 0x3000);
    // The capabilities also show up in the device-side walk.
    assert_eq!(r.dev.config.capabilities().len(), caps.len());
}

#[test]
fn test_device_config_is_the_disk() {
    let mut r = rig();
    assert_eq!(r64(&mut r.dev, 0x2000), DISK_SECTORS);
    assert_eq!(r32(&mut r.dev, 0x2000), DISK_SECTORS as u32);
    assert_eq!(r32(&mut r.dev, 0x2004), 0);
    // blk_size.
    assert_eq!(r32(&mut r.dev, 0x2000 + 20), 512);
    // Writes to it are ignored.
    w32(&mut r.dev, 0x2000, 7);
    assert_eq!(r64(&mut r.dev, 0x2000), DISK_SECTORS);
    assert_eq!(r8(&mut r.dev, CONFIG_GENERATION), 0);
}

// ---- feature negotiation ----

#[test]
fn test_device_feature_windows() {
    let mut r = rig();
    let d = &mut r.dev;
    w32(d, DEVICE_FEATURE_SELECT, 0);
    assert_eq!(r32(d, DEVICE_FEATURE_SELECT), 0);
    let lo = r32(d, DEVICE_FEATURE);
    assert_ne!(lo & F_EVENT_IDX as u32, 0, "EVENT_IDX offered");
    assert_ne!(lo & F_FLUSH as u32, 0, "FLUSH offered");
    assert_eq!(lo & F_BARRIER as u32, 0, "legacy BARRIER not offered");
    w32(d, DEVICE_FEATURE_SELECT, 1);
    assert_eq!(r32(d, DEVICE_FEATURE_SELECT), 1);
    let hi = r32(d, DEVICE_FEATURE);
    assert_ne!(hi & 1, 0, "VERSION_1 offered");
    assert_eq!(hi & 2, 0, "ACCESS_PLATFORM not offered");
    for sel in [2, 3, 0xffff_ffff] {
        w32(d, DEVICE_FEATURE_SELECT, sel);
        assert_eq!(r32(d, DEVICE_FEATURE), 0, "window {sel}");
    }
    // The device feature register is read-only.
    w32(d, DEVICE_FEATURE_SELECT, 0);
    w32(d, DEVICE_FEATURE, 0);
    assert_eq!(r32(d, DEVICE_FEATURE), lo);
}

#[test]
fn test_accepted_subset_keeps_features_ok_and_reaches_the_device() {
    let mut r = rig();
    let offered = offered_features(&mut r.dev);
    let want = F_VERSION_1 | F_FLUSH | F_EVENT_IDX;
    assert_eq!(offered & want, want);
    let s = negotiate(&mut r.dev, want);
    assert_eq!(s, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(read_driver_features(&mut r.dev), want);
    // The device-specific part reached the disk.
    assert_eq!(blk_state(&r.dev).acked_features & F_FLUSH, F_FLUSH);
    // And the transport's snapshot carries it, through serde and back.
    let state = r.dev.save();
    assert_eq!(state.driver_features, want);
    assert_eq!(state.device, VirtioDeviceState::Blk(blk_state(&r.dev)));
    let json = serde_json::to_string(&state).unwrap();
    let back: crate::virtio::VirtioPciState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);

    // Everything offered is a subset too.
    let s = negotiate(&mut r.dev, offered);
    assert_ne!(s & FEATURES_OK, 0);
}

#[test]
fn test_feature_writes_after_features_ok_are_ignored() {
    let mut r = rig();
    let want = F_VERSION_1 | F_FLUSH;
    assert_ne!(negotiate(&mut r.dev, want) & FEATURES_OK, 0);
    write_driver_features(&mut r.dev, F_VERSION_1 | F_EVENT_IDX);
    assert_eq!(read_driver_features(&mut r.dev), want);
    write_driver_features(&mut r.dev, 0);
    assert_eq!(read_driver_features(&mut r.dev), want);
    assert_ne!(status(&mut r.dev) & FEATURES_OK, 0);
}

#[test]
fn test_refused_features_clear_features_ok() {
    let mut r = rig();
    let cases = [
        (
            "not offered (low window)",
            F_VERSION_1 | F_FLUSH | F_BARRIER,
        ),
        ("not offered (high window)", F_VERSION_1 | F_ACCESS_PLATFORM),
        ("not offered (far bit)", F_VERSION_1 | 1 << 63),
        ("no VERSION_1", F_FLUSH),
        ("nothing", 0),
    ];
    for (what, features) in cases {
        let s = negotiate(&mut r.dev, features);
        assert_eq!(s & FEATURES_OK, 0, "{what}: status {s:#x}");
        assert_eq!(s, ACKNOWLEDGE | DRIVER, "{what}");
        // DRIVER_OK after a refused negotiation fails the device.
        let s = driver_ok(&mut r.dev);
        assert_ne!(s & FAILED, 0, "{what}: status {s:#x}");
        assert!(!r.dev.active, "{what}");
    }
    // And a good set after a reset still works.
    assert_ne!(negotiate(&mut r.dev, F_VERSION_1) & FEATURES_OK, 0);
}

#[test]
fn test_feature_select_windows_for_the_driver() {
    let mut r = rig();
    let d = &mut r.dev;
    w32(d, DRIVER_FEATURE_SELECT, 0);
    w32(d, DRIVER_FEATURE, 0x1234);
    w32(d, DRIVER_FEATURE_SELECT, 1);
    w32(d, DRIVER_FEATURE, 0x1);
    // Windows past 1 neither store nor read.
    w32(d, DRIVER_FEATURE_SELECT, 2);
    w32(d, DRIVER_FEATURE, 0xffff_ffff);
    assert_eq!(r32(d, DRIVER_FEATURE), 0);
    assert_eq!(r32(d, DRIVER_FEATURE_SELECT), 2);
    assert_eq!(read_driver_features(d), 0x1_0000_1234);
}

// ---- queue set-up ----

#[test]
fn test_queue_registers() {
    let mut r = rig();
    let d = &mut r.dev;
    assert_eq!(r16(d, NUM_QUEUES), 1);
    w16(d, QUEUE_SELECT, 0);
    assert_eq!(r16(d, QUEUE_SIZE), 256, "max size at reset");
    w16(d, QUEUE_SIZE, 16);
    assert_eq!(r16(d, QUEUE_SIZE), 16);
    assert_eq!(r16(d, QUEUE_MSIX_VECTOR), NO_VECTOR);
    assert_eq!(r16(d, QUEUE_ENABLE), 0);

    // Vectors: in range kept, out of range refused with NO_VECTOR.
    w16(d, QUEUE_MSIX_VECTOR, 1);
    assert_eq!(r16(d, QUEUE_MSIX_VECTOR), 1);
    for bad in [2, 3, 0x7ff, 0x8000, 0xfffe] {
        w16(d, QUEUE_MSIX_VECTOR, bad);
        assert_eq!(r16(d, QUEUE_MSIX_VECTOR), NO_VECTOR, "vector {bad}");
    }
    w16(d, QUEUE_MSIX_VECTOR, NO_VECTOR);
    assert_eq!(r16(d, QUEUE_MSIX_VECTOR), NO_VECTOR);
    w16(d, MSIX_CONFIG, 0);
    assert_eq!(r16(d, MSIX_CONFIG), 0);
    w16(d, MSIX_CONFIG, 2);
    assert_eq!(r16(d, MSIX_CONFIG), NO_VECTOR);

    // 64-bit addresses: two dword writes, or one qword write.
    w32(d, QUEUE_DESC, 0x1234_5670);
    w32(d, QUEUE_DESC + 4, 0x1);
    assert_eq!(r64(d, QUEUE_DESC), 0x1_1234_5670);
    assert_eq!(r32(d, QUEUE_DESC), 0x1234_5670);
    assert_eq!(r32(d, QUEUE_DESC + 4), 1);
    w64(d, QUEUE_DRIVER, 0xab_cdef_0002);
    assert_eq!(r32(d, QUEUE_DRIVER), 0xcdef_0002);
    assert_eq!(r32(d, QUEUE_DRIVER + 4), 0xab);
    w32(d, QUEUE_DEVICE + 4, 0x5);
    w32(d, QUEUE_DEVICE, 0x8000);
    assert_eq!(r64(d, QUEUE_DEVICE), 0x5_0000_8000);
    // Writing one half keeps the other.
    w32(d, QUEUE_DESC, 0x10);
    assert_eq!(r64(d, QUEUE_DESC), 0x1_0000_0010);

    // A queue that does not exist reads as absent and ignores writes.
    w16(d, QUEUE_SELECT, 1);
    assert_eq!(r16(d, QUEUE_SELECT), 1);
    w16(d, QUEUE_SIZE, 8);
    w16(d, QUEUE_MSIX_VECTOR, 0);
    w64(d, QUEUE_DESC, 0x1000);
    w16(d, QUEUE_ENABLE, 1);
    assert_eq!(r16(d, QUEUE_SIZE), 0);
    assert_eq!(r16(d, QUEUE_MSIX_VECTOR), NO_VECTOR);
    assert_eq!(r16(d, QUEUE_ENABLE), 0);
    assert_eq!(r64(d, QUEUE_DESC), 0);
    // Queue 0 kept its values.
    w16(d, QUEUE_SELECT, 0);
    assert_eq!(r16(d, QUEUE_SIZE), 16);
    assert_eq!(r64(d, QUEUE_DRIVER), 0xab_cdef_0002);
}

#[test]
fn test_queue_enable_freezes_addresses_and_zero_is_ignored() {
    let mut r = rig();
    let d = &mut r.dev;
    w16(d, QUEUE_SELECT, 0);
    w64(d, QUEUE_DESC, DESC);
    w16(d, QUEUE_ENABLE, 1);
    w64(d, QUEUE_DESC, 0x8000);
    w32(d, QUEUE_DESC + 4, 1);
    assert_eq!(r64(d, QUEUE_DESC), DESC);
    // Only a reset disables a queue.
    w16(d, QUEUE_ENABLE, 0);
    assert_eq!(r16(d, QUEUE_ENABLE), 1);
}

#[test]
fn test_queue_registers_frozen_after_driver_ok() {
    let mut r = rig();
    r.start();
    let d = &mut r.dev;
    w16(d, QUEUE_SELECT, 0);
    w16(d, QUEUE_SIZE, 4);
    w16(d, QUEUE_MSIX_VECTOR, 0);
    w64(d, QUEUE_DESC, 0x8000);
    w64(d, QUEUE_DRIVER, 0x9000);
    w64(d, QUEUE_DEVICE, 0xa000);
    w16(d, QUEUE_ENABLE, 0);
    assert_eq!(r16(d, QUEUE_SIZE), QSIZE);
    assert_eq!(r16(d, QUEUE_MSIX_VECTOR), QUEUE_VECTOR);
    assert_eq!(r64(d, QUEUE_DESC), DESC);
    assert_eq!(r64(d, QUEUE_DRIVER), AVAIL);
    assert_eq!(r64(d, QUEUE_DEVICE), USED);
    assert_eq!(r16(d, QUEUE_ENABLE), 1);
    // Clearing status bits without a reset is ignored too.
    w8(d, DEVICE_STATUS, ACKNOWLEDGE);
    assert_eq!(status(d), ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert!(r.dev.active);
    // And the queue still serves requests.
    let idx = r.submit(T_OUT, 0, true);
    r.ring();
    r.wait_used(idx);
}

#[test]
fn test_driver_ok_without_features_ok_fails() {
    let mut r = rig();
    w8(&mut r.dev, DEVICE_STATUS, ACKNOWLEDGE | DRIVER);
    write_driver_features(&mut r.dev, F_VERSION_1);
    setup_queue(&mut r.dev, QSIZE, DESC, AVAIL, USED);
    w8(&mut r.dev, DEVICE_STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
    let s = status(&mut r.dev);
    assert_eq!(s, ACKNOWLEDGE | DRIVER | DRIVER_OK | FAILED);
    assert!(!r.dev.active);
}

#[test]
fn test_invalid_queue_needs_reset_and_starts_no_worker() {
    let cases: [(&str, u16, u64, u64, u64); 10] = [
        ("size 3", 3, DESC, AVAIL, USED),
        ("size 0", 0, DESC, AVAIL, USED),
        ("size 12", 12, DESC, AVAIL, USED),
        ("size 512 > max", 512, DESC, AVAIL, USED),
        (
            "descriptor table not 16-aligned",
            QSIZE,
            DESC + 8,
            AVAIL,
            USED,
        ),
        ("driver ring odd", QSIZE, DESC, AVAIL + 1, USED),
        ("device ring not 4-aligned", QSIZE, DESC, AVAIL, USED + 2),
        (
            "descriptor table past memory",
            QSIZE,
            MEM_SIZE as u64,
            AVAIL,
            USED,
        ),
        (
            "device ring straddles the end",
            QSIZE,
            DESC,
            AVAIL,
            MEM_SIZE as u64 - 8,
        ),
        (
            "driver ring above 4 GiB",
            QSIZE,
            DESC,
            1 << 32 | AVAIL,
            USED,
        ),
    ];
    let mut r = rig();
    enable_decoding(&mut r.dev);
    for (what, size, desc, avail, used) in cases {
        let s = negotiate(&mut r.dev, F_VERSION_1);
        assert_ne!(s & FEATURES_OK, 0, "{what}");
        setup_queue(&mut r.dev, size, desc, avail, used);
        let s = driver_ok(&mut r.dev);
        assert_ne!(s & NEEDS_RESET, 0, "{what}: status {s:#x}");
        assert!(!r.dev.active, "{what}: a worker was started");
    }
    // The device recovers with a reset and a good queue.
    r.start();
    let idx = r.submit(T_OUT, 1, true);
    r.ring();
    r.wait_used(idx);
}

#[test]
fn test_no_enabled_queue_needs_reset() {
    let mut r = rig();
    assert_ne!(negotiate(&mut r.dev, F_VERSION_1) & FEATURES_OK, 0);
    let s = driver_ok(&mut r.dev);
    assert_ne!(s & NEEDS_RESET, 0, "status {s:#x}");
    assert!(!r.dev.active);
}

// ---- the data path, without KVM ----

#[test]
fn test_request_through_doorbell_eventfd_lands_on_disk_and_interrupts() {
    let mut r = rig();
    r.start();
    let data = pattern(3);
    r.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    let idx = r.submit(T_OUT, 3, true);
    r.ring();
    r.wait_used(idx);
    r.wait_fired(QUEUE_VECTOR);
    assert_eq!(r.used_elem(0), (0, 1), "head 0, the status byte written");
    assert_eq!(r.request_status(), 0);
    assert_eq!(&r.disk.contents()[3 * 512..4 * 512], &data[..]);
    assert!(r.disk.contents()[..3 * 512].iter().all(|&b| b == 0));
    // The config vector stayed quiet.
    assert!(!r.fired(0));
    // The ISR says "queue" and clears on read.
    assert_eq!(r8(&mut r.dev, 0x1000), 1);
    assert_eq!(r8(&mut r.dev, 0x1000), 0);

    // Read it back, this time through a doorbell write that reached the
    // BAR (no ioeventfd, e.g. after the guest moved the BAR).
    r.mem.write_slice(&[0u8; 512], GuestAddress(DATA)).unwrap();
    let idx = r.submit(T_IN, 3, true);
    w16(&mut r.dev, 0x3000, 0);
    r.wait_used(idx);
    r.wait_fired(QUEUE_VECTOR);
    assert_eq!(r.used_elem(1), (0, 513));
    assert_eq!(r.request_status(), 0);
    let mut back = vec![0u8; 512];
    r.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(back, data);

    // Past the end of the disk: IOERR, still used and signalled.
    let idx = r.submit(T_IN, DISK_SECTORS, true);
    r.ring();
    r.wait_used(idx);
    r.wait_fired(QUEUE_VECTOR);
    assert_eq!(r.request_status(), 1);
    // The interrupt went through the route the guest programmed.
    assert!(r.routes.all().contains(&(GSI_BASE + 1, msg(1))));
}

#[test]
fn test_masked_vector_pends_and_fires_on_unmask() {
    let mut r = rig();
    r.start();
    mask_vector(&mut r.dev, QUEUE_VECTOR, true);
    let idx = r.submit(T_OUT, 0, true);
    r.ring();
    r.wait_used(idx);
    // The pending bit is set by the same call that would have fired.
    wait_until(
        || pending_bits(&mut r.dev) & 2 != 0,
        "the PBA bit of vector 1",
    );
    assert!(!r.fired(QUEUE_VECTOR), "a masked vector fired");
    assert_eq!(pending_bits(&mut r.dev), 2);
    mask_vector(&mut r.dev, QUEUE_VECTOR, false);
    assert!(r.fired(QUEUE_VECTOR), "unmasking delivers at once");
    assert_eq!(pending_bits(&mut r.dev), 0);
    assert!(!r.fired(QUEUE_VECTOR), "delivered once");
}

#[test]
fn test_function_mask_pends_and_fires_on_unmask() {
    let mut r = rig();
    r.start();
    set_msix_control(&mut r.dev, MSIX_ENABLE | MSIX_FUNCTION_MASK);
    let idx = r.submit(T_OUT, 0, true);
    r.ring();
    r.wait_used(idx);
    wait_until(
        || pending_bits(&mut r.dev) & 2 != 0,
        "the PBA bit of vector 1",
    );
    assert!(!r.fired(QUEUE_VECTOR), "a function-masked vector fired");
    // Unmasking a vector entry does not get past the function mask.
    mask_vector(&mut r.dev, QUEUE_VECTOR, false);
    assert!(!r.fired(QUEUE_VECTOR));
    set_msix_control(&mut r.dev, MSIX_ENABLE);
    assert!(r.fired(QUEUE_VECTOR), "clearing the function mask delivers");
    assert_eq!(pending_bits(&mut r.dev), 0);
}

#[test]
fn test_msix_disabled_sets_only_the_isr() {
    let mut r = rig();
    enable_decoding(&mut r.dev);
    program_vector(&mut r.dev, QUEUE_VECTOR, false);
    // MSI-X stays disabled.
    r.start_queue();
    let idx = r.submit(T_OUT, 0, true);
    r.ring();
    r.wait_used(idx);
    let mut isr = 0;
    wait_until(
        || {
            isr = r8(&mut r.dev, 0x1000);
            isr != 0
        },
        "the ISR",
    );
    assert_eq!(isr, 1, "queue interrupt bit");
    assert_eq!(r8(&mut r.dev, 0x1000), 0, "the ISR clears on read");
    assert!(!r.fired(QUEUE_VECTOR));
    assert!(!r.fired(0));
    // Disabled means dropped, not pending.
    assert_eq!(pending_bits(&mut r.dev), 0);
    set_msix_control(&mut r.dev, MSIX_ENABLE);
    assert!(!r.fired(QUEUE_VECTOR));
}

#[test]
fn test_queue_without_vector_sets_only_the_isr() {
    let mut r = rig();
    r.start();
    w8(&mut r.dev, DEVICE_STATUS, 0);
    clear_rings(&r.mem);
    assert_ne!(negotiate(&mut r.dev, F_VERSION_1) & FEATURES_OK, 0);
    setup_queue(&mut r.dev, QSIZE, DESC, AVAIL, USED);
    w16(&mut r.dev, QUEUE_MSIX_VECTOR, NO_VECTOR);
    assert_eq!(driver_ok(&mut r.dev) & (NEEDS_RESET | FAILED), 0);
    let idx = r.submit(T_OUT, 0, true);
    r.ring();
    r.wait_used(idx);
    wait_until(|| r8(&mut r.dev, 0x1000) == 1, "the ISR");
    assert!(!r.fired(0) && !r.fired(1));
    assert_eq!(pending_bits(&mut r.dev), 0);
}

// ---- routing ----

#[test]
fn test_table_writes_route_the_vector_gsi() {
    let mut r = rig();
    assert!(r.routes.all().is_empty());
    program_vector(&mut r.dev, 0, true);
    program_vector(&mut r.dev, 1, true);
    let routes = r.routes.all();
    assert_eq!(routes.last(), Some(&(GSI_BASE + 1, msg(1))));
    assert!(routes.contains(&(GSI_BASE, msg(0))));
    assert!(routes
        .iter()
        .all(|&(gsi, _)| gsi == GSI_BASE || gsi == GSI_BASE + 1));

    // A 64-bit write of the address, the low bits dropped.
    let n = r.routes.all().len();
    w64(&mut r.dev, TABLE + 16, 0x1_fee0_2003);
    assert_eq!(
        r.routes.all().last(),
        Some(&(
            GSI_BASE + 1,
            MsixMessage {
                address: 0x1_fee0_2000,
                data: msg(1).data
            }
        ))
    );
    assert_eq!(r.routes.all().len(), n + 1);
    assert_eq!(r64(&mut r.dev, TABLE + 16), 0x1_fee0_2000);
    // Rewriting the same value changes nothing and routes nothing.
    w64(&mut r.dev, TABLE + 16, 0x1_fee0_2000);
    assert_eq!(r.routes.all().len(), n + 1);
    // A byte write of the data.
    w8(&mut r.dev, TABLE + 8, 0x77);
    assert_eq!(r.routes.all().last().unwrap().1.data, 0x77);
    assert_eq!(r32(&mut r.dev, TABLE + 8), 0x77);
    // Past the table (below the PBA) and the PBA itself are not entries.
    let n = r.routes.all().len();
    w32(&mut r.dev, TABLE + 32, 1);
    w32(&mut r.dev, PBA, 0xffff_ffff);
    assert_eq!(r.routes.all().len(), n);
    assert_eq!(r32(&mut r.dev, TABLE + 32), 0);
    assert_eq!(pending_bits(&mut r.dev), 0);
    // Reserved vector-control bits read as zero.
    w32(&mut r.dev, TABLE + 12, 0xffff_ffff);
    assert_eq!(r32(&mut r.dev, TABLE + 12), 1);
}

// ---- reset ----

#[test]
fn test_reset_stops_the_worker_and_clears_the_transport() {
    let mut r = rig();
    r.start();
    w16(&mut r.dev, MSIX_CONFIG, 0);
    let idx = r.submit(T_OUT, 5, true);
    r.ring();
    r.wait_used(idx);
    r.wait_fired(QUEUE_VECTOR);

    w8(&mut r.dev, DEVICE_STATUS, 0);
    assert!(!r.dev.active);
    let d = &mut r.dev;
    assert_eq!(status(d), 0);
    assert_eq!(r32(d, DEVICE_FEATURE_SELECT), 0);
    assert_eq!(r32(d, DRIVER_FEATURE_SELECT), 0);
    assert_eq!(read_driver_features(d), 0);
    assert_eq!(r16(d, MSIX_CONFIG), NO_VECTOR);
    w16(d, QUEUE_SELECT, 0);
    assert_eq!(r16(d, QUEUE_SIZE), 256);
    assert_eq!(r16(d, QUEUE_MSIX_VECTOR), NO_VECTOR);
    assert_eq!(r16(d, QUEUE_ENABLE), 0);
    assert_eq!(r64(d, QUEUE_DESC), 0);
    assert_eq!(r64(d, QUEUE_DRIVER), 0);
    assert_eq!(r64(d, QUEUE_DEVICE), 0);
    assert_eq!(r8(d, 0x1000), 0, "ISR cleared");
    // The MSI-X table is the function's, not the device's: it stays.
    assert_eq!(r32(d, TABLE + 16 + 8), msg(1).data);

    // A doorbell after the reset is not served.
    let before = r.used_idx();
    r.submit(T_OUT, 6, true);
    r.ring();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(r.used_idx(), before, "a reset device served a request");
    assert!(!r.fired(QUEUE_VECTOR));

    // Set up again from scratch and use it.
    r.start_queue();
    let data = pattern(9);
    r.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    let idx = r.submit(T_OUT, 7, true);
    assert_eq!(idx, 1);
    r.ring();
    r.wait_used(idx);
    r.wait_fired(QUEUE_VECTOR);
    assert_eq!(&r.disk.contents()[7 * 512..8 * 512], &data[..]);
    assert!(
        r.disk.contents()[6 * 512..7 * 512].iter().all(|&b| b == 0),
        "the request made after the reset was never executed"
    );
}

#[test]
fn test_shut_down_and_drop_stop_the_worker() {
    let mut r = rig();
    r.start();
    r.dev.shut_down();
    assert!(!r.dev.active);
    let before = r.used_idx();
    r.submit(T_OUT, 0, true);
    r.ring();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(r.used_idx(), before);
    // Dropping an active device joins its worker (no hang, no panic).
    let mut r = rig();
    r.start();
    drop(r);
}

// ---- the MMIO window ----

#[test]
fn test_mmio_window_dispatches_by_bar_while_decoding() {
    const WINDOW: u64 = 0x8000_0000;
    const OTHER_BAR: u64 = 0xc001_0000;
    let a = Arc::new(Mutex::new(rig().dev));
    let b = Arc::new(Mutex::new(rig_with(32, OTHER_BAR).dev));
    let mut window = PciMmioWindow::new(WINDOW);
    window.add(a.clone());
    window.add(b.clone());
    let read = |w: &mut PciMmioWindow, addr: u64, len: usize| {
        let mut buf = [0u8; 8];
        w.read(addr - WINDOW, &mut buf[..len]);
        u64::from_le_bytes(buf)
    };

    // Decoding off: nothing answers, and writes go nowhere.
    assert_eq!(read(&mut window, BAR + 0x2000, 8), u64::MAX);
    assert_eq!(read(&mut window, BAR + NUM_QUEUES, 2), 0xffff);
    window.write(BAR - WINDOW + DEVICE_STATUS, &[ACKNOWLEDGE]);
    assert_eq!(status(&mut lock(&a)), 0);

    enable_decoding(&mut lock(&a));
    enable_decoding(&mut lock(&b));
    // Each BAR reaches its own device at BAR-relative offsets.
    assert_eq!(read(&mut window, BAR + 0x2000, 8), DISK_SECTORS);
    assert_eq!(read(&mut window, OTHER_BAR + 0x2000, 8), 32);
    assert_eq!(read(&mut window, BAR + NUM_QUEUES, 2), 1);
    window.write(BAR - WINDOW + DEVICE_STATUS, &[ACKNOWLEDGE]);
    assert_eq!(status(&mut lock(&a)), ACKNOWLEDGE);
    assert_eq!(status(&mut lock(&b)), 0);
    assert_eq!(read(&mut window, BAR + DEVICE_STATUS, 1), 1);

    // Outside any BAR: all-ones.
    assert_eq!(read(&mut window, WINDOW, 4), 0xffff_ffff);
    assert_eq!(read(&mut window, BAR + BAR_SIZE, 4), 0xffff_ffff);
    assert_eq!(read(&mut window, BAR - 4, 4), 0xffff_ffff);
    // An access straddling the BAR's end belongs to no one.
    assert_eq!(read(&mut window, BAR + BAR_SIZE - 2, 4), 0xffff_ffff);
    // The last bytes of the BAR are the device's (the PBA's far end).
    assert_eq!(read(&mut window, BAR + BAR_SIZE - 4, 4), 0);

    // Decoding off again on one device only.
    cfg_write(&mut lock(&b), REG_COMMAND * 4, &[0]);
    assert_eq!(read(&mut window, OTHER_BAR + 0x2000, 8), u64::MAX);
    assert_eq!(read(&mut window, BAR + 0x2000, 8), DISK_SECTORS);

    // The guest moves BAR 0 of device a: the window follows.
    const MOVED: u64 = 0xd000_0000;
    cfg_write(&mut lock(&a), REG_BAR0 * 4, &(MOVED as u32).to_le_bytes());
    assert_eq!(lock(&a).bar_address(), MOVED);
    assert_eq!(read(&mut window, BAR + 0x2000, 8), u64::MAX);
    assert_eq!(read(&mut window, MOVED + 0x2000, 8), DISK_SECTORS);
    assert_eq!(read(&mut window, MOVED + DEVICE_STATUS, 1), 1);
    // So do the doorbells the VM registers, and a doorbell write that
    // reaches the bus lands on the queue's eventfd.
    let dev = lock(&a);
    assert_eq!(dev.doorbells()[0].0, MOVED + 0x3000);
    let _ = dev.doorbells()[0].1.read();
    drop(dev);
    window.write(MOVED - WINDOW + 0x3000, &[0, 0]);
    assert_eq!(lock(&a).doorbells()[0].1.read().unwrap(), 1);
    // A doorbell for a queue the device does not have goes nowhere.
    window.write(MOVED - WINDOW + 0x3004, &[1, 0]);
    assert!(lock(&a).doorbells()[0].1.read().is_err());
}

#[test]
fn test_wide_and_odd_accesses_are_ignored_or_partial() {
    let mut r = rig();
    let d = &mut r.dev;
    // Wider than 8 bytes: reads zero, writes ignored.
    let mut wide = [0xaau8; 16];
    BusDevice::read(d, 0x2000, &mut wide);
    assert_eq!(wide, [0; 16]);
    BusDevice::write(d, DEVICE_STATUS, &[ACKNOWLEDGE; 16]);
    assert_eq!(status(d), 0);
    // Register widths are exact: a 2-byte write to the status is no write.
    w16(d, DEVICE_STATUS, u16::from(ACKNOWLEDGE));
    assert_eq!(status(d), 0);
    // A 3-byte read of a register reads zero.
    assert_eq!(bar_read(d, NUM_QUEUES, 3), 0);
    // Config space: writes past a dword's end are dropped.
    cfg_write(d, REG_COMMAND * 4 + 3, &[COMMAND_MEMORY, 0]);
    assert_eq!(cfg32(d, REG_COMMAND * 4) & 0xffff, 0);
    assert_eq!(d.read_config_register(64), u32::MAX);
}

// ---- robustness ----

/// Addresses that, as a ring's, make a valid queue: DRIVER_OK then really
/// starts a worker now and then.
const RING_ADDRESSES: [u64; 3] = [DESC, AVAIL, USED];

#[test]
fn test_random_register_traffic_never_panics_and_reset_recovers() {
    let mut r = rig();
    let mut rng = Rng(0x7669_7274_696f_5043);
    let sizes = [1usize, 2, 3, 4, 8, 16];
    let offered = offered_features(&mut r.dev);
    let mut activations = 0u32;
    for _ in 0..100_000 {
        let len = rng.pick(&sizes);
        let mut buf = [0u8; 16];
        for b in buf.iter_mut() {
            *b = rng.next_u64() as u8;
        }
        let was_active = r.dev.active;
        match rng.below(16) {
            // Anywhere in the BAR, and a little past it.
            0 => {
                let at = rng.below(BAR_SIZE + 0x100);
                BusDevice::write(&mut r.dev, at, &buf[..len]);
            }
            1 => {
                let at = rng.below(BAR_SIZE + 0x100);
                BusDevice::read(&mut r.dev, at, &mut buf[..len]);
            }
            // Common configuration, where the state is.
            2..=4 => {
                let at = rng.below(0x40);
                BusDevice::write(&mut r.dev, at, &buf[..len]);
            }
            5 => {
                let at = rng.below(0x40);
                BusDevice::read(&mut r.dev, at, &mut buf[..len]);
            }
            // Status writes: a driver's steps, resets among them, or
            // anything.
            6 => {
                let v = rng.pick(&[
                    0,
                    ACKNOWLEDGE | DRIVER,
                    ACKNOWLEDGE | DRIVER | FEATURES_OK,
                    ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
                    buf[0],
                ]);
                w8(&mut r.dev, DEVICE_STATUS, v);
            }
            // Feature sets the device accepts, now and then.
            7 => {
                let f = offered & rng.next_u64() | F_VERSION_1;
                write_driver_features(&mut r.dev, f);
            }
            // Queue set-up that may be valid.
            8 => match rng.below(4) {
                0 => w16(&mut r.dev, QUEUE_ENABLE, 1),
                1 => w16(&mut r.dev, QUEUE_SIZE, rng.pick(&[QSIZE, 256, 3, 0])),
                _ => {
                    let reg = rng.pick(&[QUEUE_DESC, QUEUE_DRIVER, QUEUE_DEVICE]);
                    let addr = if rng.below(2) == 0 {
                        rng.pick(&RING_ADDRESSES)
                    } else {
                        rng.next_u64()
                    };
                    w64(&mut r.dev, reg, addr);
                }
            },
            // The MSI-X table and PBA.
            9 => {
                let at = TABLE + rng.below(0x40);
                BusDevice::write(&mut r.dev, at, &buf[..len]);
            }
            10 => {
                let at = PBA + rng.below(0x10);
                BusDevice::read(&mut r.dev, at, &mut buf[..len]);
            }
            // Doorbells: the eventfd, or a write that reached the BAR.
            11 => r.ring(),
            12 => {
                let at = 0x3000 + rng.below(0x20);
                BusDevice::write(&mut r.dev, at, &buf[..len.min(4)]);
            }
            // Configuration space: any dword, offset and width, the MSI-X
            // control bits included.
            13 => {
                let reg = rng.below(70) as usize;
                let offset = rng.below(5);
                let n = rng.below(5) as usize;
                r.dev.write_config_register(reg, offset, &buf[..n]);
            }
            14 => {
                let reg = rng.below(70) as usize;
                r.dev.read_config_register(reg);
            }
            _ => {
                let bits = rng.pick(&[0, MSIX_ENABLE, MSIX_ENABLE | MSIX_FUNCTION_MASK]);
                set_msix_control(&mut r.dev, bits);
            }
        }
        if r.dev.active && !was_active {
            activations += 1;
        }
        // The rings stay empty (avail idx 0), so a started worker finds
        // nothing; ring contents are the fuzz target's business.
        assert_eq!(r.mem.read_obj::<u16>(GuestAddress(AVAIL + 2)).unwrap(), 0);
    }
    assert!(
        activations > 0,
        "the random traffic never started the device"
    );

    // A driver that resets finds a working device.
    r.dev.set_bar_address(BAR).unwrap();
    for l in &r.lines {
        let _ = l.eventfd().read();
    }
    w8(&mut r.dev, DEVICE_STATUS, 0);
    r.start();
    let data = pattern(42);
    r.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    let idx = r.submit(T_OUT, 11, true);
    r.ring();
    r.wait_used(idx);
    r.wait_fired(QUEUE_VECTOR);
    assert_eq!(r.request_status(), 0);
    assert_eq!(&r.disk.contents()[11 * 512..12 * 512], &data[..]);
}

/// A driver publishes an avail index further ahead than the queue holds.
/// The worker must give up on the queue and a reset must still return;
/// `worker::drain_queue` instead loops forever (pop_descriptor_chain
/// refuses the index, enable_notification keeps reporting work), holding
/// the disk's lock, so the reset (and any config read) hangs the vCPU.
#[test]
fn test_avail_index_beyond_queue_size_does_not_hang_reset() {
    let mut r = rig();
    r.start();
    r.mem.write_obj(QSIZE + 1, GuestAddress(AVAIL + 2)).unwrap();
    r.ring();
    // Give the worker time to pick it up.
    std::thread::sleep(Duration::from_millis(100));
    let (tx, rx) = mpsc::channel();
    let mut dev = r.dev;
    std::thread::spawn(move || {
        w8(&mut dev, DEVICE_STATUS, 0);
        let _ = tx.send(dev);
    });
    let dev = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the reset hung: the worker never returned from drain_queue");
    assert!(!dev.active);
}

/// A ring the device cannot use is not a silent stop: the device status
/// shows NEEDS_RESET, the config vector fires, the VM hears why once, and
/// a reset gives the driver a working device again.
#[test]
fn test_unusable_ring_sets_needs_reset_until_the_driver_resets() {
    let mut r = rig();
    r.start();
    w16(&mut r.dev, MSIX_CONFIG, 0);
    for l in &r.lines {
        let _ = l.eventfd().read();
    }
    r.mem.write_obj(QSIZE + 1, GuestAddress(AVAIL + 2)).unwrap();
    r.ring();
    wait_until(
        || status(&mut r.dev) & NEEDS_RESET != 0,
        "NEEDS_RESET in the device status",
    );
    r.wait_fired(0);
    let why = r.dev.take_failure().expect("the failure is reported");
    assert!(why.contains("request ring is unusable"), "{why}");
    assert_eq!(r.dev.take_failure(), None, "reported once");

    w8(&mut r.dev, DEVICE_STATUS, 0);
    assert_eq!(status(&mut r.dev) & NEEDS_RESET, 0);
    r.start();
    let data = pattern(7);
    r.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    let idx = r.submit(T_OUT, 3, true);
    r.ring();
    r.wait_used(idx);
    assert_eq!(r.request_status(), 0);
    assert_eq!(&r.disk.contents()[3 * 512..4 * 512], &data[..]);
}

// ---- snapshots ----

/// `state` restored onto a transport like `rig`'s, on the same memory and
/// a fresh disk of the same size; the Rig to drive it.
fn restore_rig(state: &VirtioPciState, mem: &GuestMemoryMmap) -> Result<Rig, VirtioPciError> {
    let disk = Arc::new(MemoryDisk::new(DISK_SECTORS * 512).unwrap());
    let backend = Box::new(SharedDisk(disk.clone()));
    let blk = match &state.device {
        VirtioDeviceState::Blk(s) => {
            let args = crate::virtio::BlockDeviceArgs {
                name: "virtio-blk-test".into(),
                backend,
            };
            BlockDevice::restore(args, s).unwrap()
        }
        // A state of another device: the transport must notice.
        _ => BlockDevice::new("virtio-blk-test".into(), backend, "hangar-test-disk"),
    };
    let lines: Vec<IrqLine> = (0..2)
        .map(|i| IrqLine::new(GSI_BASE + i).unwrap())
        .collect();
    let observed = lines.iter().map(|l| l.try_clone().unwrap()).collect();
    let routes = Arc::new(Routes::default());
    let args = VirtioPciArgs {
        label: "virtio-blk-test".into(),
        device: Box::new(blk),
        memory: mem.clone(),
        vector_lines: lines,
        routing: routes.clone(),
    };
    Ok(Rig {
        dev: VirtioPciDevice::restore(args, state)?,
        mem: mem.clone(),
        disk,
        lines: observed,
        routes,
    })
}

/// A driver's bring-up up to DRIVER_OK: decoding, MSI-X with vector 1
/// masked, EVENT_IDX accepted, queue 0 set up, the config vector chosen.
fn negotiated_rig() -> Rig {
    let mut r = rig();
    enable_decoding(&mut r.dev);
    program_vector(&mut r.dev, 0, false);
    program_vector(&mut r.dev, QUEUE_VECTOR, true);
    set_msix_control(&mut r.dev, MSIX_ENABLE);
    clear_rings(&r.mem);
    let s = negotiate(&mut r.dev, F_VERSION_1 | F_FLUSH | F_EVENT_IDX);
    assert_ne!(s & FEATURES_OK, 0);
    setup_queue(&mut r.dev, QSIZE, DESC, AVAIL, USED);
    w16(&mut r.dev, MSIX_CONFIG, 0);
    r
}

#[test]
fn test_restore_round_trips_a_negotiated_transport() {
    let mut r = negotiated_rig();
    // The queue's interrupt while its vector is masked: pending.
    r.dev.interrupts.notify_queue(0);
    assert_eq!(pending_bits(&mut r.dev), 1 << QUEUE_VECTOR);
    let state = r.dev.save();
    assert!(!state.active);
    assert_eq!(state.positions, None);
    let json = serde_json::to_string(&state).unwrap();
    let parsed: VirtioPciState = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed, state);

    let mut restored = restore_rig(&parsed, &r.mem).unwrap();
    assert_eq!(restored.dev.save(), state);
    // The new VM's routes point at what the guest programmed.
    assert_eq!(
        restored.routes.all(),
        vec![(GSI_BASE, msg(0)), (GSI_BASE + 1, msg(QUEUE_VECTOR))]
    );
    for d in [&mut r.dev, &mut restored.dev] {
        assert_eq!(status(d), ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(read_driver_features(d), F_VERSION_1 | F_FLUSH | F_EVENT_IDX);
        assert_eq!(r16(d, MSIX_CONFIG), 0);
        w16(d, QUEUE_SELECT, 0);
        assert_eq!(r16(d, QUEUE_SIZE), QSIZE);
        assert_eq!(r16(d, QUEUE_MSIX_VECTOR), QUEUE_VECTOR);
        assert_eq!(r64(d, QUEUE_DESC), DESC);
        assert_eq!(r64(d, QUEUE_DRIVER), AVAIL);
        assert_eq!(r64(d, QUEUE_DEVICE), USED);
        assert_eq!(cfg32(d, 0x10), BAR as u32);
        assert_eq!(d.bar_address(), BAR);
    }
    // Unmasking delivers the pending interrupt on the restored device.
    mask_vector(&mut restored.dev, QUEUE_VECTOR, false);
    restored.wait_fired(QUEUE_VECTOR);
    assert_eq!(pending_bits(&mut restored.dev), 0);
    // And it starts and serves requests.
    let s = driver_ok(&mut restored.dev);
    assert_eq!(s & (NEEDS_RESET | FAILED), 0, "status {s:#x}");
    let data = pattern(3);
    restored.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    let idx = restored.submit(T_OUT, 5, true);
    restored.ring();
    restored.wait_used(idx);
    assert_eq!(restored.request_status(), 0);
    assert_eq!(&restored.disk.contents()[5 * 512..6 * 512], &data[..]);
}

#[test]
fn test_restore_keeps_a_failure_until_the_driver_resets() {
    let mut r = negotiated_rig();
    let mut state = r.dev.save();
    state.failure = Some("the guest's request ring is unusable".into());
    let mut restored = restore_rig(&state, &r.mem).unwrap();
    assert_eq!(restored.dev.save(), state);
    assert_ne!(status(&mut restored.dev) & NEEDS_RESET, 0);
    assert_eq!(restored.dev.take_failure(), state.failure);
    w8(&mut restored.dev, DEVICE_STATUS, 0);
    assert_eq!(status(&mut restored.dev) & NEEDS_RESET, 0);
    assert_eq!(status(&mut r.dev) & NEEDS_RESET, 0);
}

#[test]
fn test_restore_refuses_states_the_transport_cannot_be_in() {
    let r = negotiated_rig();
    let good = r.dev.save();
    let spoilt = |spoil: fn(&mut VirtioPciState)| {
        let mut state = good.clone();
        spoil(&mut state);
        restore_rig(&state, &r.mem).err().unwrap()
    };
    assert!(matches!(
        spoilt(|s| s.queues[0].vector = 2),
        VirtioPciError::Vector(2)
    ));
    assert!(matches!(
        spoilt(|s| s.config_vector = 0x7ff),
        VirtioPciError::Vector(0x7ff)
    ));
    assert!(matches!(spoilt(|s| s.isr = 4), VirtioPciError::Isr(4)));
    assert!(matches!(
        spoilt(|s| s.driver_features |= F_ACCESS_PLATFORM),
        VirtioPciError::Features(_)
    ));
    assert!(matches!(
        spoilt(|s| s.driver_features &= !F_VERSION_1),
        VirtioPciError::Features(_)
    ));
    assert!(matches!(
        spoilt(|s| s.queues.push(s.queues[0])),
        VirtioPciError::StateMismatch("queues")
    ));
    assert!(matches!(
        spoilt(|s| s.queues[0].max_size = 128),
        VirtioPciError::StateMismatch("queues")
    ));
    assert!(matches!(
        spoilt(|s| s.msix.entries.push(s.msix.entries[0])),
        VirtioPciError::StateMismatch("MSI-X vectors")
    ));
    assert!(matches!(
        spoilt(|s| s.msix.pending = vec![]),
        VirtioPciError::MsixState(_)
    ));
    assert!(matches!(
        spoilt(|s| s.config.registers[0] ^= 1),
        VirtioPciError::ConfigState(crate::pci::PciConfigError::LayoutMismatch(_))
    ));
    assert!(matches!(
        spoilt(|s| {
            s.config.registers.pop();
        }),
        VirtioPciError::ConfigState(crate::pci::PciConfigError::StateLength { .. })
    ));
    assert!(matches!(
        spoilt(
            |s| s.device = VirtioDeviceState::Net(crate::virtio::NetState {
                mac: [0; 6],
                acked_features: 0
            })
        ),
        VirtioPciError::DeviceState
    ));
    assert!(matches!(
        spoilt(|s| s.active = true),
        VirtioPciError::ActiveStatus(_)
    ));
    assert!(matches!(
        spoilt(|s| {
            s.active = true;
            s.status |= DRIVER_OK;
        }),
        VirtioPciError::PositionsUnknown
    ));
    assert!(matches!(
        spoilt(|s| s.positions = Some(vec![QueuePosition::default()])),
        VirtioPciError::StateMismatch("queue positions")
    ));
    assert!(matches!(
        spoilt(|s| {
            s.active = true;
            s.status |= DRIVER_OK;
            s.positions = Some(Vec::new());
        }),
        VirtioPciError::StateMismatch("queue positions")
    ));
    // A driver may leave any size in a queue not yet started.
    let mut unstarted = good.clone();
    unstarted.queues[0].size = 3;
    let restored = restore_rig(&unstarted, &r.mem).unwrap();
    assert_eq!(restored.dev.save(), unstarted);
}
