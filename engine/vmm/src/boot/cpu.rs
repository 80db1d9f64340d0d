//! Per-vCPU boot state: CPUID, MSRs, LAPIC, and for the bootstrap
//! processor the registers of Linux's 64-bit boot protocol.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs, CpuId, Msrs,
    KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
};
use kvm_ioctls::VcpuFd;

use super::gdt::{
    segment_from_gdt, BOOT_GDT, BOOT_GDT_LIMIT, BOOT_IDT_LIMIT, SELECTOR_CODE64, SELECTOR_DATA,
    SELECTOR_TSS,
};
use super::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PML4_START};
use super::mptable::MAX_VCPUS;
use super::{BootError, BootSetup};

/// CR0: PE | MP | ET | NE | WP | AM | PG. CD/NW clear (caches on), which is
/// also what made the guest several times faster under `kvm_pvm`.
pub(super) const BOOT_CR0: u64 = 0x8005_0033;
/// CR4: PAE | OSFXSR | OSXMMEXCPT (long mode needs PAE; SSE enabled).
pub(super) const BOOT_CR4: u64 = 0x620;
/// EFER: SCE | LME | LMA | NXE.
pub(super) const BOOT_EFER: u64 = 0xd01;
/// RFLAGS with only the always-one bit: interrupts off.
const BOOT_RFLAGS: u64 = 0x2;
/// x87 control word after FNINIT.
const FPU_FCW: u16 = 0x37f;
/// MXCSR reset value: all SIMD exceptions masked.
const FPU_MXCSR: u32 = 0x1f80;

// MSR indices (Intel SDM vol. 4).
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_MISC_ENABLE bit 0: fast-string operations (`rep movs` in cache
/// lines), which Linux expects a BIOS to have turned on.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled (bit 11), default memory type write-back (6).
/// Without it all guest memory would be uncached.
const MTRR_DEF_TYPE_WB_ENABLED: u64 = (1 << 11) | 6;

// Local APIC register offsets and delivery modes.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_DELIVERY_MODE_MASK: u32 = 0x700;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

// CPUID bits.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// The boot MSR values (Firecracker's list): syscall/sysenter state zeroed
/// so no stale host values leak in, TSC started at 0, fast strings on and
/// write-back MTRR default.
pub(super) fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_WB_ENABLED),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Bits needed to number `count` items: ceil(log2(count)).
fn id_bits(count: u8) -> u32 {
    u32::from(count).next_power_of_two().trailing_zeros()
}

fn is_amd(cpuid: &CpuId) -> bool {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0)
        .is_some_and(|e| {
            let mut vendor = [0u8; 12];
            vendor[0..4].copy_from_slice(&e.ebx.to_le_bytes());
            vendor[4..8].copy_from_slice(&e.edx.to_le_bytes());
            vendor[8..12].copy_from_slice(&e.ecx.to_le_bytes());
            &vendor == b"AuthenticAMD" || &vendor == b"HygonGenuine"
        })
}

/// The x2APIC topology leaf (0xB or 0x1F) for one package of `count`
/// single-threaded cores: an SMT level of one thread, a core level holding
/// all `count`, and the terminating invalid level.
fn topology_entries(function: u32, apic_id: u32, count: u8) -> [kvm_cpuid_entry2; 3] {
    let entry = |index: u32, eax: u32, ebx: u32, level_type: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        // EAX: shift of the APIC id to reach the next level's id.
        eax,
        // EBX: logical processors at this level.
        ebx,
        // ECX: level type in 15:8, echo of the subleaf in 7:0.
        ecx: (level_type << 8) | index,
        edx: apic_id,
        ..Default::default()
    };
    [
        entry(0, 0, 1, TOPOLOGY_LEVEL_SMT),
        entry(1, id_bits(count), u32::from(count), TOPOLOGY_LEVEL_CORE),
        entry(2, 0, 0, 0),
    ]
}

