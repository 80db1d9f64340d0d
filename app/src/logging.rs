//! Where the engine's and the app's `log` records go: stderr (warnings and
//! errors; `HANGAR_LOG=info|debug|trace` for more), and — Hangar's own
//! warnings and errors — a small queue the window drains into its log
//! panel, so a problem the engine only logs (a cleanup that failed, a
//! record it could not read) still reaches the person using the app.
//! Libraries' warnings (winit's about the X server, say) stay on stderr:
//! they mean nothing to that person.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Most records kept for the window between two frames.
const QUEUE_LIMIT: usize = 256;

struct AppLogger {
    level: LevelFilter,
    queue: Mutex<VecDeque<(Level, String)>>,
}

static LOGGER: std::sync::OnceLock<AppLogger> = std::sync::OnceLock::new();

impl Log for AppLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = format!("{}: {}", record.target(), record.args());
        // A closed stderr is no reason to fail.
        let _ = writeln!(
            std::io::stderr(),
            "hangar: {}: {text}",
            record.level().as_str().to_lowercase()
        );
        if record.level() <= Level::Warn && is_hangars(record.target()) {
            if let Ok(mut q) = self.queue.lock() {
                if q.len() == QUEUE_LIMIT {
                    q.pop_front();
                }
                q.push_back((record.level(), text));
            }
        }
    }

    fn flush(&self) {}
}

/// Targets of the engine (`hangar_engine::…`) and the app (`hangar::…`).
fn is_hangars(target: &str) -> bool {
    target == "hangar"
        || target.starts_with("hangar::")
        || target == "hangar_engine"
        || target.starts_with("hangar_engine::")
}

fn level_from(value: Option<&str>) -> LevelFilter {
    match value.map(str::trim).map(str::to_ascii_lowercase).as_deref() {
        Some("off") => LevelFilter::Off,
        Some("error") => LevelFilter::Error,
        Some("info") => LevelFilter::Info,
        Some("debug") => LevelFilter::Debug,
        Some("trace") => LevelFilter::Trace,
        _ => LevelFilter::Warn,
    }
}

/// Installs the logger (once; later calls do nothing).
pub fn init() {
    let level = level_from(std::env::var("HANGAR_LOG").ok().as_deref());
    let logger = LOGGER.get_or_init(|| AppLogger {
        level,
        queue: Mutex::new(VecDeque::new()),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// The warnings and errors logged since the last call, oldest first.
pub fn take_warnings() -> Vec<(Level, String)> {
    LOGGER
        .get()
        .and_then(|l| l.queue.lock().ok().map(|mut q| q.drain(..).collect()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_with_warn_as_the_default() {
        assert_eq!(level_from(None), LevelFilter::Warn);
        assert_eq!(level_from(Some("DEBUG")), LevelFilter::Debug);
        assert_eq!(level_from(Some("nonsense")), LevelFilter::Warn);
        assert_eq!(level_from(Some("off")), LevelFilter::Off);
    }

    #[test]
    fn warnings_reach_the_queue_and_info_does_not() {
        // Other tests of this binary may log at the same time: look for
        // these lines, not at the queue's length.
        init();
        log::info!("not kept");
        log::warn!("kept for the panel");
        let got = take_warnings();
        assert!(
            got.iter()
                .any(|(l, t)| *l == Level::Warn && t.ends_with("kept for the panel")),
            "{got:?}"
        );
        assert!(!got.iter().any(|(_, t)| t.contains("not kept")));
        assert!(
            !take_warnings()
                .iter()
                .any(|(_, t)| t.ends_with("kept for the panel")),
            "taken once"
        );
        log::warn!(target: "winit::platform_impl", "a library's worry");
        assert!(
            !take_warnings()
                .iter()
                .any(|(_, t)| t.contains("a library's worry")),
            "libraries' warnings stay on stderr"
        );
        assert!(is_hangars("hangar_engine::containers::runtime"));
        assert!(is_hangars("hangar::gui::app"));
        assert!(!is_hangars("hangarish"));
    }
}
