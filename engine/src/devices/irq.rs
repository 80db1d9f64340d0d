//! Interrupt lines: an eventfd that KVM turns into a GSI (irqfd).

use std::io;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// One interrupt line into the guest's in-kernel irqchip.
///
/// Writing to the eventfd asserts the GSI (edge). The device manager
/// registers it with KVM; devices only ever call [`IrqLine::trigger`].
#[derive(Debug)]
pub struct IrqLine {
    gsi: u32,
    evt: EventFd,
}

impl IrqLine {
    /// A new, not yet registered line for `gsi`.
    pub fn new(gsi: u32) -> io::Result<Self> {
        Ok(Self {
            gsi,
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The GSI this line asserts.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// The eventfd, for registering with KVM or for tests to observe.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Assert the interrupt once.
    pub fn trigger(&self) -> io::Result<()> {
        self.evt.write(1)
    }

    /// A second handle to the same line.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            gsi: self.gsi,
            evt: self.evt.try_clone()?,
        })
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        IrqLine::trigger(self)
    }
}