/// Patch the CPUID KVM supports into what vCPU `index` of `count` shows:
/// its APIC id and a topology of `count` single-threaded cores in one
/// package, consistently across leaves 1, 4, 0xB, 0x1F (and AMD's
/// 0x80000008, 0x8000001D, 0x8000001E), plus the hypervisor bit. The KVM
/// signature leaf 0x40000000 stays as KVM gives it.
pub(super) fn patch_cpuid(cpuid: &mut CpuId, index: u8, count: u8) -> Result<(), BootError> {
    let apic_id = u32::from(index);
    let n = u32::from(count);
    let amd = is_amd(cpuid);
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // EBX 31:24 initial APIC id, 23:16 logical processors per
                // package; CLFLUSH size and brand index kept.
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (n << 16);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                // HTT means "EBX 23:16 is valid / more than one logical CPU".
                if count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            4 | 0x8000_001d if e.eax & 0x1f != 0 => {
                // A valid cache descriptor. EAX 25:14: logical processors
                // sharing it, minus one: L1/L2 are private to a core (one
                // thread each), L3 is shared by the whole package.
                let level = (e.eax >> 5) & 7;
                let sharing = if level >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & !(0xfff << 14)) | ((sharing & 0xfff) << 14);
                if e.function == 4 {
                    // EAX 31:26: cores per package, minus one.
                    e.eax = (e.eax & 0x03ff_ffff) | (((n - 1).min(63)) << 26);
                }
            }
            0x8000_0008 if amd => {
                // ECX 15:12 APIC id bits for the core id, 7:0 cores - 1.
                e.ecx = (e.ecx & !0xf0ff) | (id_bits(count) << 12) | (n - 1);
            }
            0x8000_001e if amd => {
                // Extended APIC id; core id with one thread per core; one
                // node per package.
                e.eax = apic_id;
                e.ebx = (e.ebx & !0xffff) | apic_id;
                e.ecx &= !0x7ff;
            }
            _ => {}
        }
    }
    // Leaves 0xB/0x1F are rebuilt rather than patched: KVM reports the
    // host's levels, whose count and shifts need not match ours. Only
    // leaves KVM offers at all are rebuilt.
    for function in [0xb, 0x1f] {
        if cpuid.as_slice().iter().any(|e| e.function == function) {
            cpuid.retain(|e| e.function != function);
            for entry in topology_entries(function, apic_id, count) {
                cpuid.push(entry).map_err(BootError::CpuidTable)?;
            }
        }
    }
    Ok(())
}

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (b, r) in bytes.iter_mut().zip(&lapic.regs[offset..offset + 4]) {
        *b = *r as u8;
    }
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (r, b) in lapic.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *r = b as std::os::raw::c_char;
    }
}

/// Virtual-wire mode: LINT0 delivers the 8259's ExtINT, LINT1 NMIs, as the
/// MP table declares. Other LVT bits (mask, trigger) are kept.
pub(super) fn patch_lint(lapic: &mut kvm_lapic_state) {
    for (reg, mode) in [
        (APIC_LVT_LINT0, APIC_MODE_EXTINT),
        (APIC_LVT_LINT1, APIC_MODE_NMI),
    ] {
        let value = lapic_reg(lapic, reg);
        set_lapic_reg(lapic, reg, (value & !APIC_DELIVERY_MODE_MASK) | (mode << 8));
    }
}

/// The general registers the 64-bit boot protocol asks for.
pub(super) fn boot_regs(boot: &BootSetup) -> kvm_regs {
    kvm_regs {
        rip: boot.entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: boot.boot_params,
        rflags: BOOT_RFLAGS,
        ..Default::default()
    }
}

