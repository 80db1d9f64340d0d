//! The Log's lines and the notifications that echo its errors.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

/// How bad a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Something happened.
    Info,
    /// Something failed.
    Error,
}

/// One line of the Log panel.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// Wall-clock time.
    pub time: SystemTime,
    /// The machine's name, if the line is about one.
    pub machine: Option<String>,
    /// How bad.
    pub severity: Severity,
    /// The message.
    pub message: String,
}

/// The Log panel's lines and the notifications still shown.
#[derive(Default)]
pub struct Log {
    /// Every line, oldest first (bounded).
    pub lines: VecDeque<LogLine>,
    /// Indices... notifications as (line, shown since).
    pub notifications: Vec<(LogLine, Instant)>,
}

/// The `log` target of the Log panel's own lines on stderr: the app does
/// not take them back from the logger's queue into the panel (each frame
/// would add the same error again).
pub const LOG_TARGET: &str = "hangar::log_panel";

/// Lines kept in the Log panel.
const LOG_LINES: usize = 5000;
/// How long an error notification stays up unless dismissed.
pub const NOTIFICATION_TIME: Duration = Duration::from_secs(8);

impl Log {
    /// Add a line; errors also pop up as a notification.
    pub fn push(&mut self, severity: Severity, machine: Option<String>, message: String) {
        let line = LogLine {
            time: SystemTime::now(),
            machine,
            severity,
            message,
        };
        match severity {
            Severity::Error => log::error!(target: LOG_TARGET, "{}", line.message),
            Severity::Info => log::info!(target: LOG_TARGET, "{}", line.message),
        }
        if severity == Severity::Error {
            self.notifications.push((line.clone(), Instant::now()));
        }
        if self.lines.len() == LOG_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// Drop notifications older than [`NOTIFICATION_TIME`].
    pub fn expire_notifications(&mut self) {
        self.notifications
            .retain(|(_, since)| since.elapsed() < NOTIFICATION_TIME);
    }
}
