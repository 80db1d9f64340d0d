//! Prints numbered lines as fast as the serial port takes them, forever:
//! `line 000123 the quick brown fox jumps over the lazy dog`, every fourth
//! line in an ANSI colour (cycling green, yellow, blue, magenta) and every
//! tenth in bold. A load generator for the console view (screenshots and
//! `tests/screenshots/frame-bench`); it never reads its console, so only a
//! forced stop ends it.
#![no_std]
#![no_main]

guest::entry!(main);

/// SGR colours for the coloured lines.
const COLOURS: [&str; 4] = ["\x1b[32m", "\x1b[33m", "\x1b[34m", "\x1b[35m"];

fn main() -> ! {
    let mut n: u32 = 0;
    loop {
        let coloured = n % 4 == 3;
        if coloured {
            guest::puts(COLOURS[(n / 4 % 4) as usize]);
        }
        if n % 10 == 9 {
            guest::puts("\x1b[1m");
        }
        guest::puts("line ");
        // Six digits, zero-padded (integer division only: no SSE here).
        let mut div = 100_000;
        while div > 0 {
            guest::putc(b'0' + (n / div % 10) as u8);
            div /= 10;
        }
        guest::puts(" the quick brown fox jumps over the lazy dog");
        if coloured || n % 10 == 9 {
            guest::puts("\x1b[0m");
        }
        guest::puts("\r\n");
        n = n.wrapping_add(1);
    }
}
