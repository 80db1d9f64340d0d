//! Reads the framebuffer the engine announced in `boot_params.screen_info`
//! (the zero page at 0x7000), prints `fb WIDTHxHEIGHT stride STRIDE type
//! TYPE\n`, draws a known pattern — a 16×8 red block at (8, 4), an 8×8
//! green block at (100, 60), one blue pixel in the bottom-right corner —
//! writes marker 0x10 and then 1 ("init reached"), then echoes every byte the keyboard controller hands
//! it as two hex digits and a space; the break code of Escape (0x81) ends
//! the line and powers off with status 0. Without a framebuffer it prints
//! `no fb\n` and exits 3.
//!
//! Small on purpose: every store runs through kvm_pvm's emulator.
#![no_std]
#![no_main]

guest::entry!(main);

/// `boot_params` (Linux's zero page), where `screen_info` is at offset 0.
const ZERO_PAGE: usize = 0x7000;
/// i8042 data port.
const I8042_DATA: u16 = 0x60;
/// i8042 status: a byte waits at 0x60.
const STATUS_OBF: u8 = 0x01;
/// Scancode set 1 break code of Escape.
const ESCAPE_BREAK: u8 = 0x81;

fn read16(off: usize) -> u16 {
    // SAFETY: the zero page is identity-mapped guest RAM the engine wrote.
    unsafe { core::ptr::read_volatile((ZERO_PAGE + off) as *const u16) }
}

fn read32(off: usize) -> u32 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile((ZERO_PAGE + off) as *const u32) }
}

fn hex(b: u8) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    guest::putc(DIGITS[usize::from(b >> 4)]);
    guest::putc(DIGITS[usize::from(b & 15)]);
}

fn main() -> ! {
    // struct screen_info: orig_video_isVGA at 0x0f, lfb_width 0x12,
    // lfb_height 0x14, lfb_base 0x18, lfb_linelength 0x24.
    // SAFETY: as in read16.
    let kind = unsafe { core::ptr::read_volatile((ZERO_PAGE + 0x0f) as *const u8) };
    let width = u32::from(read16(0x12));
    let height = u32::from(read16(0x14));
    let base = read32(0x18) as usize;
    let stride = u32::from(read16(0x24));
    if kind == 0 || base == 0 {
        guest::puts("no fb\n");
        guest::exit(3);
    }
    guest::puts("fb ");
    guest::put_dec(width);
    guest::putc(b'x');
    guest::put_dec(height);
    guest::puts(" stride ");
    guest::put_dec(stride);
    guest::puts(" type ");
    guest::put_dec(u32::from(kind));
    guest::putc(b'\n');

    let pixel = |x: u32, y: u32, rgb: u32| {
        let addr = base + (y * stride + x * 4) as usize;
        // SAFETY: inside the framebuffer the engine mapped and announced.
        unsafe { core::ptr::write_volatile(addr as *mut u32, rgb) };
    };
    for y in 4..12 {
        for x in 8..24 {
            pixel(x, y, 0x00ff_0000);
        }
    }
    for y in 60..68 {
        for x in 100..108 {
            pixel(x, y, 0x0000_ff00);
        }
    }
    pixel(width - 1, height - 1, 0x0000_00ff);
    guest::marker(0x10);
    // "init reached", which `hangar run --type` waits for.
    guest::marker(1);

    loop {
        if guest::inb(guest::I8042_COMMAND) & STATUS_OBF != 0 {
            let b = guest::inb(I8042_DATA);
            hex(b);
            guest::putc(b' ');
            if b == ESCAPE_BREAK {
                guest::putc(b'\n');
                guest::exit(0);
            }
        }
        core::hint::spin_loop();
    }
}
