//! x86-64 boot: guest memory, kernel and initramfs loading, the Linux zero
//! page, the MP table, GDT and identity page tables, and each vCPU's initial
//! CPUID, MSRs, LAPIC and registers.
//!
//! Every guest, Linux or Hangar's own bare ELF programs, is entered the same
//! way: Linux's 64-bit boot protocol (long mode, paging on an identity map of
//! the low 4 GiB, `__BOOT_CS`/`__BOOT_DS`, RSI pointing at boot_params).
//!
//! Order of use: [`create_guest_memory`], register it with KVM, then
//! [`setup_guest`]; after `create_irq_chip` and creating each vCPU with id
//! = its index, [`configure_vcpu`] for every vCPU before any of them runs.

use std::io;
use std::path::{Path, PathBuf};

use vm_memory::GuestMemoryMmap;

use hangar_api::config::KernelKind;

mod cpu;
mod gdt;
pub mod layout;
mod loader;
pub mod memory;
mod mptable;

pub use cpu::configure_vcpu;
pub use memory::{create_guest_memory, ram_above_4g, ram_below_4g};

use layout::{HIMEM_START, ZERO_PAGE_START};

/// Why a guest could not be set up for boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Zero MiB of memory was asked for.
    #[error("a machine needs some memory")]
    NoMemory,
    /// The memory size does not fit this host's address space.
    #[error("{0} MiB of guest memory cannot be mapped on this host")]
    MemoryTooLarge(u32),
    /// Mapping guest memory failed.
    #[error("cannot allocate guest memory")]
    GuestMemory(#[source] vm_memory::mmap::FromRangesError),
    /// Low RAM does not extend past the first MiB.
    #[error("guest RAM below 4 GiB ends at {0:#x}, inside the 1 MiB boot area")]
    LowMemoryTooSmall(u64),
    /// The kernel file cannot be opened.
    #[error("cannot open kernel {path}")]
    KernelOpen {
        /// The kernel path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The kernel loader rejected the image or could not copy it.
    #[error("cannot load the kernel into guest memory")]
    KernelLoad(#[source] linux_loader::loader::Error),
    /// The bzImage loader returned no setup header.
    #[error("the bzImage has no setup header")]
    NoSetupHeader,
    /// The bzImage cannot be entered in 64-bit mode.
    #[error("the bzImage has no 64-bit entry point (not an x86-64 kernel)")]
    No64BitEntry,
    /// The kernel (with its decompression room) needs more RAM than there is.
    #[error(
        "the kernel needs guest RAM up to {need:#x}, but RAM below 4 GiB ends at {have:#x}; \
         give the machine more memory"
    )]
    KernelTooBig {
        /// End of what the kernel needs.
        need: u64,
        /// End of low RAM.
        have: u64,
    },
    /// The command line contains a NUL byte.
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    /// The command line is longer than the kernel or the buffer accepts.
    #[error("the kernel command line is {len} bytes long; at most {max} fit")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The initramfs file cannot be opened.
    #[error("cannot open initramfs {path}")]
    InitrdOpen {
        /// The initramfs path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The initramfs does not fit between the kernel and its address limit.
    #[error(
        "the initramfs is {size} bytes, but only {room} bytes of guest RAM are free for it \
         above the kernel; give the machine more memory"
    )]
    InitrdTooBig {
        /// Its size.
        size: u64,
        /// Room available.
        room: u64,
    },
    /// Copying the initramfs into guest memory failed.
    #[error("cannot read initramfs {path} into guest memory")]
    InitrdLoad {
        /// The initramfs path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// Guest memory could not be accessed, e.g. a region without a host
    /// mapping (converted from `vm_memory::GuestMemoryError` for the VM code).
    #[error("cannot access guest memory")]
    GuestMemoryAccess(#[from] vm_memory::GuestMemoryError),
    /// Writing a boot structure into guest memory failed.
    #[error("cannot write the {what} into guest memory")]
    GuestWrite {
        /// Which structure.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// More memory ranges than the zero page's e820 table holds.
    #[error("{0} memory ranges do not fit in the zero page's e820 table")]
    TooManyE820Entries(usize),
    /// vCPU count outside what the boot tables can describe.
    #[error("{0} virtual CPUs cannot be booted: 1 to 254 are supported")]
    VcpuCount(u8),
    /// The MP table would run past 640 KiB.
    #[error(
        "the MP table for {vcpus} virtual CPUs ({size} bytes) does not fit in the last KiB \
         below 640 KiB"
    )]
    MpTableTooBig {
        /// vCPUs asked for.
        vcpus: u8,
        /// Table size in bytes.
        size: usize,
    },
    /// A vCPU index not below the vCPU count.
    #[error("vCPU index {index} is out of range for {count} virtual CPUs")]
    VcpuIndex {
        /// The index given.
        index: u8,
        /// The vCPU count.
        count: u8,
    },
    /// The CPUID table has no room for the topology leaves.
    #[error("the CPUID table has no room for the topology leaves")]
    CpuidTable(#[source] vmm_sys_util::fam::Error),
    /// The MSR list could not be built.
    #[error("cannot build the boot MSR list")]
    MsrTable(#[source] vmm_sys_util::fam::Error),
    /// A KVM ioctl failed.
    #[error("KVM could not {what}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM set only some of the boot MSRs.
    #[error("KVM set only {set} of {wanted} boot MSRs; it rejected MSR {rejected:#x}")]
    MsrRejected {
        /// How many were set.
        set: usize,
        /// How many were asked for.
        wanted: usize,
        /// The first MSR not set.
        rejected: u32,
    },
}

/// What to boot.
#[derive(Debug, Clone, Copy)]
pub struct BootSpec<'a> {
    /// Kernel image file.
    pub kernel: &'a Path,
    /// What the kernel file is (from [`hangar_api::config::detect_kernel_kind`]).
    pub kind: KernelKind,
    /// Optional initramfs file.
    pub initrd: Option<&'a Path>,
    /// Kernel command line, without NUL.
    pub cmdline: &'a str,
    /// Number of vCPUs (for the MP table).
    pub vcpus: u8,
    /// The framebuffer to announce in `screen_info`, if the VM has one.
    /// `efi` is decided here from the kernel: see [`setup_guest`].
    pub screen: Option<ScreenInfo>,
}

/// A linear framebuffer as Linux's `screen_info` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScreenInfo {
    /// Guest-physical address.
    pub base: u64,
    /// Pixels across.
    pub width: u32,
    /// Pixels down.
    pub height: u32,
    /// Bytes per row.
    pub stride: u32,
    /// Bytes mapped (a multiple of 64 KiB).
    pub size: u64,
    /// Announce it as an EFI framebuffer (efifb) rather than a VESA one
    /// (vesafb).
    pub efi: bool,
}

