//! The virtual machine monitor: memory, boot, vCPU threads and the VM's
//! control thread. Only [`crate::engine`] uses this module directly.

pub mod boot;
pub(crate) mod exit_history;
pub(crate) mod framebuffer;
pub(crate) mod irq_routing;
pub(crate) mod passt;
pub(crate) mod vcpu;
pub mod vm;
