//! A paused machine's KVM state as plain serde data: each vCPU's
//! ([`VcpuState`], saved and restored on the vCPU's own thread through its
//! command channel) and the VM-wide interrupt controllers, timer and clock
//! ([`VmState`]). A snapshot will hold these besides guest memory and the
//! devices' state.
//!
//! The orders are those Firecracker (`arch/x86_64/vcpu.rs`) and
//! cloud-hypervisor use: save MP_STATE first (reading it makes KVM take pending INIT/SIPI into
//! the other registers), restore CPUID first (KVM checks later state
//! against it), the special registers before the LAPIC, the LAPIC before
//! the MSRs, IA32_TSC_DEADLINE after IA32_TSC (else the deadline is taken
//! against the old TSC and the timer interrupt is lost), and the pending
//! events last.
//!
//! The types mirror KVM's structures field by field, without their padding
//! and reserved words, so the saved form says what it holds.

use std::os::raw::c_char;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_dtable, kvm_fpu,
    kvm_ioapic_state__bindgen_ty_1, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pic_state, kvm_pit_channel_state, kvm_pit_state2, kvm_regs, kvm_segment, kvm_sregs,
    kvm_vcpu_events, kvm_vcpu_events__bindgen_ty_1, kvm_vcpu_events__bindgen_ty_2,
    kvm_vcpu_events__bindgen_ty_3, kvm_vcpu_events__bindgen_ty_4, kvm_xcr, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, Xsave, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_CPUID_ENTRIES, KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

/// IA32_TSC_DEADLINE: the LAPIC timer's deadline, in TSC ticks.
pub(crate) const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// The MTRRs, which KVM_GET_MSR_INDEX_LIST leaves out although the guest
/// (or our boot, for IA32_MTRR_DEF_TYPE) sets them: without them a
/// restored guest's memory is uncached. Variable pairs 0x200–0x20f (KVM
/// has 8), the fixed-range ones, and the default type; not MTRRcap, which
/// is read-only.
const MTRR_MSRS: [u32; 28] = [
    0x200, 0x201, 0x202, 0x203, 0x204, 0x205, 0x206, 0x207, 0x208, 0x209, 0x20a, 0x20b, 0x20c,
    0x20d, 0x20e, 0x20f, // variable: base and mask, 8 pairs
    0x250, 0x258, 0x259, // fixed: 64K, 16K, 16K
    0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f, // fixed: 4K
    0x2ff, // default type
];
/// Bytes of the LAPIC register page.
const LAPIC_SIZE: usize = 1024;
/// Bytes of the XSAVE area `KVM_GET_XSAVE` fills (`kvm_xsave.region`).
const XSAVE_LEGACY_SIZE: usize = 4096;
/// Pins of KVM's IOAPIC.
const IOAPIC_PINS: usize = 24;
/// A TSC frequency within this many parts per million of the saved one
/// needs no scaling (Firecracker's and QEMU's tolerance).
const TSC_KHZ_TOLERANCE_PPM: u64 = 250;

