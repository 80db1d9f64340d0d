//! Prints `faulting\n`, loads an IDT with limit 0 and executes `ud2`: the #UD
//! cannot be delivered (#GP), nor can that (#DF), so the CPU triple-faults
//! and KVM reports a shutdown.
#![no_std]
#![no_main]

use core::arch::asm;

guest::entry!(main);

fn main() -> ! {
    guest::puts("faulting\n");
    // An IDTR with limit 0 and base 0: no vector can be delivered.
    let idtr = [0u16; 5];
    // SAFETY: deliberately breaks this CPU; nothing runs after it.
    unsafe {
        asm!("lidt [{}]", "ud2", in(reg) &idtr, options(noreturn));
    }
}
