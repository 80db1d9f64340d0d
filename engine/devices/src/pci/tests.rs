//! Tests of the PCI pieces together, driven through the ports the way
//! Linux's `pci_conf1` driver drives them.

#![allow(clippy::unwrap_used)]

use std::any::Any;
use std::sync::{Arc, Mutex};

use super::*;
use crate::{Bus, BusDevice, BusError, GuestRequest, Persist};
use hangar_testkit::Rng;

const VENDOR: u16 = 0x1af4;
const DEVICE: u16 = 0x1041;
const CLASS: u32 = 0x02_00_00;
const BAR0_SIZE: u64 = 0x1000;
const BAR1_SIZE: u64 = 0x20;
const BAR2_SIZE: u64 = 0x4000;
const BAR4_SIZE: u64 = 8 << 30;
const MSIX_VECTORS: u16 = 3;
const PBA_OFFSET: u32 = 0x800;

/// A device with every kind of BAR, a vendor capability and MSI-X.
struct TestDevice {
    config: PciConfiguration,
    msix: MsixTable,
}

impl TestDevice {
    fn new() -> Self {
        let mut config = PciConfiguration::new(&PciHeader {
            vendor_id: VENDOR,
            device_id: DEVICE,
            class_code: CLASS,
            revision_id: 1,
            subsystem_vendor_id: VENDOR,
            subsystem_id: 0x1100,
            interrupt_pin: 1,
            multifunction: false,
        });
        config
            .add_bar(
                0,
                PciBarKind::Memory32 {
                    prefetchable: false,
                },
                BAR0_SIZE,
            )
            .unwrap();
        config.add_bar(1, PciBarKind::Io, BAR1_SIZE).unwrap();
        config
            .add_bar(2, PciBarKind::Memory64 { prefetchable: true }, BAR2_SIZE)
            .unwrap();
        config
            .add_bar(
                4,
                PciBarKind::Memory64 {
                    prefetchable: false,
                },
                BAR4_SIZE,
            )
            .unwrap();
        config.set_bar_address(0, 0xc100_0000).unwrap();
        config.set_bar_address(1, 0xc040).unwrap();
        config.set_bar_address(2, 0xc200_0000).unwrap();
        config.set_bar_address(4, 0x8_0000_0000).unwrap();
        // A vendor-specific capability whose last byte the guest may write.
        let vendor_cap = [0x09, 0xee, 6, 0xa1, 0xa2, 0xa3];
        assert_eq!(
            config
                .add_capability(&vendor_cap, &[0, 0, 0, 0, 0, 0xff])
                .unwrap(),
            0x40
        );
        let msix = MsixCapability {
            table_size: MSIX_VECTORS,
            table_bar: 2,
            table_offset: 0,
            pba_bar: 2,
            pba_offset: PBA_OFFSET,
        };
        assert_eq!(config.add_msix_capability(&msix).unwrap(), 0x48);
        Self {
            config,
            msix: MsixTable::new(MSIX_VECTORS).unwrap(),
        }
    }
}

impl PciDevice for TestDevice {
    fn read_config_register(&self, reg: usize) -> u32 {
        self.config.read_register(reg)
    }
    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) {
        self.config.write_register(reg, offset, data);
    }
    fn bars(&self) -> Vec<PciBar> {
        self.config.bars()
    }
    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}

/// BAR 2 as the device would serve it on the MMIO bus: the MSI-X table at
/// offset 0, the PBA at `PBA_OFFSET`.
impl BusDevice for TestDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(PBA_OFFSET) {
            self.msix.read_pba(offset - u64::from(PBA_OFFSET), data);
        } else {
            self.msix.read_table(offset, data);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest> {
        if offset >= u64::from(PBA_OFFSET) {
            self.msix.write_pba(offset - u64::from(PBA_OFFSET), data);
        } else {
            self.msix.write_table(offset, data);
        }
        None
    }
}

/// A port-I/O bus with the configuration ports on it, as a vCPU sees it.
struct Machine {
    io: Bus,
    ports: Arc<Mutex<PciConfigIo>>,
    pci: Arc<Mutex<PciBus>>,
    dev: Arc<Mutex<TestDevice>>,
}

impl Machine {
    fn new() -> Self {
        let pci = Arc::new(Mutex::new(PciBus::new()));
        let dev = Arc::new(Mutex::new(TestDevice::new()));
        assert_eq!(pci.lock().unwrap().add_device(dev.clone()).unwrap(), 1);
        let ports = Arc::new(Mutex::new(PciConfigIo::new(pci.clone())));
        let mut io = Bus::new();
        io.insert(
            ports.clone(),
            u64::from(PCI_CONFIG_IO_BASE),
            PCI_CONFIG_IO_LEN,
        )
        .unwrap();
        Self {
            io,
            ports,
            pci,
            dev,
        }
    }

    fn inb(&self, port: u16) -> u8 {
        let mut b = [0u8; 1];
        self.io.read(port.into(), &mut b).unwrap();
        b[0]
    }
    fn inw(&self, port: u16) -> u16 {
        let mut b = [0u8; 2];
        self.io.read(port.into(), &mut b).unwrap();
        u16::from_le_bytes(b)
    }
    fn inl(&self, port: u16) -> u32 {
        let mut b = [0u8; 4];
        self.io.read(port.into(), &mut b).unwrap();
        u32::from_le_bytes(b)
    }
    fn outb(&self, v: u8, port: u16) -> Option<GuestRequest> {
        self.io.write(port.into(), &[v]).unwrap()
    }
    fn outw(&self, v: u16, port: u16) {
        self.io.write(port.into(), &v.to_le_bytes()).unwrap();
    }
    fn outl(&self, v: u32, port: u16) {
        self.io.write(port.into(), &v.to_le_bytes()).unwrap();
    }