/// Why a vCPU's or the VM's state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    /// A KVM call failed.
    #[error("KVM refused to {what}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The vCPU was running: its state is only read or set while paused.
    #[error("the vCPU is running; its state is saved or restored only while it is paused")]
    NotPaused,
    /// The vCPU thread ended before it answered.
    #[error("the vCPU thread has ended")]
    VcpuGone,
    /// The vCPU thread did not answer in time.
    #[error("the vCPU did not answer within {} seconds", super::vcpu::STATE_ANSWER_TIMEOUT.as_secs())]
    NoAnswer,
    /// The vCPU's last exit kept making new ones while it was being
    /// completed.
    #[error("the vCPU's last I/O was not complete after {0} entries")]
    ExitUnfinished(usize),
    /// The guest ended the machine while its last I/O was being finished.
    #[error("the guest stopped the machine before its state could be taken")]
    GuestEnded,
    /// KVM_SET_MSRS stopped short.
    #[error("KVM set {set} of {wanted} MSRs; it refused MSR {rejected:#x}")]
    MsrRejected {
        /// How many were set.
        set: usize,
        /// How many were asked for.
        wanted: usize,
        /// The first one not set.
        rejected: u32,
    },
    /// The saved XSAVE area is larger than this host's KVM takes.
    #[error("the saved XSAVE area is {saved} bytes; this host's KVM takes at most {host}")]
    XsaveTooLarge {
        /// Bytes saved.
        saved: usize,
        /// Bytes this host's KVM uses.
        host: usize,
    },
    /// The saved state was taken with XSAVE and this host's KVM has none, or
    /// the other way round.
    #[error("the saved FPU state is {saved}, but this host's KVM uses {host}")]
    FpuKind {
        /// What the saved state holds.
        saved: &'static str,
        /// What this host has.
        host: &'static str,
    },
    /// A saved array does not have KVM's length.
    #[error("the saved {what} has {len} entries; KVM's has {want}")]
    BadLength {
        /// Which array.
        what: &'static str,
        /// Entries saved.
        len: usize,
        /// Entries KVM's structure holds.
        want: usize,
    },
    /// The saved TSC frequency differs from this host's and KVM cannot
    /// scale the vCPU's to it.
    #[error("the saved vCPU ran its TSC at {saved} kHz, this host at {host} kHz")]
    TscFrequency {
        /// Saved frequency.
        saved: u32,
        /// This host's vCPU frequency.
        host: u32,
        /// Why KVM_SET_TSC_KHZ failed.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A list for KVM could not be built.
    #[error("cannot build the {0} list for KVM")]
    List(&'static str, #[source] vmm_sys_util::fam::Error),
    /// A restore was asked with another number of vCPU states than the
    /// machine has vCPUs.
    #[error("{saved} saved vCPU states for a machine with {vcpus} vCPUs")]
    VcpuCount {
        /// States given.
        saved: usize,
        /// vCPUs of the machine.
        vcpus: u8,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    move |source| StateError::Kvm { what, source }
}

/// What a vCPU's state consists of on this host: found once per VM, when
/// its vCPUs are created; a failure here only makes a later save fail.
#[derive(Debug, Clone)]
pub(crate) struct StateSupport {
    /// The MSRs KVM_GET_MSR_INDEX_LIST names and the MTRRs (or why KVM
    /// named none).
    msr_indices: Result<Vec<u32>, kvm_ioctls::Error>,
    /// The XSAVE area's size in bytes (KVM_CAP_XSAVE2, or 4096 with only
    /// KVM_CAP_XSAVE); None without XSAVE: then the legacy FPU state.
    xsave_size: Option<usize>,
    /// KVM_CAP_XCRS: the extended control registers can be read and set.
    xcrs: bool,
    /// KVM_CAP_GET_TSC_KHZ: the vCPU's TSC frequency can be read.
    tsc_khz: bool,
}

impl StateSupport {
    /// Ask KVM what it offers.
    pub(crate) fn probe(kvm: &Kvm, vm: &VmFd) -> Self {
        let xsave2 = usize::try_from(vm.check_extension_int(Cap::Xsave2)).unwrap_or(0);
        let xsave_size = if xsave2 >= XSAVE_LEGACY_SIZE {
            Some(xsave2)
        } else if vm.check_extension(Cap::Xsave) {
            Some(XSAVE_LEGACY_SIZE)
        } else {
            None
        };
        Self {
            msr_indices: kvm.get_msr_index_list().map(|list| {
                let mut indices = list.as_slice().to_vec();
                for mtrr in MTRR_MSRS {
                    if !indices.contains(&mtrr) {
                        indices.push(mtrr);
                    }
                }
                indices
            }),
            xsave_size,
            xcrs: vm.check_extension(Cap::Xcrs),
            tsc_khz: vm.check_extension(Cap::GetTscKhz),
        }
    }
}

/// Defines a plain copy of a KVM structure whose fields are plain values,
/// with the same field names, and the conversions both ways. The fields not
/// listed are KVM's padding and reserved words: zero when converted back.
macro_rules! plain_copy {
    (
        $(#[$meta:meta])*
        $name:ident = $kvm:ty {
            $($(#[$field_meta:meta])* $field:ident: $ty:ty,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub(crate) struct $name {
            $($(#[$field_meta])* pub(crate) $field: $ty,)*
        }

        impl From<&$kvm> for $name {
            fn from(k: &$kvm) -> Self {
                Self { $($field: k.$field,)* }
            }
        }

        impl From<&$name> for $kvm {
            #[allow(clippy::needless_update)]
            fn from(p: &$name) -> Self {
                Self { $($field: p.$field,)* ..Default::default() }
            }
        }
    };
}

plain_copy! {
    /// The general registers (KVM_GET_REGS).
    Registers = kvm_regs {
        /// RAX.
        rax: u64,
        /// RBX.
        rbx: u64,
        /// RCX.
        rcx: u64,
        /// RDX.
        rdx: u64,
        /// RSI.
        rsi: u64,
        /// RDI.
        rdi: u64,
        /// RSP.
        rsp: u64,
        /// RBP.
        rbp: u64,
        /// R8.
        r8: u64,
        /// R9.
        r9: u64,
        /// R10.
        r10: u64,
        /// R11.
        r11: u64,
        /// R12.
        r12: u64,
        /// R13.
        r13: u64,
        /// R14.
        r14: u64,
        /// R15.
        r15: u64,
        /// RIP.
        rip: u64,
        /// RFLAGS.
        rflags: u64,
    }
}

plain_copy! {
    /// A segment register with its hidden part.
    Segment = kvm_segment {
        /// Base address.
        base: u64,
        /// Limit.
        limit: u32,
        /// Selector.
        selector: u16,
        /// Descriptor type.
        type_: u8,
        /// Present bit.
        present: u8,
        /// Privilege level.
        dpl: u8,
        /// Default operand size (D/B).
        db: u8,
        /// Code/data (not system) segment.
        s: u8,
        /// 64-bit code segment.
        l: u8,
        /// Granularity.
        g: u8,
        /// Available bit.
        avl: u8,
        /// Unusable (VMX's view of a null segment).
        unusable: u8,
    }
}

plain_copy! {
    /// GDTR or IDTR.
    DescriptorTable = kvm_dtable {
        /// Base address.
        base: u64,
        /// Limit.
        limit: u16,
    }
}

/// Segments, descriptor tables and control registers (KVM_GET_SREGS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SpecialRegisters {
    /// CS, DS, ES, FS, GS, SS, TR, LDTR, in this order.
    pub(crate) segments: [Segment; 8],
    /// GDTR.
    pub(crate) gdt: DescriptorTable,
    /// IDTR.
    pub(crate) idt: DescriptorTable,
    /// CR0.
    pub(crate) cr0: u64,
    /// CR2.
    pub(crate) cr2: u64,
    /// CR3.
    pub(crate) cr3: u64,
    /// CR4.
    pub(crate) cr4: u64,
    /// CR8 (the task priority).
    pub(crate) cr8: u64,
    /// EFER.
    pub(crate) efer: u64,
    /// IA32_APIC_BASE.
    pub(crate) apic_base: u64,
    /// An external interrupt KVM has taken but not injected yet (one bit).
    pub(crate) interrupt_bitmap: [u64; 4],
}

impl From<&kvm_sregs> for SpecialRegisters {
    fn from(k: &kvm_sregs) -> Self {
        Self {
            segments: [k.cs, k.ds, k.es, k.fs, k.gs, k.ss, k.tr, k.ldt].map(|s| (&s).into()),
            gdt: (&k.gdt).into(),
            idt: (&k.idt).into(),
            cr0: k.cr0,
            cr2: k.cr2,
            cr3: k.cr3,
            cr4: k.cr4,
            cr8: k.cr8,
            efer: k.efer,
            apic_base: k.apic_base,
            interrupt_bitmap: k.interrupt_bitmap,
        }
    }
}

impl From<&SpecialRegisters> for kvm_sregs {
    fn from(p: &SpecialRegisters) -> Self {
        let [cs, ds, es, fs, gs, ss, tr, ldt] = p.segments.map(|s| kvm_segment::from(&s));
        Self {
            cs,
            ds,
            es,
            fs,
            gs,
            ss,
            tr,
            ldt,
            gdt: (&p.gdt).into(),
            idt: (&p.idt).into(),
            cr0: p.cr0,
            cr2: p.cr2,
            cr3: p.cr3,
            cr4: p.cr4,
            cr8: p.cr8,
            efer: p.efer,
            apic_base: p.apic_base,
            interrupt_bitmap: p.interrupt_bitmap,
        }
    }
}

plain_copy! {
    /// The legacy FPU and SSE state (KVM_GET_FPU), for hosts without XSAVE.
    FpuRegisters = kvm_fpu {
        /// x87 registers ST0–ST7 (80 bits in 16 bytes each).
        fpr: [[u8; 16]; 8],
        /// x87 control word.
        fcw: u16,
        /// x87 status word.
        fsw: u16,
        /// x87 tag word, abridged.
        ftwx: u8,
        /// Last x87 opcode.
        last_opcode: u16,
        /// Last x87 instruction pointer.
        last_ip: u64,
        /// Last x87 data pointer.
        last_dp: u64,
        /// XMM0–XMM15.
        xmm: [[u8; 16]; 16],
        /// MXCSR.
        mxcsr: u32,
    }
}

/// The floating-point and vector state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FpuState {
    /// The XSAVE area as KVM_GET_XSAVE(2) gives it, 32-bit words.
    Xsave(Vec<u32>),
    /// The legacy state, on a host without XSAVE.
    Legacy(Box<FpuRegisters>),
}

plain_copy! {
    /// One extended control register.
    Xcr = kvm_xcr {
        /// Which (0 is XCR0).
        xcr: u32,
        /// Its value.
        value: u64,
    }
}

/// The extended control registers (KVM_GET_XCRS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Xcrs {
    /// KVM's flags word.
    pub(crate) flags: u32,
    /// The registers KVM reported.
    pub(crate) xcrs: Vec<Xcr>,
}

plain_copy! {
    /// The debug registers (KVM_GET_DEBUGREGS).
    DebugRegisters = kvm_debugregs {
        /// DR0–DR3.
        db: [u64; 4],
        /// DR6.
        dr6: u64,
        /// DR7.
        dr7: u64,
        /// KVM's flags word.
        flags: u64,
    }
}

plain_copy! {
    /// One leaf of the vCPU's CPUID (KVM_GET_CPUID2).
    CpuidEntry = kvm_cpuid_entry2 {
        /// EAX input.
        function: u32,
        /// ECX input (the subleaf).
        index: u32,
        /// KVM's flags (whether the subleaf matters).
        flags: u32,
        /// EAX output.
        eax: u32,
        /// EBX output.
        ebx: u32,
        /// ECX output.
        ecx: u32,
        /// EDX output.
        edx: u32,
    }
}

/// One model-specific register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Msr {
    /// Its index.
    pub(crate) index: u32,
    /// Its value.
    pub(crate) data: u64,
}

plain_copy! {
    /// An exception KVM is injecting or holds pending.
    ExceptionEvent = kvm_vcpu_events__bindgen_ty_1 {
        /// Being injected.
        injected: u8,
        /// Vector.
        nr: u8,
        /// It pushes an error code.
        has_error_code: u8,
        /// Pending, not yet injected.
        pending: u8,
        /// The error code.
        error_code: u32,
    }
}

plain_copy! {
    /// An external or software interrupt being injected.
    InterruptEvent = kvm_vcpu_events__bindgen_ty_2 {
        /// Being injected.
        injected: u8,
        /// Vector.
        nr: u8,
        /// A software interrupt (INTn).
        soft: u8,
        /// The STI / MOV SS interrupt shadow.
        shadow: u8,
    }
}

plain_copy! {
    /// NMI state.
    NmiEvent = kvm_vcpu_events__bindgen_ty_3 {
        /// Being injected.
        injected: u8,
        /// Pending.
        pending: u8,
        /// NMIs blocked.
        masked: u8,
    }
}

plain_copy! {
    /// System-management-mode state.
    SmiEvent = kvm_vcpu_events__bindgen_ty_4 {
        /// In SMM.
        smm: u8,
        /// An SMI is pending.
        pending: u8,
        /// SMM was entered from an NMI handler.
        smm_inside_nmi: u8,
        /// An INIT arrived while in SMM.
        latched_init: u8,
    }
}

/// What KVM holds pending or half-delivered for the vCPU
/// (KVM_GET_VCPU_EVENTS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VcpuEvents {
    /// Exception.
    pub(crate) exception: ExceptionEvent,
    /// Interrupt.
    pub(crate) interrupt: InterruptEvent,
    /// NMI.
    pub(crate) nmi: NmiEvent,
    /// The SIPI vector an AP waits for.
    pub(crate) sipi_vector: u32,
    /// Which of the fields KVM filled (KVM_VCPUEVENT_VALID_*).
    pub(crate) flags: u32,
    /// SMM.
    pub(crate) smi: SmiEvent,
    /// A triple fault is pending.
    pub(crate) triple_fault_pending: u8,
    /// The exception has a payload (CR2 or DR6 value).
    pub(crate) exception_has_payload: u8,
    /// That payload.
    pub(crate) exception_payload: u64,
}

impl From<&kvm_vcpu_events> for VcpuEvents {
    fn from(k: &kvm_vcpu_events) -> Self {
        Self {
            exception: (&k.exception).into(),
            interrupt: (&k.interrupt).into(),
            nmi: (&k.nmi).into(),
            sipi_vector: k.sipi_vector,
            flags: k.flags,
            smi: (&k.smi).into(),
            triple_fault_pending: k.triple_fault.pending,
            exception_has_payload: k.exception_has_payload,
            exception_payload: k.exception_payload,
        }
    }
}

impl From<&VcpuEvents> for kvm_vcpu_events {
    fn from(p: &VcpuEvents) -> Self {
        let mut k = kvm_vcpu_events {
            exception: (&p.exception).into(),
            interrupt: (&p.interrupt).into(),
            nmi: (&p.nmi).into(),
            sipi_vector: p.sipi_vector,
            flags: p.flags,
            smi: (&p.smi).into(),
            exception_has_payload: p.exception_has_payload,
            exception_payload: p.exception_payload,
            ..Default::default()
        };
        k.triple_fault.pending = p.triple_fault_pending;
        k
    }
}

/// One vCPU's state, as KVM holds it while the vCPU is out of KVM_RUN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VcpuState {
    /// The CPUID the vCPU was given.
    pub(crate) cpuid: Vec<CpuidEntry>,
    /// Running, halted, waiting for INIT/SIPI... (KVM_MP_STATE_*).
    pub(crate) mp_state: u32,
    /// General registers.
    pub(crate) regs: Registers,
    /// Segments and control registers.
    pub(crate) sregs: SpecialRegisters,
    /// FPU and vector registers.
    pub(crate) fpu: FpuState,
    /// Extended control registers; None where KVM has no KVM_CAP_XCRS.
    pub(crate) xcrs: Option<Xcrs>,
    /// Debug registers.
    pub(crate) debug_regs: DebugRegisters,
    /// The local APIC's register page, 1024 bytes.
    pub(crate) lapic: Vec<u8>,
    /// Every MSR of KVM's list and every MTRR that this host's KVM could
    /// read, in that order.
    pub(crate) msrs: Vec<Msr>,
    /// Pending and half-delivered events.
    pub(crate) events: VcpuEvents,
    /// The vCPU's TSC frequency; None where KVM cannot tell it.
    pub(crate) tsc_khz: Option<u32>,
}

impl VcpuState {
    /// Read the state of `vcpu`, which must be out of KVM_RUN with its last
    /// exit completed (see `VcpuRunner::finish_pending_exit`).
    pub(crate) fn save(vcpu: &VcpuFd, support: &StateSupport) -> Result<Self, StateError> {
        // First: reading it makes KVM process a pending INIT/SIPI, which
        // changes the registers read next.
        let mp_state = vcpu
            .get_mp_state()
            .map_err(kvm_err("read the vCPU's run state"))?
            .mp_state;
        let regs = vcpu.get_regs().map_err(kvm_err("read the registers"))?;
        let sregs = vcpu
            .get_sregs()
            .map_err(kvm_err("read the special registers"))?;
        let fpu = save_fpu(vcpu, support)?;
        let xcrs = if support.xcrs {
            let k = vcpu
                .get_xcrs()
                .map_err(kvm_err("read the extended control registers"))?;
            let n = (k.nr_xcrs as usize).min(k.xcrs.len());
            Some(Xcrs {
                flags: k.flags,
                xcrs: k.xcrs[..n].iter().map(Xcr::from).collect(),
            })
        } else {
            None
        };
        let debug_regs = vcpu
            .get_debug_regs()
            .map_err(kvm_err("read the debug registers"))?;
        let lapic = vcpu
            .get_lapic()
            .map_err(kvm_err("read the local APIC"))?
            .regs
            .iter()
            .map(|&b| b as u8)
            .collect();
        let tsc_khz = if support.tsc_khz {
            Some(
                vcpu.get_tsc_khz()
                    .map_err(kvm_err("report the TSC frequency"))?,
            )
        } else {
            None
        };
        let cpuid = vcpu
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("report the vCPU's CPUID"))?
            .as_slice()
            .iter()
            .map(CpuidEntry::from)
            .collect();
        let msrs = save_msrs(vcpu, support)?;
        let events = vcpu
            .get_vcpu_events()
            .map_err(kvm_err("read the pending events"))?;
        Ok(Self {
            cpuid,
            mp_state,
            regs: (&regs).into(),
            sregs: (&sregs).into(),
            fpu,
            xcrs,
            debug_regs: (&debug_regs).into(),
            lapic,
            msrs,
            events: (&events).into(),
            tsc_khz,
        })
    }

    /// Set `vcpu` to this state. The vCPU must be out of KVM_RUN with no
    /// exit pending completion: a fresh vCPU, or a paused one whose last
    /// exit was completed.
    pub(crate) fn restore(&self, vcpu: &VcpuFd, support: &StateSupport) -> Result<(), StateError> {
        if let Some(saved) = self.tsc_khz {
            restore_tsc_khz(vcpu, saved, support)?;
        }
        // CPUID first: KVM checks EFER, CR4 and some MSRs against it, and
        // since Linux 6.13 CPUID-dependent MSRs read 0 without it.
        let entries: Vec<kvm_cpuid_entry2> = self.cpuid.iter().map(Into::into).collect();
        let cpuid = CpuId::from_entries(&entries).map_err(|e| StateError::List("CPUID", e))?;
        vcpu.set_cpuid2(&cpuid)
            .map_err(kvm_err("set the vCPU's CPUID"))?;
        vcpu.set_mp_state(kvm_mp_state {
            mp_state: self.mp_state,
        })
        .map_err(kvm_err("set the vCPU's run state"))?;
        vcpu.set_regs(&(&self.regs).into())
            .map_err(kvm_err("set the registers"))?;
        vcpu.set_sregs(&(&self.sregs).into())
            .map_err(kvm_err("set the special registers"))?;
        restore_fpu(vcpu, &self.fpu, support)?;
        if let Some(xcrs) = &self.xcrs {
            let mut k = kvm_xcrs {
                flags: xcrs.flags,
                ..Default::default()
            };
            if xcrs.xcrs.len() > k.xcrs.len() {
                return Err(StateError::BadLength {
                    what: "XCR list",
                    len: xcrs.xcrs.len(),
                    want: k.xcrs.len(),
                });
            }
            for (slot, xcr) in k.xcrs.iter_mut().zip(&xcrs.xcrs) {
                *slot = xcr.into();
            }
            k.nr_xcrs = xcrs.xcrs.len() as u32;
            vcpu.set_xcrs(&k)
                .map_err(kvm_err("set the extended control registers"))?;
        }
        vcpu.set_debug_regs(&(&self.debug_regs).into())
            .map_err(kvm_err("set the debug registers"))?;
        if self.lapic.len() != LAPIC_SIZE {
            return Err(StateError::BadLength {
                what: "local APIC page",
                len: self.lapic.len(),
                want: LAPIC_SIZE,
            });
        }
        let mut lapic = kvm_lapic_state::default();
        for (r, &b) in lapic.regs.iter_mut().zip(&self.lapic) {
            *r = b as c_char;
        }
        vcpu.set_lapic(&lapic)
            .map_err(kvm_err("set the local APIC"))?;
        // IA32_TSC_DEADLINE only once IA32_TSC (and the LAPIC's timer
        // mode) are back.
        let (deadline, rest): (Vec<Msr>, Vec<Msr>) = self
            .msrs
            .iter()
            .partition(|m| m.index == MSR_IA32_TSC_DEADLINE);
        set_msrs(vcpu, &rest)?;
        set_msrs(vcpu, &deadline)?;
        vcpu.set_vcpu_events(&(&self.events).into())
            .map_err(kvm_err("set the pending events"))?;
        // Tells a guest using kvmclock that it was stopped, so its
        // watchdogs do not take the pause for a hang. EINVAL: the guest has
        // no kvmclock.
        match vcpu.kvmclock_ctrl() {
            Err(e) if e.errno() != libc::EINVAL => {
                Err(kvm_err("tell the guest's clock it was paused")(e))
            }
            _ => Ok(()),
        }
    }
}

