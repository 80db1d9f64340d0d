//! Hangar's desktop app and command line, as a library so that the GUI
//! tests (egui_kittest) can drive the real panels.

pub mod cli;
pub mod gui;
pub mod logging;
