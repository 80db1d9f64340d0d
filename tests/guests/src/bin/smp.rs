//! Starts every application processor listed in the MP table and counts them.
//!
//! The boot CPU prints `cpu <id> up\n`, copies a real-mode trampoline to
//! 0x8000 and sends each enabled AP of the MP table INIT + 2 × SIPI (vector
//! 0x08). Each AP goes real → protected → long mode with the boot CPU's page
//! tables (CR3 is patched into the trampoline), takes a stack chosen by its
//! APIC ID, prints `cpu <id> up\n` under a spinlock, bumps a shared counter
//! (`lock xadd`) and halts. The boot CPU waits for all of them, prints
//! `cpus: <n>\n` and exits 0 — or 1 if some AP did not come up in time.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use guest::lapic;

guest::entry!(main);

/// Where the trampoline is copied: page 8, the SIPI vector.
const TRAMPOLINE: usize = 0x8000;
const SIPI_VECTOR: u32 = (TRAMPOLINE >> 12) as u32;
/// APs with an APIC ID at or above this halt without checking in.
const MAX_CPUS: usize = 16;
const AP_STACK_SIZE: usize = 4096;
/// Where the engine puts the MP floating pointer (top 1 KiB of base memory).
const MP_SEARCH: (usize, usize) = (0x9fc00, 0xa0000);
/// How long the boot CPU waits for the APs, in TSC ticks (~25 s at 2.6 GHz:
/// every instruction may be emulated, and vCPUs share few host cores).
const AP_TIMEOUT_TICKS: u64 = 1 << 36;

/// CPUs that have checked in, the boot CPU included.
static CPUS_UP: AtomicU32 = AtomicU32::new(0);
static PRINT_LOCK: AtomicBool = AtomicBool::new(false);

#[repr(C, align(4096))]
struct ApStacks(UnsafeCell<[[u8; AP_STACK_SIZE]; MAX_CPUS]>);
// SAFETY: each AP uses only the stack of its own APIC ID.
unsafe impl Sync for ApStacks {}
static AP_STACKS: ApStacks = ApStacks(UnsafeCell::new([[0; AP_STACK_SIZE]; MAX_CPUS]));

