//! Containers: their runtime model, their tabs (Console, Logs, Overview), the
//! Run container dialog and image imports. (Functions will get a folder
//! like this one.)

pub mod actions;
pub mod console_tab;
pub mod dialog;
pub mod image_import;
pub mod logs_tab;
pub mod model;
pub mod overview_tab;