    /// Linux's `pci_conf1_read`.
    fn conf1_read(&self, bus: u8, devfn: u8, reg: u16, len: u8) -> u32 {
        self.outl(conf1_address(bus, devfn, reg), 0xcf8);
        match len {
            1 => self.inb(0xcfc + (reg & 3)).into(),
            2 => self.inw(0xcfc + (reg & 2)).into(),
            _ => self.inl(0xcfc),
        }
    }

    /// Linux's `pci_conf1_write`.
    fn conf1_write(&self, bus: u8, devfn: u8, reg: u16, len: u8, value: u32) {
        self.outl(conf1_address(bus, devfn, reg), 0xcf8);
        match len {
            1 => {
                self.outb(value as u8, 0xcfc + (reg & 3));
            }
            2 => self.outw(value as u16, 0xcfc + (reg & 2)),
            _ => self.outl(value, 0xcfc),
        }
    }
}

/// `PCI_CONF1_ADDRESS` from Linux's arch/x86/pci/direct.c.
fn conf1_address(bus: u8, devfn: u8, reg: u16) -> u32 {
    0x8000_0000
        | (u32::from(reg & 0xf00) << 16)
        | u32::from(bus) << 16
        | u32::from(devfn) << 8
        | u32::from(reg & 0xfc)
}

fn devfn(dev: u8, func: u8) -> u8 {
    dev << 3 | func
}

#[test]
fn test_linux_type1_probe_and_bus_scan() {
    let m = Machine::new();
    // pci_check_type1.
    m.outb(0x01, 0xcfb);
    let tmp = m.inl(0xcf8);
    m.outl(0x8000_0000, 0xcf8);
    assert_eq!(m.inl(0xcf8), 0x8000_0000);
    // pci_sanity_check without DMI: a host bridge class somewhere.
    let host = (0..=255u8)
        .find(|&df| m.conf1_read(0, df, 0x0a, 2) == 0x0600)
        .unwrap();
    assert_eq!(host, 0);
    m.outl(tmp, 0xcf8);
    assert_eq!(m.inl(0xcf8), tmp);

    // The scan: vendor/device dword of each device's function 0.
    let found: Vec<(u8, u32)> = (0..32u8)
        .map(|d| (d, m.conf1_read(0, devfn(d, 0), 0, 4)))
        .filter(|&(_, id)| id != 0xffff_ffff)
        .collect();
    assert_eq!(
        found,
        vec![
            (0, 0x29c0_8086),
            (1, u32::from(DEVICE) << 16 | u32::from(VENDOR))
        ]
    );
    // Single-function devices: header type bit 7 clear, functions 1..7 absent.
    assert_eq!(m.conf1_read(0, devfn(0, 0), 0x0e, 1), 0);
    assert_eq!(m.conf1_read(0, devfn(0, 0), 0x08, 4), 0x0600_0000);
    for f in 1..8 {
        assert_eq!(m.conf1_read(0, devfn(1, f), 0, 4), 0xffff_ffff);
    }
    // Other buses are absent; so are registers past 255 (AMD's extension).
    assert_eq!(m.conf1_read(1, 0, 0, 4), 0xffff_ffff);
    assert_eq!(m.conf1_read(0, 0, 0x100, 4), 0xffff_ffff);
    assert_eq!(m.conf1_read(0, 0, 0x100, 2), 0xffff);
    // Configuration cycles disabled: all-ones, and writes go nowhere.
    m.outl(0x0000_0000, 0xcf8);
    assert_eq!(m.inl(0xcfc), 0xffff_ffff);
    m.outl(0, 0xcfc);
    assert_eq!(m.conf1_read(0, devfn(1, 0), 0, 4) as u16, VENDOR);
    // Writes to absent devices are ignored.
    m.conf1_write(0, devfn(7, 0), 0x04, 4, 0xffff_ffff);
    assert_eq!(m.conf1_read(0, devfn(7, 0), 0x04, 4), 0xffff_ffff);
    // Mechanism #2's probe must fail: narrow reads of 0xCF8..0xCFB.
    m.outb(0x00, 0xcfb);
    m.outb(0x00, 0xcf8);
    m.outb(0x00, 0xcfa);
    assert_ne!(m.inb(0xcf8), 0);
    assert_ne!(m.inb(0xcfa), 0);
    // Reserved address bits read as zero.
    m.outl(0xffff_ffff, 0xcf8);
    assert_eq!(m.inl(0xcf8), 0x8fff_fffc);
    assert_eq!(m.ports.lock().unwrap().save().config_address, 0x8fff_fffc);
}

#[test]
fn test_byte_and_word_accesses_select_bytes_of_the_dword() {
    let m = Machine::new();
    let d1 = devfn(1, 0);
    m.outl(conf1_address(0, d1, 0), 0xcf8);
    let id = u32::from(DEVICE) << 16 | u32::from(VENDOR);
    for i in 0..4u16 {
        assert_eq!(u32::from(m.inb(0xcfc + i)), (id >> (8 * i)) & 0xff);
    }
    assert_eq!(m.inw(0xcfc), VENDOR);
    assert_eq!(m.inw(0xcfe), DEVICE);
    // An unaligned word inside the dword works too.
    assert_eq!(u32::from(m.inw(0xcfd)), (id >> 8) & 0xffff);
    // A word at 0xCFF runs off the ports: the bus rejects it.
    let mut w = [0u8; 2];
    assert_eq!(m.io.read(0xcff, &mut w), Err(BusError::Unmapped(0xcff)));
    // Without the bus's check the device still answers safely.
    let mut ports = m.ports.lock().unwrap();
    ports.read(7, &mut w);
    assert_eq!(w, [(id >> 24) as u8, 0xff]);
    assert_eq!(ports.write(7, &[1, 2]), None);
    drop(ports);

    // A byte written to the command register leaves status alone.
    let status = m.conf1_read(0, d1, 0x06, 2);
    assert_eq!(status & 0x10, 0x10);
    m.conf1_write(0, d1, 0x04, 1, 0x07);
    assert_eq!(m.conf1_read(0, d1, 0x04, 2), 0x07);
    assert_eq!(m.conf1_read(0, d1, 0x06, 2), status);
    // Byte 3 of the header-type dword (BIST) is read-only; byte 0 (cache
    // line size) is writable.
    m.conf1_write(0, d1, 0x0c, 1, 0x10);
    m.conf1_write(0, d1, 0x0f, 1, 0xff);
    assert_eq!(m.conf1_read(0, d1, 0x0c, 4), 0x0000_0010);
    // Interrupt line by byte, pin untouched.
    m.conf1_write(0, d1, 0x3c, 1, 11);
    m.conf1_write(0, d1, 0x3d, 1, 4);
    assert_eq!(m.conf1_read(0, d1, 0x3c, 2), 0x010b);
    assert_eq!(m.dev.lock().unwrap().config.interrupt_line(), 11);
}