/// Where the BSP starts, from [`setup_guest`], for [`configure_vcpu`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootSetup {
    /// Guest-physical (= virtual, identity-mapped) 64-bit entry point.
    pub entry: u64,
    /// Guest-physical address of boot_params, passed in RSI.
    pub boot_params: u64,
}

/// Load the kernel, the initramfs and the command line, and write
/// boot_params (with the e820 map), the MP table for `spec.vcpus`
/// processors, the GDT and the identity page tables into `mem`.
///
/// A bzImage is loaded at 1 MiB and entered at its 64-bit entry (+0x200),
/// with its setup header copied into boot_params. An ELF (Linux vmlinux or
/// a bare program) is loaded at its physical addresses and entered at its
/// ELF entry. The initramfs goes to the top of RAM below
/// min(`initrd_addr_max`, the MMIO gap), page aligned, above the kernel.
pub fn setup_guest(mem: &GuestMemoryMmap, spec: &BootSpec<'_>) -> Result<BootSetup, BootError> {
    // Cheap checks first, before reading a large kernel.
    let mptable = mptable::mptable_bytes(spec.vcpus)?;
    let low_end = memory::low_ram_end(mem);
    if low_end <= HIMEM_START {
        return Err(BootError::LowMemoryTooSmall(low_end));
    }

    let kernel = loader::load_kernel(mem, spec.kernel, spec.kind)?;
    if kernel.end > low_end {
        return Err(BootError::KernelTooBig {
            need: kernel.end,
            have: low_end,
        });
    }

    // Boot protocol 2.06 introduced cmdline_size; older kernels take 255.
    let kernel_cmdline_max = kernel.header.map(|h| {
        if h.version >= 0x0206 && h.cmdline_size != 0 {
            h.cmdline_size
        } else {
            255
        }
    });
    let cmdline_size = loader::write_cmdline(mem, spec.cmdline, kernel_cmdline_max)?;

    let initrd = match spec.initrd {
        Some(path) => {
            let top = loader::initrd_top(low_end, kernel.header.as_ref());
            Some(loader::load_initrd(mem, path, top, kernel.end)?)
        }
        None => None,
    };

    // Debian's cloud kernel has efifb but no vesafb; its std kernel both.
    let screen = spec.screen.map(|s| ScreenInfo {
        efi: kernel
            .header
            .as_ref()
            .and_then(|h| loader::kernel_version(spec.kernel, h))
            .is_some_and(|v| v.contains("cloud")),
        ..s
    });
    let e820 = loader::e820_map(mem);
    let params = loader::build_boot_params(&loader::ZeroPage {
        header: kernel.header,
        cmdline_size,
        initrd,
        e820: &e820,
        screen,
    })?;
    loader::write_boot_params(mem, &params)?;
    mptable::write_mptable(mem, &mptable)?;
    gdt::write_gdt(mem)?;
    gdt::write_page_tables(mem)?;

    Ok(BootSetup {
        entry: kernel.entry,
        boot_params: ZERO_PAGE_START,
    })
}

