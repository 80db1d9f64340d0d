//! Animates the framebuffer announced in `screen_info`, at native speed:
//! under kvm_pvm only CPL3 code runs natively (CPL0 goes through the
//! instruction emulator), so after reading the screen and its mode at CPL0
//! it marks every page-table entry user-accessible, adds user segments to
//! the GDT and drops to CPL3 with `iretq` (marker 0x20 just before). It
//! never comes back (no port I/O, no interrupts, nothing that faults);
//! only a forced stop ends it.
//!
//! Mode from the command line: `cursor` moves a white 64×64 block across
//! a black screen, a step about every 2^24 TSC ticks; anything else
//! (`full`) repaints the whole screen in a new colour, frame after frame.
//! The engine's display benchmark feeds on both.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicUsize, Ordering};

guest::entry!(main);

const ZERO_PAGE: usize = 0x7000;
const CMDLINE: usize = 0x20000;
/// The engine's boot page tables (see the guests' README).
const PML4: usize = 0x1000;
const PDPT: usize = 0x2000;
const PD: usize = 0x3000;
/// Page-table entry: user-accessible.
const PTE_USER: u64 = 1 << 2;
/// The engine's GDT (null, code32, code64, data, 16-byte TSS = 0x30 bytes).
const GDT: usize = 0x500;
/// User data (DPL 3) at 0x30, user 64-bit code (DPL 3) at 0x38.
const USER_DATA: u64 = 0x00cf_f200_0000_ffff;
const USER_CODE64: u64 = 0x00af_fa00_0000_ffff;
const USER_DS: u64 = 0x30 | 3;
const USER_CS: u64 = 0x38 | 3;
const MARKER_USER_MODE: u8 = 0x20;
const CURSOR: u32 = 64;
const CURSOR_TICKS: u64 = 1 << 24;

// What the CPL3 loop needs, set at CPL0 (statics are in user pages then).
static BASE: AtomicUsize = AtomicUsize::new(0);
static WIDTH: AtomicUsize = AtomicUsize::new(0);
static HEIGHT: AtomicUsize = AtomicUsize::new(0);
static STRIDE: AtomicUsize = AtomicUsize::new(0);
static CURSOR_MODE: AtomicUsize = AtomicUsize::new(0);

#[repr(C, align(16))]
struct Stack([u8; 16384]);
static mut USER_STACK: Stack = Stack([0; 16384]);

fn read<T: Copy>(addr: usize) -> T {
    // SAFETY: identity-mapped guest RAM the engine filled (zero page,
    // command line) or owns (page tables).
    unsafe { core::ptr::read_volatile(addr as *const T) }
}

fn write64(addr: usize, value: u64) {
    // SAFETY: the engine's boot page tables and GDT, ours to change.
    unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
}

fn cmdline_has(word: &[u8]) -> bool {
    let mut line = [0u8; 64];
    for (i, b) in line.iter_mut().enumerate() {
        *b = read::<u8>(CMDLINE + i);
        if *b == 0 {
            break;
        }
    }
    line.windows(word.len()).any(|w| w == word)
}

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reads the time-stamp counter only (allowed at CPL3: TSD clear).
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

fn main() -> ! {
    let base = read::<u32>(ZERO_PAGE + 0x18) as usize;
    if read::<u8>(ZERO_PAGE + 0x0f) == 0 || base == 0 {
        guest::puts("no fb\n");
        guest::exit(3);
    }
    BASE.store(base, Ordering::Relaxed);
    WIDTH.store(usize::from(read::<u16>(ZERO_PAGE + 0x12)), Ordering::Relaxed);
    HEIGHT.store(usize::from(read::<u16>(ZERO_PAGE + 0x14)), Ordering::Relaxed);
    STRIDE.store(usize::from(read::<u16>(ZERO_PAGE + 0x24)), Ordering::Relaxed);
    let cursor = cmdline_has(b"cursor");
    CURSOR_MODE.store(usize::from(cursor), Ordering::Relaxed);
    guest::puts(if cursor { "animate cursor\n" } else { "animate full\n" });

    // Every level of the identity map becomes user-accessible.
    write64(PML4, read::<u64>(PML4) | PTE_USER);
    for i in 0..4 {
        write64(PDPT + i * 8, read::<u64>(PDPT + i * 8) | PTE_USER);
    }
    for i in 0..4 * 512 {
        write64(PD + i * 8, read::<u64>(PD + i * 8) | PTE_USER);
    }
    write64(GDT + 0x30, USER_DATA);
    write64(GDT + 0x38, USER_CODE64);
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let gdtr = Pointer {
        limit: 0x3f,
        base: GDT as u64,
    };
    guest::marker(MARKER_USER_MODE);
    let stack_top = core::ptr::addr_of!(USER_STACK) as usize + core::mem::size_of::<Stack>();
    // SAFETY: a larger GDT with the same first entries, a flushed TLB after
    // the page-table change, then iretq to `user_main` at CPL3 on its own
    // stack; it never returns.
    unsafe {
        asm!(
            "lgdt [rdi]",
            "mov rax, cr3",
            "mov cr3, rax",
            "push rsi",
            "push rdx",
            "push 0x2",
            "push rcx",
            "push r8",
            "iretq",
            in("rdi") &gdtr,
            in("rsi") USER_DS,
            in("rdx") stack_top,
            in("rcx") USER_CS,
            in("r8") user_main as *const () as usize,
            options(noreturn)
        )
    }
}

/// The CPL3 loop: only plain memory stores and rdtsc.
extern "C" fn user_main() -> ! {
    let base = BASE.load(Ordering::Relaxed);
    let (w, h) = (WIDTH.load(Ordering::Relaxed), HEIGHT.load(Ordering::Relaxed));
    let stride = STRIDE.load(Ordering::Relaxed);
    let pixel = |x: usize, y: usize, rgb: u32| {
        // SAFETY: inside the framebuffer the engine mapped and announced.
        unsafe { core::ptr::write_volatile((base + y * stride + x * 4) as *mut u32, rgb) };
    };
    let block = |x0: usize, y0: usize, rgb: u32| {
        for y in y0..y0 + CURSOR as usize {
            for x in x0..x0 + CURSOR as usize {
                pixel(x, y, rgb);
            }
        }
    };
    let mut frame: usize = 0;
    if CURSOR_MODE.load(Ordering::Relaxed) == 1 {
        let (mut x, mut y) = (0, 0);
        let mut last = rdtsc();
        loop {
            if rdtsc().wrapping_sub(last) < CURSOR_TICKS {
                core::hint::spin_loop();
                continue;
            }
            last = rdtsc();
            block(x, y, 0);
            frame += 1;
            x = (frame * 7) % (w - CURSOR as usize);
            y = (frame * 5) % (h - CURSOR as usize);
            block(x, y, 0x00ff_ffff);
        }
    }
    loop {
        let rgb = ((frame as u32).wrapping_mul(0x0001_0307)) & 0x00ff_ffff;
        for y in 0..h {
            for x in 0..w {
                pixel(x, y, rgb);
            }
        }
        frame = frame.wrapping_add(1);
    }
}
