//! The boot GDT, IDT, TSS and the identity-mapped page tables.
//!
//! Linux's 64-bit boot protocol wants long mode with paging on, an identity
//! map covering the kernel, boot_params and the command line, `__BOOT_CS` =
//! 0x10 and `__BOOT_DS` = 0x18. The same state serves our bare ELF guests.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_TSS_LIMIT, BOOT_TSS_START, IDENTITY_MAP_GIB, PAGE_SIZE,
    PDPT_START, PD_START, PML4_START,
};
use super::BootError;

/// 64-bit code segment (`__BOOT_CS`).
pub(super) const SELECTOR_CODE64: u16 = 0x10;
/// Flat data segment (`__BOOT_DS`).
pub(super) const SELECTOR_DATA: u16 = 0x18;
/// The 16-byte 64-bit TSS descriptor.
pub(super) const SELECTOR_TSS: u16 = 0x20;

/// Encode a segment descriptor. `flags` holds the access byte in bits 0..8
/// and the G/DB/L/AVL nibble in bits 12..16, the usual compact notation
/// (0xa09b = 64-bit code, 0xc093 = flat data).
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The boot GDT. The TSS descriptor is marked busy (type 11) because TR is
/// loaded directly through `KVM_SET_SREGS` with a busy TSS, as VM entry
/// requires; a guest that wants `ltr` builds its own GDT anyway.
pub(super) const BOOT_GDT: [u64; 6] = [
    0,
    // 0x08: 32-bit flat code, unused at boot; it keeps the selectors equal
    // to Linux's boot GDT, where 0x10 is the 64-bit code segment.
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x008b, BOOT_TSS_START as u32, BOOT_TSS_LIMIT),
    // Upper half of the 64-bit TSS descriptor: base bits 32..64.
    BOOT_TSS_START >> 32,
];

/// The GDTR limit for [`BOOT_GDT`].
pub(super) const BOOT_GDT_LIMIT: u16 = (BOOT_GDT.len() * 8 - 1) as u16;
/// The IDTR limit: one empty 8-byte slot.
pub(super) const BOOT_IDT_LIMIT: u16 = 7;

/// Decode the descriptor for `selector` in `table` into KVM's segment form.
/// A selector beyond the table gives an unusable segment.
pub(super) fn segment_from_gdt(table: &[u64], selector: u16) -> kvm_segment {
    let index = usize::from(selector >> 3);
    let Some(&entry) = table.get(index) else {
        return kvm_segment {
            selector,
            unusable: 1,
            ..Default::default()
        };
    };
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let s = bit(44);
    let g = bit(55);
    let mut base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    if s == 0 {
        // System descriptors (TSS, LDT) are 16 bytes in long mode; the next
        // slot holds base bits 32..64.
        if let Some(&high) = table.get(index + 1) {
            base |= (high & 0xffff_ffff) << 32;
        }
    }
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    // KVM takes the limit in bytes: scale 4 KiB granularity by hand.
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = bit(47);
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: bit(54),
        s,
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Write the GDT, the empty IDT and the TSS.
pub(super) fn write_gdt(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    let write = |what: &'static str, bytes: &[u8], addr: u64| {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|source| BootError::GuestWrite { what, source })
    };
    let gdt: Vec<u8> = BOOT_GDT.iter().flat_map(|e| e.to_le_bytes()).collect();
    write("GDT", &gdt, BOOT_GDT_START)?;
    write("IDT", &[0u8; 8], BOOT_IDT_START)?;
    let mut tss = [0u8; BOOT_TSS_LIMIT as usize + 1];
    // I/O map base beyond the limit: no I/O permission bitmap, so CPL3 code
    // with IOPL 0 gets #GP on port access instead of reading stray bytes.
    tss[0x66..0x68].copy_from_slice(&((BOOT_TSS_LIMIT + 1) as u16).to_le_bytes());
    write("TSS", &tss, BOOT_TSS_START)
}

const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_HUGE: u64 = 1 << 7;
const ENTRIES_PER_TABLE: u64 = 512;

/// The page tables from `PML4_START` to the end of the last page directory,
/// as one contiguous byte image: PML4, PDPT and one PD per GiB, mapping
/// `0..IDENTITY_MAP_GIB` GiB onto itself with 2 MiB pages.
fn identity_page_tables() -> Vec<u8> {
    // Small compile-time constants: the casts cannot truncate.
    let len = (PD_START - PML4_START + IDENTITY_MAP_GIB * PAGE_SIZE) as usize;
    let mut image = vec![0u8; len];
    let mut put = |addr: u64, value: u64| {
        let off = (addr - PML4_START) as usize;
        image[off..off + 8].copy_from_slice(&value.to_le_bytes());
    };
    put(PML4_START, PDPT_START | PTE_PRESENT | PTE_WRITABLE);
    for gib in 0..IDENTITY_MAP_GIB {
        let pd = PD_START + gib * PAGE_SIZE;
        put(PDPT_START + gib * 8, pd | PTE_PRESENT | PTE_WRITABLE);
        for i in 0..ENTRIES_PER_TABLE {
            let phys = (gib << 30) | (i << 21);
            put(pd + i * 8, phys | PTE_PRESENT | PTE_WRITABLE | PTE_HUGE);
        }
    }
    image
}