// The AP trampoline. It runs from its copy at TRAMPOLINE, so every address in
// it is TRAMPOLINE + (label - ap_tramp_start). It carries its own GDT with the
// engine's layout (code32 0x08, code64 0x10, data 0x18). The boot CPU patches
// the three quads at the end before sending SIPIs.
global_asm!(
    r#"
    .set TRAMP, 0x8000
    .section .text.ap_trampoline, "ax"
    .balign 16
    .global ap_tramp_start
ap_tramp_start:
    .code16
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (ap_tramp_gdtr - ap_tramp_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x08, $(TRAMP + ap_tramp_pm32 - ap_tramp_start)

    .code32
ap_tramp_pm32:
    mov $0x18, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x620, %eax                 # PAE | OSFXSR | OSXMMEXCPT, as the BSP
    mov %eax, %cr4
    mov (TRAMP + ap_tramp_cr3 - ap_tramp_start), %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx            # EFER
    rdmsr
    or $0x901, %eax                  # SCE | LME | NXE
    wrmsr
    mov $0x80050033, %eax            # PG | AM | WP | NE | ET | MP | PE
    mov %eax, %cr0
    ljmpl $0x10, $(TRAMP + ap_tramp_lm64 - ap_tramp_start)

    .code64
ap_tramp_lm64:
    mov $0x18, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    mov $0xfee00020, %ebx            # local APIC ID register
    mov (%rbx), %edi
    shr $24, %edi
    cmp ${max_cpus}, %edi
    jae 2f
    lea 1(%rdi), %eax
    imul ${stack_size}, %rax, %rax
    add (TRAMP + ap_tramp_stacks - ap_tramp_start), %rax
    mov %rax, %rsp
    xor %ebp, %ebp
    call *(TRAMP + ap_tramp_entry - ap_tramp_start)
2:
    cli
    hlt
    jmp 2b

    .balign 8
ap_tramp_gdt:
    .quad 0
    .quad 0x00cf9b000000ffff         # 0x08 code32
    .quad 0x00af9b000000ffff         # 0x10 code64
    .quad 0x00cf93000000ffff         # 0x18 data
ap_tramp_gdtr:
    .word 4 * 8 - 1
    .long TRAMP + ap_tramp_gdt - ap_tramp_start
    .balign 8
    .global ap_tramp_cr3, ap_tramp_stacks, ap_tramp_entry, ap_tramp_end
ap_tramp_cr3:
    .quad 0
ap_tramp_stacks:
    .quad 0
ap_tramp_entry:
    .quad 0
ap_tramp_end:
    .text
    "#,
    max_cpus = const MAX_CPUS,
    stack_size = const AP_STACK_SIZE,
    options(att_syntax)
);

extern "C" {
    static ap_tramp_start: u8;
    static ap_tramp_cr3: u8;
    static ap_tramp_stacks: u8;
    static ap_tramp_entry: u8;
    static ap_tramp_end: u8;
}

fn lock_print() {
    while PRINT_LOCK.swap(true, Ordering::Acquire) {
        while PRINT_LOCK.load(Ordering::Relaxed) {
            core::hint::spin_loop();
        }
    }
}

fn unlock_print() {
    PRINT_LOCK.store(false, Ordering::Release);
}

fn check_in(apic_id: u32) {
    lock_print();
    guest::puts("cpu ");
    guest::put_dec(apic_id);
    guest::puts(" up\n");
    unlock_print();
    CPUS_UP.fetch_add(1, Ordering::SeqCst);
}

/// Where each AP lands in long mode, on its own stack.
extern "C" fn ap_main(apic_id: u32) -> ! {
    check_in(apic_id);
    guest::halt_forever()
}

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reads the time-stamp counter only.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

fn delay(ticks: u64) {
    let start = rdtsc();
    while rdtsc().wrapping_sub(start) < ticks {
        core::hint::spin_loop();
    }
}

fn read_u8(addr: usize) -> u8 {
    // SAFETY: low memory is RAM inside the identity map.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

fn read_u16(addr: usize) -> u16 {
    u16::from(read_u8(addr)) | (u16::from(read_u8(addr + 1)) << 8)
}

fn read_u32(addr: usize) -> u32 {
    u32::from(read_u16(addr)) | (u32::from(read_u16(addr + 2)) << 16)
}

/// The MP configuration table's address, from the floating pointer.
fn find_mp_config() -> Option<usize> {
    let mut p = MP_SEARCH.0;
    while p < MP_SEARCH.1 {
        if read_u32(p) == u32::from_le_bytes(*b"_MP_") {
            let config = read_u32(p + 4) as usize;
            if config != 0 && read_u32(config) == u32::from_le_bytes(*b"PCMP") {
                return Some(config);
            }
        }
        p += 16;
    }
    None
}

/// Calls `f(apic_id)` for every enabled processor entry; returns their count.
fn for_each_cpu(config: usize, mut f: impl FnMut(u32)) -> u32 {
    let count = read_u16(config + 0x22);
    let mut p = config + 0x2c;
    let mut cpus = 0;
    for _ in 0..count {
        let (kind, len) = match read_u8(p) {
            0 => (0, 20),
            1..=4 => (1, 8),
            _ => break,
        };
        if kind == 0 && read_u8(p + 3) & 1 != 0 {
            cpus += 1;
            f(u32::from(read_u8(p + 1)));
        }
        p += len;
    }
    cpus
}

fn start_ap(apic_id: u32) {
    lapic::send_ipi(apic_id, lapic::ICR_INIT);
    delay(10_000_000);
    for _ in 0..2 {
        lapic::send_ipi(apic_id, lapic::ICR_STARTUP | SIPI_VECTOR);
        delay(1_000_000);
    }
}

fn install_trampoline() {
    let start = &raw const ap_tramp_start as usize;
    let len = &raw const ap_tramp_end as usize - start;
    let slot = |sym: *const u8| TRAMPOLINE + (sym as usize - start);
    let cr3: u64;
    // SAFETY: reads CR3 only.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags)) }
    // SAFETY: 0x8000.. is free low RAM (the engine's entry stack below 0x8ff0
    // was left in `_start`); the trampoline is a few hundred bytes.
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, TRAMPOLINE as *mut u8, len);
        core::ptr::write_volatile(slot(&raw const ap_tramp_cr3) as *mut u64, cr3);
        core::ptr::write_volatile(
            slot(&raw const ap_tramp_stacks) as *mut u64,
            AP_STACKS.0.get() as u64,
        );
        let entry: extern "C" fn(u32) -> ! = ap_main;
        core::ptr::write_volatile(
            slot(&raw const ap_tramp_entry) as *mut u64,
            entry as usize as u64,
        );
    }
}

fn main() -> ! {
    let bsp = lapic::id();
    check_in(bsp);
    let Some(config) = find_mp_config() else {
        guest::puts("no MP table\ncpus: 1\n");
        guest::exit(0)
    };
    install_trampoline();
    lapic::enable(0xff);
    let expected = for_each_cpu(config, |id| {
        if id != bsp {
            start_ap(id);
        }
    });
    let start = rdtsc();
    while CPUS_UP.load(Ordering::SeqCst) < expected
        && rdtsc().wrapping_sub(start) < AP_TIMEOUT_TICKS
    {
        core::hint::spin_loop();
    }
    let up = CPUS_UP.load(Ordering::SeqCst);
    lock_print();
    guest::puts("cpus: ");
    guest::put_dec(up);
    guest::putc(b'\n');
    unlock_print();
    guest::exit(if up == expected { 0 } else { 1 })
}