/// Long mode with paging on the identity map, flat segments from the boot
/// GDT. Fields not named (LDT, APIC base, CR8) keep KVM's values.
pub(super) fn patch_sregs(sregs: &mut kvm_sregs) {
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = BOOT_GDT_LIMIT;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = BOOT_IDT_LIMIT;
    sregs.cs = segment_from_gdt(&BOOT_GDT, SELECTOR_CODE64);
    let data = segment_from_gdt(&BOOT_GDT, SELECTOR_DATA);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(&BOOT_GDT, SELECTOR_TSS);
    sregs.cr0 = BOOT_CR0;
    sregs.cr3 = PML4_START;
    sregs.cr4 = BOOT_CR4;
    sregs.efer = BOOT_EFER;
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BootError {
    move |source| BootError::Kvm { what, source }
}

/// Prepare vCPU `index` of `count` before it first runs.
///
/// Every vCPU gets its CPUID (from `supported_cpuid`, patched with its APIC
/// id and the topology), the boot MSRs and LINT0/LINT1 programmed. Only the
/// BSP (index 0) gets registers, segments, control registers and FPU state:
/// the others wait in KVM for the guest's INIT/SIPI.
///
/// Requires the in-kernel irqchip (for the LAPIC) and the vCPU to have been
/// created with id `index`, which KVM uses as its APIC id.
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    supported_cpuid: &CpuId,
    index: u8,
    count: u8,
    boot: &BootSetup,
) -> Result<(), BootError> {
    if count == 0 || count > MAX_VCPUS {
        return Err(BootError::VcpuCount(count));
    }
    if index >= count {
        return Err(BootError::VcpuIndex { index, count });
    }

    // CPUID first: KVM checks later state (EFER.LME, CR4 bits, some MSRs)
    // against the vCPU's CPUID.
    let mut cpuid = supported_cpuid.clone();
    patch_cpuid(&mut cpuid, index, count)?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm_err("set the CPUID"))?;

    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(BootError::MsrTable)?;
    // KVM_SET_MSRS stops at the first MSR it rejects and returns how many
    // it set, so a short count is an error too.
    let set = vcpu.set_msrs(&msrs).map_err(kvm_err("set the boot MSRs"))?;
    if set != entries.len() {
        let rejected = entries.get(set).map_or(0, |e| e.index);
        return Err(BootError::MsrRejected {
            set,
            wanted: entries.len(),
            rejected,
        });
    }

    let mut lapic = vcpu.get_lapic().map_err(kvm_err("read the local APIC"))?;
    patch_lint(&mut lapic);
    vcpu.set_lapic(&lapic)
        .map_err(kvm_err("program the local APIC"))?;

    if index == 0 {
        let mut sregs = vcpu
            .get_sregs()
            .map_err(kvm_err("read the special registers"))?;
        patch_sregs(&mut sregs);
        vcpu.set_sregs(&sregs)
            .map_err(kvm_err("set the special registers"))?;
        vcpu.set_regs(&boot_regs(boot))
            .map_err(kvm_err("set the registers"))?;
        let fpu = kvm_fpu {
            fcw: FPU_FCW,
            mxcsr: FPU_MXCSR,
            ..Default::default()
        };
        vcpu.set_fpu(&fpu).map_err(kvm_err("set the FPU state"))?;
    }
    Ok(())
}

