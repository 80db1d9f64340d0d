//! Writes `hello from guest\n` to the serial console, boot marker 1, and
//! powers off with exit status 0.
#![no_std]
#![no_main]

guest::entry!(main);

fn main() -> ! {
    guest::puts("hello from guest\n");
    guest::marker(1);
    guest::exit(0)
}
