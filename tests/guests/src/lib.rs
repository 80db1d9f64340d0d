//! Shared pieces of Hangar's test guests: entry point, port I/O, the serial
//! console, the debug port, the local APIC, the IOAPIC and an IDT.
//!
//! The engine enters a guest at its ELF entry in 64-bit long mode at CPL0,
//! with 0..4 GiB identity-mapped (2 MiB pages, PML4 at 0x1000) and its GDT
//! at 0x500 (code32 0x08, code64 0x10, data 0x18). `_start` masks the 8259,
//! switches to a stack inside the image and calls the binary's `main`, which
//! the [`entry!`] macro hooks up.
//!
//! Every instruction may run through KVM's instruction emulator (kvm_pvm):
//! nothing here uses SSE, `int3`, `rdtscp`, 128-bit atomics or XSAVE.
#![no_std]

use core::arch::{asm, global_asm};

/// COM1 data register (THR on write, RBR on read).
pub const COM1: u16 = 0x3f8;
/// COM1 interrupt enable register.
pub const COM1_IER: u16 = COM1 + 1;
/// COM1 modem control register.
pub const COM1_MCR: u16 = COM1 + 4;
/// COM1 line status register.
pub const COM1_LSR: u16 = COM1 + 5;
/// LSR: a received byte is waiting in RBR.
pub const LSR_DATA_READY: u8 = 1 << 0;
/// LSR: the transmit holding register is empty.
pub const LSR_THR_EMPTY: u8 = 1 << 5;
/// Debug port: a byte written here is a boot-progress marker.
pub const DEBUG_MARKER_PORT: u16 = 0x402;
/// Debug port: a byte written here powers off with that exit status.
pub const DEBUG_EXIT_PORT: u16 = 0x403;
/// i8042 command/status port.
pub const I8042_COMMAND: u16 = 0x64;

/// Local APIC base (xAPIC MMIO, the reset value of IA32_APIC_BASE).
pub const LAPIC_BASE: usize = 0xfee0_0000;
/// IOAPIC base.
pub const IOAPIC_BASE: usize = 0xfec0_0000;

// The entry point. The stack lives in .bss, so the engine's initial stack
// (0x8ff0, just below the area an SMP trampoline may use) is left at once.
global_asm!(
    r#"
    .section .text.start, "ax"
    .global _start
    .type _start, @function
_start:
    cli
    lea rsp, [rip + __guest_stack_top]
    xor ebp, ebp
    mov al, 0xff
    out 0x21, al
    out 0xa1, al
    call guest_main
2:
    cli
    hlt
    jmp 2b

    .section .bss.guest_stack, "aw", @nobits
    .balign 16
    .skip 16384
__guest_stack_top:
    "#
);

/// Define the guest's `main`: `guest::entry!(main);` with `fn main() -> !`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(no_mangle)]
        extern "C" fn guest_main() -> ! {
            let main: fn() -> ! = $main;
            main()
        }
    };
}

/// Define an interrupt entry stub `$entry` (for [`idt::set`]) that saves
/// the caller-saved registers, calls `extern "C" fn $handler()` and irets.
/// On entry RSP is 16-byte aligned minus 40 bytes (the CPU's frame); nine
/// pushes re-align it for the call. The target is soft-float: there are no
/// vector registers to save.
#[macro_export]
macro_rules! interrupt_entry {
    ($entry:ident, $handler:path) => {
        core::arch::global_asm!(
            concat!(".section .text.", stringify!($entry), ", \"ax\""),
            concat!(".global ", stringify!($entry)),
            concat!(stringify!($entry), ":"),
            "push rax",
            "push rcx",
            "push rdx",
            "push rsi",
            "push rdi",
            "push r8",
            "push r9",
            "push r10",
            "push r11",
            "cld",
            "call {handler}",
            "pop r11",
            "pop r10",
            "pop r9",
            "pop r8",
            "pop rdi",
            "pop rsi",
            "pop rdx",
            "pop rcx",
            "pop rax",
            "iretq",
            handler = sym $handler,
        );
        extern "C" {
            fn $entry();
        }
    };
}