#[test]
fn test_bar_sizing_like_linux() {
    let m = Machine::new();
    let d1 = devfn(1, 0);
    // __pci_read_base turns decoding off around sizing.
    m.conf1_write(0, d1, 0x04, 2, 0x0007);
    let cmd = m.conf1_read(0, d1, 0x04, 2);
    m.conf1_write(0, d1, 0x04, 2, cmd & !0x3);
    let size = |reg: u16| {
        let orig = m.conf1_read(0, d1, reg, 4);
        m.conf1_write(0, d1, reg, 4, 0xffff_ffff);
        let mask = m.conf1_read(0, d1, reg, 4);
        m.conf1_write(0, d1, reg, 4, orig);
        assert_eq!(m.conf1_read(0, d1, reg, 4), orig);
        (orig, mask)
    };
    // BAR0: 32-bit memory, 4 KiB.
    assert_eq!(size(0x10), (0xc100_0000, 0xffff_f000));
    // BAR1: I/O, 32 ports, bit 0 set.
    assert_eq!(size(0x14), (0xc041, 0xffff_ffe1));
    // BAR2: 64-bit prefetchable, 16 KiB: type bits 0xc in the low dword.
    assert_eq!(size(0x18), (0xc200_000c, 0xffff_c00c));
    assert_eq!(size(0x1c), (0, 0xffff_ffff));
    // BAR4: 64-bit, 8 GiB: the size reaches into the high dword.
    assert_eq!(size(0x20), (0x0000_0004, 0x0000_0004));
    assert_eq!(size(0x24), (0x8, 0xffff_fffe));
    // BAR2 sized the way Linux does it for 64-bit BARs: both halves
    // written before either is restored.
    m.conf1_write(0, d1, 0x18, 4, 0xffff_ffff);
    m.conf1_write(0, d1, 0x1c, 4, 0xffff_ffff);
    let sz = u64::from(m.conf1_read(0, d1, 0x1c, 4)) << 32
        | u64::from(m.conf1_read(0, d1, 0x18, 4) & !0xf);
    assert_eq!(!sz + 1, BAR2_SIZE);
    m.conf1_write(0, d1, 0x18, 4, 0xc200_000c);
    m.conf1_write(0, d1, 0x1c, 4, 0);
    // Unused BAR 3's slot is BAR2's high half; ROM BAR and the rest read 0.
    m.conf1_write(0, d1, 0x30, 4, 0xffff_f800);
    assert_eq!(m.conf1_read(0, d1, 0x30, 4), 0);
    // Type bits are read-only.
    m.conf1_write(0, d1, 0x10, 4, 0x0000_000f);
    assert_eq!(m.conf1_read(0, d1, 0x10, 4), 0);
    m.conf1_write(0, d1, 0x10, 4, 0xc100_0000);
    m.conf1_write(0, d1, 0x04, 2, cmd);

    let dev = m.dev.lock().unwrap();
    assert!(dev.config.memory_enabled() && dev.config.io_enabled());
    assert!(dev.config.bus_master_enabled());
    let bars = dev.bars();
    let addrs: Vec<(u8, u64, u64)> = bars.iter().map(|b| (b.index, b.address, b.size)).collect();
    assert_eq!(
        addrs,
        vec![
            (0, 0xc100_0000, BAR0_SIZE),
            (1, 0xc040, BAR1_SIZE),
            (2, 0xc200_0000, BAR2_SIZE),
            (4, 0x8_0000_0000, BAR4_SIZE)
        ]
    );
    // The manager can reach the concrete device through as_any.
    let any = dev.as_any().unwrap();
    assert!(any.downcast_ref::<TestDevice>().is_some());
}

#[test]
fn test_read_only_fields_resist_guest_writes() {
    let m = Machine::new();
    for dev in [devfn(0, 0), devfn(1, 0)] {
        let before: Vec<u32> = (0..64u16).map(|r| m.conf1_read(0, dev, r * 4, 4)).collect();
        for reg in [0x00u16, 0x08, 0x2c, 0x34, 0x38] {
            m.conf1_write(0, dev, reg, 4, 0xffff_ffff);
            m.conf1_write(0, dev, reg, 4, 0);
            m.conf1_write(0, dev, reg + 2, 2, 0x5a5a);
        }
        m.conf1_write(0, dev, 0x0e, 1, 0xff);
        m.conf1_write(0, dev, 0x3d, 1, 0xff);
        m.conf1_write(0, dev, 0x06, 2, 0xffff);
        let after: Vec<u32> = (0..64u16).map(|r| m.conf1_read(0, dev, r * 4, 4)).collect();
        assert_eq!(before, after, "device {dev:#x}");
    }
    // The command register keeps only the bits a virtual device has.
    m.conf1_write(0, devfn(1, 0), 0x04, 2, 0xffff);
    assert_eq!(m.conf1_read(0, devfn(1, 0), 0x04, 2), 0x0547);
    // The host bridge's identity.
    let pci = m.pci.lock().unwrap();
    let host = pci.device(0).unwrap().lock().unwrap();
    assert_eq!(host.read_config_register(0), 0x29c0_8086);
    assert!(host
        .as_any()
        .unwrap()
        .downcast_ref::<PciHostBridge>()
        .is_some());
    assert!(host.bars().is_empty());
}