fn save_fpu(vcpu: &VcpuFd, support: &StateSupport) -> Result<FpuState, StateError> {
    match support.xsave_size {
        Some(size) if size > XSAVE_LEGACY_SIZE => {
            let mut xsave = xsave_buffer(size)?;
            // SAFETY: the buffer holds `size` bytes, the XSAVE area's size
            // KVM_CAP_XSAVE2 reported; Hangar enables no dynamic XSAVE
            // features (arch_prctl) that would make it larger afterwards.
            unsafe { vcpu.get_xsave2(&mut xsave) }.map_err(kvm_err("read the XSAVE area"))?;
            let mut words = xsave.as_fam_struct_ref().xsave.region.to_vec();
            words.extend_from_slice(xsave.as_slice());
            Ok(FpuState::Xsave(words))
        }
        Some(_) => {
            let xsave = vcpu.get_xsave().map_err(kvm_err("read the XSAVE area"))?;
            Ok(FpuState::Xsave(xsave.region.to_vec()))
        }
        None => {
            let fpu = vcpu.get_fpu().map_err(kvm_err("read the FPU state"))?;
            Ok(FpuState::Legacy(Box::new((&fpu).into())))
        }
    }
}

fn restore_fpu(vcpu: &VcpuFd, fpu: &FpuState, support: &StateSupport) -> Result<(), StateError> {
    match (fpu, support.xsave_size) {
        (FpuState::Xsave(words), Some(size)) => {
            let saved = words.len() * 4;
            if saved > size {
                return Err(StateError::XsaveTooLarge { saved, host: size });
            }
            if size > XSAVE_LEGACY_SIZE {
                let mut xsave = xsave_buffer(size)?;
                let (region, extra) = words.split_at(words.len().min(XSAVE_LEGACY_SIZE / 4));
                // SAFETY: only the array's contents change, not its length.
                let fam = unsafe { xsave.as_mut_fam_struct() };
                fam.xsave.region[..region.len()].copy_from_slice(region);
                xsave.as_mut_slice()[..extra.len()].copy_from_slice(extra);
                // SAFETY: the buffer holds the `size` bytes KVM_CAP_XSAVE2
                // reported, all KVM reads.
                unsafe { vcpu.set_xsave2(&xsave) }.map_err(kvm_err("set the XSAVE area"))?;
            } else {
                let mut xsave = kvm_xsave::default();
                xsave.region[..words.len()].copy_from_slice(words);
                // SAFETY: without KVM_CAP_XSAVE2 above 4096 bytes, KVM reads
                // no more than the 4096-byte region.
                unsafe { vcpu.set_xsave(&xsave) }.map_err(kvm_err("set the XSAVE area"))?;
            }
            Ok(())
        }
        (FpuState::Legacy(regs), None) => vcpu
            .set_fpu(&regs.as_ref().into())
            .map_err(kvm_err("set the FPU state")),
        (FpuState::Xsave(_), None) => Err(StateError::FpuKind {
            saved: "an XSAVE area",
            host: "the legacy FPU state",
        }),
        (FpuState::Legacy(_), Some(_)) => Err(StateError::FpuKind {
            saved: "the legacy FPU state",
            host: "XSAVE",
        }),
    }
}

