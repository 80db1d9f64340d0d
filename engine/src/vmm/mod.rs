//! The virtual machine monitor: memory, boot, vCPU threads and the VM's
//! control thread. Only [`crate::kinds::vm`] uses this module directly.

pub mod boot;
pub(crate) mod exit_history;
pub(crate) mod framebuffer;
pub(crate) mod irq_routing;
pub(crate) mod passt;
pub(crate) mod vcpu;
pub mod vm;

/// The most vCPUs this host's KVM gives one VM.
pub(crate) fn max_vcpus() -> Result<usize, kvm_ioctls::Error> {
    Ok(kvm_ioctls::Kvm::new()?.get_max_vcpus())
}