#[test]
fn test_capability_walk_finds_msix() {
    let m = Machine::new();
    let d1 = devfn(1, 0);
    // Linux: status bit 4, then the pointer at 0x34, then the chain.
    assert_ne!(m.conf1_read(0, d1, 0x06, 2) & 0x10, 0);
    let mut at = m.conf1_read(0, d1, 0x34, 1) as u16;
    let mut seen = Vec::new();
    while at != 0 {
        let id = m.conf1_read(0, d1, at, 1) as u8;
        seen.push((at, id));
        at = m.conf1_read(0, d1, at + 1, 1) as u16 & !3;
    }
    assert_eq!(seen, vec![(0x40, 0x09), (0x48, 0x11)]);
    // The host bridge has none.
    assert_eq!(m.conf1_read(0, 0, 0x06, 2) & 0x10, 0);
    assert_eq!(m.conf1_read(0, 0, 0x34, 1), 0);

    // Vendor capability: body as given, the last byte writable only.
    assert_eq!(m.conf1_read(0, d1, 0x40, 4), 0xa106_4809);
    assert_eq!(m.conf1_read(0, d1, 0x44, 4), 0x0000_a3a2);
    m.conf1_write(0, d1, 0x40, 4, 0x5555_5555);
    m.conf1_write(0, d1, 0x44, 4, 0x5555_5555);
    assert_eq!(m.conf1_read(0, d1, 0x40, 4), 0xa106_4809);
    assert_eq!(m.conf1_read(0, d1, 0x44, 4), 0x0000_55a2);
    // Our next-pointer replaced the caller's 0xee.
    assert_eq!(m.conf1_read(0, d1, 0x41, 1), 0x48);

    // MSI-X fields.
    let cap = 0x48;
    let control = m.conf1_read(0, d1, cap + 2, 2);
    assert_eq!(control & 0x7ff, u32::from(MSIX_VECTORS) - 1);
    assert_eq!(control & 0xc000, 0);
    assert_eq!(m.conf1_read(0, d1, cap + 4, 4), 2); // table: BAR 2, offset 0
    assert_eq!(m.conf1_read(0, d1, cap + 8, 4), PBA_OFFSET | 2);
    let config = m.dev.lock().unwrap().config.clone();
    assert_eq!(
        config.msix_capability().unwrap(),
        MsixCapability {
            table_size: MSIX_VECTORS,
            table_bar: 2,
            table_offset: 0,
            pba_bar: 2,
            pba_offset: PBA_OFFSET
        }
    );
    assert_eq!(config.msix_control().unwrap(), MsixControl::default());
    assert_eq!(config.capabilities(), vec![(0x40, 0x09), (0x48, 0x11)]);

    // Linux enables with the function masked, then unmasks; the table size
    // and the offsets do not move.
    m.conf1_write(0, d1, cap + 2, 2, 0xffff);
    m.conf1_write(0, d1, cap + 4, 4, 0xffff_ffff);
    assert_eq!(m.conf1_read(0, d1, cap + 2, 2), 0xc002);
    assert_eq!(m.conf1_read(0, d1, cap + 4, 4), 2);
    let ctl = m.dev.lock().unwrap().config.msix_control().unwrap();
    assert!(ctl.enabled && ctl.function_masked);
    m.conf1_write(0, d1, cap + 3, 1, 0x80);
    let ctl = m.dev.lock().unwrap().config.msix_control().unwrap();
    assert!(ctl.enabled && !ctl.function_masked);
}

#[test]
fn test_msix_through_the_bar_and_the_ports() {
    let m = Machine::new();
    let d1 = devfn(1, 0);
    let mut mmio = Bus::new();
    let bar2 = m.dev.lock().unwrap().config.bar_address(2).unwrap();
    mmio.insert(m.dev.clone(), bar2, BAR2_SIZE).unwrap();
    // The driver programs vector 0 and unmasks it, then enables MSI-X.
    mmio.write(bar2, &0xfee0_0000u32.to_le_bytes()).unwrap();
    mmio.write(bar2 + 8, &0x0000_0031u32.to_le_bytes()).unwrap();
    mmio.write(bar2 + 12, &0u32.to_le_bytes()).unwrap();
    m.conf1_write(0, d1, 0x4a, 2, 0x8000);
    let mut dev = m.dev.lock().unwrap();
    let ctl = dev.config.msix_control().unwrap();
    let msg = dev.msix.signal(0, ctl).unwrap();
    assert_eq!((msg.address, msg.data), (0xfee0_0000, 0x31));
    // Vector 1 is still masked: its message waits in the PBA.
    assert_eq!(dev.msix.signal(1, ctl), None);
    drop(dev);
    let mut pba = [0u8; 8];
    mmio.read(bar2 + u64::from(PBA_OFFSET), &mut pba).unwrap();
    assert_eq!(u64::from_le_bytes(pba), 0b10);
    mmio.write(bar2 + 16 + 12, &0u32.to_le_bytes()).unwrap();
    let mut dev = m.dev.lock().unwrap();
    let ctl = dev.config.msix_control().unwrap();
    assert_eq!(dev.msix.take_deliverable(ctl).len(), 1);
}

