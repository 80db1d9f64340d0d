//! The window's frame: the library on the left, the tabs in the middle, the
//! Log below, the host banner above.

pub mod host_banner;
pub mod library;
pub mod log;
pub mod log_panel;
pub mod tabs;
