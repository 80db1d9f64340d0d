//! Kernel, initramfs, command line and the Linux zero page.

use std::fs::File;
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MMIO_GAP_START, MPTABLE_START, PAGE_SIZE,
    ZERO_PAGE_START,
};
use super::BootError;
use hangar_api::config::KernelKind;

/// Offset of the 64-bit entry point (`startup_64`) from the start of a
/// bzImage's protected-mode code (boot protocol 2.12, "64-bit BOOT PROTOCOL").
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// `xloadflags` bit: the kernel has the 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// "HdrS", the boot protocol header magic.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// The 0xaa55 boot sector signature the header carries.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `type_of_loader`: "undefined" boot loader, no registered id.
const LOADER_TYPE_OTHER: u8 = 0xff;
/// `loadflags` bit: protected-mode code is loaded at 0x100000.
const LOADED_HIGH: u8 = 1 << 0;
/// Kernel alignment Linux itself uses on x86-64 (`CONFIG_PHYSICAL_ALIGN`).
const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// `initrd_addr_max` implied by boot protocols older than 2.03.
const LEGACY_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// e820 type: usable RAM.
pub(super) const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub(super) const E820_RESERVED: u32 = 2;

/// What loading the kernel produced.
#[derive(Debug, Clone, Copy)]
pub(super) struct LoadedKernel {
    /// Where the vCPU starts (64-bit entry).
    pub entry: u64,
    /// First byte the kernel needs for itself, from its load address: an
    /// initramfs must start at or above this (page aligned by the caller).
    pub end: u64,
    /// The bzImage setup header, to be copied into boot_params.
    pub header: Option<setup_header>,
}

/// Load the kernel file into guest memory.
pub(super) fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    kind: KernelKind,
) -> Result<LoadedKernel, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::KernelOpen {
        path: path.to_path_buf(),
        source,
    })?;
    let himem = Some(GuestAddress(HIMEM_START));
    match kind {
        KernelKind::BzImage => {
            // Load at 1 MiB whatever code32_start says: the decompressor
            // relocates itself, and 1 MiB is what the protocol expects.
            let result =
                BzImage::load(mem, himem, &mut file, himem).map_err(BootError::KernelLoad)?;
            let header = result.setup_header.ok_or(BootError::NoSetupHeader)?;
            if header.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(BootError::No64BitEntry);
            }
            let load = result.kernel_load.raw_value();
            // The decompressor needs init_size bytes from the runtime start,
            // which is the load address or, for a relocatable kernel loaded
            // low, its preferred address (16 MiB for Debian's kernels).
            let runtime_start = load.max(header.pref_address);
            let end = result
                .kernel_end
                .max(runtime_start.saturating_add(u64::from(header.init_size)));
            Ok(LoadedKernel {
                entry: load + BZIMAGE_64BIT_ENTRY_OFFSET,
                end,
                header: Some(header),
            })
        }
        KernelKind::LinuxElf | KernelKind::BareElf => {
            // ELF segments go to their physical addresses; the loader
            // refuses an entry point below 1 MiB, which would land on the
            // boot structures.
            let result = Elf::load(mem, None, &mut file, himem).map_err(BootError::KernelLoad)?;
            Ok(LoadedKernel {
                entry: result.kernel_load.raw_value(),
                end: result.kernel_end,
                header: None,
            })
        }
    }
}

/// Write the command line with its NUL at `CMDLINE_START`; returns its size
/// including the NUL. `kernel_max` is the bzImage's own limit, if any.
pub(super) fn write_cmdline(
    mem: &GuestMemoryMmap,
    cmdline: &str,
    kernel_max: Option<u32>,
) -> Result<u32, BootError> {
    if cmdline.contains('\0') {
        return Err(BootError::CmdlineNul);
    }
    // The header's cmdline_size excludes the NUL; our buffer includes it.
    let max = kernel_max
        .and_then(|m| usize::try_from(m).ok())
        .map_or(CMDLINE_MAX_SIZE - 1, |m| m.min(CMDLINE_MAX_SIZE - 1));
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(|source| BootError::GuestWrite {
            what: "kernel command line",
            source,
        })?;
    // At most CMDLINE_MAX_SIZE (2048), so the cast is exact.
    Ok(bytes.len() as u32)
}

fn align_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align).saturating_mul(align)
}

/// Highest page-aligned address for an initramfs of `size` bytes that ends
/// at or below `top` (exclusive) and starts at or above `floor`.
pub(super) fn initrd_address(size: u64, top: u64, floor: u64) -> Result<u64, BootError> {
    let floor = align_up(floor, PAGE_SIZE);
    let room = top.saturating_sub(floor);
    let start = top.checked_sub(size).map(|s| s & !(PAGE_SIZE - 1));
    match start {
        Some(start) if start >= floor => Ok(start),
        _ => Err(BootError::InitrdTooBig { size, room }),
    }
}