#[test]
fn test_msix_table_reads_writes_and_masking() {
    let mut t = MsixTable::new(MSIX_VECTORS).unwrap();
    assert_eq!(t.len(), 3);
    assert_eq!(t.table_len(), 48);
    assert_eq!(t.pba_len(), 8);
    // Entries come out of reset masked.
    assert!((0..3).all(|n| t.entry(n).unwrap().masked()));
    // Entry 1 by dwords, as Linux's __pci_write_msi_msg does.
    t.write_table(16, &0xfee0_1003u32.to_le_bytes());
    t.write_table(20, &0x1u32.to_le_bytes());
    t.write_table(24, &0x4041u32.to_le_bytes());
    // Entry 2 by one qword (address) and a byte.
    t.write_table(32, &0x0000_0002_fee0_2000u64.to_le_bytes());
    t.write_table(40, &[0x51]);
    let e1 = *t.entry(1).unwrap();
    assert_eq!(e1.msg_addr_lo, 0xfee0_1000, "bits 1:0 are read-only zero");
    assert_eq!(
        e1.message(),
        MsixMessage {
            address: 0x1_fee0_1000,
            data: 0x4041
        }
    );
    assert_eq!(t.entry(2).unwrap().message().address, 0x2_fee0_2000);
    assert_eq!(t.entry(2).unwrap().msg_data, 0x51);
    let mut q = [0u8; 8];
    t.read_table(16, &mut q);
    assert_eq!(u64::from_le_bytes(q), 0x1_fee0_1000);
    let mut d = [0u8; 4];
    t.read_table(28, &mut d);
    assert_eq!(u32::from_le_bytes(d), 1, "vector control: masked");
    // Reserved vector-control bits read as zero.
    t.write_table(28, &0xffff_fffeu32.to_le_bytes());
    t.read_table(28, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0);
    assert!(!t.entry(1).unwrap().masked());
    t.write_table(28, &1u32.to_le_bytes());
    // Past the table: reads zero, writes go nowhere.
    t.read_table(48, &mut d);
    assert_eq!(d, [0; 4]);
    t.write_table(u64::MAX - 1, &[1, 2, 3, 4]);
    t.read_table(u64::MAX - 1, &mut d);
    assert_eq!(d, [0; 4]);

    let off = MsixControl::default();
    let on = MsixControl {
        enabled: true,
        function_masked: false,
    };
    let fmask = MsixControl {
        enabled: true,
        function_masked: true,
    };
    // Disabled: dropped, not pending.
    assert_eq!(t.signal(1, off), None);
    assert!(!t.is_pending(1));
    assert!(t.is_masked(1, off));
    // Vector masked: pending, visible in the PBA.
    assert_eq!(t.signal(1, on), None);
    assert!(t.is_pending(1));
    t.read_pba(0, &mut q);
    assert_eq!(u64::from_le_bytes(q), 0b10);
    t.write_pba(0, &[0; 8]);
    assert!(t.is_pending(1), "the PBA is read-only");
    // Unmasking delivers it once.
    t.write_table(28, &0u32.to_le_bytes());
    assert!(!t.is_masked(1, on));
    assert_eq!(t.take_deliverable(on), vec![(1, e1.message())]);
    assert!(!t.is_pending(1));
    assert!(t.take_deliverable(on).is_empty());
    // Unmasked: sent at once.
    assert_eq!(t.signal(1, on), Some(e1.message()));
    // Function mask: pending until the function is unmasked.
    assert_eq!(t.signal(1, fmask), None);
    assert!(t.is_masked(1, fmask));
    assert!(t.take_deliverable(fmask).is_empty());
    assert_eq!(t.take_deliverable(on).len(), 1);
    // No such vector.
    assert_eq!(t.signal(3, on), None);
    assert!(t.is_masked(3, on));
    assert!(t.entry(3).is_none());

    assert_eq!(MsixTable::new(0), Err(MsixError::TableSize(0)));
    assert_eq!(MsixTable::new(2049), Err(MsixError::TableSize(2049)));
    let big = MsixTable::new(2048).unwrap();
    assert_eq!(big.pba_len(), 256);
}

