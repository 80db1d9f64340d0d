//! What only containers have in the API: their extra processes and
//! signals.

use serde::{Deserialize, Serialize};

use super::workload::OutputStream;
use crate::containers::ContainerExit;

/// What only a container is asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerCommand {
    /// Close the process's stdin (pipes mode): end of input.
    CloseInput,
    /// Start another process in the running container (e.g. a shell), with
    /// the init's user, capabilities and environment. Without a terminal its
    /// stdin is empty.
    Exec {
        /// The caller's number for this process (named in its events).
        exec: u32,
        /// argv.
        command: Vec<String>,
        /// Give it a pseudo-terminal.
        terminal: bool,
    },
    /// Bytes for an exec'd process's terminal.
    ExecInput {
        /// Which process.
        exec: u32,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Tell an exec'd process's terminal its new size.
    ExecResize {
        /// Which process.
        exec: u32,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// Send a signal to the container's init process.
    Signal(i32),
}

/// What only a container reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerEvent {
    /// An exec'd process runs.
    ExecStarted {
        /// The caller's number for it.
        exec: u32,
        /// Its host pid.
        pid: i32,
    },
    /// Output of an exec'd process.
    ExecOutput {
        /// Which process.
        exec: u32,
        /// Which stream.
        stream: OutputStream,
        /// The bytes.
        data: Vec<u8>,
    },
    /// An exec'd process ended; its output has all been reported.
    ExecExited {
        /// Which process.
        exec: u32,
        /// How (limits and `stopped_by_user` are not tracked per process).
        exit: ContainerExit,
    },
}
