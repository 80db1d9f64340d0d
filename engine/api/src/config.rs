//! What a VM is made of, and the checks that run before anything is built.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Longest kernel command line accepted (Linux's x86 `COMMAND_LINE_SIZE`).
pub const MAX_CMDLINE_LEN: usize = 2048;
/// Smallest guest memory accepted, in MiB: below this not even the boot
/// structures and a small kernel fit.
pub const MIN_MEMORY_MIB: u32 = 16;

/// A virtual machine's definition. Plain data, saved as JSON by the app.
///
/// Saved form: direct kernel boot is written as the flat `kernel`,
/// `initrd` and `cmdline` fields release 0.1 wrote, so a definition saved
/// now is the same file as before and still opens in 0.1. Other boot
/// sources, when they come, are written as `"boot": {...}` (0.1 then keeps
/// such a file as one it cannot read, which is right: it cannot boot it).
/// Reading accepts both layouts for kernel boot, the flat one and
/// `"boot": {"kernel": {"kernel": ..., "initrd": ..., "cmdline": ...}}`;
/// a definition naming both, or neither, is refused
/// ([`ConfigError::BootNamedTwice`], [`ConfigError::NoBoot`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SavedVmConfig")]
pub struct VmConfig {
    /// Human-readable name.
    pub name: String,
    /// Number of virtual CPUs.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// How the guest starts.
    pub boot: BootSource,
    /// The guest's screen: a linear framebuffer announced to Linux through
    /// `boot_params.screen_info`, or none. Definitions saved before screens
    /// existed get the default one.
    pub display: Option<DisplayConfig>,
    /// Disks, in order: the first is the guest's `/dev/vda`.
    pub disks: Vec<DiskConfig>,
    /// User-mode networking through passt, or none (the default).
    pub network: Option<NetworkConfig>,
}

/// How a machine's guest starts. Firmware (SeaBIOS/OVMF) and snapshot
/// restore will be more ways in, through the same build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootSource {
    /// Hangar loads a kernel and its initramfs into guest memory and
    /// enters the kernel itself: no firmware runs.
    Kernel(KernelBoot),
}

/// Direct kernel boot: the files and the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelBoot {
    /// Kernel image: a bzImage, a Linux vmlinux ELF, or a bare ELF program.
    pub kernel: PathBuf,
    /// Optional initramfs.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: String,
}

impl VmConfig {
    /// The kernel this machine boots directly, if it boots that way.
    pub fn kernel_boot(&self) -> Option<&KernelBoot> {
        match &self.boot {
            BootSource::Kernel(k) => Some(k),
        }
    }

    /// The same, to change the files or the command line.
    pub fn kernel_boot_mut(&mut self) -> Option<&mut KernelBoot> {
        match &mut self.boot {
            BootSource::Kernel(k) => Some(k),
        }
    }
}

/// A definition as saved: either boot layout (see [`VmConfig`]).
#[derive(Deserialize)]
struct SavedVmConfig {
    name: String,
    vcpus: u8,
    memory_mib: u32,
    /// The nested layout.
    #[serde(default)]
    boot: Option<BootSource>,
    /// The flat layout of release 0.1 (direct kernel boot).
    #[serde(default)]
    kernel: Option<PathBuf>,
    #[serde(default)]
    initrd: Option<PathBuf>,
    #[serde(default)]
    cmdline: Option<String>,
    #[serde(default = "DisplayConfig::default_screen")]
    display: Option<DisplayConfig>,
    #[serde(default)]
    disks: Vec<DiskConfig>,
    #[serde(default)]
    network: Option<NetworkConfig>,
}

impl TryFrom<SavedVmConfig> for VmConfig {
    type Error = ConfigError;

    fn try_from(saved: SavedVmConfig) -> Result<Self, ConfigError> {
        // `"initrd": null` is what 0.1 wrote for "none": it names nothing.
        let flat = saved.kernel.is_some() || saved.initrd.is_some() || saved.cmdline.is_some();
        let boot = match (saved.boot, flat) {
            (Some(_), true) => return Err(ConfigError::BootNamedTwice),
            (Some(boot), false) => boot,
            (None, true) => BootSource::Kernel(KernelBoot {
                kernel: saved.kernel.ok_or(ConfigError::NoBoot)?,
                initrd: saved.initrd,
                cmdline: saved.cmdline.unwrap_or_default(),
            }),
            (None, false) => return Err(ConfigError::NoBoot),
        };
        Ok(VmConfig {
            name: saved.name,
            vcpus: saved.vcpus,
            memory_mib: saved.memory_mib,
            boot,
            display: saved.display,
            disks: saved.disks,
            network: saved.network,
        })
    }
}

