//! A virtio-blk driver in miniature, to test Hangar's virtio-PCI transport
//! on KVM: finds the disk on PCI bus 0 through ports 0xCF8/0xCFC, walks
//! its vendor capabilities to the common/notify/ISR/device structures,
//! programs MSI-X vector 1 for the queue (vector 0x50 on this CPU's APIC),
//! negotiates VERSION_1, sets up one split queue of 8 entries and then:
//! writes sector 1, reads it back, flushes, asks for the serial (GET_ID)
//! and reads past the end (which must fail). Each request is one doorbell
//! (a KVM ioeventfd on the host) and one MSI-X interrupt (an irqfd routed
//! by GSI), waited for in `sti; hlt`.
//!
//! Prints `capacity N`, `id SERIAL`, `read back ok`, `past end: status 1`,
//! `interrupts N` and powers off with status 0; any failure prints
//! `FAIL: why` and exits with status 1.
#![no_std]
#![no_main]

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{fence, AtomicU32, Ordering};

use guest::{idt, lapic, puts};

guest::entry!(main);

const QUEUE_VECTOR: u8 = 0x50;
const SPURIOUS_VECTOR: u8 = 0xff;
const QSIZE: usize = 8;

static INTERRUPTS: AtomicU32 = AtomicU32::new(0);

guest::interrupt_entry!(virtio_irq_entry, virtio_irq);

extern "C" fn virtio_irq() {
    INTERRUPTS.fetch_add(1, Ordering::SeqCst);
    lapic::eoi();
}

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[repr(C, align(2))]
struct Avail {
    flags: u16,
    idx: u16,
    ring: [u16; QSIZE],
    used_event: u16,
}

#[repr(C, align(4))]
struct Used {
    flags: u16,
    idx: u16,
    ring: [(u32, u32); QSIZE],
    avail_event: u16,
}

#[repr(C, align(4096))]
struct Rings {
    desc: [Desc; QSIZE],
    avail: Avail,
    used: Used,
}

#[repr(C, align(512))]
struct Buffers {
    header: [u8; 16],
    data: [u8; 512],
    status: u8,
}

static mut RINGS: Rings = Rings {
    desc: [Desc {
        addr: 0,
        len: 0,
        flags: 0,
        next: 0,
    }; QSIZE],
    avail: Avail {
        flags: 0,
        idx: 0,
        ring: [0; QSIZE],
        used_event: 0,
    },
    used: Used {
        flags: 0,
        idx: 0,
        ring: [(0, 0); QSIZE],
        avail_event: 0,
    },
};

static mut BUF: Buffers = Buffers {
    header: [0; 16],
    data: [0; 512],
    status: 0xff,
};

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;

fn pci_addr(dev: u8, reg: u8) -> u32 {
    0x8000_0000 | (u32::from(dev) << 11) | u32::from(reg & 0xfc)
}

fn pci_read32(dev: u8, reg: u8) -> u32 {
    outl(0xcf8, pci_addr(dev, reg));
    inl(0xcfc)
}

fn pci_write32(dev: u8, reg: u8, value: u32) {
    outl(0xcf8, pci_addr(dev, reg));
    outl(0xcfc, value);
}

fn outl(port: u16, value: u32) {
    // SAFETY: port I/O to the PCI configuration ports.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack))
    }
}

fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: port I/O to the PCI configuration ports.
    unsafe { core::arch::asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack)) }
    v
}

fn r8(a: usize) -> u8 {
    // SAFETY: an address inside the device's BAR, identity-mapped.
    unsafe { read_volatile(a as *const u8) }
}
fn w8(a: usize, v: u8) {
    // SAFETY: as above.
    unsafe { write_volatile(a as *mut u8, v) }
}
fn r16(a: usize) -> u16 {
    // SAFETY: as above.
    unsafe { read_volatile(a as *const u16) }
}
fn w16(a: usize, v: u16) {
    // SAFETY: as above.
    unsafe { write_volatile(a as *mut u16, v) }
}
fn r32(a: usize) -> u32 {
    guest::mmio_read32(a)
}
fn w32(a: usize, v: u32) {
    guest::mmio_write32(a, v)
}
fn w64(a: usize, v: u64) {
    w32(a, v as u32);
    w32(a + 4, (v >> 32) as u32);
}

fn fail(why: &str) -> ! {
    puts("FAIL: ");
    puts(why);
    puts("\n");
    guest::exit(1);
}

struct Device {
    common: usize,
    notify: usize,
    device_cfg: usize,
    isr: usize,
}