#[test]
fn test_states_round_trip_through_serde() {
    let m = Machine::new();
    let d1 = devfn(1, 0);
    m.conf1_write(0, d1, 0x04, 2, 0x0006);
    m.conf1_write(0, d1, 0x3c, 1, 10);
    m.conf1_write(0, d1, 0x4a, 2, 0x8000);
    m.outl(conf1_address(0, d1, 0x10), 0xcf8);
    m.outb(0x02, 0xcf9);

    let dev = m.dev.lock().unwrap();
    let state = dev.config.save();
    let json = serde_json::to_string(&state).unwrap();
    let back: PciConfigurationState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
    let restored = PciConfiguration::restore((), &back).unwrap();
    assert_eq!(restored, dev.config);
    assert!(restored.msix_control().unwrap().enabled);
    // What the guest wrote is still the same device.
    assert_eq!(restored.check_layout(&TestDevice::new().config), Ok(()));
    // A restored header keeps its masks: sizing still works.
    let mut r = restored;
    r.write_register(4, 0, &[0xff; 4]);
    assert_eq!(r.read_register(4), 0xffff_f000);

    let mut table = MsixTable::new(MSIX_VECTORS).unwrap();
    table.write_table(0, &0xfee0_0000u32.to_le_bytes());
    table.signal(
        2,
        MsixControl {
            enabled: true,
            function_masked: false,
        },
    );
    let ts = table.save();
    let back: MsixTableState = serde_json::from_str(&serde_json::to_string(&ts).unwrap()).unwrap();
    assert_eq!(MsixTable::restore((), &back).unwrap(), table);

    let ps = m.ports.lock().unwrap().save();
    assert_eq!(ps.reset_control, 0x02);
    let back: PciConfigIoState =
        serde_json::from_str(&serde_json::to_string(&ps).unwrap()).unwrap();
    let ports = PciConfigIo::restore(m.pci.clone(), &back).unwrap();
    assert_eq!(ports.save(), ps);

    let pci = m.pci.lock().unwrap();
    let hs = {
        let host = pci.device(0).unwrap().lock().unwrap();
        let host = host
            .as_any()
            .unwrap()
            .downcast_ref::<PciHostBridge>()
            .unwrap();
        host.save()
    };
    // Slot 0 holds the bridge the bus hands out for saving.
    pci.host_bridge()
        .lock()
        .unwrap()
        .write_config_register(3, 0, &[0x10]);
    let hs_changed = pci.host_bridge().lock().unwrap().save();
    assert_ne!(hs_changed, hs);
    assert_eq!(pci.read_config(0, 0, 0, 3) & 0xff, 0x10);
    pci.host_bridge()
        .lock()
        .unwrap()
        .write_config_register(3, 0, &[0]);
    let back: PciHostBridgeState =
        serde_json::from_str(&serde_json::to_string(&hs).unwrap()).unwrap();
    assert_eq!(PciHostBridge::restore((), &back).unwrap().save(), hs);
    assert_eq!(PciHostBridgeState::default(), PciHostBridge::new().save());

    // Broken snapshots are refused, not trusted.
    let mut bad = state.clone();
    bad.registers.pop();
    assert!(matches!(
        PciConfiguration::restore((), &bad),
        Err(PciConfigError::StateLength { .. })
    ));
    let mut bad = state.clone();
    bad.bars[0] = Some(configuration::BarDefinition {
        kind: PciBarKind::Io,
        size: 0,
    });
    assert_eq!(
        PciConfiguration::restore((), &bad),
        Err(PciConfigError::BarSize(0))
    );
    let mut bad = state.clone();
    bad.bars[4] = None;
    bad.bars[5] = Some(configuration::BarDefinition {
        kind: PciBarKind::Memory64 {
            prefetchable: false,
        },
        size: 0x1000,
    });
    assert_eq!(
        PciConfiguration::restore((), &bad),
        Err(PciConfigError::BarIndex(5))
    );
    // BARs 2 and 4 are 64-bit: slots 3 and 5 are their upper halves.
    for upper in [3, 5] {
        let mut bad = state.clone();
        bad.bars[upper] = bad.bars[1];
        assert_eq!(
            PciConfiguration::restore((), &bad),
            Err(PciConfigError::BarInUse(upper))
        );
    }
    let mut bad = state.clone();
    bad.capabilities_end = 257;
    assert_eq!(
        PciConfiguration::restore((), &bad),
        Err(PciConfigError::CapabilitiesEnd(257))
    );
    for offset in [0x3c, 0x41] {
        let mut bad = state.clone();
        bad.msix_capability = Some(offset);
        assert_eq!(
            PciConfiguration::restore((), &bad),
            Err(PciConfigError::CapabilityOffset(offset))
        );
    }
    // A header that holds together but is another device's.
    let mut other = state.clone();
    other.registers[0] ^= 1;
    let other = PciConfiguration::restore((), &other).unwrap();
    assert_eq!(
        other.check_layout(&TestDevice::new().config),
        Err(PciConfigError::LayoutMismatch("read-only registers"))
    );
    assert_eq!(
        PciHostBridge::restore(
            (),
            &PciHostBridgeState {
                config: state.clone()
            }
        )
        .err(),
        Some(PciConfigError::LayoutMismatch("writable bits"))
    );
    let mut bad = ts.clone();
    bad.pending.push(0);
    assert!(matches!(
        MsixTable::restore((), &bad),
        Err(MsixError::PbaLength { .. })
    ));
    // Pending bits past the last vector and reserved bits: never written
    // by a guest.
    let mut odd = ts.clone();
    odd.pending[0] = u64::MAX;
    assert_eq!(
        MsixTable::restore((), &odd),
        Err(MsixError::PendingPastTable(usize::from(MSIX_VECTORS)))
    );
    let mut odd = ts;
    odd.entries[0].vector_control = u32::MAX;
    assert_eq!(
        MsixTable::restore((), &odd),
        Err(MsixError::ReservedBits(0))
    );
    // So are CONFIG_ADDRESS's reserved bits and the reset register's.
    assert_eq!(
        PciConfigIo::restore(
            m.pci.clone(),
            &PciConfigIoState {
                config_address: 0xffff_ffff,
                reset_control: 0
            }
        )
        .err(),
        Some(PciConfigIoError::ConfigAddress(0xffff_ffff))
    );
    assert_eq!(
        PciConfigIo::restore(
            m.pci.clone(),
            &PciConfigIoState {
                config_address: 0,
                reset_control: 0x04
            }
        )
        .err(),
        Some(PciConfigIoError::ResetControl(0x04))
    );
}

#[test]
fn test_reset_control_register() {
    let m = Machine::new();
    // Linux's BOOT_CF9_SAFE: read, then write bit 1, then bits 1 and 2.
    let cf9 = m.inb(0xcf9) & !6;
    assert_eq!(m.outb(cf9 | 2, 0xcf9), None);
    assert_eq!(m.inb(0xcf9), 2);
    assert_eq!(m.outb(cf9 | 6, 0xcf9), Some(GuestRequest::Reset));
    // A dword write at 0xCF8 is the address, never a reset.
    m.outl(0x0000_0400, 0xcf8);
    assert_eq!(m.inl(0xcf8), 0x400);
}