impl Serialize for VmConfig {
    /// Field by field in 0.1's order, kernel boot flat (see [`VmConfig`]).
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("VmConfig", 9)?;
        s.serialize_field("name", &self.name)?;
        s.serialize_field("vcpus", &self.vcpus)?;
        s.serialize_field("memory_mib", &self.memory_mib)?;
        match &self.boot {
            BootSource::Kernel(k) => {
                s.serialize_field("kernel", &k.kernel)?;
                s.serialize_field("initrd", &k.initrd)?;
                s.serialize_field("cmdline", &k.cmdline)?;
            }
        }
        s.serialize_field("display", &self.display)?;
        s.serialize_field("disks", &self.disks)?;
        s.serialize_field("network", &self.network)?;
        s.end()
    }
}

/// Most disks a VM can have (each is a PCI device on bus 0).
pub const MAX_DISKS: usize = 16;

pub use hangar_block::{DiskConfig, DiskFormat};

/// A TCP port of the host's loopback forwarded into a workload: a VM's
/// guest or a container. One type for every kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForward {
    /// Port on the host's 127.0.0.1.
    pub host_port: u16,
    /// Port in the guest (the VM, or the container).
    // Release 0.1's container.json called it `container_port`.
    #[serde(alias = "container_port")]
    pub guest_port: u16,
}

/// User-mode networking: a virtio-net device whose frames go to `passt`,
/// which gives the guest an address by DHCP, maps the gateway address to
/// the host's loopback and forwards the listed ports. No root, no tap.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// Host ports forwarded into the guest.
    #[serde(default)]
    pub port_forwards: Vec<PortForward>,
}

/// A VM's screen: a linear 32-bit framebuffer (XRGB, 4 bytes a pixel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisplayConfig {
    /// Pixels across.
    pub width: u32,
    /// Pixels down.
    pub height: u32,
}

impl DisplayConfig {
    /// Smallest screen (VGA's 320×200).
    pub const MIN: (u32, u32) = (320, 200);
    /// Largest screen (4K UHD): 32 MiB of framebuffer.
    pub const MAX: (u32, u32) = (3840, 2160);

    /// 1024×768, what Hangar gives a new VM.
    pub fn default_screen() -> Option<Self> {
        Some(Self {
            width: 1024,
            height: 768,
        })
    }

    /// Bytes per row.
    pub fn stride(&self) -> u32 {
        self.width * 4
    }

    /// Checks the size against [`Self::MIN`] and [`Self::MAX`]; widths are
    /// a multiple of 8, as VESA modes are.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ok = (Self::MIN.0..=Self::MAX.0).contains(&self.width)
            && (Self::MIN.1..=Self::MAX.1).contains(&self.height)
            && self.width.is_multiple_of(8);
        if ok {
            Ok(())
        } else {
            Err(ConfigError::BadDisplay {
                width: self.width,
                height: self.height,
            })
        }
    }
}

/// What kind of program the kernel file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KernelKind {
    /// A Linux bzImage (boot protocol header "HdrS").
    BzImage,
    /// An uncompressed Linux kernel (vmlinux ELF with Linux/Xen notes).
    LinuxElf,
    /// A bare 64-bit ELF program, such as Hangar's own test guests.
    BareElf,
}

impl KernelKind {
    /// True for a Linux kernel, which needs hardware virtualization to run.
    pub fn is_linux(self) -> bool {
        matches!(self, KernelKind::BzImage | KernelKind::LinuxElf)
    }
}