fn main() -> ! {
    // Find the disk.
    let dev = (0u8..32)
        .find(|&d| pci_read32(d, 0) == 0x1042_1af4)
        .unwrap_or_else(|| fail("no virtio-blk device on bus 0"));
    let bar = (pci_read32(dev, 0x10) & !0xf) as usize;
    if bar == 0 {
        fail("BAR 0 is not placed");
    }
    // Memory space and bus mastering on.
    let cmd = pci_read32(dev, 0x04);
    pci_write32(dev, 0x04, cmd | 0x6);

    // Walk the capabilities.
    let mut d = Device {
        common: 0,
        notify: 0,
        device_cfg: 0,
        isr: 0,
    };
    let mut notify_mult = 0u32;
    let mut msix_cap = 0u8;
    let mut table_offset = 0u32;
    let mut cap = (pci_read32(dev, 0x34) & 0xfc) as u8;
    while cap != 0 {
        let head = pci_read32(dev, cap);
        let id = head as u8;
        if id == 0x09 {
            let cfg_type = (head >> 24) as u8;
            let offset = pci_read32(dev, cap + 8) as usize;
            match cfg_type {
                1 => d.common = bar + offset,
                2 => {
                    d.notify = bar + offset;
                    notify_mult = pci_read32(dev, cap + 16);
                }
                3 => d.isr = bar + offset,
                4 => d.device_cfg = bar + offset,
                _ => {}
            }
        } else if id == 0x11 {
            msix_cap = cap;
            table_offset = pci_read32(dev, cap + 4);
        }
        cap = ((head >> 8) & 0xfc) as u8;
    }
    if d.common == 0 || d.notify == 0 || d.device_cfg == 0 || d.isr == 0 || msix_cap == 0 {
        fail("a virtio or MSI-X capability is missing");
    }
    if table_offset & 7 != 0 {
        fail("MSI-X table is not in BAR 0");
    }

    // Interrupts: vector QUEUE_VECTOR through MSI-X entry 1.
    // SAFETY: interrupts are off; the entries are set before they are used.
    unsafe {
        idt::set(QUEUE_VECTOR, virtio_irq_entry);
        idt::set(SPURIOUS_VECTOR, guest::spurious_interrupt_entry);
    }
    idt::load();
    lapic::enable(SPURIOUS_VECTOR);
    let table = bar + (table_offset & !7) as usize;
    let entry = table + 16;
    w32(entry, 0xfee0_0000 | (lapic::id() << 12));
    w32(entry + 4, 0);
    w32(entry + 8, u32::from(QUEUE_VECTOR));
    w32(entry + 12, 0); // unmask
    let ctl = pci_read32(dev, msix_cap);
    pci_write32(dev, msix_cap, ctl | (1 << 31)); // MSI-X enable

    // Reset and negotiate.
    let c = d.common;
    w8(c + 0x14, 0);
    if r8(c + 0x14) != 0 {
        fail("reset did not clear the status");
    }
    w8(c + 0x14, 1 | 2); // ACKNOWLEDGE | DRIVER
    w32(c + 0x00, 1);
    let high = r32(c + 0x04);
    if high & 1 == 0 {
        fail("VERSION_1 not offered");
    }
    w32(c + 0x08, 0);
    w32(c + 0x0c, 1 << 9); // FLUSH
    w32(c + 0x08, 1);
    w32(c + 0x0c, 1); // VERSION_1
    w8(c + 0x14, 1 | 2 | 8);
    if r8(c + 0x14) & 8 == 0 {
        fail("FEATURES_OK refused");
    }
    if r16(c + 0x12) != 1 {
        fail("expected one queue");
    }

    // Queue 0.
    w16(c + 0x16, 0);
    if (r16(c + 0x18) as usize) < QSIZE {
        fail("queue too small");
    }
    w16(c + 0x18, QSIZE as u16);
    w16(c + 0x1a, 1);
    if r16(c + 0x1a) != 1 {
        fail("queue vector refused");
    }
    // SAFETY: only this CPU touches the rings outside the device.
    let (desc, avail, used) = unsafe {
        (
            addr_of!(RINGS.desc) as u64,
            addr_of!(RINGS.avail) as u64,
            addr_of!(RINGS.used) as u64,
        )
    };
    w64(c + 0x20, desc);
    w64(c + 0x28, avail);
    w64(c + 0x30, used);
    w16(c + 0x1c, 1);
    let notify_off = r16(c + 0x1e) as usize;
    let doorbell = d.notify + notify_off * notify_mult as usize;
    w8(c + 0x14, 1 | 2 | 8 | 4); // DRIVER_OK
    if r8(c + 0x14) & 0x40 != 0 {
        fail("device needs reset after DRIVER_OK");
    }

    let cap_lo = r32(d.device_cfg);
    let cap_hi = r32(d.device_cfg + 4);
    let capacity = u64::from(cap_hi) << 32 | u64::from(cap_lo);
    puts("capacity ");
    guest::put_dec(capacity as u32);
    puts("\n");

    // SAFETY: interrupts may now arrive.
    unsafe { core::arch::asm!("sti", options(nomem, nostack)) };

    // 1. Write sector 1.
    let mut pattern = [0u8; 512];
    for (i, b) in pattern.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7).wrapping_add(3);
    }
    request(doorbell, 1, 1, Some(&pattern), false);
    // 2. Read it back.
    let status = request(doorbell, 0, 1, None, true);
    // SAFETY: the device is done with the buffer.
    let data = unsafe { addr_of!(BUF.data).read() };
    if status != 0 || data != pattern {
        fail("read back differs");
    }
    puts("read back ok\n");
    // 3. Flush.
    if request(doorbell, 4, 0, None, false) != 0 {
        fail("flush failed");
    }
    // 4. GET_ID (20 bytes into the data buffer).
    if request(doorbell, 8, 0, None, true) != 0 {
        fail("GET_ID failed");
    }
    puts("id ");
    // SAFETY: as above.
    let id = unsafe { addr_of!(BUF.data).read() };
    for &b in id.iter().take(20).take_while(|&&b| b != 0) {
        guest::putc(b);
    }
    puts("\n");
    // 5. Past the end: must fail with IOERR.
    let status = request(doorbell, 0, capacity, None, true);
    puts("past end: status ");
    guest::put_dec(u32::from(status));
    puts("\n");
    // The ISR says a queue interrupt happened (read clears it).
    let _ = r8(d.isr);
    puts("interrupts ");
    guest::put_dec(INTERRUPTS.load(Ordering::SeqCst));
    puts("\n");
    guest::exit(0);
}

