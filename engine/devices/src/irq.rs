//! Interrupt lines: an eventfd that KVM turns into a GSI (irqfd), or, for
//! the PC's legacy devices, a direct call into the irqchip.

use std::io;
use std::sync::{Arc, OnceLock};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Raises a GSI on the guest's irqchip at once, from the calling thread.
pub trait InterruptSink: Send + Sync {
    /// Assert and release `gsi` (an edge).
    fn pulse(&self, gsi: u32) -> io::Result<()>;
}

/// One interrupt line into the guest's in-kernel irqchip.
///
/// By default writing to the eventfd asserts the GSI (edge): the device
/// manager registers it with KVM as an irqfd, which KVM delivers from a
/// worker of its own. A line given an [`InterruptSink`] calls it instead,
/// on the thread that triggers it; every handle to the line (see
/// [`IrqLine::try_clone`]) shares that choice. Devices only ever call
/// [`IrqLine::trigger`].
#[derive(Debug)]
pub struct IrqLine {
    gsi: u32,
    evt: EventFd,
    direct: Arc<OnceLock<Arc<dyn InterruptSink>>>,
}

impl std::fmt::Debug for dyn InterruptSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InterruptSink")
    }
}

impl IrqLine {
    /// A new, not yet registered line for `gsi`.
    pub fn new(gsi: u32) -> io::Result<Self> {
        Ok(Self {
            gsi,
            evt: EventFd::new(EFD_NONBLOCK)?,
            direct: Arc::new(OnceLock::new()),
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

    /// From now on, raise the line through `sink` rather than the eventfd.
    /// False if it was given one already. An edge raised before, which
    /// waits in the eventfd (a restored device raising its pending
    /// interrupt again), goes to `sink` now.
    pub fn deliver_through(&self, sink: Arc<dyn InterruptSink>) -> bool {
        if self.direct.set(sink).is_err() {
            return false;
        }
        if self.evt.read().is_ok() {
            if let Err(e) = self.trigger() {
                log::warn!("cannot raise IRQ {}: {e}", self.gsi);
            }
        }
        true
    }

    /// Assert the interrupt once.
    pub fn trigger(&self) -> io::Result<()> {
        match self.direct.get() {
            Some(sink) => sink.pulse(self.gsi),
            None => self.evt.write(1),
        }
    }

    /// A second handle to the same line.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            gsi: self.gsi,
            evt: self.evt.try_clone()?,
            direct: Arc::clone(&self.direct),
        })
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        IrqLine::trigger(self)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    struct Recorder(Mutex<Vec<u32>>);

    impl InterruptSink for Recorder {
        fn pulse(&self, gsi: u32) -> io::Result<()> {
            self.0.lock().expect("recorder").push(gsi);
            Ok(())
        }
    }

    #[test]
    fn a_sink_takes_over_every_handle_of_the_line() {
        let line = IrqLine::new(4).expect("eventfd");
        let device_copy = line.try_clone().expect("clone");
        device_copy.trigger().expect("eventfd write");
        assert_eq!(line.eventfd().read().expect("one pulse"), 1);
        let sink = Arc::new(Recorder(Mutex::new(Vec::new())));
        assert!(line.deliver_through(sink.clone()));
        assert!(!line.deliver_through(sink.clone()), "set once");
        device_copy.trigger().expect("sink");
        device_copy.trigger().expect("sink");
        assert_eq!(*sink.0.lock().expect("recorder"), [4, 4]);
        // Nothing went to the eventfd any more.
        assert!(line.eventfd().read().is_err(), "EAGAIN: no count");
    }

    #[test]
    fn an_edge_raised_before_the_sink_reaches_it() {
        let line = IrqLine::new(1).expect("eventfd");
        line.trigger().expect("eventfd write");
        line.trigger().expect("eventfd write");
        let sink = Arc::new(Recorder(Mutex::new(Vec::new())));
        assert!(line.deliver_through(sink.clone()));
        // Edges merge on a real line too: one pulse for what was waiting.
        assert_eq!(*sink.0.lock().expect("recorder"), [1]);
        assert!(line.eventfd().read().is_err(), "EAGAIN: taken");
    }
}
