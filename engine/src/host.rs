//! Placeholder, being written.
#![allow(missing_docs)]
pub enum HostCapability {}
pub struct HostProbe;