#[cfg(test)]
// Tests fail loudly on purpose; the workspace warns on unwrap everywhere.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::boot::layout::ZERO_PAGE_START;

    fn leaf(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    /// A CPUID the way KVM reports it on a 2-thread, 8-core Intel host.
    fn intel_host() -> CpuId {
        let (b, d, c) = (
            u32::from_le_bytes(*b"Genu"),
            u32::from_le_bytes(*b"ineI"),
            u32::from_le_bytes(*b"ntel"),
        );
        CpuId::from_entries(&[
            leaf(0, 0, 0x1f, b, c, d),
            // APIC id 7, 16 logical, CLFLUSH 8: host values to be replaced.
            leaf(1, 0, 0x906ea, 0x0710_0800, 0x7ffa_fbff, 0xbfeb_fbff),
            // L1d, L1i, L2, L3 with host sharing counts and 8 cores.
            leaf(4, 0, 0x1c00_4121, 0, 0, 0),
            leaf(4, 1, 0x1c00_4122, 0, 0, 0),
            leaf(4, 2, 0x1c00_4143, 0, 0, 0),
            leaf(4, 3, 0x1c03_c163, 0, 0, 0),
            leaf(4, 4, 0, 0, 0, 0),
            leaf(0xb, 0, 1, 2, 0x100, 7),
            leaf(0xb, 1, 4, 16, 0x201, 7),
            leaf(0x1f, 0, 1, 2, 0x100, 7),
            leaf(0x1f, 1, 4, 16, 0x201, 7),
            leaf(0x1f, 2, 0, 0, 2, 7),
            leaf(0x4000_0000, 0, 0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d),
            leaf(0x8000_0008, 0, 0x3027, 0, 0, 0),
        ])
        .unwrap()
    }

    fn amd_host() -> CpuId {
        let (b, d, c) = (
            u32::from_le_bytes(*b"Auth"),
            u32::from_le_bytes(*b"enti"),
            u32::from_le_bytes(*b"cAMD"),
        );
        CpuId::from_entries(&[
            leaf(0, 0, 0x10, b, c, d),
            leaf(1, 0, 0x00a5_0f00, 0x0010_0800, 0x7ed8_320b, 0x178b_fbff),
            leaf(0x8000_0008, 0, 0x3030, 0, 0x0000_700f, 0),
            leaf(0x8000_001d, 0, 0x0000_4121, 0, 0, 0),
            leaf(0x8000_001d, 3, 0x0003_c163, 0, 0, 0),
            leaf(0x8000_001e, 0, 0x0e, 0x0107, 0x0100, 0),
        ])
        .unwrap()
    }

    fn get(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("leaf {function:#x}.{index} missing"))
    }

    #[test]
    fn cpuid_is_patched_per_vcpu() {
        for (index, count) in [(0u8, 1u8), (0, 4), (3, 4), (5, 8), (2, 3)] {
            let mut c = intel_host();
            patch_cpuid(&mut c, index, count).unwrap();
            let l1 = get(&c, 1, 0);
            assert_eq!(l1.ebx >> 24, u32::from(index), "initial APIC id");
            assert_eq!((l1.ebx >> 16) & 0xff, u32::from(count), "logical count");
            assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
            assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
            assert_eq!(l1.edx & LEAF1_EDX_HTT != 0, count > 1);

            for function in [0xb, 0x1f] {
                let entries: Vec<_> = c
                    .as_slice()
                    .iter()
                    .filter(|e| e.function == function)
                    .collect();
                assert_eq!(entries.len(), 3, "leaf {function:#x} levels");
                let smt = get(&c, function, 0);
                let core = get(&c, function, 1);
                let end = get(&c, function, 2);
                assert_eq!((smt.eax, smt.ebx, smt.ecx), (0, 1, 0x100));
                let bits = u32::from(count).next_power_of_two().trailing_zeros();
                assert_eq!(
                    (core.eax, core.ebx, core.ecx),
                    (bits, u32::from(count), 0x201)
                );
                assert!(1u32 << core.eax >= u32::from(count));
                assert_eq!((end.eax, end.ebx, end.ecx & 0xff00), (0, 0, 0));
                for e in [smt, core, end] {
                    assert_eq!(e.edx, u32::from(index), "x2APIC id");
                    assert_eq!(e.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
                }
            }

            let host_l4 = [
                (0x1c00_4121u32, 1),
                (0x1c00_4122, 1),
                (0x1c00_4143, 2),
                (0x1c03_c163, 3),
            ];
            for (sub, (host_eax, level)) in host_l4.into_iter().enumerate() {
                let l4 = get(&c, 4, sub as u32);
                assert_eq!(l4.eax >> 26, u32::from(count) - 1, "cores per package");
                let sharing = (l4.eax >> 14) & 0xfff;
                let want = if level == 3 { u32::from(count) - 1 } else { 0 };
                assert_eq!(sharing, want, "threads sharing cache level {level}");
                assert_eq!(
                    l4.eax & 0x3fff,
                    host_eax & 0x3fff,
                    "cache type and level kept"
                );
            }
            assert_eq!(get(&c, 4, 4).eax, 0, "terminator untouched");
            // The KVM signature leaf and Intel's 0x80000008 stay as given.
            assert_eq!(get(&c, 0x4000_0000, 0).ebx, 0x4b4d_564b);
            assert_eq!(get(&c, 0x8000_0008, 0).ecx, 0);
        }
    }

    #[test]
    fn amd_topology_leaves() {
        let mut c = amd_host();
        patch_cpuid(&mut c, 2, 3).unwrap();
        let l8 = get(&c, 0x8000_0008, 0);
        assert_eq!(l8.ecx & 0xff, 2, "NC = cores - 1");
        assert_eq!((l8.ecx >> 12) & 0xf, 2, "APIC id core bits");
        let l1e = get(&c, 0x8000_001e, 0);
        assert_eq!(l1e.eax, 2);
        assert_eq!(l1e.ebx & 0xffff, 2, "core 2, one thread per core");
        assert_eq!(l1e.ecx & 0x7ff, 0);
        assert_eq!((get(&c, 0x8000_001d, 0).eax >> 14) & 0xfff, 0);
        assert_eq!((get(&c, 0x8000_001d, 3).eax >> 14) & 0xfff, 2);
        // No 0xB leaf offered by KVM: none invented.
        assert!(c.as_slice().iter().all(|e| e.function != 0xb));
    }

    #[test]
    fn lint_pins_get_extint_and_nmi() {
        let mut lapic = kvm_lapic_state::default();
        // Reset value of the LVT entries: masked, fixed delivery.
        set_lapic_reg(&mut lapic, APIC_LVT_LINT0, 0x0001_0000);
        set_lapic_reg(&mut lapic, APIC_LVT_LINT1, 0x0001_0000);
        patch_lint(&mut lapic);
        assert_eq!(lapic_reg(&lapic, APIC_LVT_LINT0), 0x0001_0700);
        assert_eq!(lapic_reg(&lapic, APIC_LVT_LINT1), 0x0001_0400);
    }

    #[test]
    fn boot_register_values() {
        let boot = BootSetup {
            entry: 0x10_0200,
            boot_params: ZERO_PAGE_START,
        };
        let regs = boot_regs(&boot);
        assert_eq!((regs.rip, regs.rsi, regs.rflags), (0x10_0200, 0x7000, 2));
        assert_eq!((regs.rsp, regs.rbp), (0x8ff0, 0x8ff0));

        let mut sregs = kvm_sregs::default();
        patch_sregs(&mut sregs);
        assert_eq!(
            (sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer),
            (0x8005_0033, 0x1000, 0x620, 0xd01)
        );
        assert_eq!(
            (sregs.cs.selector, sregs.cs.l, sregs.cs.type_),
            (0x10, 1, 0xb)
        );
        for s in [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss] {
            assert_eq!((s.selector, s.type_, s.present), (0x18, 3, 1));
        }
        assert_eq!(
            (sregs.tr.selector, sregs.tr.type_, sregs.tr.limit),
            (0x20, 11, 0x67)
        );
        assert_eq!((sregs.gdt.base, sregs.gdt.limit), (0x500, 47));
        assert_eq!(sregs.idt.base, BOOT_IDT_START);
    }

    #[test]
    fn msr_list_is_firecrackers() {
        let msrs = boot_msr_entries();
        assert_eq!(msrs.len(), 11);
        let value = |i: u32| msrs.iter().find(|e| e.index == i).map(|e| e.data);
        assert_eq!(value(MSR_MTRR_DEF_TYPE), Some(0x806));
        assert_eq!(value(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(value(MSR_IA32_TSC), Some(0));
        assert_eq!(value(MSR_SYSCALL_MASK), Some(0));
    }
}
