//! Virtual machines: their runtime model, their tabs (Console, Display,
//! Overview), the New machine wizard and the delete dialog.

pub mod actions;
pub mod console_tab;
pub mod delete_dialog;
pub mod display_keys;
pub mod display_tab;
pub mod frame_stats;
pub mod machine;
pub mod machine_disks;
pub mod overview_tab;
pub mod template_clone;
pub mod wizard;
