//! Hangar's virtual machine monitor: the KVM VM, guest memory, boot, the
//! vCPU threads and each VM's control thread. It is the only crate that
//! names KVM, and no KVM or guest-memory type leaves it: the engine's VM
//! kind starts a VM with [`vm::spawn_vm`] and talks to it through
//! [`vm::VmRequests`]; the VM reports through the API's event sink.
#![warn(missing_docs)]

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
/// process may run VMs at all. The error is the OS's.
pub fn open_kvm(path: &str) -> Result<(), std::io::Error> {
    let path = std::ffi::CString::new(path).unwrap_or_default();
    kvm_ioctls::Kvm::new_with_path(path.as_c_str())
        .map(drop)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// The most vCPUs this host's KVM gives one VM; the error is why
/// `/dev/kvm` could not be opened (as an OS error, so that no KVM type
/// leaves this crate).
pub fn max_vcpus() -> Result<usize, std::io::Error> {
    kvm_ioctls::Kvm::new()
        .map(|kvm| kvm.get_max_vcpus())
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}
