//! Port I/O by string instructions, one element per access: `rep outsb`
//! of a line to COM1, then `rep insb` of a CMOS RAM byte through CMOS's
//! one-byte data port, three times. Prints `string out`, then `insb` and
//! the three bytes read (each 90, 0x5a), and powers off with status 0.
#![no_std]
#![no_main]

use core::arch::asm;

guest::entry!(main);

const COM1: u16 = 0x3f8;
const CMOS_INDEX: u16 = 0x70;
const CMOS_DATA: u16 = 0x71;
/// A general-purpose CMOS RAM byte (the firmware area nobody uses here).
const CMOS_SCRATCH: u8 = 0x40;

fn main() -> ! {
    let line = b"string out\n";
    // SAFETY: reads `line.len()` bytes from `line` and writes only to the
    // port; the direction flag is cleared first.
    unsafe {
        asm!(
            "cld",
            "rep outsb",
            in("dx") COM1,
            inout("rsi") line.as_ptr() => _,
            inout("rcx") line.len() => _,
            options(nostack, readonly),
        );
    }
    guest::outb(CMOS_INDEX, CMOS_SCRATCH);
    guest::outb(CMOS_DATA, 0x5a);
    guest::outb(CMOS_INDEX, CMOS_SCRATCH);
    let mut read = [0u8; 3];
    // SAFETY: writes `read.len()` bytes into `read`, read from the port;
    // the direction flag is cleared first.
    unsafe {
        asm!(
            "cld",
            "rep insb",
            in("dx") CMOS_DATA,
            inout("rdi") read.as_mut_ptr() => _,
            inout("rcx") read.len() => _,
            options(nostack),
        );
    }
    guest::puts("insb");
    for b in read {
        guest::puts(" ");
        guest::put_dec(u32::from(b));
    }
    guest::puts("\n");
    guest::exit(0)
}