/// The exclusive upper bound for the initramfs: the end of low RAM, the
/// MMIO gap and, for a bzImage, its `initrd_addr_max` (an inclusive
/// address of the last byte).
pub(super) fn initrd_top(low_ram_end: u64, header: Option<&setup_header>) -> u64 {
    let kernel_limit = match header {
        Some(h) if h.version >= 0x0203 && h.initrd_addr_max != 0 => {
            u64::from(h.initrd_addr_max) + 1
        }
        Some(_) => LEGACY_INITRD_ADDR_MAX + 1,
        None => MMIO_GAP_START,
    };
    low_ram_end.min(MMIO_GAP_START).min(kernel_limit)
}

/// Load the initramfs at the top of the allowed RAM; returns (address, size).
pub(super) fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    top: u64,
    floor: u64,
) -> Result<(u64, u64), BootError> {
    let open_err = |source| BootError::InitrdOpen {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let size = file.metadata().map_err(open_err)?.len();
    let addr = initrd_address(size, top, floor)?;
    let len = usize::try_from(size).map_err(|_| BootError::InitrdTooBig {
        size,
        room: top.saturating_sub(floor),
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|source| BootError::InitrdLoad {
            path: path.to_path_buf(),
            source,
        })?;
    Ok((addr, size))
}

fn e820(addr: u64, size: u64, kind: u32) -> boot_e820_entry {
    boot_e820_entry {
        addr,
        size,
        r#type: kind,
    }
}

/// The e820 map for `mem`: conventional memory up to the MP table, the
/// MP table and legacy BIOS/VGA window reserved up to 1 MiB, then every
/// RAM range (low RAM from 1 MiB, RAM above 4 GiB).
pub(super) fn e820_map(mem: &GuestMemoryMmap) -> Vec<boot_e820_entry> {
    let mut map = Vec::new();
    for region in mem.iter() {
        let start = region.start_addr().raw_value();
        let end = start.saturating_add(region.len());
        if start < HIMEM_START {
            if start < MPTABLE_START {
                map.push(e820(start, end.min(MPTABLE_START) - start, E820_RAM));
            }
            if end > MPTABLE_START {
                map.push(e820(
                    MPTABLE_START,
                    HIMEM_START - MPTABLE_START,
                    E820_RESERVED,
                ));
            }
            if end > HIMEM_START {
                map.push(e820(HIMEM_START, end - HIMEM_START, E820_RAM));
            }
        } else {
            map.push(e820(start, end - start, E820_RAM));
        }
    }
    map
}

/// Everything that goes into the zero page.
pub(super) struct ZeroPage<'a> {
    /// The bzImage header, or `None` for an ELF kernel.
    pub header: Option<setup_header>,
    /// Command line size including its NUL.
    pub cmdline_size: u32,
    /// Initramfs (address, size).
    pub initrd: Option<(u64, u64)>,
    /// Memory map.
    pub e820: &'a [boot_e820_entry],
    /// The framebuffer, if any.
    pub screen: Option<super::ScreenInfo>,
}

/// `screen_info.orig_video_isVGA` for a VESA linear framebuffer (vesafb).
const VIDEO_TYPE_VLFB: u8 = 0x23;
/// The same for an EFI framebuffer (efifb).
const VIDEO_TYPE_EFI: u8 = 0x70;
/// `screen_info.capabilities`: `ext_lfb_base` holds the address's top half.
const VIDEO_CAPABILITY_64BIT_BASE: u32 = 1 << 1;

/// The kernel's version string (`setup_header.kernel_version` points at it,
/// relative to 0x200 in the file), if the file has one.
pub(super) fn kernel_version(path: &Path, header: &setup_header) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let offset = u64::from(header.kernel_version);
    if offset == 0 {
        return None;
    }
    let mut f = File::open(path).ok()?;
    f.seek(SeekFrom::Start(0x200 + offset)).ok()?;
    let mut buf = [0u8; 128];
    let n = f.read(&mut buf).ok()?;
    let end = buf[..n].iter().position(|b| *b == 0).unwrap_or(n);
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Fill `struct boot_params` as a boot loader would.
pub(super) fn build_boot_params(zp: &ZeroPage<'_>) -> Result<boot_params, BootError> {
    let mut params = boot_params::default();
    match zp.header {
        Some(header) => params.hdr = header,
        None => {
            // An ELF kernel has no setup header; fill in what a kernel
            // checks for and would otherwise find in its own header.
            params.hdr.boot_flag = BOOT_FLAG_MAGIC;
            params.hdr.header = HDRS_MAGIC;
            params.hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT;
        }
    }
    params.hdr.type_of_loader = LOADER_TYPE_OTHER;
    params.hdr.loadflags |= LOADED_HIGH;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.ext_cmd_line_ptr = (CMDLINE_START >> 32) as u32;
    params.hdr.cmdline_size = zp.cmdline_size;
    if let Some((addr, size)) = zp.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    if zp.e820.len() > params.e820_table.len() {
        return Err(BootError::TooManyE820Entries(zp.e820.len()));
    }
    // Copy out, fill and copy back: fields of a packed struct cannot be
    // borrowed in place.
    let mut table = params.e820_table;
    table[..zp.e820.len()].copy_from_slice(zp.e820);
    params.e820_table = table;
    params.e820_entries = zp.e820.len() as u8;
    if let Some(s) = zp.screen {
        let mut si = params.screen_info;
        si.orig_video_isVGA = if s.efi {
            VIDEO_TYPE_EFI
        } else {
            VIDEO_TYPE_VLFB
        };
        si.lfb_width = s.width as u16;
        si.lfb_height = s.height as u16;
        si.lfb_depth = 32;
        si.lfb_linelength = s.stride as u16;
        si.lfb_base = s.base as u32;
        si.ext_lfb_base = (s.base >> 32) as u32;
        if s.base >> 32 != 0 {
            si.capabilities |= VIDEO_CAPABILITY_64BIT_BASE;
        }
        // efifb reads bytes, vesafb 64 KiB units.
        si.lfb_size = if s.efi {
            s.size as u32
        } else {
            (s.size / 0x10000) as u32
        };
        // XRGB8888: red in bits 16..24, green 8..16, blue 0..8.
        (si.red_size, si.red_pos) = (8, 16);
        (si.green_size, si.green_pos) = (8, 8);
        (si.blue_size, si.blue_pos) = (8, 0);
        (si.rsvd_size, si.rsvd_pos) = (8, 24);
        si.pages = 1;
        params.screen_info = si;
    }
    Ok(params)
}

/// Write boot_params at `ZERO_PAGE_START`.
pub(super) fn write_boot_params(
    mem: &GuestMemoryMmap,
    params: &boot_params,
) -> Result<(), BootError> {
    mem.write_obj(*params, GuestAddress(ZERO_PAGE_START))
        .map_err(|source| BootError::GuestWrite {
            what: "boot parameters",
            source,
        })
}

#[cfg(test)]
// Tests fail loudly on purpose; the workspace warns on unwrap everywhere.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::boot::layout::MMIO_GAP_END;
    use crate::boot::memory::create_guest_memory;

    fn entries(map: &[boot_e820_entry]) -> Vec<(u64, u64, u32)> {
        map.iter().map(|e| (e.addr, e.size, e.r#type)).collect()
    }

    #[test]
    fn e820_for_128_mib() {
        let mem = create_guest_memory(128).unwrap();
        assert_eq!(
            entries(&e820_map(&mem)),
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x9fc00, 0x100000 - 0x9fc00, E820_RESERVED),
                (0x100000, (128 << 20) - 0x100000, E820_RAM),
            ]
        );
    }

    #[test]
    fn e820_above_four_gib() {
        let mem = create_guest_memory(4096 + 512).unwrap();
        assert_eq!(
            entries(&e820_map(&mem)),
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x9fc00, 0x100000 - 0x9fc00, E820_RESERVED),
                (0x100000, MMIO_GAP_START - 0x100000, E820_RAM),
                (MMIO_GAP_END, (1 << 30) + (512 << 20), E820_RAM),
            ]
        );
    }

    #[test]
    fn initrd_goes_to_the_top_page_aligned() {
        let top = 128 << 20;
        let addr = initrd_address(10_000, top, 0x200_0000).unwrap();
        assert_eq!(addr % PAGE_SIZE, 0);
        assert!(addr + 10_000 <= top);
        assert!(top - addr < 10_000 + PAGE_SIZE, "as high as possible");
        // Exactly filling the room works; one byte more does not.
        let floor = 0x200_0000;
        let room = top - floor;
        assert_eq!(initrd_address(room, top, floor).unwrap(), floor);
        assert!(matches!(
            initrd_address(room + 1, top, floor),
            Err(BootError::InitrdTooBig { room: r, .. }) if r == room
        ));
        // Larger than everything below the top.
        assert!(initrd_address(top + 1, top, 0).is_err());
        // An unaligned floor rounds up.
        assert!(initrd_address(top - 0x1001, top, 0x1001).is_err());
    }

    #[test]
    fn initrd_top_honours_the_kernel_and_the_gap() {
        let mut h = setup_header {
            version: 0x020f,
            initrd_addr_max: 0x7fff_ffff,
            ..Default::default()
        };
        assert_eq!(initrd_top(128 << 20, Some(&h)), 128 << 20);
        assert_eq!(initrd_top(MMIO_GAP_START, Some(&h)), 0x8000_0000);
        assert_eq!(initrd_top(MMIO_GAP_START, None), MMIO_GAP_START);
        h.version = 0x0202;
        assert_eq!(initrd_top(MMIO_GAP_START, Some(&h)), 0x3800_0000);
    }

    #[test]
    fn boot_params_fields() {
        let hdr = setup_header {
            setup_sects: 27,
            version: 0x020f,
            loadflags: 0x01,
            header: HDRS_MAGIC,
            boot_flag: BOOT_FLAG_MAGIC,
            init_size: 0x1234_5000,
            kernel_alignment: 0x20_0000,
            ..Default::default()
        };
        let map = [
            e820(0, 0x9fc00, E820_RAM),
            e820(0x100000, 0x700000, E820_RAM),
        ];
        let p = build_boot_params(&ZeroPage {
            header: Some(hdr),
            cmdline_size: 14,
            initrd: Some((0x7f0_0000, 0x8_1234)),
            e820: &map,
            screen: None,
        })
        .unwrap();
        // Braces copy the packed fields out before comparing.
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.cmdline_size }, 14);
        assert_eq!({ p.ext_cmd_line_ptr }, 0);
        assert_eq!({ p.hdr.ramdisk_image }, 0x7f0_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x8_1234);
        assert_eq!({ p.hdr.loadflags } & LOADED_HIGH, LOADED_HIGH);
        // Copied from the kernel's header.
        assert_eq!({ p.hdr.setup_sects }, 27);
        assert_eq!({ p.hdr.version }, 0x020f);
        assert_eq!({ p.hdr.init_size }, 0x1234_5000);
        assert_eq!({ p.hdr.kernel_alignment }, 0x20_0000);
        assert_eq!({ p.hdr.header }, HDRS_MAGIC);
        assert_eq!(p.e820_entries, 2);
        let t = p.e820_table;
        assert_eq!(
            ({ t[1].addr }, { t[1].size }, { t[1].r#type }),
            (0x100000, 0x700000, 1)
        );

        // Without a header (ELF) the magic numbers are supplied.
        let p = build_boot_params(&ZeroPage {
            header: None,
            cmdline_size: 1,
            initrd: None,
            e820: &map,
            screen: None,
        })
        .unwrap();
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, HDRS_MAGIC);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
        assert_eq!({ p.hdr.ramdisk_size }, 0);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
    }

    #[test]
    fn screen_info_announces_the_framebuffer() {
        let screen = super::super::ScreenInfo {
            base: 0xc000_0000,
            width: 1024,
            height: 768,
            stride: 4096,
            size: 3 << 20,
            efi: false,
        };
        let zp = |efi| ZeroPage {
            header: None,
            cmdline_size: 1,
            initrd: None,
            e820: &[],
            screen: Some(super::super::ScreenInfo { efi, ..screen }),
        };
        let si = build_boot_params(&zp(false)).unwrap().screen_info;
        assert_eq!(si.orig_video_isVGA, 0x23);
        assert_eq!(
            ({ si.lfb_width }, { si.lfb_height }, { si.lfb_depth }, {
                si.lfb_linelength
            }),
            (1024, 768, 32, 4096)
        );
        assert_eq!({ si.lfb_base }, 0xc000_0000);
        assert_eq!({ si.lfb_size }, 48, "vesafb: 64 KiB units");
        assert_eq!((si.red_pos, si.green_pos, si.blue_pos), (16, 8, 0));
        let si = build_boot_params(&zp(true)).unwrap().screen_info;
        assert_eq!(si.orig_video_isVGA, 0x70);
        assert_eq!({ si.lfb_size }, 3 << 20, "efifb: bytes");
        let none = build_boot_params(&ZeroPage {
            screen: None,
            ..zp(false)
        })
        .unwrap()
        .screen_info;
        assert_eq!(none.orig_video_isVGA, 0, "no screen, no framebuffer");
    }

    #[test]
    fn cmdline_limits() {
        let mem = create_guest_memory(16).unwrap();
        assert_eq!(write_cmdline(&mem, "console=ttyS0", None).unwrap(), 14);
        let mut buf = [0u8; 14];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");

        let longest = "x".repeat(CMDLINE_MAX_SIZE - 1);
        assert_eq!(write_cmdline(&mem, &longest, None).unwrap(), 2048);
        assert!(matches!(
            write_cmdline(&mem, &"x".repeat(CMDLINE_MAX_SIZE), None),
            Err(BootError::CmdlineTooLong { max: 2047, .. })
        ));
        // A kernel that accepts less is honoured.
        assert!(matches!(
            write_cmdline(&mem, "abcdef", Some(5)),
            Err(BootError::CmdlineTooLong { len: 6, max: 5 })
        ));
        assert!(matches!(
            write_cmdline(&mem, "a\0b", None),
            Err(BootError::CmdlineNul)
        ));
    }
}