/// Why a configuration cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The name is empty.
    #[error("the machine needs a name")]
    EmptyName,
    /// vCPU count of zero.
    #[error("a machine needs at least one virtual CPU")]
    NoVcpus,
    /// More vCPUs than KVM allows.
    #[error("{requested} virtual CPUs requested, but this host's KVM allows at most {max}")]
    TooManyVcpus {
        /// What was asked for.
        requested: u8,
        /// KVM's limit on this host.
        max: usize,
    },
    /// Memory below the minimum.
    #[error("{0} MiB of memory is too little: a machine needs at least {MIN_MEMORY_MIB} MiB")]
    TooLittleMemory(u32),
    /// Memory above what the host has.
    #[error("{requested} MiB of memory requested, but this host has only {host} MiB")]
    TooMuchMemory {
        /// What was asked for.
        requested: u32,
        /// The host's total RAM.
        host: u64,
    },
    /// The command line is longer than the kernel accepts.
    #[error("the kernel command line is {0} bytes long; the limit is {MAX_CMDLINE_LEN}")]
    CmdlineTooLong(usize),
    /// The command line has a NUL byte.
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    /// The kernel file is missing or unreadable.
    #[error("cannot read kernel {path}")]
    KernelUnreadable {
        /// The path given.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The kernel file is not a kernel.
    #[error("{path} is not a bootable kernel: {why}")]
    NotAKernel {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The screen size is out of range.
    #[error(
        "a {width}×{height} screen is not possible: from {}×{} to {}×{}, the width a multiple of 8",
        DisplayConfig::MIN.0, DisplayConfig::MIN.1, DisplayConfig::MAX.0, DisplayConfig::MAX.1
    )]
    BadDisplay {
        /// Pixels across asked for.
        width: u32,
        /// Pixels down asked for.
        height: u32,
    },
    /// More disks than the machine can take.
    #[error("{0} disks requested; a machine can have at most {MAX_DISKS}")]
    TooManyDisks(usize),
    /// A disk image is missing or unreadable.
    #[error("cannot open disk {path}")]
    DiskUnreadable {
        /// The path given.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A port forward that cannot work.
    #[error("port forward {host_port} → {guest_port} is not possible: {why}")]
    BadPortForward {
        /// Host side.
        host_port: u16,
        /// Guest side.
        guest_port: u16,
        /// What is wrong.
        why: &'static str,
    },
    /// A saved definition names its boot both ways: `boot` and the flat
    /// `kernel`/`initrd`/`cmdline` fields.
    #[error(
        "the machine names how it boots twice: both `boot` and the fields `kernel`, `initrd` \
         or `cmdline`"
    )]
    BootNamedTwice,
    /// A saved definition names no way to boot.
    #[error("the machine names no way to boot: neither `boot` nor `kernel`")]
    NoBoot,
    /// The initramfs is missing or unreadable.
    #[error("cannot read initramfs {path}")]
    InitrdUnreadable {
        /// The path given.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Host limits that validation checks against.
#[derive(Debug, Clone, Copy)]
pub struct HostLimits {
    /// KVM's maximum vCPUs per VM.
    pub max_vcpus: usize,
    /// Host RAM in MiB.
    pub host_memory_mib: u64,
}

impl HostLimits {
    /// Read the host's total memory; `max_vcpus` comes from KVM.
    pub fn with_max_vcpus(max_vcpus: usize) -> Self {
        Self {
            max_vcpus,
            host_memory_mib: host_memory_mib(),
        }
    }
}

/// Total host RAM in MiB (0 if unknown, which rejects nothing by itself).
pub fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(0)
}

impl VmConfig {
    /// Check everything that can be checked without building the VM, and
    /// tell what kind of kernel it boots.
    pub fn validate(&self, limits: &HostLimits) -> Result<KernelKind, ConfigError> {
        if self.name.trim().is_empty() {
            return Err(ConfigError::EmptyName);
        }
        if self.vcpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        if usize::from(self.vcpus) > limits.max_vcpus {
            return Err(ConfigError::TooManyVcpus {
                requested: self.vcpus,
                max: limits.max_vcpus,
            });
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::TooLittleMemory(self.memory_mib));
        }
        if limits.host_memory_mib > 0 && u64::from(self.memory_mib) > limits.host_memory_mib {
            return Err(ConfigError::TooMuchMemory {
                requested: self.memory_mib,
                host: limits.host_memory_mib,
            });
        }
        match &self.boot {
            BootSource::Kernel(k) => k.validate_cmdline()?,
        }
        if let Some(d) = &self.display {
            d.validate()?;
        }
        self.validate_disks()?;
        if let Some(net) = &self.network {
            net.validate()?;
        }
        match &self.boot {
            BootSource::Kernel(k) => k.validate_files(),
        }
    }
}