/// An XSAVE buffer of `size` bytes for KVM_GET_XSAVE2/KVM_SET_XSAVE2.
fn xsave_buffer(size: usize) -> Result<Xsave, StateError> {
    let extra_words = (size - XSAVE_LEGACY_SIZE).div_ceil(4);
    Xsave::new(extra_words).map_err(|e| StateError::List("XSAVE", e))
}

/// Read every MSR of KVM's list the host can read. KVM_GET_MSRS stops at
/// the first MSR it cannot read and says how many it read: that one is
/// left out and the rest read on (cloud-hypervisor's way), so one MSR the
/// host lacks does not lose the others.
fn save_msrs(vcpu: &VcpuFd, support: &StateSupport) -> Result<Vec<Msr>, StateError> {
    let indices = support
        .msr_indices
        .as_ref()
        .map_err(|&e| kvm_err("list its MSRs")(e))?;
    let mut saved = Vec::with_capacity(indices.len());
    let mut next = 0;
    while next < indices.len() {
        let chunk = &indices[next..indices.len().min(next + KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|e| StateError::List("MSR", e))?;
        let read = vcpu.get_msrs(&mut msrs).map_err(kvm_err("read the MSRs"))?;
        saved.extend(msrs.as_slice()[..read].iter().map(|e| Msr {
            index: e.index,
            data: e.data,
        }));
        if read < chunk.len() {
            log::debug!(
                "MSR {:#x} cannot be read on this host: not saved",
                chunk[read]
            );
            next += read + 1;
        } else {
            next += read;
        }
    }
    Ok(saved)
}

/// Set these MSRs, all of them or an error naming the first KVM refused.
fn set_msrs(vcpu: &VcpuFd, msrs: &[Msr]) -> Result<(), StateError> {
    for chunk in msrs.chunks(KVM_MAX_MSR_ENTRIES) {
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|m| kvm_msr_entry {
                index: m.index,
                data: m.data,
                ..Default::default()
            })
            .collect();
        let list = Msrs::from_entries(&entries).map_err(|e| StateError::List("MSR", e))?;
        let set = vcpu.set_msrs(&list).map_err(kvm_err("set the MSRs"))?;
        if set < chunk.len() {
            return Err(StateError::MsrRejected {
                set,
                wanted: chunk.len(),
                rejected: chunk[set].index,
            });
        }
    }
    Ok(())
}

