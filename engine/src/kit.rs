//! The default guest kit: Debian's kernel and a busybox initramfs, built by
//! `packaging/setup.sh` into the user's data directory.
//!
//! Booted as it is, the kit runs its own busybox system. With `root=` on the
//! command line (`/dev/vdX`, `LABEL=` or `UUID=`; `rootfstype=`, `ro`/`rw`,
//! `rootdelay=` (default 30 s) and `init=` are honoured) its initramfs loads
//! the virtio and ext4 modules, waits for that disk, mounts it and hands over
//! to the disk's init: that is how a VM made from a template
//! ([`crate::templates`]) boots. If the disk cannot be booted it says why on
//! the console and starts its own system instead.

use std::path::{Path, PathBuf};

use crate::config::{BootSource, DisplayConfig, KernelBoot, VmConfig};

pub use hangar_api::dirs::{data_dir, NoDataDir, DATA_DIR_ENV};

/// Kernel command line of the default kit: the boot log on the screen
/// (fbcon) and the serial console, which stays /dev/console (named last);
/// reset through the keyboard controller (no ACPI), reboot on panic so a
/// dead guest stops.
pub const DEFAULT_CMDLINE: &str = "console=tty0 console=ttyS0 reboot=k panic=-1 quiet";
/// Default memory for the kit: a bzImage decompresses in place and needs room.
pub const DEFAULT_MEMORY_MIB: u32 = 512;

/// Where the default kit's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultKit {
    /// Debian's bzImage.
    pub kernel: PathBuf,
    /// The generated initramfs.
    pub initrd: PathBuf,
    /// The kernel's version string, as packaged.
    pub version: String,
}

/// Why the default kit cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// No home or data directory could be determined.
    #[error(transparent)]
    NoDataDir(#[from] NoDataDir),
    /// A kit file is missing.
    #[error("the default guest kit is missing {0}: run packaging/setup.sh to build it")]
    Missing(PathBuf),
}

impl DefaultKit {
    /// The kit in Hangar's data directory.
    pub fn locate() -> Result<Self, KitError> {
        Self::in_dir(&data_dir()?.join("kit"))
    }

    /// The kit in `dir`, checking that its files exist.
    pub fn in_dir(dir: &Path) -> Result<Self, KitError> {
        let kernel = dir.join("vmlinuz");
        let initrd = dir.join("initramfs.cpio.gz");
        for f in [&kernel, &initrd] {
            if !f.is_file() {
                return Err(KitError::Missing(f.clone()));
            }
        }
        let version = std::fs::read_to_string(dir.join("VERSION"))
            .map(|v| v.trim().to_string())
            .unwrap_or_default();
        Ok(Self {
            kernel,
            initrd,
            version,
        })
    }

    /// Direct boot of the kit's kernel and initramfs with `cmdline`.
    pub fn boot(&self, cmdline: String) -> BootSource {
        BootSource::Kernel(KernelBoot {
            kernel: self.kernel.clone(),
            initrd: Some(self.initrd.clone()),
            cmdline,
        })
    }

    /// A machine definition that boots the kit.
    pub fn vm_config(&self, name: &str, vcpus: u8) -> VmConfig {
        VmConfig {
            name: name.to_string(),
            vcpus,
            memory_mib: DEFAULT_MEMORY_MIB,
            boot: self.boot(DEFAULT_CMDLINE.to_string()),
            display: DisplayConfig::default_screen(),
            disks: Vec::new(),
            network: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_kit_in_empty_dir_returns_missing() {
        let tmp = hangar_testkit::TempDir::new("kit");
        let dir = tmp.path();
        let err = DefaultKit::in_dir(dir).unwrap_err();
        assert!(err.to_string().contains("setup.sh"), "{err}");
        std::fs::write(dir.join("vmlinuz"), b"k").unwrap();
        std::fs::write(dir.join("initramfs.cpio.gz"), b"i").unwrap();
        std::fs::write(dir.join("VERSION"), b"6.1.0-test\n").unwrap();
        let kit = DefaultKit::in_dir(dir).unwrap();
        assert_eq!(kit.version, "6.1.0-test");
        assert_eq!(kit.vm_config("d", 2).vcpus, 2);
    }
}
