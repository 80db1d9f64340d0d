//! Reads from 0xd000_0000, where nothing is mapped: the engine reports the
//! access and lets the guest go on (the read returns all ones). Then prints
//! `after mmio\n` and powers off with exit status 0.
#![no_std]
#![no_main]

guest::entry!(main);

/// Inside the identity map but neither RAM nor a device.
const UNMAPPED: usize = 0xd000_0000;

fn main() -> ! {
    let value = guest::mmio_read32(UNMAPPED);
    core::hint::black_box(value);
    guest::puts("after mmio\n");
    guest::exit(0)
}
