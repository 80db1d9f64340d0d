//! Widgets more than one panel uses.

pub mod port_forwards;
pub mod terminal;