/// Scale the vCPU's TSC to the saved frequency when this host's differs by
/// more than [`TSC_KHZ_TOLERANCE_PPM`].
fn restore_tsc_khz(vcpu: &VcpuFd, saved: u32, support: &StateSupport) -> Result<(), StateError> {
    if !support.tsc_khz {
        return Ok(());
    }
    let host = vcpu
        .get_tsc_khz()
        .map_err(kvm_err("report the TSC frequency"))?;
    let diff = u64::from(host.abs_diff(saved));
    if diff * 1_000_000 <= u64::from(saved) * TSC_KHZ_TOLERANCE_PPM {
        return Ok(());
    }
    vcpu.set_tsc_khz(saved)
        .map_err(|source| StateError::TscFrequency {
            saved,
            host,
            source,
        })
}

plain_copy! {
    /// One 8259 interrupt controller.
    PicState = kvm_pic_state {
        /// Edge detection.
        last_irr: u8,
        /// Interrupt request register.
        irr: u8,
        /// Interrupt mask register.
        imr: u8,
        /// In-service register.
        isr: u8,
        /// Rotating priority base.
        priority_add: u8,
        /// Vector base.
        irq_base: u8,
        /// OCW3 read selection.
        read_reg_select: u8,
        /// Poll mode.
        poll: u8,
        /// Special mask mode.
        special_mask: u8,
        /// Initialisation step.
        init_state: u8,
        /// Automatic EOI.
        auto_eoi: u8,
        /// Rotate on automatic EOI.
        rotate_on_auto_eoi: u8,
        /// Special fully nested mode.
        special_fully_nested_mode: u8,
        /// ICW4 expected.
        init4: u8,
        /// Edge/level control.
        elcr: u8,
        /// Which ELCR bits may change.
        elcr_mask: u8,
    }
}

/// KVM's IOAPIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IoapicState {
    /// MMIO base address.
    pub(crate) base_address: u64,
    /// The selected register.
    pub(crate) ioregsel: u32,
    /// IOAPIC id.
    pub(crate) id: u32,
    /// Pins asserted.
    pub(crate) irr: u32,
    /// The redirection table, one 64-bit entry per pin.
    pub(crate) redirection: Vec<u64>,
}

plain_copy! {
    /// One channel of the PIT.
    PitChannel = kvm_pit_channel_state {
        /// Reload value.
        count: u32,
        /// Latched count.
        latched_count: u16,
        /// A count is latched.
        count_latched: u8,
        /// A status is latched.
        status_latched: u8,
        /// The latched status.
        status: u8,
        /// Read byte sequence state.
        read_state: u8,
        /// Write byte sequence state.
        write_state: u8,
        /// First byte of a 16-bit write.
        write_latch: u8,
        /// Read/write mode.
        rw_mode: u8,
        /// Counter mode.
        mode: u8,
        /// BCD counting.
        bcd: u8,
        /// Gate input.
        gate: u8,
        /// When the count was loaded, host nanoseconds (KVM reloads the
        /// count at restore, so this is not carried over).
        count_load_time: i64,
    }
}

/// The PIT (KVM_GET_PIT2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PitState {
    /// Channels 0–2.
    pub(crate) channels: [PitChannel; 3],
    /// KVM_PIT_FLAGS_*.
    pub(crate) flags: u32,
}

/// The VM's kvmclock (KVM_GET_CLOCK).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClockState {
    /// Guest clock, nanoseconds.
    pub(crate) clock: u64,
    /// KVM_CLOCK_* flags of the reading.
    pub(crate) flags: u32,
    /// Host wall-clock time of the reading (with KVM_CLOCK_REALTIME).
    pub(crate) realtime: u64,
    /// Host TSC of the reading (with KVM_CLOCK_HOST_TSC).
    pub(crate) host_tsc: u64,
}

