//! What the window saves across restarts (layout, selection), apart from
//! every runtime handle.

pub mod ui_state;