#[test]
fn test_configuration_set_up_errors() {
    let header = PciHeader {
        vendor_id: 1,
        device_id: 2,
        class_code: 0xff_ff_ff_ff,
        revision_id: 3,
        subsystem_vendor_id: 0,
        subsystem_id: 0,
        interrupt_pin: 9,
        multifunction: true,
    };
    let mut c = PciConfiguration::new(&header);
    assert_eq!(c.read_register(2), 0xffff_ff03, "class is 24 bits");
    assert_eq!(c.read_register(3) >> 16 & 0xff, 0x80);
    assert_eq!(c.read_register(15) >> 8 & 0xff, 4, "pin is at most INTD#");
    assert_eq!(c.read_register(64), 0xffff_ffff);
    let m32 = PciBarKind::Memory32 {
        prefetchable: false,
    };
    let m64 = PciBarKind::Memory64 {
        prefetchable: false,
    };
    assert_eq!(c.add_bar(6, m32, 4096), Err(PciConfigError::BarIndex(6)));
    assert_eq!(c.add_bar(5, m64, 4096), Err(PciConfigError::BarIndex(5)));
    assert_eq!(c.add_bar(0, m32, 3000), Err(PciConfigError::BarSize(3000)));
    assert_eq!(c.add_bar(0, m32, 8), Err(PciConfigError::BarSize(8)));
    assert_eq!(
        c.add_bar(0, m32, 1 << 32),
        Err(PciConfigError::BarSize(1 << 32))
    );
    assert_eq!(
        c.add_bar(0, PciBarKind::Io, 512),
        Err(PciConfigError::BarSize(512))
    );
    c.add_bar(1, m64, 4096).unwrap();
    assert_eq!(c.add_bar(2, m32, 4096), Err(PciConfigError::BarInUse(2)));
    assert_eq!(c.add_bar(0, m64, 4096), Err(PciConfigError::BarInUse(0)));
    assert_eq!(c.add_bar(1, m32, 4096), Err(PciConfigError::BarInUse(1)));
    assert_eq!(c.set_bar_address(0, 0), Err(PciConfigError::NoBar(0)));
    assert_eq!(
        c.set_bar_address(1, 0x1800),
        Err(PciConfigError::BarAddress {
            index: 1,
            address: 0x1800
        })
    );
    c.add_bar(0, PciBarKind::Io, 16).unwrap();
    assert!(c.set_bar_address(0, 0x1_0000).is_err());
    c.set_bar_address(0, 0xfff0).unwrap();
    assert_eq!(c.bar_address(0), Some(0xfff0));
    c.add_bar(3, m32, 1 << 31).unwrap();
    assert!(c.set_bar_address(3, 1 << 32).is_err());
    c.set_bar_address(3, 1 << 31).unwrap();

    // MSI-X layout checks.
    let good = MsixCapability {
        table_size: 64,
        table_bar: 1,
        table_offset: 0,
        pba_bar: 1,
        pba_offset: 0x800,
    };
    let bad = |f: fn(&mut MsixCapability)| {
        let mut cap = good;
        f(&mut cap);
        cap
    };
    for cap in [
        bad(|c| c.table_size = 0),
        bad(|c| c.table_size = 2049),
        bad(|c| c.table_bar = 0),       // an I/O BAR
        bad(|c| c.table_bar = 2),       // a high half
        bad(|c| c.table_offset = 4),    // misaligned
        bad(|c| c.pba_offset = 0x1000), // past the BAR
        bad(|c| c.pba_offset = 0x3f8),  // inside the table
        bad(|c| c.table_size = 512),    // past the PBA
    ] {
        assert!(
            matches!(
                c.add_msix_capability(&cap),
                Err(PciConfigError::MsixLayout(_))
            ),
            "{cap:?}"
        );
    }
    c.add_msix_capability(&good).unwrap();
    assert_eq!(
        c.add_msix_capability(&good),
        Err(PciConfigError::MsixPresent)
    );
    assert_eq!(c.msix_capability(), Some(good));

    // Capabilities.
    assert_eq!(
        c.add_capability(&[9], &[]),
        Err(PciConfigError::CapabilityTooShort)
    );
    assert_eq!(
        c.add_capability(&[9, 0, 3], &[0]),
        Err(PciConfigError::WritableMaskLength { cap: 3, mask: 1 })
    );
    let filler = [0x09u8; 60];
    let mut added = 0;
    while c.add_capability(&filler, &[]).is_ok() {
        added += 1;
    }
    assert_eq!(added, 3, "0x4c + 3 * 60 = 0x100");
    assert_eq!(
        c.add_capability(&[9, 0], &[]),
        Err(PciConfigError::CapabilitySpaceFull(2))
    );
    assert_eq!(c.capabilities().len(), 4);
}

#[test]
fn test_bus_slots() {
    let mut bus = PciBus::new();
    let dev = || -> SharedPciDevice { Arc::new(Mutex::new(PciHostBridge::new())) };
    assert_eq!(bus.add_device_at(0, dev()), Err(PciBusError::SlotInUse(0)));
    assert_eq!(
        bus.add_device_at(32, dev()),
        Err(PciBusError::SlotOutOfRange(32))
    );
    bus.add_device_at(5, dev()).unwrap();
    assert_eq!(bus.add_device(dev()).unwrap(), 1);
    for _ in 0..29 {
        bus.add_device(dev()).unwrap();
    }
    assert_eq!(bus.add_device(dev()), Err(PciBusError::Full));
    assert_eq!(bus.devices().count(), 32);
    assert!(bus.device(32).is_none());
}