/// The VM-wide KVM state: interrupt controllers, timer and clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VmState {
    /// The PIT.
    pub(crate) pit: PitState,
    /// kvmclock.
    pub(crate) clock: ClockState,
    /// The master 8259.
    pub(crate) pic_master: PicState,
    /// The slave 8259.
    pub(crate) pic_slave: PicState,
    /// The IOAPIC.
    pub(crate) ioapic: IoapicState,
}

impl VmState {
    /// Read the VM's interrupt controllers, PIT and clock; its vCPUs should
    /// be paused.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "snapshots will be its first caller; the state tests use it"
        )
    )]
    pub(crate) fn save(vm: &VmFd) -> Result<Self, StateError> {
        let pit = vm.get_pit2().map_err(kvm_err("read the PIT"))?;
        let clock = vm.get_clock().map_err(kvm_err("read the VM's clock"))?;
        let master = irqchip(vm, KVM_IRQCHIP_PIC_MASTER)?;
        let slave = irqchip(vm, KVM_IRQCHIP_PIC_SLAVE)?;
        let ioapic = irqchip(vm, KVM_IRQCHIP_IOAPIC)?;
        // SAFETY: KVM filled the member that chip_id names: `pic` for the
        // two 8259s, `ioapic` for the IOAPIC; both are plain integers, valid
        // for any bit pattern.
        let (master, slave, ioapic) =
            unsafe { (master.chip.pic, slave.chip.pic, ioapic.chip.ioapic) };
        Ok(Self {
            pit: PitState {
                channels: pit.channels.map(|c| (&c).into()),
                flags: pit.flags,
            },
            clock: ClockState {
                clock: clock.clock,
                flags: clock.flags,
                realtime: clock.realtime,
                host_tsc: clock.host_tsc,
            },
            pic_master: (&master).into(),
            pic_slave: (&slave).into(),
            ioapic: IoapicState {
                base_address: ioapic.base_address,
                ioregsel: ioapic.ioregsel,
                id: ioapic.id,
                irr: ioapic.irr,
                redirection: ioapic.redirtbl.iter().map(redirection_bits).collect(),
            },
        })
    }

    /// Set the VM's PIT, clock, 8259s and IOAPIC, in this order, before its
    /// vCPUs run. The clock is set to the saved reading with no flags: the
    /// guest's time goes on from where it stopped, as its TSC does.
    pub(crate) fn restore(&self, vm: &VmFd) -> Result<(), StateError> {
        if self.ioapic.redirection.len() != IOAPIC_PINS {
            return Err(StateError::BadLength {
                what: "IOAPIC redirection table",
                len: self.ioapic.redirection.len(),
                want: IOAPIC_PINS,
            });
        }
        let pit = kvm_pit_state2 {
            channels: self.pit.channels.map(|c| (&c).into()),
            flags: self.pit.flags,
            ..Default::default()
        };
        vm.set_pit2(&pit).map_err(kvm_err("set the PIT"))?;
        let clock = kvm_clock_data {
            clock: self.clock.clock,
            ..Default::default()
        };
        vm.set_clock(&clock)
            .map_err(kvm_err("set the VM's clock"))?;
        for (chip_id, pic) in [
            (KVM_IRQCHIP_PIC_MASTER, &self.pic_master),
            (KVM_IRQCHIP_PIC_SLAVE, &self.pic_slave),
        ] {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            chip.chip.pic = pic.into();
            vm.set_irqchip(&chip)
                .map_err(kvm_err("set an 8259 interrupt controller"))?;
        }
        let mut chip = kvm_irqchip {
            chip_id: KVM_IRQCHIP_IOAPIC,
            ..Default::default()
        };
        // SAFETY: writing a whole union member; chip_id names it.
        let ioapic = unsafe { &mut chip.chip.ioapic };
        ioapic.base_address = self.ioapic.base_address;
        ioapic.ioregsel = self.ioapic.ioregsel;
        ioapic.id = self.ioapic.id;
        ioapic.irr = self.ioapic.irr;
        for (entry, &bits) in ioapic.redirtbl.iter_mut().zip(&self.ioapic.redirection) {
            entry.bits = bits;
        }
        vm.set_irqchip(&chip).map_err(kvm_err("set the IOAPIC"))
    }
}

/// An IOAPIC redirection entry as one 64-bit word.
fn redirection_bits(entry: &kvm_ioapic_state__bindgen_ty_1) -> u64 {
    // SAFETY: `bits` covers the whole entry, and any value is a valid u64.
    unsafe { entry.bits }
}