impl KernelBoot {
    fn validate_cmdline(&self) -> Result<(), ConfigError> {
        // The boot protocol needs room for the terminating NUL.
        if self.cmdline.len() >= MAX_CMDLINE_LEN {
            return Err(ConfigError::CmdlineTooLong(self.cmdline.len()));
        }
        if self.cmdline.contains('\0') {
            return Err(ConfigError::CmdlineNul);
        }
        Ok(())
    }

    /// The kernel is one Hangar can boot and the initramfs a readable file.
    fn validate_files(&self) -> Result<KernelKind, ConfigError> {
        let kind = detect_kernel_kind(&self.kernel)?;
        if let Some(initrd) = &self.initrd {
            File::open(initrd)
                .and_then(|f| f.metadata())
                .and_then(|m| {
                    if m.is_file() {
                        Ok(())
                    } else {
                        Err(io::Error::other("not a regular file"))
                    }
                })
                .map_err(|source| ConfigError::InitrdUnreadable {
                    path: initrd.clone(),
                    source,
                })?;
        }
        Ok(kind)
    }
}

impl VmConfig {
    fn validate_disks(&self) -> Result<(), ConfigError> {
        if self.disks.len() > MAX_DISKS {
            return Err(ConfigError::TooManyDisks(self.disks.len()));
        }
        for disk in &self.disks {
            File::open(&disk.path)
                .and_then(|f| f.metadata())
                .and_then(|m| {
                    let ft = m.file_type();
                    use std::os::unix::fs::FileTypeExt;
                    if ft.is_file() || ft.is_block_device() {
                        Ok(())
                    } else {
                        Err(io::Error::other("not a file or block device"))
                    }
                })
                .map_err(|source| ConfigError::DiskUnreadable {
                    path: disk.path.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

impl NetworkConfig {
    /// Ports are non-zero and each host port is forwarded once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::BTreeSet::new();
        for f in &self.port_forwards {
            let bad = |why| ConfigError::BadPortForward {
                host_port: f.host_port,
                guest_port: f.guest_port,
                why,
            };
            if f.host_port == 0 || f.guest_port == 0 {
                return Err(bad("port 0 cannot be forwarded"));
            }
            if !seen.insert(f.host_port) {
                return Err(bad("the host port is forwarded twice"));
            }
        }
        Ok(())
    }
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const PT_NOTE: u32 = 4;

/// Look at a kernel file's headers and say what it is.
pub fn detect_kernel_kind(path: &Path) -> Result<KernelKind, ConfigError> {
    let unreadable = |source| ConfigError::KernelUnreadable {
        path: path.to_path_buf(),
        source,
    };
    let not_kernel = |why| ConfigError::NotAKernel {
        path: path.to_path_buf(),
        why,
    };
    let mut f = File::open(path).map_err(unreadable)?;
    if !f.metadata().map_err(unreadable)?.is_file() {
        return Err(not_kernel("it is not a regular file"));
    }
    let mut head = vec![0u8; 4096];
    let n = read_up_to(&mut f, &mut head).map_err(unreadable)?;
    head.truncate(n);

    if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        // Boot protocol 2.06+ is needed for the 64-bit entry point and the
        // cmdline size field; every kernel from the last decade has it.
        let version = u16::from_le_bytes([head[0x206], head[0x207]]);
        if version < 0x206 {
            return Err(not_kernel("its boot protocol is older than 2.06"));
        }
        let xloadflags = u16::from_le_bytes([head[0x236], head[0x237]]);
        if xloadflags & 1 == 0 {
            return Err(not_kernel(
                "it is not a 64-bit kernel (no 64-bit entry point)",
            ));
        }
        return Ok(KernelKind::BzImage);
    }
    if head.len() >= 64 && &head[..4] == ELF_MAGIC {
        if head[4] != 2 || head[5] != 1 {
            return Err(not_kernel("it is not a 64-bit little-endian ELF file"));
        }
        let machine = u16::from_le_bytes([head[18], head[19]]);
        if machine != 62 {
            return Err(not_kernel("it is an ELF file for another CPU (not x86-64)"));
        }
        return if elf_has_linux_notes(&mut f, &head).map_err(unreadable)? {
            Ok(KernelKind::LinuxElf)
        } else {
            Ok(KernelKind::BareElf)
        };
    }
    Err(not_kernel(
        "it is neither a Linux bzImage nor an ELF kernel",
    ))
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A Linux vmlinux carries ELF notes named "Linux" or "Xen" (PVH entry,
/// build salt); Hangar's bare test guests carry none.
fn elf_has_linux_notes(f: &mut File, head: &[u8]) -> io::Result<bool> {
    let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let phoff = u64_at(head, 32);
    let phentsize = u64::from(u16_at(54));
    let phnum = u64::from(u16_at(56)).min(256);
    if phentsize < 56 {
        return Ok(false);
    }
    let file_len = f.metadata()?.len();
    for i in 0..phnum {
        let mut ph = [0u8; 56];
        f.seek(SeekFrom::Start(phoff + i * phentsize))?;
        if read_up_to(f, &mut ph)? < ph.len() {
            return Ok(false);
        }
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) != PT_NOTE {
            continue;
        }
        let offset = u64_at(&ph, 8);
        let size = u64_at(&ph, 32).min(64 * 1024);
        if offset.saturating_add(size) > file_len {
            continue;
        }
        let mut notes = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(offset))?;
        let got = read_up_to(f, &mut notes)?;
        notes.truncate(got);
        let mut p = 0usize;
        while p + 12 <= notes.len() {
            let namesz =
                u32::from_le_bytes([notes[p], notes[p + 1], notes[p + 2], notes[p + 3]]) as usize;
            let descsz =
                u32::from_le_bytes([notes[p + 4], notes[p + 5], notes[p + 6], notes[p + 7]])
                    as usize;
            let name_start = p + 12;
            let name_end = name_start.saturating_add(namesz);
            if name_end > notes.len() {
                break;
            }
            let name = &notes[name_start..name_end];
            let name = name.strip_suffix(&[0]).unwrap_or(name);
            if name == b"Linux" || name == b"Xen" {
                return Ok(true);
            }
            p = name_start + namesz.next_multiple_of(4) + descsz.next_multiple_of(4);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_testkit::TempDir;
    use std::io::Write;

    fn limits() -> HostLimits {
        HostLimits {
            max_vcpus: 8,
            host_memory_mib: 4096,
        }
    }

    fn temp_file(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }

    fn bzimage_bytes(version: u16, xloadflags: u16) -> Vec<u8> {
        let mut b = vec![0u8; 0x300];
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        b[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        b
    }

    fn elf_bytes(with_linux_note: bool) -> Vec<u8> {
        let mut b = vec![0u8; 0x200];
        b[..4].copy_from_slice(ELF_MAGIC);
        b[4] = 2;
        b[5] = 1;
        b[18..20].copy_from_slice(&62u16.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        b[ph..ph + 4].copy_from_slice(&(if with_linux_note { PT_NOTE } else { 1 }).to_le_bytes());
        b[ph + 8..ph + 16].copy_from_slice(&0x100u64.to_le_bytes());
        b[ph + 32..ph + 40].copy_from_slice(&20u64.to_le_bytes());
        // Note: namesz 6 ("Linux\0"), descsz 4, type 1.
        b[0x100..0x104].copy_from_slice(&6u32.to_le_bytes());
        b[0x104..0x108].copy_from_slice(&4u32.to_le_bytes());
        b[0x108..0x10c].copy_from_slice(&1u32.to_le_bytes());
        b[0x10c..0x112].copy_from_slice(b"Linux\0");
        b
    }

    fn config(kernel: PathBuf) -> VmConfig {
        VmConfig {
            name: "t".into(),
            vcpus: 1,
            memory_mib: 128,
            boot: BootSource::Kernel(KernelBoot {
                kernel,
                initrd: None,
                cmdline: "console=ttyS0".into(),
            }),
            display: None,
            disks: Vec::new(),
            network: None,
        }
    }

    #[test]
    fn test_detect_kernel_kinds() {
        let dir = TempDir::new("config");
        let bz = temp_file(&dir, "bz", &bzimage_bytes(0x20f, 1));
        assert_eq!(detect_kernel_kind(&bz).unwrap(), KernelKind::BzImage);
        let linux = temp_file(&dir, "vmlinux", &elf_bytes(true));
        assert_eq!(detect_kernel_kind(&linux).unwrap(), KernelKind::LinuxElf);
        let bare = temp_file(&dir, "bare", &elf_bytes(false));
        assert_eq!(detect_kernel_kind(&bare).unwrap(), KernelKind::BareElf);
    }

    #[test]
    fn test_validate_not_a_kernel_returns_not_a_kernel() {
        let dir = TempDir::new("config");
        let junk = temp_file(&dir, "junk", b"#!/bin/sh\necho hi\n");
        let err = config(junk).validate(&limits()).unwrap_err();
        assert!(matches!(err, ConfigError::NotAKernel { .. }), "{err}");
        let old = temp_file(&dir, "old-bz", &bzimage_bytes(0x204, 1));
        assert!(matches!(
            detect_kernel_kind(&old),
            Err(ConfigError::NotAKernel { .. })
        ));
        let bz32 = temp_file(&dir, "bz32", &bzimage_bytes(0x20f, 0));
        assert!(matches!(
            detect_kernel_kind(&bz32),
            Err(ConfigError::NotAKernel { .. })
        ));
        let mut arm = elf_bytes(false);
        arm[18] = 183;
        let arm = temp_file(&dir, "arm", &arm);
        assert!(matches!(
            detect_kernel_kind(&arm),
            Err(ConfigError::NotAKernel { .. })
        ));
    }

    #[test]
    fn test_validate_missing_kernel_returns_unreadable() {
        let err = config("/nonexistent/vmlinuz".into())
            .validate(&limits())
            .unwrap_err();
        assert!(matches!(err, ConfigError::KernelUnreadable { .. }));
        assert!(err.to_string().contains("/nonexistent/vmlinuz"));
    }

    #[test]
    fn test_validate_impossible_sizes() {
        let dir = TempDir::new("config");
        let bz = temp_file(&dir, "bz-sizes", &bzimage_bytes(0x20f, 1));
        let mut c = config(bz);
        c.vcpus = 0;
        assert!(matches!(c.validate(&limits()), Err(ConfigError::NoVcpus)));
        c.vcpus = 9;
        assert!(matches!(
            c.validate(&limits()),
            Err(ConfigError::TooManyVcpus {
                requested: 9,
                max: 8
            })
        ));
        c.vcpus = 1;
        c.memory_mib = 0;
        assert!(matches!(
            c.validate(&limits()),
            Err(ConfigError::TooLittleMemory(0))
        ));
        c.memory_mib = 8192;
        assert!(matches!(
            c.validate(&limits()),
            Err(ConfigError::TooMuchMemory { .. })
        ));
        c.memory_mib = 128;
        fn boot(c: &mut VmConfig) -> &mut KernelBoot {
            c.kernel_boot_mut().unwrap()
        }
        boot(&mut c).cmdline = "x".repeat(MAX_CMDLINE_LEN);
        assert!(matches!(
            c.validate(&limits()),
            Err(ConfigError::CmdlineTooLong(_))
        ));
        boot(&mut c).cmdline = "a\0b".into();
        assert!(matches!(
            c.validate(&limits()),
            Err(ConfigError::CmdlineNul)
        ));
        boot(&mut c).cmdline.clear();
        boot(&mut c).initrd = Some("/nonexistent/initrd".into());
        assert!(matches!(
            c.validate(&limits()),
            Err(ConfigError::InitrdUnreadable { .. })
        ));
        boot(&mut c).initrd = None;
        for (width, height) in [(0, 0), (100, 768), (1024, 5000), (1020, 768)] {
            c.display = Some(DisplayConfig { width, height });
            let e = c.validate(&limits()).unwrap_err();
            assert!(
                matches!(e, ConfigError::BadDisplay { .. }),
                "{width}x{height}: {e}"
            );
            assert!(e.to_string().contains(&format!("{width}×{height}")), "{e}");
        }
        c.display = DisplayConfig::default_screen();
        assert_eq!(c.validate(&limits()).unwrap(), KernelKind::BzImage);
    }

    #[test]
    fn definitions_saved_before_screens_get_the_default_one() {
        let old = r#"{"name":"x","vcpus":1,"memory_mib":128,"kernel":"/k"}"#;
        let c: VmConfig = serde_json::from_str(old).unwrap();
        assert_eq!(c.display, DisplayConfig::default_screen());
        let none = r#"{"name":"x","vcpus":1,"memory_mib":128,"kernel":"/k","display":null}"#;
        let c: VmConfig = serde_json::from_str(none).unwrap();
        assert_eq!(c.display, None, "a VM saved without a screen keeps none");
    }

    /// A machine as release 0.1 wrote it, and the same in the nested layout.
    const FLAT: &str = r#"{"name":"x","vcpus":1,"memory_mib":64,"kernel":"/k","initrd":"/i",
        "cmdline":"console=ttyS0","display":null,"disks":[],"network":null}"#;
    const NESTED: &str = r#"{"name":"x","vcpus":1,"memory_mib":64,
        "boot":{"kernel":{"kernel":"/k","initrd":"/i","cmdline":"console=ttyS0"}},
        "display":null,"disks":[],"network":null}"#;

    #[test]
    fn both_boot_layouts_load_to_the_same_config() {
        let flat: VmConfig = serde_json::from_str(FLAT).unwrap();
        let nested: VmConfig = serde_json::from_str(NESTED).unwrap();
        assert_eq!(flat, nested);
        assert_eq!(
            flat.boot,
            BootSource::Kernel(KernelBoot {
                kernel: "/k".into(),
                initrd: Some("/i".into()),
                cmdline: "console=ttyS0".into(),
            })
        );
        // Without initrd and cmdline, in either layout: none and empty.
        let bare_flat: VmConfig =
            serde_json::from_str(r#"{"name":"x","vcpus":1,"memory_mib":64,"kernel":"/k"}"#)
                .unwrap();
        let bare_nested: VmConfig = serde_json::from_str(
            r#"{"name":"x","vcpus":1,"memory_mib":64,"boot":{"kernel":{"kernel":"/k"}}}"#,
        )
        .unwrap();
        assert_eq!(bare_flat, bare_nested);
        let k = bare_flat.kernel_boot().unwrap();
        assert_eq!((k.initrd.as_ref(), k.cmdline.as_str()), (None, ""));
    }

    #[test]
    fn kernel_boot_is_written_in_the_flat_layout_of_0_1() {
        let config: VmConfig = serde_json::from_str(NESTED).unwrap();
        let written: serde_json::Value = serde_json::to_value(&config).unwrap();
        let flat: serde_json::Value = serde_json::from_str(FLAT).unwrap();
        assert_eq!(written, flat);
        // Key order too: the file is the one 0.1 wrote.
        let text = serde_json::to_string(&config).unwrap();
        let keys: Vec<&str> = text
            .split('"')
            .skip(1)
            .step_by(2)
            .filter(|k| {
                [
                    "name",
                    "vcpus",
                    "memory_mib",
                    "kernel",
                    "initrd",
                    "cmdline",
                    "display",
                    "disks",
                    "network",
                ]
                .contains(k)
            })
            .collect();
        assert_eq!(
            keys,
            [
                "name",
                "vcpus",
                "memory_mib",
                "kernel",
                "initrd",
                "cmdline",
                "display",
                "disks",
                "network"
            ]
        );
        let back: VmConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn a_definition_naming_both_boot_layouts_or_none_is_refused() {
        let both = r#"{"name":"x","vcpus":1,"memory_mib":64,"kernel":"/k",
            "boot":{"kernel":{"kernel":"/k"}}}"#;
        let stray_cmdline = r#"{"name":"x","vcpus":1,"memory_mib":64,"cmdline":"quiet",
            "boot":{"kernel":{"kernel":"/k"}}}"#;
        for text in [both, stray_cmdline] {
            let err = serde_json::from_str::<VmConfig>(text).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&ConfigError::BootNamedTwice.to_string()),
                "{err}"
            );
        }
        let none = r#"{"name":"x","vcpus":1,"memory_mib":64}"#;
        let initrd_only = r#"{"name":"x","vcpus":1,"memory_mib":64,"initrd":"/i"}"#;
        for text in [none, initrd_only] {
            let err = serde_json::from_str::<VmConfig>(text).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&ConfigError::NoBoot.to_string()),
                "{err}"
            );
        }
        // 0.1 wrote "initrd": null for no initramfs: that names nothing.
        let null_initrd = r#"{"name":"x","vcpus":1,"memory_mib":64,"initrd":null,
            "boot":{"kernel":{"kernel":"/k"}}}"#;
        assert!(serde_json::from_str::<VmConfig>(null_initrd).is_ok());
    }

    #[test]
    fn definitions_of_release_0_1_are_written_back_as_they_were() {
        let dir = hangar_testkit::saved_fixture("0.1").join("config/machines");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let file: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let saved = &file["config"];
            let config: VmConfig = serde_json::from_value(saved.clone()).unwrap();
            assert_eq!(
                &serde_json::to_value(&config).unwrap(),
                saved,
                "{}",
                path.display()
            );
            seen += 1;
        }
        assert_eq!(seen, 5);
    }
}
