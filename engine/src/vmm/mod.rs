//! The virtual machine monitor: memory, boot, vCPU threads and the VM's
//! control thread. Only [`crate::engine`] uses this module directly.

pub mod boot;
#[cfg(feature = "vmm")]
pub(crate) mod vcpu;
#[cfg(feature = "vmm")]
pub mod vm;