fn irqchip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, StateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(kvm_err("read an interrupt controller"))?;
    Ok(chip)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::mpsc::{channel, Receiver};
    use std::time::{Duration, Instant};

    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

    use super::*;
    use crate::build::{create_platform, load_boot_source, start_vcpus, Platform, VcpuStart};
    use crate::vcpu::{VcpuCommand, VcpuReport, VcpuThread};
    use crate::vm::ControlMsg;
    use hangar_api::config::{BootSource, KernelBoot, KernelKind, VmConfig};

    /// IA32_TSC.
    const MSR_IA32_TSC: u32 = 0x10;
    /// The marker the `spin` guest writes about every 50 ms.
    const MARKER_PROGRESS: u8 = 2;
    /// Longest wait for the guest (kvm_pvm emulates every instruction).
    const TIMEOUT: Duration = Duration::from_secs(60);

    fn spin_config() -> VmConfig {
        VmConfig {
            name: "state test".into(),
            vcpus: 1,
            memory_mib: 64,
            boot: BootSource::Kernel(KernelBoot {
                kernel: hangar_testkit::guest("spin"),
                initrd: None,
                cmdline: String::new(),
            }),
            display: None,
            disks: Vec::new(),
            network: None,
        }
    }

    /// Where `spin` keeps its loop counter (`static COUNTER`), from the
    /// ELF symbol table.
    fn counter_address(elf: &Path) -> u64 {
        let f = std::fs::read(elf).unwrap();
        let u16_at = |o: usize| u16::from_le_bytes([f[o], f[o + 1]]) as usize;
        let u32_at = |o: usize| u32::from_le_bytes(f[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(f[o..o + 8].try_into().unwrap());
        let (shoff, shentsize, shnum) = (u64_at(0x28) as usize, u16_at(0x3a), u16_at(0x3c));
        let section = |i: usize| shoff + i * shentsize;
        for i in 0..shnum {
            let sh = section(i);
            if u32_at(sh + 4) != 2 {
                continue; // not SHT_SYMTAB
            }
            let (offset, size, entsize) = (
                u64_at(sh + 0x18) as usize,
                u64_at(sh + 0x20) as usize,
                u64_at(sh + 0x38) as usize,
            );
            let strtab = u64_at(section(u32_at(sh + 0x28) as usize) + 0x18) as usize;
            for sym in (offset..offset + size).step_by(entsize) {
                let name_start = strtab + u32_at(sym) as usize;
                let name_end = name_start + f[name_start..].iter().position(|&b| b == 0).unwrap();
                if f[name_start..name_end]
                    .windows(9)
                    .any(|w| w == b"7COUNTER1")
                {
                    return u64_at(sym + 8);
                }
            }
        }
        panic!("no COUNTER symbol in {}", elf.display());
    }

    /// A machine running `spin`, built in the three steps a VM start uses.
    struct Running {
        platform: Platform,
        vcpus: Vec<VcpuThread>,
        rx: Receiver<ControlMsg>,
        counter_at: u64,
    }

    impl Running {
        fn boot() -> Self {
            let config = spin_config();
            let (tx, rx) = channel();
            let platform = create_platform(&config, &tx, None).unwrap();
            let start = load_boot_source(&platform, &config.boot, KernelKind::BareElf).unwrap();
            let vcpus = start_vcpus(&platform, &start, &tx).unwrap();
            Self::new(platform, vcpus, rx)
        }

        fn new(platform: Platform, vcpus: Vec<VcpuThread>, rx: Receiver<ControlMsg>) -> Self {
            Self {
                platform,
                vcpus,
                rx,
                counter_at: counter_address(&hangar_testkit::guest("spin")),
            }
        }

        /// Receive until `want` holds for a message; panics on a guest
        /// fault, an exit or the timeout.
        fn wait(&self, what: &str, want: impl Fn(&VcpuReport) -> bool) {
            let deadline = Instant::now() + TIMEOUT;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.rx.recv_timeout(left) {
                    Ok(ControlMsg::Vcpu(report)) if want(&report) => return,
                    Ok(ControlMsg::Vcpu(report @ VcpuReport::Exited(..))) => {
                        panic!("waiting for {what}, the vCPU ended: {report:?}")
                    }
                    Ok(_) => {}
                    Err(e) => panic!("waiting for {what}: {e}"),
                }
            }
        }

        /// A progress marker written after this call.
        fn wait_for_progress(&self) {
            while self.rx.try_recv().is_ok() {}
            self.wait("a progress marker", |r| {
                matches!(r, VcpuReport::Marker(MARKER_PROGRESS))
            });
        }

        fn pause(&self) {
            self.vcpus[0].send(VcpuCommand::Pause);
            self.wait("the pause", |r| matches!(r, VcpuReport::Paused(0)));
        }

        fn resume(&self) {
            self.vcpus[0].send(VcpuCommand::Resume);
        }

        fn counter(&self) -> u64 {
            self.platform
                .memory
                .read_obj(GuestAddress(self.counter_at))
                .unwrap()
        }

        /// Guest RAM, region by region.
        fn memory_image(&self) -> Vec<(u64, Vec<u8>)> {
            self.platform
                .memory
                .iter()
                .map(|r| {
                    let mut bytes = vec![0u8; r.len() as usize];
                    self.platform
                        .memory
                        .read_slice(&mut bytes, r.start_addr())
                        .unwrap();
                    (r.start_addr().0, bytes)
                })
                .collect()
        }

        fn stop(mut self) {
            for v in self.vcpus.drain(..) {
                v.send(VcpuCommand::Exit);
                v.join();
            }
        }
    }

    /// A save right after a restore is the state restored, but for what KVM
    /// changes by itself: IA32_TSC runs on while the vCPU waits outside the
    /// guest (and KVM takes a host write of a value within a second of the
    /// expected one as synchronising the TSC, not as a jump back), so it is
    /// only no smaller.
    fn assert_same_vcpu_state(before: &VcpuState, after: &VcpuState) {
        let without_tsc = |s: &VcpuState| VcpuState {
            msrs: s
                .msrs
                .iter()
                .filter(|m| m.index != MSR_IA32_TSC)
                .copied()
                .collect(),
            ..s.clone()
        };
        let tsc = |s: &VcpuState| {
            s.msrs
                .iter()
                .find(|m| m.index == MSR_IA32_TSC)
                .map(|m| m.data)
        };
        assert!(tsc(before).is_some(), "IA32_TSC is saved");
        assert!(
            tsc(after) >= tsc(before),
            "{:?} {:?}",
            tsc(before),
            tsc(after)
        );
        let (before, after) = (without_tsc(before), without_tsc(after));
        // Field by field, so a failure names the field.
        assert_eq!(before.cpuid, after.cpuid);
        assert_eq!(before.mp_state, after.mp_state);
        assert_eq!(before.regs, after.regs);
        assert_eq!(before.sregs, after.sregs);
        assert_eq!(before.fpu, after.fpu);
        assert_eq!(before.xcrs, after.xcrs);
        assert_eq!(before.debug_regs, after.debug_regs);
        assert_eq!(before.lapic, after.lapic);
        for (b, a) in before.msrs.iter().zip(&after.msrs) {
            assert_eq!(b, a, "MSR {:#x}", b.index);
        }
        assert_eq!(before.msrs.len(), after.msrs.len());
        assert_eq!(before.events, after.events);
        assert_eq!(before.tsc_khz, after.tsc_khz);
        assert_eq!(before, after);
    }

    /// The same for the VM: its clock runs on (set to the saved reading,
    /// read again later), and KVM_SET_PIT2 reloads each PIT channel's count
    /// now, so its load time is the host's time of the restore; the rest is
    /// what was restored.
    fn assert_same_vm_state(before: &VmState, after: &VmState) {
        assert!(after.clock.clock >= before.clock.clock);
        let unclocked = |s: &VmState| VmState {
            clock: ClockState {
                clock: 0,
                realtime: 0,
                host_tsc: 0,
                flags: 0,
            },
            pit: PitState {
                channels: s.pit.channels.map(|c| PitChannel {
                    count_load_time: 0,
                    ..c
                }),
                ..s.pit
            },
            ..s.clone()
        };
        assert_eq!(unclocked(before), unclocked(after));
    }

    fn through_json<T: Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
        serde_json::from_str(&serde_json::to_string(value).unwrap()).unwrap()
    }

    #[test]
    fn a_vcpu_restored_in_place_saves_the_same_and_runs_on() {
        hangar_testkit::require_kvm!();
        let _one_guest_at_a_time = hangar_testkit::kvm_lock();
        let guest = Running::boot();
        guest.wait_for_progress();
        assert!(
            matches!(guest.vcpus[0].save_state(), Err(StateError::NotPaused)),
            "a running vCPU's state is not taken"
        );
        guest.pause();
        let saved = guest.vcpus[0].save_state().unwrap();
        let vm_saved = VmState::save(&guest.platform.vm).unwrap();
        let counted_at_save = guest.counter();
        assert_eq!(saved.lapic.len(), LAPIC_SIZE);
        let mtrr_def_type = saved.msrs.iter().find(|m| m.index == 0x2ff);
        assert_eq!(
            mtrr_def_type.map(|m| m.data),
            Some(0x806),
            "the write-back default the boot set is kept"
        );

        // Let it run on, so the restore has something to undo.
        guest.resume();
        guest.wait_for_progress();
        guest.pause();
        let drifted = guest.vcpus[0].save_state().unwrap();
        assert_ne!(drifted.regs, saved.regs, "the guest ran on");

        guest.vcpus[0].restore_state(through_json(&saved)).unwrap();
        through_json(&vm_saved).restore(&guest.platform.vm).unwrap();
        assert_same_vcpu_state(&saved, &guest.vcpus[0].save_state().unwrap());
        assert_same_vm_state(&vm_saved, &VmState::save(&guest.platform.vm).unwrap());
        let counter = guest.counter();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(guest.counter(), counter, "a paused guest does not count");

        // On from the restored registers. Guest memory is not part of the
        // vCPU state: the counter there is the later one, until the loop
        // stores a value it computed before the save (restored in RAX) —
        // so it is compared with what it was at the save.
        guest.resume();
        guest.wait_for_progress();
        assert!(guest.counter() > counted_at_save, "the guest counts on");
        guest.stop();
    }

    /// What this host's kvm_pvm offers, measured: KVM_GET_MSR_INDEX_LIST
    /// names 40 MSRs, every one readable and settable, and so are the 28
    /// MTRRs added to them; the XSAVE area is 4096 bytes (KVM_CAP_XSAVE2),
    /// XCRs and the TSC frequency can be read. It refuses nothing the save
    /// asks, so the path for an MSR a host cannot read is shown here with
    /// an index no x86 CPU has: KVM refuses it for real, the save leaves it
    /// out and reads the rest, and a restore that names it is an error
    /// naming it. (Hosts without XSAVE, or with another TSC frequency than
    /// a snapshot's, do not occur here.)
    #[test]
    fn an_msr_the_host_cannot_read_is_left_out_and_the_rest_saved() {
        hangar_testkit::require_kvm!();
        const NO_SUCH_MSR: u32 = 0xdead_0000;
        let kvm = Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let mut support = StateSupport::probe(&kvm, &vm);
        let known = support.msr_indices.clone().unwrap();
        assert!(known.len() >= 2);
        let mut with_unknown = known.clone();
        with_unknown.insert(known.len() / 2, NO_SUCH_MSR);
        support.msr_indices = Ok(with_unknown);

        let saved = save_msrs(&vcpu, &support).unwrap();
        let indices: Vec<u32> = saved.iter().map(|m| m.index).collect();
        assert_eq!(indices, known, "all but the unknown one, in order");

        let mut bad = saved.clone();
        bad.insert(
            1,
            Msr {
                index: NO_SUCH_MSR,
                data: 0,
            },
        );
        let err = set_msrs(&vcpu, &bad).unwrap_err();
        assert!(
            matches!(
                err,
                StateError::MsrRejected {
                    set: 1,
                    rejected: NO_SUCH_MSR,
                    ..
                }
            ),
            "{err:?}"
        );
        set_msrs(&vcpu, &saved).unwrap();
    }

    #[test]
    fn a_vcpu_saved_in_one_vm_runs_on_in_a_fresh_one() {
        hangar_testkit::require_kvm!();
        let _one_guest_at_a_time = hangar_testkit::kvm_lock();
        let first = Running::boot();
        first.wait_for_progress();
        first.pause();
        let counter = first.counter();
        let vcpu = through_json(&first.vcpus[0].save_state().unwrap());
        let vm = through_json(&VmState::save(&first.platform.vm).unwrap());
        let memory = first.memory_image();
        first.stop();

        // Into a fresh vCPU of a fresh VM, read back before it runs.
        let config = spin_config();
        let (tx, rx) = channel();
        let scratch = create_platform(&config, &tx, None).unwrap();
        let support = StateSupport::probe(&scratch.kvm, &scratch.vm);
        let fd = scratch.vm.create_vcpu(0).unwrap();
        vcpu.restore(&fd, &support).unwrap();
        vm.restore(&scratch.vm).unwrap();
        assert_same_vcpu_state(&vcpu, &VcpuState::save(&fd, &support).unwrap());
        assert_same_vm_state(&vm, &VmState::save(&scratch.vm).unwrap());
        drop(fd);
        drop(scratch);

        // And run there: the machine built as a VM start builds it, with
        // the saved memory and state instead of a boot (steps 1 and 3).
        let platform = create_platform(&config, &tx, None).unwrap();
        for (start, bytes) in &memory {
            platform
                .memory
                .write_slice(bytes, GuestAddress(*start))
                .unwrap();
        }
        let start = VcpuStart::Restore {
            vcpus: vec![vcpu],
            vm: Box::new(vm),
        };
        let vcpus = start_vcpus(&platform, &start, &tx).unwrap();
        let second = Running::new(platform, vcpus, rx);
        assert!(second.counter() >= counter);
        second.wait_for_progress();
        assert!(second.counter() > counter, "the guest counts on");
        second.stop();
    }

    #[test]
    fn a_restore_with_the_wrong_number_of_vcpus_is_refused() {
        hangar_testkit::require_kvm!();
        let config = spin_config();
        let (tx, _rx) = channel();
        let platform = create_platform(&config, &tx, None).unwrap();
        let vm = VmState::save(&platform.vm).unwrap();
        let start = VcpuStart::Restore {
            vcpus: Vec::new(),
            vm: Box::new(vm),
        };
        let err = start_vcpus(&platform, &start, &tx).err().unwrap();
        assert!(
            matches!(
                err,
                crate::build::BuildError::Restore(StateError::VcpuCount { saved: 0, vcpus: 1 })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn kvm_structures_survive_the_plain_copy() {
        let regs = kvm_regs {
            rax: 1,
            r15: 15,
            rip: 0x10_0000,
            rflags: 0x202,
            ..Default::default()
        };
        assert_eq!(kvm_regs::from(&Registers::from(&regs)), regs);
        let mut sregs = kvm_sregs {
            cr0: 0x8005_0033,
            efer: 0xd01,
            apic_base: 0xfee0_0900,
            interrupt_bitmap: [0, 1 << 5, 0, 0],
            ..Default::default()
        };
        sregs.cs.selector = 0x10;
        sregs.cs.l = 1;
        sregs.ldt.unusable = 1;
        sregs.gdt.limit = 47;
        assert_eq!(kvm_sregs::from(&SpecialRegisters::from(&sregs)), sregs);
        let mut events = kvm_vcpu_events {
            sipi_vector: 8,
            flags: 0x3f,
            exception_payload: 0xdead,
            ..Default::default()
        };
        events.exception.nr = 14;
        events.exception.error_code = 2;
        events.interrupt.shadow = 1;
        events.nmi.masked = 1;
        events.smi.latched_init = 1;
        events.triple_fault.pending = 1;
        assert_eq!(kvm_vcpu_events::from(&VcpuEvents::from(&events)), events);
        let pit = kvm_pit_channel_state {
            count: 0x1_0000,
            mode: 2,
            gate: 1,
            count_load_time: -5,
            ..Default::default()
        };
        assert_eq!(kvm_pit_channel_state::from(&PitChannel::from(&pit)), pit);
        // Plain data: JSON with the field names, and back.
        let json = serde_json::to_value(Registers::from(&regs)).unwrap();
        assert_eq!(json["rip"], 0x10_0000);
        assert_eq!(
            through_json(&Registers::from(&regs)),
            Registers::from(&regs)
        );
    }
}
