//! Like `echo`, but driven by the serial receive interrupt instead of
//! polling: COM1's IER enables the "data available" interrupt, the guest
//! routes IOAPIC pin 4 to vector 0x24 on its own local APIC and sleeps in
//! `sti; hlt`. Each byte is echoed uppercased from the interrupt handler;
//! on `q` it powers off with exit status 7. Proves that the host's serial
//! interrupt (an irqfd) reaches the guest.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, Ordering};

use guest::{idt, ioapic, lapic};

guest::entry!(main);

/// Vector for COM1's interrupt (ISA IRQ 4 → IOAPIC pin 4).
const SERIAL_VECTOR: u8 = 0x24;
/// Spurious-interrupt vector of the local APIC.
const SPURIOUS_VECTOR: u8 = 0xff;
const SERIAL_IOAPIC_PIN: u8 = 4;

/// Set by the handler when `q` arrives.
static QUIT: AtomicBool = AtomicBool::new(false);

guest::interrupt_entry!(serial_irq_entry, serial_irq);

/// Drain the receiver, echo, and acknowledge the interrupt.
extern "C" fn serial_irq() {
    drain();
    lapic::eoi();
}

fn drain() {
    while let Some(b) = guest::try_getc() {
        if b == b'q' {
            QUIT.store(true, Ordering::SeqCst);
        } else if !QUIT.load(Ordering::Relaxed) {
            guest::putc(b.to_ascii_uppercase());
        }
    }
}

fn main() -> ! {
    // SAFETY: interrupts are off (`_start` cleared IF) while the IDT is built.
    unsafe {
        idt::set(SERIAL_VECTOR, serial_irq_entry);
        idt::set(SPURIOUS_VECTOR, guest::spurious_interrupt_entry);
    }
    idt::load();
    lapic::enable(SPURIOUS_VECTOR);
    ioapic::route(SERIAL_IOAPIC_PIN, SERIAL_VECTOR, lapic::id() as u8);
    // DTR | RTS | OUT2 (OUT2 gates the IRQ line on PC hardware).
    guest::outb(guest::COM1_MCR, 0x0b);
    // Received-data-available interrupt only.
    guest::outb(guest::COM1_IER, 0x01);
    guest::puts("ready\n");
    // Bytes that came before IER was set raised no interrupt: take them now.
    // Later ones wait in the local APIC's IRR until `sti`.
    drain();
    loop {
        guest::cli();
        if QUIT.load(Ordering::SeqCst) {
            guest::exit(7);
        }
        guest::enable_and_halt();
    }
}
