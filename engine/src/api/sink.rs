//! The one event channel every kind reports through.

use std::sync::mpsc::Sender;
use std::sync::Arc;

use super::Event;

/// Sends events and wakes the caller; cloned into every thread that
/// reports.
#[derive(Clone)]
pub(crate) struct EventSink {
    tx: Sender<Event>,
    waker: Arc<dyn Fn() + Send + Sync>,
}

impl EventSink {
    pub(crate) fn new(tx: Sender<Event>, waker: Arc<dyn Fn() + Send + Sync>) -> Self {
        Self { tx, waker }
    }

    pub(crate) fn emit(&self, event: Event) {
        // A caller that dropped its receiver no longer listens; the
        // workload goes on.
        if self.tx.send(event).is_ok() {
            (self.waker)();
        }
    }
}
