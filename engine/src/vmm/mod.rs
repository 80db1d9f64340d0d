//! The virtual machine monitor: memory, boot, vCPU threads and the VM's
//! control thread. Only [`crate::kinds::vm`] (and the host probe, to open
//! `/dev/kvm`) uses this module; it is the only one that names KVM.

pub mod boot;
pub(crate) mod build;
pub(crate) mod exit_history;
pub(crate) mod framebuffer;
pub(crate) mod irq_routing;
pub(crate) mod passt;
pub(crate) mod state;
pub(crate) mod vcpu;
pub mod vm;

/// Opens the KVM device at `path` (and closes it again): whether this
/// process may run VMs at all.
pub(crate) fn open_kvm(path: &str) -> Result<(), kvm_ioctls::Error> {
    let path = std::ffi::CString::new(path).unwrap_or_default();
    kvm_ioctls::Kvm::new_with_path(path.as_c_str()).map(drop)
}

/// The most vCPUs this host's KVM gives one VM; the error is why
/// `/dev/kvm` could not be opened (as an OS error, so that no KVM type
/// leaves this module).
pub(crate) fn max_vcpus() -> Result<usize, std::io::Error> {
    kvm_ioctls::Kvm::new()
        .map(|kvm| kvm.get_max_vcpus())
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}
