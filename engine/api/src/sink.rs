//! The one event channel every kind reports through.

use std::sync::mpsc::Sender;
use std::sync::Arc;

use crate::Event;

/// Sends events and wakes the caller; cloned into every thread that
/// reports. The engine makes one per channel; each kind's crate reports
/// through the clone it is given.
#[derive(Clone)]
pub struct EventSink {
    tx: Sender<Event>,
    waker: Arc<dyn Fn() + Send + Sync>,
}

impl EventSink {
    /// A sink sending into `tx` and calling `waker` after each event.
    pub fn new(tx: Sender<Event>, waker: Arc<dyn Fn() + Send + Sync>) -> Self {
        Self { tx, waker }
    }

    /// Report one event.
    pub fn emit(&self, event: Event) {
        // A caller that dropped its receiver no longer listens; the
        // workload goes on.
        if self.tx.send(event).is_ok() {
            (self.waker)();
        }
    }
}