/// One request of `kind` at `sector` with the 512-byte data buffer (read
/// into when `device_writes`, written from `out` otherwise; no data for
/// flush). Waits for its interrupt; returns the status byte.
fn request(
    doorbell: usize,
    kind: u32,
    sector: u64,
    out: Option<&[u8; 512]>,
    device_writes: bool,
) -> u8 {
    // SAFETY: the device only touches these between the doorbell and the
    // used-ring update we wait for.
    unsafe {
        let buf = addr_of_mut!(BUF);
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&kind.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        (*buf).header = header;
        if let Some(o) = out {
            (*buf).data = *o;
        } else {
            (*buf).data = [0; 512];
        }
        (*buf).status = 0xff;
        let rings = addr_of_mut!(RINGS);
        let has_data = kind != 4;
        (*rings).desc[0] = Desc {
            addr: addr_of!((*buf).header) as u64,
            len: 16,
            flags: VRING_DESC_F_NEXT,
            next: if has_data { 1 } else { 2 },
        };
        (*rings).desc[1] = Desc {
            addr: addr_of!((*buf).data) as u64,
            len: if kind == 8 { 20 } else { 512 },
            flags: VRING_DESC_F_NEXT | if device_writes { VRING_DESC_F_WRITE } else { 0 },
            next: 2,
        };
        (*rings).desc[2] = Desc {
            addr: addr_of!((*buf).status) as u64,
            len: 1,
            flags: VRING_DESC_F_WRITE,
            next: 0,
        };
        let idx = read_volatile(addr_of!((*rings).avail.idx));
        write_volatile(
            addr_of_mut!((*rings).avail.ring[usize::from(idx) % QSIZE]),
            0,
        );
        fence(Ordering::SeqCst);
        write_volatile(addr_of_mut!((*rings).avail.idx), idx.wrapping_add(1));
        fence(Ordering::SeqCst);
        let before = INTERRUPTS.load(Ordering::SeqCst);
        w16(doorbell, 0);
        // Sleep until the interrupt; the used ring must then have it.
        // Interrupts off while checking, so none slips in between the
        // check and the `hlt` (sti takes effect after the next instruction).
        loop {
            core::arch::asm!("cli", options(nomem, nostack));
            if INTERRUPTS.load(Ordering::SeqCst) != before {
                break;
            }
            core::arch::asm!("sti; hlt", options(nomem, nostack));
        }
        core::arch::asm!("sti", options(nomem, nostack));
        fence(Ordering::SeqCst);
        if read_volatile(addr_of!((*rings).used.idx)) != idx.wrapping_add(1) {
            fail("interrupt without a used entry");
        }
        read_volatile(addr_of!((*buf).status))
    }
}