#[cfg(test)]
// Tests fail loudly on purpose; the workspace warns on unwrap everywhere.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use layout::{CMDLINE_START, MPTABLE_START, PML4_START};
    use linux_loader::loader::bootparam::{boot_params, setup_header};
    use vm_memory::{ByteValued, Bytes, GuestAddress};

    /// A file in the temp directory, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, bytes: &[u8]) -> Self {
            let path =
                std::env::temp_dir().join(format!("hangar-boot-{}-{name}", std::process::id()));
            std::fs::write(&path, bytes).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    const ELF_LOAD: u64 = 0x10_0000;
    const ELF_CODE_OFFSET: u64 = 64 + 56;

    /// A minimal static x86-64 ELF: one PT_LOAD segment at 1 MiB holding
    /// the headers and `code`, entered at the first byte of `code`.
    fn tiny_elf(code: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; ELF_CODE_OFFSET as usize];
        f.extend_from_slice(code);
        let total = f.len() as u64;
        let mut put = |off: usize, bytes: &[u8]| f[off..off + bytes.len()].copy_from_slice(bytes);
        put(0, b"\x7fELF");
        put(4, &[2, 1, 1]); // 64-bit, little-endian, version 1
        put(16, &2u16.to_le_bytes()); // ET_EXEC
        put(18, &62u16.to_le_bytes()); // EM_X86_64
        put(20, &1u32.to_le_bytes());
        put(24, &(ELF_LOAD + ELF_CODE_OFFSET).to_le_bytes()); // e_entry
        put(32, &64u64.to_le_bytes()); // e_phoff
        put(52, &64u16.to_le_bytes()); // e_ehsize
        put(54, &56u16.to_le_bytes()); // e_phentsize
        put(56, &1u16.to_le_bytes()); // e_phnum
        put(64, &1u32.to_le_bytes()); // PT_LOAD
        put(68, &5u32.to_le_bytes()); // R + X
        put(72, &0u64.to_le_bytes()); // p_offset
        put(80, &ELF_LOAD.to_le_bytes()); // p_vaddr
        put(88, &ELF_LOAD.to_le_bytes()); // p_paddr
        put(96, &total.to_le_bytes()); // p_filesz
        put(104, &(total + 0x1000).to_le_bytes()); // p_memsz (with bss)
        put(112, &0x1000u64.to_le_bytes()); // p_align
        f
    }

    /// Writes 'H', then the "HdrS" magic read through RSI, then RSI itself
    /// (through the stack) to the COM1 port, and spins.
    const GUEST_CODE: &[u8] = &[
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'H', // mov al, 'H'
        0xee, // out dx, al
        0x8b, 0x86, 0x02, 0x02, 0x00, 0x00, // mov eax, [rsi + 0x202]
        0xef, // out dx, eax
        0x56, // push rsi
        0x59, // pop rcx
        0x89, 0xc8, // mov eax, ecx
        0xef, // out dx, eax
        0xeb, 0xfe, // jmp $
    ];

    fn boot_elf(mem: &GuestMemoryMmap, vcpus: u8, name: &str) -> (BootSetup, TempFile) {
        let kernel = TempFile::new(name, &tiny_elf(GUEST_CODE));
        let setup = setup_guest(
            mem,
            &BootSpec {
                kernel: &kernel.0,
                kind: KernelKind::BareElf,
                initrd: None,
                cmdline: "console=ttyS0",
                vcpus,
                screen: None,
            },
        )
        .unwrap();
        (setup, kernel)
    }

    fn read_params(mem: &GuestMemoryMmap) -> boot_params {
        mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap()
    }

    #[test]
    fn loads_a_tiny_elf_and_writes_every_structure() {
        let mem = create_guest_memory(16).unwrap();
        let (setup, _k) = boot_elf(&mem, 2, "tiny.elf");
        assert_eq!(setup.entry, ELF_LOAD + ELF_CODE_OFFSET);
        assert_eq!(setup.boot_params, 0x7000);

        let mut code = vec![0u8; GUEST_CODE.len()];
        mem.read_slice(&mut code, GuestAddress(setup.entry))
            .unwrap();
        assert_eq!(code, GUEST_CODE);

        let p = read_params(&mem);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.cmdline_size }, 14);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!(p.e820_entries, 3);

        let mut mp = [0u8; 4];
        mem.read_slice(&mut mp, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(&mp, b"_MP_");
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, 0x2003);
        let code64: u64 = mem.read_obj(GuestAddress(0x510)).unwrap();
        assert_eq!(code64, 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn elf_entry_below_one_mib_is_rejected() {
        let mut elf = tiny_elf(GUEST_CODE);
        elf[24..32].copy_from_slice(&0x8000u64.to_le_bytes());
        let kernel = TempFile::new("low.elf", &elf);
        let mem = create_guest_memory(16).unwrap();
        let err = setup_guest(
            &mem,
            &BootSpec {
                kernel: &kernel.0,
                kind: KernelKind::BareElf,
                initrd: None,
                cmdline: "",
                vcpus: 1,
                screen: None,
            },
        )
        .unwrap_err();
        assert!(matches!(err, BootError::KernelLoad(_)), "{err:?}");
    }

    /// A stand-in bzImage: a real setup header, one setup sector, and a
    /// payload the loader copies to 1 MiB.
    fn fake_bzimage(payload: &[u8]) -> (Vec<u8>, setup_header) {
        let hdr = setup_header {
            setup_sects: 1,
            boot_flag: 0xaa55,
            header: 0x5372_6448,
            version: 0x020f,
            loadflags: 0x01,
            code32_start: 0x10_0000,
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x20_0000,
            relocatable_kernel: 1,
            xloadflags: 0x3,
            cmdline_size: 2047,
            init_size: 0x40_0000,
            pref_address: 0x100_0000,
            ..Default::default()
        };
        let mut image = vec![0u8; 1024];
        image[0x1f1..0x1f1 + std::mem::size_of::<setup_header>()].copy_from_slice(hdr.as_slice());
        image.extend_from_slice(payload);
        (image, hdr)
    }

    #[test]
    fn loads_a_bzimage_with_initrd() {
        let payload: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let (image, hdr) = fake_bzimage(&payload);
        let kernel = TempFile::new("bz", &image);
        let initrd_bytes: Vec<u8> = (0..8292u32).map(|i| (i % 251) as u8).collect();
        let initrd = TempFile::new("bz-initrd", &initrd_bytes);
        let mem = create_guest_memory(64).unwrap();
        let setup = setup_guest(
            &mem,
            &BootSpec {
                kernel: &kernel.0,
                kind: KernelKind::BzImage,
                initrd: Some(&initrd.0),
                cmdline: "console=ttyS0 quiet",
                vcpus: 1,
                screen: None,
            },
        )
        .unwrap();
        assert_eq!(setup.entry, 0x10_0200);

        let mut loaded = vec![0u8; payload.len()];
        mem.read_slice(&mut loaded, GuestAddress(HIMEM_START))
            .unwrap();
        assert_eq!(loaded, payload);

        let p = read_params(&mem);
        assert_eq!({ p.hdr.setup_sects }, { hdr.setup_sects });
        assert_eq!({ p.hdr.version }, { hdr.version });
        assert_eq!({ p.hdr.init_size }, { hdr.init_size });
        assert_eq!({ p.hdr.pref_address }, { hdr.pref_address });
        assert_eq!({ p.hdr.code32_start }, 0x10_0000);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.cmdline_size }, 20);

        let (addr, size) = ({ p.hdr.ramdisk_image }, { p.hdr.ramdisk_size });
        assert_eq!(size as usize, initrd_bytes.len());
        assert_eq!(addr % 4096, 0);
        assert!(u64::from(addr) + u64::from(size) <= 64 << 20);
        assert!(
            u64::from(addr) >= 0x140_0000,
            "above pref_address + init_size"
        );
        let mut got = vec![0u8; initrd_bytes.len()];
        mem.read_slice(&mut got, GuestAddress(u64::from(addr)))
            .unwrap();
        assert_eq!(got, initrd_bytes);
    }

    #[test]
    fn initrd_too_big_for_ram_is_an_error() {
        let kernel = TempFile::new("big-initrd.elf", &tiny_elf(GUEST_CODE));
        let initrd = TempFile::new("big-initrd", &vec![0u8; 16 << 20]);
        let mem = create_guest_memory(16).unwrap();
        let err = setup_guest(
            &mem,
            &BootSpec {
                kernel: &kernel.0,
                kind: KernelKind::BareElf,
                initrd: Some(&initrd.0),
                cmdline: "",
                vcpus: 1,
                screen: None,
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, BootError::InitrdTooBig { size, .. } if size == 16 << 20),
            "{err:?}"
        );
    }

    #[test]
    fn too_many_vcpus_are_rejected_before_loading() {
        let mem = create_guest_memory(16).unwrap();
        let missing = Path::new("/nonexistent/kernel");
        let spec = |vcpus| BootSpec {
            kernel: missing,
            kind: KernelKind::BareElf,
            initrd: None,
            cmdline: "",
            vcpus,
            screen: None,
        };
        assert!(matches!(
            setup_guest(&mem, &spec(255)),
            Err(BootError::VcpuCount(255))
        ));
        assert!(matches!(
            setup_guest(&mem, &spec(0)),
            Err(BootError::VcpuCount(0))
        ));
        assert!(matches!(
            setup_guest(&mem, &spec(1)),
            Err(BootError::KernelOpen { .. })
        ));
    }

    mod kvm {
        use super::*;
        use crate::boot::layout::BOOT_STACK_POINTER;
        use kvm_bindings::{
            kvm_msr_entry, kvm_userspace_memory_region, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
        };
        use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

        fn open_kvm() -> Option<Kvm> {
            match Kvm::new() {
                Ok(kvm) => Some(kvm),
                Err(e) => {
                    eprintln!(
                        "SKIPPED: /dev/kvm absent or not usable ({e}); KVM boot test not run"
                    );
                    None
                }
            }
        }

        fn vm_with_memory(kvm: &Kvm, mem: &GuestMemoryMmap) -> VmFd {
            let vm = kvm.create_vm().unwrap();
            vm.create_irq_chip().unwrap();
            for (slot, region) in mem.iter().enumerate() {
                let host = mem.get_host_address(region.start_addr()).unwrap();
                let r = kvm_userspace_memory_region {
                    slot: slot as u32,
                    flags: 0,
                    guest_phys_addr: region.start_addr().0,
                    memory_size: region.len(),
                    userspace_addr: host as u64,
                };
                // SAFETY: the region maps `memory_size` bytes at `host`, and
                // `mem` outlives the VM in every test that calls this.
                unsafe { vm.set_user_memory_region(r) }.unwrap();
            }
            vm
        }

        fn lvt_mode(vcpu: &VcpuFd, offset: usize) -> u32 {
            let lapic = vcpu.get_lapic().unwrap();
            let b: Vec<u8> = lapic.regs[offset..offset + 4]
                .iter()
                .map(|&c| c as u8)
                .collect();
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) >> 8) & 7
        }

        fn supported(kvm: &Kvm) -> CpuId {
            kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap()
        }

        #[test]
        fn configure_vcpu_state_reads_back() {
            let Some(kvm) = open_kvm() else { return };
            let mem = create_guest_memory(16).unwrap();
            let vm = vm_with_memory(&kvm, &mem);
            let (setup, _k) = boot_elf(&mem, 2, "kvm-readback.elf");
            let cpuid = supported(&kvm);
            let bsp = vm.create_vcpu(0).unwrap();
            let ap = vm.create_vcpu(1).unwrap();
            configure_vcpu(&bsp, &cpuid, 0, 2, &setup).unwrap();
            configure_vcpu(&ap, &cpuid, 1, 2, &setup).unwrap();

            let regs = bsp.get_regs().unwrap();
            assert_eq!(regs.rip, setup.entry);
            assert_eq!(
                (regs.rsp, regs.rbp),
                (BOOT_STACK_POINTER, BOOT_STACK_POINTER)
            );
            assert_eq!(regs.rsi, 0x7000);
            assert_eq!(regs.rflags, 2);

            let s = bsp.get_sregs().unwrap();
            assert_eq!(s.cr0, 0x8005_0033);
            assert_eq!(s.cr3, 0x1000);
            assert_eq!(s.cr4, 0x620);
            assert_eq!(s.efer, 0xd01);
            assert_eq!(
                (s.cs.selector, s.cs.l, s.cs.db, s.cs.type_),
                (0x10, 1, 0, 11)
            );
            for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
                assert_eq!(seg.selector, 0x18);
            }
            assert_eq!((s.tr.selector, s.tr.type_, s.tr.limit), (0x20, 11, 0x67));
            assert_eq!((s.gdt.base, s.gdt.limit), (0x500, 47));

            assert_eq!(bsp.get_fpu().unwrap().fcw, 0x37f);
            // KVM_GET_FPU on this host's kvm_pvm reports MXCSR as 0 whatever
            // was set; the XSAVE image carries the real value.
            let xsave = bsp.get_xsave().unwrap();
            assert_eq!(xsave.region[6], 0x1f80, "MXCSR in the legacy XSAVE area");

            let wanted = cpu::boot_msr_entries();
            let mut msrs = Msrs::from_entries(
                &wanted
                    .iter()
                    .map(|e| kvm_msr_entry {
                        index: e.index,
                        ..Default::default()
                    })
                    .collect::<Vec<_>>(),
            )
            .unwrap();
            assert_eq!(bsp.get_msrs(&mut msrs).unwrap(), wanted.len());
            for (got, want) in msrs.as_slice().iter().zip(&wanted) {
                assert_eq!(got.index, want.index);
                if want.index == 0x10 {
                    // The TSC has run on since it was set to 0.
                    continue;
                }
                assert_eq!(got.data, want.data, "MSR {:#x}", want.index);
            }

            for vcpu in [&bsp, &ap] {
                assert_eq!(lvt_mode(vcpu, 0x350), 7, "LINT0 ExtINT");
                assert_eq!(lvt_mode(vcpu, 0x360), 4, "LINT1 NMI");
            }

            // KVM hands back the CPUID each vCPU was given.
            for (vcpu, id) in [(&bsp, 0u32), (&ap, 1)] {
                let c = vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
                let l1 = c.as_slice().iter().find(|e| e.function == 1).unwrap();
                assert_eq!(l1.ebx >> 24, id);
                assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor bit");
                let leaf_b: Vec<_> = c.as_slice().iter().filter(|e| e.function == 0xb).collect();
                if cpuid.as_slice().iter().any(|e| e.function == 0xb) {
                    assert_eq!(leaf_b.len(), 3, "SMT, core and terminating levels");
                    assert_eq!(leaf_b[1].ebx, 2, "two cores in the package");
                }
                for e in leaf_b {
                    assert_eq!(e.edx, id, "x2APIC id");
                }
            }

            // The AP keeps its reset state for INIT/SIPI.
            let ap_regs = ap.get_regs().unwrap();
            assert_eq!(ap_regs.rip, 0xfff0);
            assert_eq!(ap.get_sregs().unwrap().cr0 & 1, 0, "AP still in real mode");

            assert!(matches!(
                configure_vcpu(&ap, &cpuid, 2, 2, &setup),
                Err(BootError::VcpuIndex { index: 2, count: 2 })
            ));
        }

        #[test]
        fn tiny_guest_runs_in_long_mode() {
            let Some(kvm) = open_kvm() else { return };
            let mem = create_guest_memory(16).unwrap();
            let vm = vm_with_memory(&kvm, &mem);
            let (setup, _k) = boot_elf(&mem, 1, "kvm-run.elf");
            let mut vcpu = vm.create_vcpu(0).unwrap();
            configure_vcpu(&vcpu, &supported(&kvm), 0, 1, &setup).unwrap();

            let mut outs: Vec<(u16, Vec<u8>)> = Vec::new();
            for _ in 0..100 {
                if outs.len() == 3 {
                    break;
                }
                match vcpu.run().unwrap() {
                    VcpuExit::IoOut(port, data) => outs.push((port, data.to_vec())),
                    other => panic!("unexpected exit {other:?}"),
                }
            }
            assert_eq!(
                outs,
                vec![
                    (0x3f8, b"H".to_vec()),
                    (0x3f8, b"HdrS".to_vec()),
                    (0x3f8, 0x7000u32.to_le_bytes().to_vec()),
                ]
            );
            let regs = vcpu.get_regs().unwrap();
            assert_eq!(
                regs.rsp, BOOT_STACK_POINTER,
                "push/pop balanced on our stack"
            );
        }
    }
}