/// Write the identity-mapping page tables (CR3 = `PML4_START`).
pub(super) fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    mem.write_slice(&identity_page_tables(), GuestAddress(PML4_START))
        .map_err(|source| BootError::GuestWrite {
            what: "page tables",
            source,
        })
}

#[cfg(test)]
// Tests fail loudly on purpose; the workspace warns on unwrap everywhere.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::boot::layout::ZERO_PAGE_START;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    /// Walk 4-level page tables the way the MMU does; `None` = not present.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
        let read = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).unwrap();
        let addr_mask = 0x000f_ffff_ffff_f000u64;
        let pml4e = read((cr3 & addr_mask) + ((va >> 39) & 511) * 8);
        if pml4e & PTE_PRESENT == 0 {
            return None;
        }
        let pdpte = read((pml4e & addr_mask) + ((va >> 30) & 511) * 8);
        if pdpte & PTE_PRESENT == 0 {
            return None;
        }
        assert_eq!(pdpte & PTE_HUGE, 0, "no 1 GiB pages expected");
        let pde = read((pdpte & addr_mask) + ((va >> 21) & 511) * 8);
        if pde & PTE_PRESENT == 0 {
            return None;
        }
        assert_ne!(pde & PTE_HUGE, 0, "2 MiB pages expected");
        assert_ne!(pde & PTE_WRITABLE, 0);
        Some((pde & 0x000f_ffff_ffe0_0000) | (va & 0x1f_ffff))
    }

    #[test]
    fn page_tables_identity_map_four_gib() {
        let mem = mem();
        write_page_tables(&mem).unwrap();
        // Every 2 MiB page, probed at its first and last byte.
        for page in 0..(4u64 << 30) >> 21 {
            let va = page << 21;
            assert_eq!(translate(&mem, PML4_START, va), Some(va));
            let last = va | 0x1f_ffff;
            assert_eq!(translate(&mem, PML4_START, last), Some(last));
        }
        for va in [0, 0x7000, 0x10_0000, 0xfec0_0000, 0xfee0_0000, 0xffff_ffff] {
            assert_eq!(translate(&mem, PML4_START, va), Some(va));
        }
        assert_eq!(translate(&mem, PML4_START, 1 << 32), None);
        assert_eq!(translate(&mem, PML4_START, 1 << 39), None);
        // The tables end where the zero page begins.
        assert_eq!(
            PML4_START + identity_page_tables().len() as u64,
            ZERO_PAGE_START
        );
    }

    #[test]
    fn gdt_entries_decode_to_the_boot_segments() {
        let code = segment_from_gdt(&BOOT_GDT, SELECTOR_CODE64);
        assert_eq!(
            (code.base, code.limit, code.type_, code.present, code.dpl),
            (0, 0xffff_ffff, 0xb, 1, 0)
        );
        assert_eq!(
            (code.s, code.l, code.db, code.g, code.unusable),
            (1, 1, 0, 1, 0)
        );
        assert_eq!(code.selector, 0x10);

        let code32 = segment_from_gdt(&BOOT_GDT, 0x08);
        assert_eq!(
            (code32.type_, code32.l, code32.db, code32.g),
            (0xb, 0, 1, 1)
        );

        let data = segment_from_gdt(&BOOT_GDT, SELECTOR_DATA);
        assert_eq!(
            (data.base, data.limit, data.type_, data.present, data.dpl),
            (0, 0xffff_ffff, 0x3, 1, 0)
        );
        assert_eq!((data.s, data.l, data.db, data.g), (1, 0, 1, 1));

        let tss = segment_from_gdt(&BOOT_GDT, SELECTOR_TSS);
        assert_eq!(
            (tss.base, tss.limit, tss.type_, tss.present, tss.s, tss.g),
            (BOOT_TSS_START, 0x67, 11, 1, 0, 0)
        );

        let null = segment_from_gdt(&BOOT_GDT, 0);
        assert_eq!((null.present, null.unusable), (0, 1));
        assert_eq!(segment_from_gdt(&BOOT_GDT, 0x100).unusable, 1);
        assert_eq!(BOOT_GDT_LIMIT, 47);
        // The GDT ends before the IDT, which ends before the TSS.
        assert!(BOOT_GDT_START + u64::from(BOOT_GDT_LIMIT) < BOOT_IDT_START);
        assert!(BOOT_IDT_START + u64::from(BOOT_IDT_LIMIT) < BOOT_TSS_START);
    }

    #[test]
    fn gdt_is_written_where_gdtr_points() {
        let mem = mem();
        write_gdt(&mem).unwrap();
        for (i, want) in BOOT_GDT.iter().enumerate() {
            let got: u64 = mem
                .read_obj(GuestAddress(BOOT_GDT_START + 8 * i as u64))
                .unwrap();
            assert_eq!(got, *want, "GDT slot {i}");
        }
        assert_eq!(BOOT_GDT[2], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x00cf_9300_0000_ffff);
        let iomap: u16 = mem.read_obj(GuestAddress(BOOT_TSS_START + 0x66)).unwrap();
        assert_eq!(iomap, 0x68);
    }
}
