//! Prints `resetting\n` and pulses the reset line through the i8042
//! (command 0xfe to port 0x64); the VM should stop as "guest reset".
#![no_std]
#![no_main]

guest::entry!(main);

fn main() -> ! {
    guest::puts("resetting\n");
    guest::outb(guest::I8042_COMMAND, 0xfe);
    guest::halt_forever()
}
