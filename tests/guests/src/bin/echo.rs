//! Prints `ready\n`, then polls the serial port and echoes each received
//! byte uppercased; on `q` it powers off with exit status 7 (the `q` itself
//! is not echoed).
#![no_std]
#![no_main]

guest::entry!(main);

fn main() -> ! {
    guest::puts("ready\n");
    loop {
        let b = guest::getc();
        if b == b'q' {
            guest::exit(7);
        }
        guest::putc(b.to_ascii_uppercase());
    }
}
