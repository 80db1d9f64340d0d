//! The guest's framebuffer: memory of its own, outside guest RAM, at the
//! address the device manager gives it, mapped into the VM as a separate
//! KVM memory slot with dirty-page logging. The guest draws into it at
//! memory speed (no exits); the control thread asks KVM which pages were
//! written since it last asked and copies only those rows into the
//! [`Display`] the app reads.

use kvm_bindings::{kvm_dirty_log, kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

use super::boot::{BootError, ScreenInfo};
use hangar_api::config::DisplayConfig;
use hangar_api::display::Display;

/// vesafb counts the framebuffer in 64 KiB units: map whole units.
const SIZE_UNIT: usize = 64 * 1024;
/// KVM's page size, one dirty-log bit each.
const PAGE: usize = 4096;

const KVMIO: u32 = 0xAE;
// KVM_GET_DIRTY_LOG, as kvm-ioctls declares it: called here with our own
// bitmap, which kvm-ioctls' get_dirty_log would allocate on every poll.
ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_dirty_log);

/// A VM's framebuffer memory and the screen it feeds.
pub(crate) struct GuestFramebuffer {
    memory: GuestMemoryMmap,
    base: u64,
    size: usize,
    slot: u32,
    stride: usize,
    width: u32,
    height: u32,
    display: Display,
    /// The dirty bitmap, one bit per page, reused by every poll.
    bitmap: Vec<u64>,
}

impl GuestFramebuffer {
    /// Maps a framebuffer for `config` at guest address `base`, to be KVM
    /// memory slot `slot`, feeding `display`.
    pub(crate) fn new(
        config: &DisplayConfig,
        base: u64,
        slot: u32,
        display: Display,
    ) -> Result<Self, BootError> {
        let stride = config.stride() as usize;
        let size = Self::mapped_size(config) as usize;
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(base), size)])
            .map_err(BootError::GuestMemory)?;
        Ok(Self {
            memory,
            base,
            size,
            slot,
            stride,
            width: config.width,
            height: config.height,
            display,
            bitmap: vec![0; (size / PAGE).div_ceil(64)],
        })
    }

    /// Bytes a framebuffer for `config` maps (whole 64 KiB units).
    pub(crate) fn mapped_size(config: &DisplayConfig) -> u64 {
        let bytes = config.stride() as usize * config.height as usize;
        (bytes.div_ceil(SIZE_UNIT) * SIZE_UNIT) as u64
    }

    /// Bytes mapped (a multiple of 64 KiB).
    #[cfg(test)]
    fn size(&self) -> u64 {
        self.size as u64
    }

    /// What the guest is told about it (`screen_info`).
    pub(crate) fn screen_info(&self, efi: bool) -> ScreenInfo {
        ScreenInfo {
            base: self.base,
            width: self.width,
            height: self.height,
            stride: self.stride as u32,
            size: self.size as u64,
            efi,
        }
    }

    /// Gives the framebuffer to the VM as its own slot, dirty-logged.
    pub(crate) fn register(&self, vm: &VmFd) -> Result<(), kvm_ioctls::Error> {
        let Some(region) = self.memory.iter().next() else {
            return Err(kvm_ioctls::Error::new(libc::EINVAL));
        };
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|_| kvm_ioctls::Error::new(libc::EFAULT))?;
        let region = kvm_userspace_memory_region {
            slot: self.slot,
            guest_phys_addr: self.base,
            memory_size: self.size as u64,
            userspace_addr: host as u64,
            flags: KVM_MEM_LOG_DIRTY_PAGES,
        };
        // SAFETY: the mapping is owned by `self.memory`; the Machine that
        // owns `self` outlives every vCPU thread, as for guest RAM.
        unsafe { vm.set_user_memory_region(region) }
    }

    /// Copies what the guest drew since the last call into the display;
    /// true if anything changed. Allocates nothing.
    pub(crate) fn poll(&mut self, vm: &VmFd) -> Result<bool, kvm_ioctls::Error> {
        let mut log = kvm_dirty_log {
            slot: self.slot,
            ..Default::default()
        };
        log.__bindgen_anon_1.dirty_bitmap = self.bitmap.as_mut_ptr().cast();
        // SAFETY: the bitmap has one bit for each page of the slot's size,
        // as KVM_GET_DIRTY_LOG writes, and outlives the call; `vm` is a
        // live VM fd and the slot is ours.
        let ret = unsafe { ioctl_with_ref(vm, KVM_GET_DIRTY_LOG(), &log) };
        if ret != 0 {
            return Err(kvm_ioctls::Error::last());
        }
        let pages = &self.bitmap;
        let read = |offset: usize, buf: &mut [u8]| {
            // In range by construction (rows of the mapped frame); a failed
            // read leaves the row as it was.
            let _ = self
                .memory
                .read_slice(buf, GuestAddress(self.base + offset as u64));
        };
        Ok(self.display.update_from(&read, self.stride, pages))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn size_is_whole_64k_units_and_screen_info_matches() {
        let cfg = DisplayConfig {
            width: 1024,
            height: 768,
        };
        let fb = GuestFramebuffer::new(&cfg, 0xc000_0000, 2, Display::new(1024, 768)).unwrap();
        assert_eq!(fb.size(), 3 << 20, "1024×768×4 is exactly 48 units");
        let si = fb.screen_info(false);
        assert_eq!(
            (si.base, si.width, si.height, si.stride),
            (0xc000_0000, 1024, 768, 4096)
        );
        let odd = DisplayConfig {
            width: 328,
            height: 200,
        };
        let fb = GuestFramebuffer::new(&odd, 0xc000_0000, 2, Display::new(328, 200)).unwrap();
        assert_eq!(fb.size() % SIZE_UNIT as u64, 0);
        assert!(fb.size() >= 328 * 4 * 200);
    }
}