#[test]
fn test_bar_allocator() {
    let mut a = PciBarAllocator::mmio(0xc000_0000, 0xc010_0000).unwrap();
    // Natural alignment, and holes are reused by later, smaller BARs.
    assert_eq!(a.allocate(0x1000).unwrap(), 0xc000_0000);
    assert_eq!(a.allocate(0x4000).unwrap(), 0xc000_4000);
    assert_eq!(a.allocate(0x2000).unwrap(), 0xc000_2000);
    assert_eq!(a.allocate(0x1000).unwrap(), 0xc000_1000);
    assert_eq!(a.allocate(0x8_0000).unwrap(), 0xc008_0000);
    for size in [0x1000u64, 0x4000, 0x2000, 0x8_0000] {
        let addr = a.allocate(size);
        if let Ok(addr) = addr {
            assert_eq!(addr % size, 0);
        }
    }
    // Sizes: powers of two, at least a page.
    assert_eq!(
        a.allocate(0x800),
        Err(PciBarAllocError::BadSize {
            size: 0x800,
            min: 0x1000
        })
    );
    assert!(matches!(
        a.allocate(0x3000),
        Err(PciBarAllocError::BadSize { .. })
    ));
    assert!(matches!(
        a.allocate(0),
        Err(PciBarAllocError::BadSize { .. })
    ));
    // Exhaustion.
    assert_eq!(
        a.allocate(0x10_0000),
        Err(PciBarAllocError::Exhausted(0x10_0000))
    );
    let mut full = PciBarAllocator::mmio(0xe000_0000, 0xe000_4000).unwrap();
    for _ in 0..4 {
        full.allocate(0x1000).unwrap();
    }
    assert_eq!(
        full.allocate(0x1000),
        Err(PciBarAllocError::Exhausted(0x1000))
    );
    // An unaligned window start: the first BAR is aligned up.
    let mut odd = PciBarAllocator::mmio(0x1000, 0x10_0000).unwrap();
    assert_eq!(odd.allocate(0x1_0000).unwrap(), 0x1_0000);
    // The top of the address space does not overflow.
    let mut top = PciBarAllocator::mmio(u64::MAX - 0x2fff, u64::MAX).unwrap();
    assert_eq!(top.allocate(0x1000).unwrap(), u64::MAX - 0x2fff);
    assert_eq!(top.allocate(0x1000).unwrap(), u64::MAX - 0x1fff);
    // [MAX - 0xfff, MAX + 1) is past the (exclusive) end.
    assert!(top.allocate(0x1000).is_err());
    assert!(top.allocate(0x1_0000).is_err());
    assert_eq!(
        PciBarAllocator::mmio(5, 5).unwrap_err(),
        PciBarAllocError::EmptyWindow { start: 5, end: 5 }
    );
    // I/O ports: 4-byte granules.
    let mut io = PciBarAllocator::io(0xc000, 0x1_0000).unwrap();
    assert_eq!(io.allocate(0x20).unwrap(), 0xc000);
    assert_eq!(io.allocate(4).unwrap(), 0xc020);
    assert_eq!(io.allocate(0x40).unwrap(), 0xc040);
}

#[test]
fn test_adversarial_port_traffic() {
    let m = Machine::new();
    let snapshot = |m: &Machine| {
        let pci = m.pci.lock().unwrap();
        (0..2u8)
            .map(|d| {
                let dev = pci.device(d).unwrap().lock().unwrap();
                (0..64)
                    .map(|r| dev.read_config_register(r))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    let initial = snapshot(&m);
    let masks = [
        PciHostBridge::new().save().config.writable_bits,
        TestDevice::new().config.save().writable_bits,
    ];
    let initial_caps = TestDevice::new().config.capabilities();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut ports = m.ports.lock().unwrap();
    for step in 0..100_000u32 {
        let width = [1usize, 2, 4][rng.below(3) as usize];
        // Mostly in-range accesses, sometimes past the end of the ports.
        let span = if rng.below(10) == 0 { 12 } else { 8 };
        let offset = rng.below(span);
        let value = match rng.below(4) {
            0 => u64::MAX,
            1 => 0,
            _ => rng.next_u64(),
        };
        let bytes = value.to_le_bytes();
        match rng.below(10) {
            // Point CONFIG_ADDRESS somewhere plausible: devices 0..3.
            0..=2 => {
                let mut a =
                    0x8000_0000u32 | (rng.below(4) as u32) << 11 | (rng.below(64) as u32) << 2;
                if rng.below(10) == 0 {
                    a ^= rng.next_u64() as u32;
                }
                ports.write(0, &a.to_le_bytes());
            }
            3..=5 => {
                let req = ports.write(offset, &bytes[..width]);
                assert!(
                    req.is_none() || (offset == 1 && width == 1 && bytes[0] & 4 != 0),
                    "step {step}: {req:?}"
                );
            }
            _ => {
                let mut data = vec![0u8; width];
                ports.read(offset, &mut data);
                // Whatever an absent function is asked, it answers ones.
                let a = ports.save().config_address;
                let absent = a & 0x8000_0000 == 0 || a & 0x0fff_0700 != 0 || (a >> 11) & 0x1f >= 2;
                if absent && offset >= 4 {
                    assert!(data.iter().all(|&b| b == 0xff), "step {step}");
                }
            }
        }
        let a = ports.save().config_address;
        assert_eq!(a & !0x8fff_fffc, 0, "reserved address bits at step {step}");
        if step % 97 == 0 {
            let now = {
                drop(ports);
                let s = snapshot(&m);
                ports = m.ports.lock().unwrap();
                s
            };
            for d in 0..2 {
                for r in 0..64 {
                    assert_eq!(
                        now[d][r] & !masks[d][r],
                        initial[d][r] & !masks[d][r],
                        "read-only bits of device {d} register {r} at step {step}"
                    );
                }
            }
        }
    }
    drop(ports);
    // The traffic did reach the devices' writable bits.
    assert_ne!(snapshot(&m), initial);
    let pci = m.pci.lock().unwrap();
    assert_eq!(
        pci.device(0)
            .unwrap()
            .lock()
            .unwrap()
            .read_config_register(0),
        0x29c0_8086
    );
    drop(pci);
    let dev = m.dev.lock().unwrap();
    assert_eq!(
        (dev.config.vendor_id(), dev.config.device_id()),
        (VENDOR, DEVICE)
    );
    assert_eq!(dev.config.capabilities(), initial_caps);
    assert_eq!(
        dev.config.msix_capability(),
        TestDevice::new().config.msix_capability()
    );
    // BARs keep their kinds and sizes, wherever the guest moved them.
    let kinds: Vec<(u8, PciBarKind, u64)> = dev
        .bars()
        .iter()
        .map(|b| (b.index, b.kind, b.size))
        .collect();
    let expected: Vec<(u8, PciBarKind, u64)> = TestDevice::new()
        .bars()
        .iter()
        .map(|b| (b.index, b.kind, b.size))
        .collect();
    assert_eq!(kinds, expected);
    for b in dev.bars() {
        assert_eq!(b.address % b.size, 0, "BAR {} misaligned", b.index);
    }
}
