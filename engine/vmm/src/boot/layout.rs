//! Where the boot structures live in guest-physical memory.
//!
//! Everything the VMM writes before the first instruction sits in the first
//! megabyte, below the kernel, so that no boot structure can overlap a kernel
//! or an initramfs. The addresses of the page tables and the GDT are the ones
//! measured to work on `kvm_pvm` (see the shared README); they are equally
//! valid on hardware KVM.

use hangar_api::config::MAX_CMDLINE_LEN;

/// The boot GDT: null, code32 (0x08), code64 (0x10), data (0x18) and a
/// 16-byte 64-bit TSS descriptor (0x20). The slot 0x400..0x500 below it is
/// the BIOS data area, which Linux reads (EBDA pointer) and must stay zero.
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty boot IDT (one zero gate), right after the GDT. Linux installs
/// its own IDT before it enables interrupts; until then any exception
/// triple-faults, which is the honest outcome for a broken guest.
pub const BOOT_IDT_START: u64 = 0x540;
/// The 104-byte 64-bit TSS the boot TR points at. KVM's VM entry checks
/// demand a usable busy TSS in TR; its contents are never used at CPL0.
pub const BOOT_TSS_START: u64 = 0x580;
/// Size of the TSS minus one (the TR limit).
pub const BOOT_TSS_LIMIT: u32 = 0x67;

/// Page-map level 4 of the boot identity map.
pub const PML4_START: u64 = 0x1000;
/// The single page-directory-pointer table.
pub const PDPT_START: u64 = 0x2000;
/// Four page directories, one per GiB of the identity map (0x3000..0x7000).
pub const PD_START: u64 = 0x3000;
/// How many GiB the boot identity map covers: all of the 32-bit space, so
/// the kernel, boot_params, the initramfs and MMIO below 4 GiB are reachable.
pub const IDENTITY_MAP_GIB: u64 = 4;

/// The Linux zero page (`struct boot_params`, 4 KiB), passed in RSI.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer. The stack grows down through 0x8000..0x8ff0, the
/// page right after the zero page; 16-byte aligned as the ABI expects.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Room for the command line, terminating NUL included (Linux's x86
/// `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = MAX_CMDLINE_LEN;

/// The MP floating pointer and configuration table: the last KiB of
/// conventional memory, one of the places Linux scans for `_MP_`.
pub const MPTABLE_START: u64 = 0x9fc00;
/// End of conventional memory: the MP table must end below it, and e820
/// reports `[MPTABLE_START, HIMEM_START)` as reserved.
pub const EBDA_END: u64 = 0xa0000;

/// Start of high memory, where bzImages and our ELF guests are loaded.
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO gap: no RAM between here and 4 GiB, so devices
/// (IOAPIC, LAPIC, PCI BARs, a framebuffer) have addresses below 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap; RAM beyond the first 3 GiB continues here.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// The in-kernel IOAPIC's MMIO address (KVM's fixed default).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APIC's MMIO address (architectural default).
pub const LAPIC_START: u64 = 0xfee0_0000;

/// x86 page size.
pub const PAGE_SIZE: u64 = 0x1000;