// For the local APIC's spurious vector: nothing to do, no EOI.
global_asm!(
    r#"
    .section .text.spurious_interrupt_entry, "ax"
    .global spurious_interrupt_entry
spurious_interrupt_entry:
    iretq
    "#
);

extern "C" {
    /// An entry stub that only returns: for the spurious vector.
    pub fn spurious_interrupt_entry();
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    puts("guest panic\n");
    exit(0xff)
}

/// Write a byte to an I/O port.
#[inline(always)]
pub fn outb(port: u16, value: u8) {
    // SAFETY: port writes touch no memory; the guest owns the whole machine.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Read a byte from an I/O port.
#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: port reads touch no memory; the guest owns the whole machine.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Write one byte to the serial console, waiting for THR to be empty.
pub fn putc(byte: u8) {
    while inb(COM1_LSR) & LSR_THR_EMPTY == 0 {
        core::hint::spin_loop();
    }
    outb(COM1, byte);
}

/// Write a string to the serial console.
pub fn puts(s: &str) {
    for &b in s.as_bytes() {
        putc(b);
    }
}

/// Write a number in decimal to the serial console.
pub fn put_dec(mut n: u32) {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &b in &buf[i..] {
        putc(b);
    }
}

/// A received byte, if one is waiting.
pub fn try_getc() -> Option<u8> {
    if inb(COM1_LSR) & LSR_DATA_READY != 0 {
        Some(inb(COM1))
    } else {
        None
    }
}

/// Wait for a received byte (polling).
pub fn getc() -> u8 {
    loop {
        if let Some(b) = try_getc() {
            return b;
        }
        core::hint::spin_loop();
    }
}

/// Write a boot-progress marker to the debug port.
pub fn marker(value: u8) {
    outb(DEBUG_MARKER_PORT, value);
}

/// Power off with this exit status (debug port 0x403).
pub fn exit(status: u8) -> ! {
    outb(DEBUG_EXIT_PORT, status);
    halt_forever()
}

/// Stop this CPU for good (interrupts off).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: cli/hlt only stop this CPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// Enable interrupts and halt until one arrives, as one step (the `sti`
/// shadow covers the `hlt`, so an interrupt pending at `sti` wakes it).
pub fn enable_and_halt() {
    // SAFETY: the caller has an IDT that handles what may arrive.
    unsafe { asm!("sti", "hlt", options(nomem, nostack)) }
}

/// Disable interrupts.
pub fn cli() {
    // SAFETY: only masks interrupts on this CPU.
    unsafe { asm!("cli", options(nomem, nostack)) }
}

/// Read a 32-bit MMIO register.
#[inline(always)]
pub fn mmio_read32(addr: usize) -> u32 {
    // SAFETY: the caller names a device register inside the identity map.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// Write a 32-bit MMIO register.
#[inline(always)]
pub fn mmio_write32(addr: usize, value: u32) {
    // SAFETY: the caller names a device register inside the identity map.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

/// The local APIC (xAPIC, memory-mapped).
pub mod lapic {
    use super::{mmio_read32, mmio_write32, LAPIC_BASE};

    /// ID register.
    pub const ID: usize = 0x20;
    /// Task priority register.
    pub const TPR: usize = 0x80;
    /// End-of-interrupt register.
    pub const EOI: usize = 0xb0;
    /// Spurious interrupt vector register (bit 8 enables the APIC).
    pub const SVR: usize = 0xf0;
    /// Interrupt command register, low half (writing it sends).
    pub const ICR_LOW: usize = 0x300;
    /// Interrupt command register, high half (destination in bits 24..31).
    pub const ICR_HIGH: usize = 0x310;
    /// ICR: delivery status (send pending).
    pub const ICR_PENDING: u32 = 1 << 12;
    /// ICR: INIT, level assert.
    pub const ICR_INIT: u32 = 0x0000_4500;
    /// ICR: start-up IPI; OR in the vector (the page number of the entry).
    pub const ICR_STARTUP: u32 = 0x0000_4600;

    /// Read a register.
    pub fn read(reg: usize) -> u32 {
        mmio_read32(LAPIC_BASE + reg)
    }

    /// Write a register.
    pub fn write(reg: usize, value: u32) {
        mmio_write32(LAPIC_BASE + reg, value)
    }

    /// This CPU's APIC ID.
    pub fn id() -> u32 {
        read(ID) >> 24
    }

    /// Software-enable the APIC with this spurious vector; accept every priority.
    pub fn enable(spurious_vector: u8) {
        write(TPR, 0);
        write(SVR, 0x100 | u32::from(spurious_vector));
    }

    /// Signal the end of the interrupt being serviced.
    pub fn eoi() {
        write(EOI, 0);
    }

    /// Send an IPI (`command` = ICR low half) to the CPU with APIC ID `dest`
    /// and wait until the APIC has accepted it.
    pub fn send_ipi(dest: u32, command: u32) {
        write(ICR_HIGH, dest << 24);
        write(ICR_LOW, command);
        while read(ICR_LOW) & ICR_PENDING != 0 {
            core::hint::spin_loop();
        }
    }
}

/// The IOAPIC at its standard address.
pub mod ioapic {
    use super::{mmio_write32, IOAPIC_BASE};

    fn write(reg: u32, value: u32) {
        mmio_write32(IOAPIC_BASE, reg);
        mmio_write32(IOAPIC_BASE + 0x10, value);
    }

    /// Route input `pin` to `vector` on the CPU with APIC ID `dest`: fixed
    /// delivery, physical destination, edge-triggered, active high, unmasked.
    pub fn route(pin: u8, vector: u8, dest: u8) {
        let reg = 0x10 + 2 * u32::from(pin);
        write(reg + 1, u32::from(dest) << 24);
        write(reg, u32::from(vector));
    }
}

/// A 256-entry interrupt descriptor table in the image.
pub mod idt {
    use core::arch::asm;
    use core::cell::UnsafeCell;

    /// Code segment selector the engine's GDT uses for 64-bit code.
    const KERNEL_CS: u64 = 0x10;

    #[repr(C, align(16))]
    struct Table(UnsafeCell<[u64; 512]>);

    // SAFETY: written only by the boot CPU before interrupts are enabled.
    unsafe impl Sync for Table {}

    static IDT: Table = Table(UnsafeCell::new([0; 512]));

    /// Point `vector` at `handler`, an interrupt gate (DPL 0, no IST).
    /// `handler` must end in `iretq` and preserve every register.
    ///
    /// # Safety
    /// No interrupt may use the entry while it is being written.
    pub unsafe fn set(vector: u8, handler: unsafe extern "C" fn()) {
        let addr = handler as usize as u64;
        let low =
            (addr & 0xffff) | (KERNEL_CS << 16) | (0x8e00 << 32) | (((addr >> 16) & 0xffff) << 48);
        let high = addr >> 32;
        let i = usize::from(vector) * 2;
        // SAFETY: the table is ours; the caller rules out concurrent use.
        unsafe {
            let t = &mut *IDT.0.get();
            t[i] = low;
            t[i + 1] = high;
        }
    }

    /// Load the table into IDTR.
    pub fn load() {
        #[repr(C, packed)]
        struct Idtr {
            limit: u16,
            base: u64,
        }
        let idtr = Idtr {
            limit: (512 * 8 - 1) as u16,
            base: IDT.0.get() as u64,
        };
        // SAFETY: the table is static and its entries are either empty or valid gates.
        unsafe { asm!("lidt [{}]", in(reg) &idtr, options(readonly, nostack, preserves_flags)) }
    }
}
