//! Saving a device and rebuilding it: the one trait every device
//! implements for snapshots (Firecracker's `Persist` shape).
//!
//! `save` copies what the device remembers into plain data; `restore`
//! builds a device from that data and from what the data cannot carry
//! (interrupt lines, the output writer, a disk's backend, bus handles):
//! the same things the device's constructor takes. A state may come from
//! an untrusted file, so `restore` checks it and refuses, with an error,
//! anything the device could not have been in (a register index past the
//! registers, a queue longer than the device ever buffers, a ring outside
//! guest memory); it never panics and never trims a state into another one.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A device whose state can be saved and restored.
pub trait Persist: Sized {
    /// Everything the device remembers, as plain serde data.
    type State: Serialize + DeserializeOwned + Clone + PartialEq + Debug;
    /// What `restore` needs besides the state: what the device's
    /// constructor takes.
    type Args;
    /// Why a state cannot be restored.
    type Error: std::error::Error;

    /// The device's state now.
    fn save(&self) -> Self::State;

    /// A device in `state`, connected through `args`. A state this device
    /// could never have been in is an error.
    fn restore(args: Self::Args, state: &Self::State) -> Result<Self, Self::Error>;
}
