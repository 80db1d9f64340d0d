//! Prints `spinning\n`, then counts forever with `pause`. Every 2^10
//! iterations it looks at the TSC and writes boot marker 2 if 2^27 ticks
//! (~50 ms at 2.6 GHz) have passed since the last one, so a test sees steady
//! progress at about the same rate whether the guest runs natively or through
//! the instruction emulator. It never reads its console: only a forced stop
//! ends it.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

guest::entry!(main);

/// The counter lives in memory, so a memory dump would show progress too.
static COUNTER: AtomicU64 = AtomicU64::new(0);

const MARKER_PROGRESS: u8 = 2;
const MARKER_TICKS: u64 = 1 << 27;

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reads the time-stamp counter only.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

fn main() -> ! {
    guest::puts("spinning\n");
    let mut last = rdtsc();
    loop {
        let n = COUNTER.load(Ordering::Relaxed).wrapping_add(1);
        COUNTER.store(n, Ordering::Relaxed);
        if n & 0x3ff == 0 {
            let now = rdtsc();
            if now.wrapping_sub(last) >= MARKER_TICKS {
                last = now;
                guest::marker(MARKER_PROGRESS);
            }
        }
        core::hint::spin_loop();
    }
}
